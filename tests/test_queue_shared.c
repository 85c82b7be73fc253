/* test_queue_shared.c - mp_queue_put_shared and mp_queue_get_shared: a big
 * item changes hands as its arena block, without a copy, mixed both ways
 * with plain put and get, through closed and full queues, and with the
 * putter dead or the getter killed at its worst moment (MPROC_WHITEBOX: the
 * allocator's counts and the queue's validator). */
#include "testutil.h"

#include "internal.h"
#include "queue_internal.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)

static size_t used_bytes(void)
{
    struct arena_stats st;
    assert_true(arena_check(&st));
    return st.used_bytes;
}

static void fill(unsigned char *p, size_t n, unsigned salt)
{
    for (size_t i = 0; i < n; i += 4096)
        p[i] = (unsigned char)(i / 4096 + salt);
    if (n)
        p[n - 1] = (unsigned char)salt;
}

static bool filled(const unsigned char *p, size_t n, unsigned salt)
{
    for (size_t i = 0; i < n; i += 4096)
        if (p[i] != (unsigned char)(i / 4096 + salt) && i != n - 1)
            return false;
    return !n || p[n - 1] == (unsigned char)salt;
}

static void test_the_block_changes_hands(void **state)
{
    (void)state;
    mp_queue *q;
    TU_OK(mp_queue_new(&q, NULL));
    size_t before = used_bytes();
    unsigned char *p = mp_shared_alloc(8 * MIB);
    assert_non_null(p);
    fill(p, 8 * MIB, 3);
    TU_OK(mp_queue_put_shared(q, p, 8 * MIB, MP_FOREVER));
    void *got;
    size_t len;
    TU_OK(mp_queue_get_shared(q, &got, &len, 1));
    assert_ptr_equal(got, p);                        /* no copy */
    assert_int_equal(len, 8 * MIB);
    assert_true(filled(got, len, 3));
    mp_shared_free(got);
    assert_int_equal(used_bytes(), before);
    TU_ASSERT_RC(mp_queue_get_shared(q, &got, &len, 0), MP_EEMPTY);
    mp_queue_free(q);
}

/* Either side may be plain: by copy in, shared out (inline and out of line),
 * and shared in, by copy out (the block is freed by the get). */
static void test_mixes_with_plain_put_and_get(void **state)
{
    (void)state;
    mp_queue *q;
    TU_OK(mp_queue_new(&q, NULL));
    size_t before = used_bytes();
    static unsigned char src[2 * MIB], dst[2 * MIB];
    const size_t sizes[] = { 0, 100, QUEUE_INLINE_MAX, QUEUE_INLINE_MAX + 1, 2 * MIB };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        fill(src, sizes[i], (unsigned)i);
        TU_OK(mp_queue_put(q, src, sizes[i], 0));
        void *got;
        size_t len;
        TU_OK(mp_queue_get_shared(q, &got, &len, 0));
        assert_int_equal(len, sizes[i]);
        assert_true(arena_is_block(got));
        assert_true(filled(got, len, (unsigned)i));
        mp_shared_free(got);

        unsigned char *p = mp_shared_alloc(sizes[i] ? sizes[i] : 1);
        fill(p, sizes[i], (unsigned)i + 7);
        TU_OK(mp_queue_put_shared(q, p, sizes[i], 0));
        TU_OK(mp_queue_get(q, dst, sizeof dst, &len, 0));
        assert_int_equal(len, sizes[i]);
        assert_true(filled(dst, len, (unsigned)i + 7));
        assert_false(arena_is_block(p));             /* the get freed it */
    }
    assert_int_equal(used_bytes(), before);
    mp_queue_free(q);
}

static void test_refuses_what_is_not_a_block(void **state)
{
    (void)state;
    mp_queue *q;
    TU_OK(mp_queue_new(&q, NULL));
    static char not_shared[64];
    char *p = mp_shared_alloc(1000);
    TU_ASSERT_RC(mp_queue_put_shared(q, not_shared, 64, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_put_shared(q, NULL, 0, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_put_shared(q, p + 64, 10, 0), MP_EINVAL);   /* inside a block */
    TU_ASSERT_RC(mp_queue_put_shared(q, p, arena_block_size(p) + 1, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_put_shared(q, p, 10, 0.0 / 0.0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_put_shared(NULL, p, 10, 0), MP_EINVAL);
    void *got;
    size_t len;
    TU_ASSERT_RC(mp_queue_get_shared(q, NULL, &len, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_get_shared(q, &got, NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_get_shared(NULL, &got, &len, 0), MP_EINVAL);
    assert_int_equal(mp_queue_qsize(q), 0);
    mp_shared_free(p);
    TU_ASSERT_RC(mp_queue_put_shared(q, p, 10, 0), MP_EINVAL);        /* freed */
    mp_queue_free(q);
}

/* A put that fails leaves the block with the caller. */
static void test_a_failed_put_leaves_the_block_with_the_caller(void **state)
{
    (void)state;
    mp_queue *q;
    TU_OK(mp_queue_new(&q, &(mp_queue_opts){ .maxsize = 1 }));
    char *a = mp_shared_alloc(100), *b = mp_shared_alloc(100);
    TU_OK(mp_queue_put_shared(q, a, 100, 0));
    TU_ASSERT_RC(mp_queue_put_shared(q, b, 100, 0), MP_EFULL);
    TU_ASSERT_RC(mp_queue_put_shared(q, b, 100, 0.05), MP_EFULL);
    assert_true(arena_is_block(b));
    TU_OK(mp_queue_shutdown(q));
    TU_ASSERT_RC(mp_queue_put_shared(q, b, 100, 0), MP_ECLOSED);
    assert_true(arena_is_block(b));
    mp_queue *open;                                  /* still the caller's to put */
    TU_OK(mp_queue_new(&open, NULL));
    TU_OK(mp_queue_put_shared(open, b, 100, 0));
    void *got;
    size_t len;
    TU_OK(mp_queue_get_shared(open, &got, &len, 0));
    assert_ptr_equal(got, b);
    mp_queue_free(open);
    mp_shared_free(b);
    mp_queue_free(q);                                /* frees a, still queued */
    assert_false(arena_is_block(a));
}

/* A block is put once: a second put of it, or a free of it, while a queue
 * holds it is refused. Accepted, two getters had one block, and the first
 * one's free handed it to the next allocation under the second. */
static void test_a_queued_block_is_not_put_twice_nor_freed(void **state)
{
    (void)state;
    mp_queue *q, *other;
    TU_OK(mp_queue_new(&q, NULL));
    TU_OK(mp_queue_new(&other, NULL));
    unsigned char *p = mp_shared_alloc(100000);
    fill(p, 100000, 3);
    TU_OK(mp_queue_put_shared(q, p, 100000, 0));
    TU_ASSERT_RC(mp_queue_put_shared(q, p, 100000, 0), MP_EINVAL);
    tu_last_error_has("p is in a queue already", NULL);
    TU_ASSERT_RC(mp_queue_put_shared(other, p, 100000, 0), MP_EINVAL);
    mp_shared_free(p);                               /* refused: the queue's */
    tu_last_error_has("mp_shared_free: p is in a queue", NULL);
    assert_int_equal(mp_queue_qsize(q), 1);
    assert_int_equal(mp_queue_qsize(other), 0);
    void *got;
    size_t len;
    TU_OK(mp_queue_get_shared(q, &got, &len, 0));
    assert_ptr_equal(got, p);
    assert_int_equal(len, 100000);
    static unsigned char want[100000];               /* zeros, as mp_shared_alloc's */
    fill(want, 100000, 3);
    assert_memory_equal(got, want, 100000);          /* the free above changed nothing */
    TU_OK(mp_queue_put_shared(other, got, len, 0));  /* the getter's: it may put it again */
    TU_OK(mp_queue_get_shared(other, &got, &len, 0));
    mp_shared_free(got);
    assert_false(arena_is_block(got));

    /* A block a plain get copied and freed comes back unmarked. */
    for (int i = 0; i < 2; i++) {
        unsigned char *small = mp_shared_alloc(i ? 100 : 100000);
        TU_OK(mp_queue_put_shared(q, small, 10, 0));
        unsigned char buf[16];
        TU_OK(mp_queue_get(q, buf, sizeof buf, &len, 0));
        unsigned char *again = mp_shared_alloc(i ? 100 : 100000);
        TU_OK(mp_queue_put_shared(q, again, 10, 0));
        TU_OK(mp_queue_get_shared(q, &got, &len, 0));
        mp_shared_free(got);
    }
    mp_queue_free(q);
    mp_queue_free(other);
}

static int put_shared_and_die(void *q)
{
    unsigned char *p = mp_shared_alloc(64 * MIB);
    if (!p)
        return 1;
    fill(p, 64 * MIB, 9);
    if (mp_queue_put_shared(q, p, 64 * MIB, MP_FOREVER) != 0)
        return 2;
    kill(getpid(), SIGKILL);
    return 3;
}

static void test_get_shared_after_the_putter_died(void **state)
{
    (void)state;
    mp_queue *q;
    TU_OK(mp_queue_new(&q, NULL));
    assert_int_equal(tu_wait(tu_fork(put_shared_and_die, q), 30), -SIGKILL);
    void *got;
    size_t len;
    TU_OK(mp_queue_get_shared(q, &got, &len, 1));
    assert_int_equal(len, 64 * MIB);
    assert_true(filled(got, len, 9));
    mp_shared_free(got);
    assert_true(mp__queue_valid(q));
    mp_queue_free(q);
}

static const char *die_at;

static void die_here(const char *point)
{
    if (die_at && strcmp(point, die_at) == 0)
        kill(getpid(), SIGKILL);
}

static int get_shared_and_die(void *q)
{
    mp__queue_test_hook = die_here;
    void *got;
    size_t len;
    mp_queue_get_shared(q, &got, &len, 5);
    return 1;
}

/* A getter killed before its commit leaves the item queued; after it, the
 * block is leaked (its taker is gone). Nothing is torn either way. */
static void test_getter_killed_leaks_at_most_the_item(void **state)
{
    (void)state;
    const char *points[] = { "get_copied", "get_committed" };
    for (int big = 0; big < 2; big++) {
        for (int i = 0; i < 2; i++) {
            size_t before = used_bytes();
            mp_queue *q;
            TU_OK(mp_queue_new(&q, NULL));
            size_t n = big ? 4 * MIB : 100;
            unsigned char *p = mp_shared_alloc(n);
            fill(p, n, 5);
            TU_OK(mp_queue_put_shared(q, p, n, 0));
            char small[200];
            fill((unsigned char *)small, sizeof small, 6);
            TU_OK(mp_queue_put(q, small, sizeof small, 0));
            die_at = points[i];
            assert_int_equal(tu_wait(tu_fork(get_shared_and_die, q), 10), -SIGKILL);
            assert_true(mp__queue_valid(q));
            void *got;
            size_t len;
            TU_OK(mp_queue_get_shared(q, &got, &len, 0));
            if (i == 0) {                               /* not committed: still first */
                assert_int_equal(len, n);
                assert_true(filled(got, n, 5));
                mp_shared_free(got);
                TU_OK(mp_queue_get_shared(q, &got, &len, 0));
            }
            assert_int_equal(len, sizeof small);
            assert_true(filled(got, len, 6));
            mp_shared_free(got);
            mp_queue_free(q);
            size_t leaked = used_bytes() - before;
            assert_true(i == 0 ? leaked == 0 : leaked <= ((n + 64 + 63) & ~(size_t)63));
        }
    }
    assert_true(arena_check(NULL));
}

int main(void)
{
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_block_changes_hands),
        cmocka_unit_test(test_mixes_with_plain_put_and_get),
        cmocka_unit_test(test_refuses_what_is_not_a_block),
        cmocka_unit_test(test_a_failed_put_leaves_the_block_with_the_caller),
        cmocka_unit_test(test_a_queued_block_is_not_put_twice_nor_freed),
        cmocka_unit_test(test_get_shared_after_the_putter_died),
        cmocka_unit_test(test_getter_killed_leaks_at_most_the_item),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
