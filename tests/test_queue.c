/* test_queue.c - the Queue: order, sizes, bounds, timeouts, joining,
 * shutdown, many producers and consumers, and processes killed mid-operation.
 * MPROC_WHITEBOX: linked with the static library, for the queue's test hook
 * and validator, which libmproc.so does not export. */
#include "testutil.h"
#include "queue_internal.h"

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static mp_queue *new_queue(size_t maxsize)
{
    mp_queue *q = NULL;
    TU_OK(mp_queue_new(&q, &(mp_queue_opts){ .maxsize = maxsize }));
    assert_non_null(q);
    return q;
}

static void put_u64(mp_queue *q, uint64_t x)
{
    TU_OK(mp_queue_put(q, &x, sizeof x, MP_FOREVER));
}

static uint64_t get_u64(mp_queue *q)
{
    uint64_t x = 0;
    size_t len = 0;
    TU_OK(mp_queue_get(q, &x, sizeof x, &len, 10 * tu_slow()));
    assert_int_equal(len, sizeof x);
    return x;
}

/* Fills n bytes with a pattern that depends on seed, so a torn or misplaced
 * item is noticed. */
static void pattern(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31 + seed * 7 + (i >> 12));
}

static bool pattern_ok(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31 + seed * 7 + (i >> 12)))
            return false;
    return true;
}

/* ------------------------------------------------------------------ basics */

static void test_queue_keeps_fifo_order(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    for (uint64_t i = 0; i < 1000; i++)
        put_u64(q, i);
    for (uint64_t i = 0; i < 1000; i++)
        assert_int_equal(get_u64(q), i);
    assert_true(mp_queue_empty(q));
    mp_queue_free(q);
}

static void test_queue_passes_items_of_every_size_in_order(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    static const size_t sizes[] = { 0, 1, 7, 8, 9, 63, 4096, QUEUE_INLINE_MAX,
                                    QUEUE_INLINE_MAX + 1, (size_t)3 << 20, 0 };
    size_t n = sizeof sizes / sizeof *sizes;
    unsigned char *buf = malloc((size_t)3 << 20);
    for (unsigned i = 0; i < n; i++) {
        pattern(buf, sizes[i], i);
        TU_OK(mp_queue_put(q, buf, sizes[i], MP_FOREVER));
    }
    assert_int_equal(mp_queue_qsize(q), n);
    mp_buf out = { 0 };
    for (unsigned i = 0; i < n; i++) {
        TU_OK(mp_queue_get_buf(q, &out, 0));
        assert_int_equal(out.len, sizes[i]);
        assert_true(pattern_ok(out.data, out.len, i));
    }
    mp_buf_free(&out);
    free(buf);
    mp_queue_free(q);
}

static void test_queue_zero_byte_item_needs_no_buffer(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    TU_OK(mp_queue_put(q, NULL, 0, 0));
    size_t len = 99;
    TU_OK(mp_queue_get(q, NULL, 0, &len, 0));
    assert_int_equal(len, 0);
    mp_queue_free(q);
}

static void test_queue_get_returns_etoobig_and_keeps_the_item(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    size_t sizes[] = { 100, QUEUE_INLINE_MAX * 2 };
    unsigned char *data = malloc(sizes[1]), *buf = malloc(sizes[1]);
    for (int k = 0; k < 2; k++) {
        pattern(data, sizes[k], 5);
        TU_OK(mp_queue_put(q, data, sizes[k], 0));
        size_t len = 0;
        TU_ASSERT_RC(mp_queue_get(q, buf, 10, &len, 0), MP_ETOOBIG);
        assert_int_equal(len, sizes[k]);
        TU_ASSERT_RC(mp_queue_get(q, NULL, 0, &len, 0), MP_ETOOBIG);
        assert_int_equal(mp_queue_qsize(q), 1);
        TU_OK(mp_queue_get(q, buf, sizes[k], &len, 0));
        assert_int_equal(len, sizes[k]);
        assert_true(pattern_ok(buf, len, 5));
    }
    free(data);
    free(buf);
    mp_queue_free(q);
}

static void test_queue_qsize_empty_full_are_exact(void **state)
{
    (void)state;
    mp_queue *q = new_queue(3);
    assert_true(mp_queue_empty(q));
    assert_false(mp_queue_full(q));
    for (uint64_t i = 0; i < 3; i++) {
        assert_int_equal(mp_queue_qsize(q), i);
        put_u64(q, i);
    }
    assert_true(mp_queue_full(q));
    assert_false(mp_queue_empty(q));
    get_u64(q);
    assert_int_equal(mp_queue_qsize(q), 2);
    assert_false(mp_queue_full(q));
    mp_queue_free(q);

    q = new_queue(0);                 /* unbounded is never full */
    for (uint64_t i = 0; i < 100; i++)
        put_u64(q, i);
    assert_false(mp_queue_full(q));
    assert_int_equal(mp_queue_qsize(q), 100);
    mp_queue_free(q);
}

static void test_queue_unbounded_grows_past_its_first_segment(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    unsigned char item[200];
    long n = 100000;                  /* ~21 MB: several segments */
    for (long i = 0; i < n; i++) {
        pattern(item, sizeof item, (unsigned)i);
        TU_OK(mp_queue_put(q, item, sizeof item, 0));
    }
    assert_int_equal(mp_queue_qsize(q), n);
    assert_true(mp__queue_valid(q));
    for (long i = 0; i < n; i++) {
        size_t len;
        TU_OK(mp_queue_get(q, item, sizeof item, &len, 0));
        assert_int_equal(len, sizeof item);
        if (!pattern_ok(item, len, (unsigned)i))
            fail_msg("item %ld torn", i);
    }
    TU_ASSERT_RC(mp_queue_get_nowait(q, item, sizeof item, &(size_t){ 0 }), MP_EEMPTY);
    mp_queue_free(q);
}

/* A producer that runs megabytes ahead moves to a new segment each MiB,
 * and the segments its consumer leaves are kept for the next ones: backlog
 * after backlog, every item arrives whole and in order, and once the queue
 * is freed the arena holds no more than before it. */
static void test_queue_backlogs_reuse_the_segments_they_leave(void **state)
{
    (void)state;
    struct arena_stats start, end;
    assert_true(arena_check(&start));
    mp_queue *q = new_queue(0);
    unsigned char item[200];
    long n = 30000;                   /* ~7 MiB of records: segments of 1 MiB */
    for (unsigned round = 0; round < 5; round++) {
        for (long i = 0; i < n; i++) {
            pattern(item, sizeof item, round * 100000 + (unsigned)i);
            TU_OK(mp_queue_put(q, item, sizeof item, 0));
        }
        assert_true(mp__queue_valid(q));
        for (long i = 0; i < n; i++) {
            size_t len;
            TU_OK(mp_queue_get(q, item, sizeof item, &len, 0));
            assert_int_equal(len, sizeof item);
            if (!pattern_ok(item, len, round * 100000 + (unsigned)i))
                fail_msg("round %u: item %ld torn", round, i);
        }
        assert_true(mp__queue_valid(q));
    }
    mp_queue_free(q);
    assert_true(arena_check(&end));
    assert_int_equal(end.used_bytes, start.used_bytes);
}

/* ------------------------------------------------------------------ errors */

static void test_queue_refuses_bad_arguments_and_handles(void **state)
{
    (void)state;
    char buf[8];
    size_t len;
    mp_buf out = { 0 };
    TU_ASSERT_RC(mp_queue_new(NULL, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_put(NULL, "x", 1, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_get(NULL, buf, sizeof buf, &len, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_get_buf(NULL, &out, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_put_nowait(NULL, "x", 1), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_get_nowait(NULL, buf, sizeof buf, &len), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_task_done(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_join(NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_shutdown(NULL), MP_EINVAL);
    assert_int_equal(mp_queue_qsize(NULL), 0);
    assert_true(mp_queue_empty(NULL));
    assert_false(mp_queue_full(NULL));
    assert_false(mp__queue_valid(NULL));
    mp_queue_free(NULL);

    int not_a_queue[64] = { 0 };
    TU_ASSERT_RC(mp_queue_put((mp_queue *)not_a_queue, "x", 1, 0), MP_EINVAL);

    mp_queue *q = new_queue(0);
    TU_ASSERT_RC(mp_queue_put(q, NULL, 1, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_put(q, "x", 1, NAN), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_get(q, NULL, 8, &len, 0), MP_EINVAL);
    tu_last_error_has("mp_queue_get: buf is NULL but cap is not 0", NULL);
    TU_ASSERT_RC(mp_queue_get(q, buf, sizeof buf, NULL, 0), MP_EINVAL);
    tu_last_error_has("mp_queue_get: len (where the item's size goes) is NULL", NULL);
    TU_ASSERT_RC(mp_queue_get(q, buf, sizeof buf, &len, NAN), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_get_buf(q, NULL, 0), MP_EINVAL);
    tu_last_error_has("mp_queue_get_buf: out is NULL", NULL);
    TU_ASSERT_RC(mp_queue_join(q, NAN), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_put(q, buf, SIZE_MAX, 0), MP_EINVAL);
    /* More than the arena can ever hold: refused before a byte is read. */
    TU_ASSERT_RC(mp_queue_put(q, buf, (size_t)1 << 45, 0), MP_ENOMEM);
    /* A length past the caller's memory is refused, not a fault in the copy
     * (under valgrind, valgrind reports such a range itself). */
    if (!RUNNING_ON_VALGRIND) {
        char *edge = tu_page_before_hole();
        TU_ASSERT_RC(mp_queue_put(q, edge, (size_t)256 << 20, 0), MP_EINVAL);
        tu_last_error_has("mp_queue_put: data..data+268435456 runs past this process's memory", NULL);
        TU_ASSERT_RC(mp_queue_put(q, edge, (size_t)100 << 10, 0), MP_EINVAL);
    }
    assert_true(mp_queue_empty(q));
    mp_queue_free(q);
    /* A freed handle is refused, not used. */
    TU_ASSERT_RC(mp_queue_put(q, "x", 1, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_get(q, buf, sizeof buf, &len, 0), MP_EINVAL);
    mp_queue_free(q);
}

static void test_queue_put_returns_efull_when_bounded(void **state)
{
    (void)state;
    mp_queue *q = new_queue(2);
    put_u64(q, 1);
    put_u64(q, 2);
    uint64_t x = 3;
    TU_ASSERT_RC(mp_queue_put_nowait(q, &x, sizeof x), MP_EFULL);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_queue_put(q, &x, sizeof x, 0.2), MP_EFULL);
    double took = tu_now() - t0;
    assert_true(took >= 0.19);
    assert_true(took < 5 * tu_slow());
    assert_int_equal(mp_queue_qsize(q), 2);
    assert_int_equal(get_u64(q), 1);
    TU_OK(mp_queue_put_nowait(q, &x, sizeof x));
    assert_int_equal(get_u64(q), 2);
    assert_int_equal(get_u64(q), 3);
    mp_queue_free(q);
}

static void test_queue_get_returns_eempty_on_time(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    char buf[8];
    size_t len;
    mp_buf out = { 0 };
    TU_ASSERT_RC(mp_queue_get_nowait(q, buf, sizeof buf, &len), MP_EEMPTY);
    TU_ASSERT_RC(mp_queue_get_buf(q, &out, 0), MP_EEMPTY);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_queue_get(q, buf, sizeof buf, &len, 0.2), MP_EEMPTY);
    double took = tu_now() - t0;
    assert_true(took >= 0.19);
    assert_true(took < 5 * tu_slow());
    mp_queue_free(q);
}

/* ------------------------------------------------------------------ processes */

static int child_puts_then_exits(void *arg)
{
    mp_queue *q = arg;
    unsigned char *big = malloc((size_t)5 << 20);
    pattern(big, (size_t)5 << 20, 9);
    for (uint64_t i = 0; i < 100; i++)
        put_u64(q, i);
    int rc = mp_queue_put(q, big, (size_t)5 << 20, MP_FOREVER);
    free(big);
    _exit(rc == 0 ? 0 : 1);           /* no flushing, no atexit: nothing may be lost */
}

static void test_queue_producer_exit_right_after_put_loses_nothing(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    pid_t pid = tu_fork(child_puts_then_exits, q);
    assert_int_equal(tu_wait(pid, 30), 0);   /* joining the producer never blocks */
    for (uint64_t i = 0; i < 100; i++)
        assert_int_equal(get_u64(q), i);
    mp_buf out = { 0 };
    TU_OK(mp_queue_get_buf(q, &out, 0));
    assert_int_equal(out.len, (size_t)5 << 20);
    assert_true(pattern_ok(out.data, out.len, 9));
    mp_buf_free(&out);
    mp_queue_free(q);
}

static int child_gets_forever(void *arg)
{
    mp_queue *q = arg;
    char buf[8];
    size_t len;
    int rc = mp_queue_get(q, buf, sizeof buf, &len, MP_FOREVER);
    return rc == 0 ? 0 : -rc - 1000;
}

static int child_puts_forever(void *arg)
{
    mp_queue *q = arg;
    int rc = mp_queue_put(q, "x", 1, MP_FOREVER);
    return rc == 0 ? 0 : -rc - 1000;
}

static bool has_sleeper(void *arg)
{
    /* The child is blocked once the kernel shows it sleeping. */
    pid_t pid = *(pid_t *)arg;
    char path[64], st = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    int n = fscanf(f, "%*d %*s %c", &st);
    fclose(f);
    return n == 1 && st == 'S';
}

static void test_queue_bounded_put_blocks_until_a_get(void **state)
{
    (void)state;
    mp_queue *q = new_queue(1);
    put_u64(q, 7);
    pid_t pid = tu_fork(child_puts_forever, q);
    assert_true(tu_wait_for(has_sleeper, &pid, 10));
    assert_int_equal(mp_queue_qsize(q), 1);
    assert_int_equal(get_u64(q), 7);
    assert_int_equal(tu_wait(pid, 10), 0);
    assert_int_equal(mp_queue_qsize(q), 1);
    mp_queue_free(q);
}

static void test_queue_shutdown_fails_puts_and_drains_gets(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    put_u64(q, 1);
    put_u64(q, 2);
    TU_OK(mp_queue_shutdown(q));
    uint64_t x = 3;
    TU_ASSERT_RC(mp_queue_put(q, &x, sizeof x, MP_FOREVER), MP_ECLOSED);
    TU_ASSERT_RC(mp_queue_put_nowait(q, &x, sizeof x), MP_ECLOSED);
    assert_int_equal(get_u64(q), 1);
    assert_int_equal(get_u64(q), 2);
    size_t len;
    TU_ASSERT_RC(mp_queue_get(q, &x, sizeof x, &len, MP_FOREVER), MP_EEOF);
    TU_ASSERT_RC(mp_queue_get_nowait(q, &x, sizeof x, &len), MP_EEOF);
    TU_OK(mp_queue_shutdown(q));       /* twice is harmless */
    mp_queue_free(q);
}

static void test_queue_shutdown_wakes_blocked_getters_and_putters(void **state)
{
    (void)state;
    mp_queue *q = new_queue(1);
    pid_t getter = tu_fork(child_gets_forever, q);
    assert_true(tu_wait_for(has_sleeper, &getter, 10));
    TU_OK(mp_queue_shutdown(q));
    assert_int_equal(tu_wait(getter, 10), -MP_EEOF - 1000);
    mp_queue_free(q);

    q = new_queue(1);
    put_u64(q, 1);
    pid_t putter = tu_fork(child_puts_forever, q);
    assert_true(tu_wait_for(has_sleeper, &putter, 10));
    TU_OK(mp_queue_shutdown(q));
    assert_int_equal(tu_wait(putter, 10), -MP_ECLOSED - 1000);
    mp_queue_free(q);
}

static int spawned_echo(void *arg)
{
    mp_queue *const *qs = arg;          /* {requests, replies}: pointers into the arena */
    mp_buf item = { 0 };
    int rc;
    while ((rc = mp_queue_get_buf(qs[0], &item, 30)) == 0)
        if (mp_queue_put(qs[1], item.data, item.len, 30) != 0)
            return 2;
    mp_buf_free(&item);
    return rc == MP_EEOF ? 0 : 1;
}

static void echo_through_child(mp_start_method method)
{
    mp_queue *qs[2] = { new_queue(0), new_queue(4) };
    mp_process *p;
    TU_OK(mp_process_new(&p, spawned_echo, qs,
                         &(mp_process_opts){ .method = method, .arg_size = sizeof qs }));
    TU_OK(mp_process_start(p));
    size_t sizes[] = { 0, 100, QUEUE_INLINE_MAX * 4 };
    unsigned char *buf = malloc(sizes[2]);
    mp_buf out = { 0 };
    for (unsigned i = 0; i < 3; i++) {
        pattern(buf, sizes[i], i);
        TU_OK(mp_queue_put(qs[0], buf, sizes[i], 0));
        TU_OK(mp_queue_get_buf(qs[1], &out, 30 * tu_slow()));
        assert_int_equal(out.len, sizes[i]);
        assert_true(pattern_ok(out.data, out.len, i));
    }
    TU_OK(mp_queue_shutdown(qs[0]));
    TU_OK(mp_process_join(p, 30 * tu_slow()));
    int code = -1;
    TU_OK(mp_process_exitcode(p, &code));
    assert_int_equal(code, 0);
    mp_process_free(p);
    mp_buf_free(&out);
    free(buf);
    mp_queue_free(qs[0]);
    mp_queue_free(qs[1]);
}

static void test_queue_works_in_fork_spawn_and_forkserver_children(void **state)
{
    (void)state;
    echo_through_child(MP_FORK);
    if (RUNNING_ON_VALGRIND)            /* a re-executed child would be valgrind itself */
        return;
    echo_through_child(MP_SPAWN);
    echo_through_child(MP_FORKSERVER);
}

static void test_queue_waiter_killed_in_its_sleep_blocks_nobody(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    pid_t dead = tu_fork(child_gets_forever, q);
    assert_true(tu_wait_for(has_sleeper, &dead, 10));
    kill(dead, SIGKILL);
    assert_int_equal(tu_wait(dead, 10), -SIGKILL);
    pid_t live = tu_fork(child_gets_forever, q);
    assert_true(tu_wait_for(has_sleeper, &live, 10));
    put_u64(q, 1);
    assert_int_equal(tu_wait(live, 10), 0);
    put_u64(q, 2);                    /* and puts go on as before */
    assert_int_equal(get_u64(q), 2);
    mp_queue_free(q);
}

/* ------------------------------------------------------------------ joining */

static int child_consumes_and_marks_done(void *arg)
{
    mp_queue *q = arg;
    for (int i = 0; i < 5; i++) {
        get_u64(q);
        if (mp_queue_task_done(q) != 0)
            return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ no lost wake-up */

struct pingpong { mp_queue *ping, *pong; long rounds; };

/* Pauses a random 0-400 µs, long enough for the peer's spin to give up, so
 * most hand-offs go through a sleep and a wake-up. */
static void nap(unsigned *seed)
{
    usleep((useconds_t)(rand_r(seed) % 400));
}

static int pong_side(void *arg)
{
    struct pingpong *pp = arg;
    unsigned seed = 7;
    for (long i = 0; i < pp->rounds; i++) {
        uint64_t x;
        size_t len;
        if (mp_queue_get(pp->ping, &x, sizeof x, &len, 10) != 0 || x != (uint64_t)i)
            return 1;
        nap(&seed);
        if (mp_queue_put(pp->pong, &x, sizeof x, 10) != 0)
            return 2;
    }
    return 0;
}

/* Waiters sleep on empty (ping, pong) and full (ping is bounded at one)
 * queues thousands of times; every get and put has a 10 s timeout, so a
 * wake-up lost by the lock-ordered flags fails here instead of hanging. */
static void test_queue_sleepers_are_always_woken(void **state)
{
    (void)state;
    struct pingpong *pp = mp_shared_alloc(sizeof *pp);
    pp->ping = new_queue(1);
    pp->pong = new_queue(0);
    pp->rounds = (long)(3000 / tu_slow());
    pid_t pid = tu_fork(pong_side, pp);
    unsigned seed = 11;
    for (long i = 0; i < pp->rounds; i++) {
        uint64_t x = (uint64_t)i, y;
        size_t len;
        TU_OK(mp_queue_put(pp->ping, &x, sizeof x, 10));
        if (i % 2)
            nap(&seed);
        TU_OK(mp_queue_get(pp->pong, &y, sizeof y, &len, 10));
        assert_int_equal(y, x);
    }
    assert_int_equal(tu_wait(pid, 30), 0);
    mp_queue_free(pp->ping);
    mp_queue_free(pp->pong);
    mp_shared_free(pp);
}

static void test_queue_join_waits_until_every_item_is_done(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    TU_OK(mp_queue_join(q, 0));         /* nothing put: nothing to wait for */
    for (uint64_t i = 0; i < 5; i++)
        put_u64(q, i);
    TU_ASSERT_RC(mp_queue_join(q, 0), MP_ETIMEDOUT);
    TU_ASSERT_RC(mp_queue_join(q, 0.05), MP_ETIMEDOUT);
    pid_t pid = tu_fork(child_consumes_and_marks_done, q);
    TU_OK(mp_queue_join(q, 30 * tu_slow()));
    assert_int_equal(tu_wait(pid, 10), 0);
    assert_true(mp_queue_empty(q));
    mp_queue_free(q);
}

static void test_queue_task_done_more_than_got_returns_einval(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    TU_ASSERT_RC(mp_queue_task_done(q), MP_EINVAL);
    put_u64(q, 1);
    put_u64(q, 2);
    TU_ASSERT_RC(mp_queue_task_done(q), MP_EINVAL);   /* put, but not got */
    get_u64(q);
    TU_OK(mp_queue_task_done(q));
    TU_ASSERT_RC(mp_queue_task_done(q), MP_EINVAL);
    TU_ASSERT_RC(mp_queue_join(q, 0), MP_ETIMEDOUT);  /* item 2 is not done */
    get_u64(q);
    TU_OK(mp_queue_task_done(q));
    TU_OK(mp_queue_join(q, 0));
    mp_queue_free(q);
}

/* ------------------------------------------------------------------ many to many */

enum { P = 4, C = 4 };

struct tally { uint64_t count, sum, xor_hash; int rc; };

struct mm { mp_queue *q; long per; struct tally t[C]; };

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    return x ^ (x >> 33);
}

static int mm_consumer(struct mm *m, int c)
{
    uint64_t x;
    size_t len;
    int rc;
    while ((rc = mp_queue_get(m->q, &x, sizeof x, &len, MP_FOREVER)) == 0) {
        m->t[c].count++;
        m->t[c].sum += x;
        m->t[c].xor_hash ^= mix(x);
    }
    return rc == MP_EEOF ? 0 : 1;
}

static int mm_producer(struct mm *m, int p)
{
    for (long i = 0; i < m->per; i++) {
        uint64_t x = (uint64_t)p * (uint64_t)m->per + (uint64_t)i + 1;
        if (mp_queue_put(m->q, &x, sizeof x, MP_FOREVER) != 0)
            return 1;
    }
    return 0;
}

static int mm_child_index;
static int mm_consumer_child(void *arg) { return mm_consumer(arg, mm_child_index); }
static int mm_producer_child(void *arg) { return mm_producer(arg, mm_child_index); }

static void mm_check(struct mm *m)
{
    uint64_t n = (uint64_t)P * (uint64_t)m->per, count = 0, sum = 0, h = 0, want = 0;
    for (int c = 0; c < C; c++) {
        count += m->t[c].count;
        sum += m->t[c].sum;
        h ^= m->t[c].xor_hash;
    }
    for (uint64_t x = 1; x <= n; x++)
        want ^= mix(x);
    assert_int_equal(count, n);
    assert_int_equal(sum, n * (n + 1) / 2);
    assert_int_equal(h, want);
}

/* P producer and C consumer processes; consumers end on shutdown. */
static void run_many_to_many(size_t maxsize, long per)
{
    struct mm *m = mp_shared_alloc(sizeof *m);
    m->q = new_queue(maxsize);
    m->per = per;
    pid_t cons[C], prod[P];
    for (int c = 0; c < C; c++) {
        mm_child_index = c;
        cons[c] = tu_fork(mm_consumer_child, m);
    }
    for (int p = 0; p < P; p++) {
        mm_child_index = p;
        prod[p] = tu_fork(mm_producer_child, m);
    }
    for (int p = 0; p < P; p++)
        assert_int_equal(tu_wait(prod[p], 120), 0);
    TU_OK(mp_queue_shutdown(m->q));
    for (int c = 0; c < C; c++)
        assert_int_equal(tu_wait(cons[c], 60), 0);
    mm_check(m);
    mp_queue_free(m->q);
    mp_shared_free(m);
}

static void test_queue_4x4_processes_lose_and_duplicate_nothing(void **state)
{
    (void)state;
    run_many_to_many(0, (long)(250000 / tu_slow()));
}

static void test_queue_bounded_4x4_loses_and_duplicates_nothing(void **state)
{
    (void)state;
    run_many_to_many(16, (long)(20000 / tu_slow()));
}

struct thread_arg { struct mm *m; int i; };

static void *thread_consumer(void *arg)
{
    struct thread_arg *a = arg;
    a->m->t[a->i].rc = mm_consumer(a->m, a->i);
    return NULL;
}

static void *thread_producer(void *arg)
{
    struct thread_arg *a = arg;
    a->m->t[a->i].rc |= mm_producer(a->m, a->i) << 1;
    return NULL;
}

static void test_queue_works_between_threads(void **state)
{
    (void)state;
    struct mm *m = calloc(1, sizeof *m);
    m->q = new_queue(8);
    m->per = (long)(20000 / tu_slow());
    pthread_t cons[C], prod[P];
    struct thread_arg ca[C], pa[P];
    for (int c = 0; c < C; c++) {
        ca[c] = (struct thread_arg){ m, c };
        assert_int_equal(pthread_create(&cons[c], NULL, thread_consumer, &ca[c]), 0);
    }
    for (int p = 0; p < P; p++) {
        pa[p] = (struct thread_arg){ m, p };
        assert_int_equal(pthread_create(&prod[p], NULL, thread_producer, &pa[p]), 0);
    }
    for (int p = 0; p < P; p++)
        pthread_join(prod[p], NULL);
    TU_OK(mp_queue_shutdown(m->q));
    for (int c = 0; c < C; c++)
        pthread_join(cons[c], NULL);
    for (int c = 0; c < C; c++)
        assert_int_equal(m->t[c].rc, 0);
    mm_check(m);
    mp_queue_free(m->q);
    free(m);
}

/* ------------------------------------------------------------------ kill -9 mid-operation */

static const char *kill_point;
static unsigned kill_countdown;        /* how many passes of the point to survive */
static mp_queue *kill_queue;           /* with kill_side_lent: the queue, and */
static bool kill_put_side;             /* which side's lock must be lent to the */
static bool kill_side_lent;            /* victim when it dies */

static void kill_at_point(const char *point)
{
    if (strcmp(point, kill_point) != 0 || kill_countdown-- != 0)
        return;
    if (kill_side_lent && !mp__queue_lent(kill_queue, kill_put_side))
        _exit(7);                      /* not a borrower: the test would prove nothing */
    raise(SIGKILL);
}

struct kill_job { mp_queue *q; size_t size; uint64_t first, count; };

static void make_item(unsigned char *p, size_t size, uint64_t x)
{
    pattern(p, size, (unsigned)x);
    memcpy(p, &x, sizeof x);
}

static int child_puts_until_killed(void *arg)
{
    struct kill_job *k = arg;
    unsigned char *item = malloc(k->size);
    mp__queue_test_hook = kill_at_point;
    for (uint64_t x = k->first; x < k->first + k->count; x++) {
        make_item(item, k->size, x);
        mp_queue_put(k->q, item, k->size, MP_FOREVER);
    }
    free(item);
    return 0;                          /* not reached: killed inside a put */
}

static int child_gets_until_killed(void *arg)
{
    struct kill_job *k = arg;
    mp_buf out = { 0 };
    mp__queue_test_hook = kill_at_point;
    while (mp_queue_get_buf(k->q, &out, MP_FOREVER) == 0)
        ;
    mp_buf_free(&out);
    return 1;                          /* not reached: killed inside a get */
}

/* Puts items first..first+count-1 from this process. */
static void put_items(mp_queue *q, size_t size, uint64_t first, uint64_t count)
{
    unsigned char *item = malloc(size);
    for (uint64_t x = first; x < first + count; x++) {
        make_item(item, size, x);
        TU_OK(mp_queue_put(q, item, size, MP_FOREVER));
    }
    free(item);
}

/* Gets every remaining item: each must be whole, and arrive once, in order. */
static void expect_items(mp_queue *q, size_t size, const uint64_t *want, size_t n)
{
    mp_buf out = { 0 };
    for (size_t i = 0; i < n; i++) {
        TU_OK(mp_queue_get_buf(q, &out, 5 * tu_slow()));
        assert_int_equal(out.len, size);
        uint64_t x;
        memcpy(&x, out.data, sizeof x);
        assert_int_equal(x, want[i]);
        unsigned char *p = out.data;
        pattern(p, 8, (unsigned)x);    /* the id overwrote the first bytes */
        assert_true(pattern_ok(p, size, (unsigned)x));
    }
    size_t len;
    TU_ASSERT_RC(mp_queue_get_nowait(q, NULL, 0, &len), MP_EEMPTY);
    mp_buf_free(&out);
}

/* Items first, first + 1, ... n of them, into want; the new n. */
static size_t run_of(uint64_t *want, size_t n, uint64_t first, uint64_t count)
{
    for (uint64_t x = first; x < first + count; x++)
        want[n++] = x;
    return n;
}

/* A producer child puts items 10, 11, ...: survive of them go through, the
 * next is cut at point. With survive in the thousands the child holds the
 * producers' lock as its borrower when it dies (checked). */
static void kill_inside_put(const char *point, size_t size, bool delivered, unsigned survive)
{
    mp_queue *q = new_queue(0);
    put_items(q, size, 1, 3);
    kill_point = point;
    kill_countdown = survive;
    kill_queue = q;
    kill_put_side = true;
    kill_side_lent = survive >= 2000 && tlock_lending();
    struct kill_job k = { q, size, 10, survive + 3 };
    pid_t pid = tu_fork(child_puts_until_killed, &k);
    kill_side_lent = false;
    assert_int_equal(tu_wait(pid, 30 * tu_slow()), -SIGKILL);
    assert_true(mp__queue_valid(q));   /* repairs, then finds the structure whole */
    put_items(q, size, 1000000, 3);
    uint64_t *want = malloc((survive + 8) * sizeof *want);
    size_t n = run_of(want, 0, 1, 3);
    n = run_of(want, n, 10, survive + (delivered ? 1 : 0));
    n = run_of(want, n, 1000000, 3);
    expect_items(q, size, want, n);
    free(want);
    put_items(q, size, 30, 1);         /* and the queue keeps working */
    expect_items(q, size, (uint64_t[]){ 30 }, 1);
    mp_queue_free(q);
}

/* A consumer child gets items 1, 2, ...: survive of them, and is cut at
 * point getting the next. */
static void kill_inside_get(const char *point, size_t size, bool consumed, unsigned survive)
{
    mp_queue *q = new_queue(0);
    put_items(q, size, 1, survive + 4);
    kill_point = point;
    kill_countdown = survive;
    kill_queue = q;
    kill_put_side = false;
    kill_side_lent = survive >= 2000 && tlock_lending();
    struct kill_job k = { q, size, 0, 0 };
    pid_t pid = tu_fork(child_gets_until_killed, &k);
    kill_side_lent = false;
    assert_int_equal(tu_wait(pid, 30 * tu_slow()), -SIGKILL);
    assert_true(mp__queue_valid(q));
    put_items(q, size, 1000000, 1);
    uint64_t *want = malloc((survive + 8) * sizeof *want);
    uint64_t cut = survive + 1;
    size_t n = run_of(want, 0, consumed ? cut + 1 : cut, consumed ? 3 : 4);
    n = run_of(want, n, 1000000, 1);
    expect_items(q, size, want, n);
    free(want);
    mp_queue_free(q);
}

/* ------------------------------------------------------------------ big items in hand */

static size_t used_now(void)
{
    struct arena_stats st;
    assert_true(arena_check(&st));
    return st.used_bytes;
}

struct big_put { mp_queue *q; const char *point; size_t size; };

static int child_puts_one_big_item(void *arg)
{
    struct big_put *b = arg;
    kill_point = b->point ? b->point : "";
    kill_countdown = 0;
    mp__queue_test_hook = kill_at_point;
    unsigned char *item = malloc(b->size);
    make_item(item, b->size, 77);
    mp_queue_put(b->q, item, b->size, MP_FOREVER);
    return 3;                          /* not reached: killed inside the put */
}

static bool arena_grew_by(void *arg)
{
    const size_t *at_least = arg;
    return used_now() >= at_least[0] + at_least[1];
}

/* A producer process killed while it holds a big item it has not queued
 * yet (point NULL: waiting for room in a full queue; else at that point)
 * leaves no block behind: its reaper frees what it held. Killed after the
 * commit, the item is queued, whole, and its block goes when it is got.
 * Before, each such death kept a block as big as the item for good. */
static void big_item_of_a_killed_producer(const char *point, bool delivered)
{
    size_t size = (size_t)4 << 20;
    mp_queue *q = new_queue(point ? 0 : 1);
    if (!point)
        put_u64(q, 1);                 /* full: the big put waits for room */
    size_t before = used_now();
    struct big_put b = { q, point, size };
    mp_process *p = tu_start_fork(child_puts_one_big_item, &b, 0);
    if (!point) {
        size_t grown[2] = { before, size };
        assert_true(tu_wait_for(arena_grew_by, grown, 30));
        TU_OK(mp_process_kill(p));
    }
    assert_int_equal(tu_join_free(p, 30), -SIGKILL);
    if (!point)
        assert_int_equal(get_u64(q), 1);
    if (delivered)
        expect_items(q, size, (uint64_t[]){ 77 }, 1);
    size_t after = used_now();
    print_message("%s: %zu bytes in use before, %zu after\n", point ? point : "waiting", before,
                  after);
    assert_int_equal(after, before);
    mp_queue_free(q);
}

static int returns_zero(void *arg)
{
    (void)arg;
    return 0;
}

/* The same for a new segment: a producer killed as soon as it took one,
 * before its pages are reserved and it is linked, leaves it to its reaper,
 * and every item it committed before is there. */
static void die_now(const char *point)
{
    if (strcmp(point, "alloc_taken") == 0)
        raise(SIGKILL);
}

static int child_puts_until_a_new_segment(void *arg)
{
    mp_queue *q = arg;
    mp__arena_test_hook = die_now;
    for (uint64_t x = 0;; x++)
        if (mp_queue_put(q, &x, sizeof x, MP_FOREVER) != 0)
            return 2;
}

static void new_segment_of_a_killed_producer(void)
{
    mp_queue *q = new_queue(0);
    size_t before = used_now();
    assert_int_equal(tu_join_free(tu_start_fork(child_puts_until_a_new_segment, q, 0), 30),
                     -SIGKILL);
    assert_true(mp__queue_valid(q));
    size_t after = used_now();
    print_message("new segment: %zu bytes in use before, %zu after\n", before, after);
    assert_int_equal(after, before);
    uint64_t n = 0;
    size_t len;
    for (uint64_t x; mp_queue_get_nowait(q, &x, sizeof x, &len) == 0; n++)
        assert_int_equal(x, n);
    assert_true(n > 1000);             /* the first segment's worth */
    put_u64(q, 5);                     /* and the queue goes on */
    assert_int_equal(get_u64(q), 5);
    mp_queue_free(q);
}

static void test_queue_big_item_of_a_killed_producer_is_freed_or_delivered(void **state)
{
    (void)state;
    /* this process's own record is made once, here */
    assert_int_equal(tu_join_free(tu_start_fork(returns_zero, NULL, 0), 30), 0);
    big_item_of_a_killed_producer(NULL, false);
    big_item_of_a_killed_producer("put_written", false);
    big_item_of_a_killed_producer("put_committed", true);
    new_segment_of_a_killed_producer();
}

/* A consumer killed after it got a big item (the commit), before it freed
 * the item's block: the block is in its hand from the commit on, so its
 * reaper frees it. Before, it was kept for the family's life: a kill storm
 * of consumers of 2 MiB items leaked a block every 30 to 60 kills. */
static int child_gets_one_big_item(void *arg)
{
    mp_queue *q = arg;
    kill_point = "get_committed";
    kill_countdown = 0;
    mp__queue_test_hook = kill_at_point;
    mp_buf b = { 0 };
    mp_queue_get_buf(q, &b, MP_FOREVER);
    return 3;                          /* not reached: killed inside the get */
}

static void test_queue_big_item_of_a_killed_consumer_is_freed(void **state)
{
    (void)state;
    /* this process's own record is made once, here */
    assert_int_equal(tu_join_free(tu_start_fork(returns_zero, NULL, 0), 30), 0);
    mp_queue *q = new_queue(0);
    put_u64(q, 1);                     /* the first segment exists already */
    assert_int_equal(get_u64(q), 1);
    size_t before = used_now(), size = (size_t)2 << 20;
    unsigned char *item = malloc(size);
    make_item(item, size, 79);
    TU_OK(mp_queue_put(q, item, size, MP_FOREVER));
    free(item);
    assert_int_equal(tu_join_free(tu_start_fork(child_gets_one_big_item, q, 0), 30), -SIGKILL);
    assert_true(mp__queue_valid(q));
    size_t after = used_now();
    print_message("killed consumer: %zu bytes in use before, %zu after\n", before, after);
    assert_int_equal(after, before);
    mp_queue_free(q);
}

/* A producer killed inside the allocator while it takes its big item: just
 * before the allocation's journal is committed (nothing taken), and at each
 * point after (the block is then taken for good, as a repair rolls the
 * journal forward; at alloc_committed its address is not in the hand yet,
 * and the repair puts it there). Each leaves the block to the reaper.
 * Before, this window (the list updates and header writes after the commit,
 * which fault in fresh pages) kept the item's block: a spawned producer
 * killed at random while it put items of up to 8 MiB leaked one every 20 to
 * 30 kills. */
static const char *alloc_kill_point;

static void die_at_alloc_point(const char *point)
{
    if (strcmp(point, alloc_kill_point) == 0)
        raise(SIGKILL);
}

struct alloc_put { mp_queue *q; const char *point; };

static int child_puts_a_big_item_and_dies_in_the_allocator(void *arg)
{
    struct alloc_put *a = arg;
    size_t size = (size_t)1 << 20;
    unsigned char *item = malloc(size);
    make_item(item, size, 78);
    alloc_kill_point = a->point;
    mp__arena_test_hook = die_at_alloc_point;
    mp_queue_put(a->q, item, size, MP_FOREVER);
    return 3;                          /* not reached */
}

static int child_gets_one_big_item_and_dies_freeing_it(void *arg)
{
    mp_queue *q = arg;
    mp__arena_test_hook = die_at_alloc_point;   /* alloc_kill_point: a free's point */
    mp_buf b = { 0 };
    mp_queue_get_buf(q, &b, MP_FOREVER);
    return 3;                          /* not reached: killed inside the free */
}

/* A consumer killed inside the arena's free of the big item it got, at
 * each point: before the free's commit the block is still its own, named
 * in its hand, and the reaper frees it; from the commit on the free rolls
 * forward and takes the block out of the hand, so the reaper frees nothing
 * twice. Before, the hand let go of the block before the free took the
 * arena's lock (a wait behind other processes' allocations): a consumer
 * killed in that wait kept the block, one per 100-200 consumer kills in a
 * storm of big items. */
static void test_queue_big_item_freed_by_a_consumer_killed_in_the_free_is_freed_once(void **state)
{
    (void)state;
    assert_int_equal(tu_join_free(tu_start_fork(returns_zero, NULL, 0), 30), 0);
    static const char *points[] = { "free_planned", "free_committed", "free_unlinked",
                                    "free_applied", "free_linked" };
    size_t size = (size_t)2 << 20;
    unsigned char *item = malloc(size);
    make_item(item, size, 80);
    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++) {
        mp_queue *q = new_queue(0);
        put_u64(q, 1);                 /* the first segment exists already */
        assert_int_equal(get_u64(q), 1);
        size_t before = used_now();
        TU_OK(mp_queue_put(q, item, size, MP_FOREVER));
        alloc_kill_point = points[i];
        assert_int_equal(tu_join_free(tu_start_fork(child_gets_one_big_item_and_dies_freeing_it,
                                                    q, 0), 30), -SIGKILL);
        assert_true(mp__queue_valid(q));
        size_t after = used_now();
        print_message("%s: %zu bytes in use before, %zu after\n", points[i], before, after);
        assert_int_equal(after, before);
        mp_queue_free(q);
    }
    free(item);
}

static void test_queue_big_item_taken_by_a_producer_killed_in_the_allocator_is_freed(void **state)
{
    (void)state;
    static const char *points[] = { "alloc_planned", "alloc_committed", "alloc_unlinked",
                                    "alloc_applied", "alloc_linked" };
    assert_int_equal(tu_join_free(tu_start_fork(returns_zero, NULL, 0), 30), 0);
    mp_queue *q = new_queue(0);
    for (size_t i = 0; i < sizeof points / sizeof *points; i++) {
        size_t before = used_now();
        struct alloc_put a = { q, points[i] };
        mp_process *p = tu_start_fork(child_puts_a_big_item_and_dies_in_the_allocator, &a, 0);
        assert_int_equal(tu_join_free(p, 30), -SIGKILL);
        size_t after = used_now();
        print_message("killed at %s: %zu bytes in use before, %zu after\n", points[i], before,
                      after);
        assert_int_equal(after, before);
        assert_true(mp_queue_empty(q));
    }
    put_u64(q, 6);                     /* and the queue goes on */
    assert_int_equal(get_u64(q), 6);
    mp_queue_free(q);
}

static void test_queue_kill_before_put_commit_drops_only_that_item(void **state)
{
    (void)state;
    kill_inside_put("put_written", 100, false, 2);
    kill_inside_put("put_written", 100, false, 3000);
    kill_inside_put("put_written", QUEUE_INLINE_MAX * 3, false, 2);
}

static void test_queue_kill_after_put_commit_delivers_the_item_once(void **state)
{
    (void)state;
    kill_inside_put("put_committed", 100, true, 2);
    kill_inside_put("put_committed", 100, true, 3000);
    kill_inside_put("put_committed", QUEUE_INLINE_MAX * 3, true, 2);
    kill_inside_put("put_counted", 100, true, 2);
    kill_inside_put("put_counted", 100, true, 3000);
}

static void test_queue_kill_before_get_commit_leaves_the_item_queued(void **state)
{
    (void)state;
    kill_inside_get("get_copied", 100, false, 2);
    kill_inside_get("get_copied", 100, false, 3000);
    kill_inside_get("get_copied", QUEUE_INLINE_MAX * 3, false, 2);
}

static void test_queue_kill_after_get_commit_never_duplicates(void **state)
{
    (void)state;
    kill_inside_get("get_committed", 100, true, 2);
    kill_inside_get("get_committed", 100, true, 3000);
    kill_inside_get("get_committed", QUEUE_INLINE_MAX * 3, true, 2);
    kill_inside_get("get_cleared", 100, true, 2);
    kill_inside_get("get_cleared", 100, true, 3000);
}

/* Two deaths at once: a producer killed after its commit, before it moved
 * its tail, and the consumer that took that very item killed after it
 * cleared the item's header, before it moved its head. The next producer's
 * repair finds neither a header at the tail nor the head past it, and must
 * still know the item was put (it was counted by its consumer): taken for
 * never put, its place would be written over, and the consumers' repair
 * would then skip the new item that sits there. */
static void test_queue_repair_after_two_deaths_keeps_the_next_item(void **state)
{
    (void)state;
    for (size_t size = 100; size <= 300; size += 200) {   /* the next item the same size, or not */
        mp_queue *q = new_queue(0);
        put_items(q, size, 1, 3);
        kill_point = "put_committed";
        kill_countdown = 0;
        struct kill_job k = { q, size, 10, 1 };
        assert_int_equal(tu_wait(tu_fork(child_puts_until_killed, &k), 30 * tu_slow()), -SIGKILL);
        kill_point = "get_cleared";
        kill_countdown = 3;                /* items 1, 2 and 3 go through; 10 is cut */
        assert_int_equal(tu_wait(tu_fork(child_gets_until_killed, &k), 30 * tu_slow()), -SIGKILL);
        put_items(q, 100, 1000000, 2);     /* the producers' repair comes first */
        assert_true(mp__queue_valid(q));
        expect_items(q, 100, (uint64_t[]){ 1000000, 1000001 }, 2);
        mp_queue_free(q);
    }
}

/* The same with a live consumer: it took the dead producer's item, cleared
 * its header and stands still, its head not moved yet, while the next
 * producer repairs. Then it goes on and returns the item. */
struct paused_get { mp_queue *q; _Atomic int at_point, go; _Atomic uint64_t got; };
static struct paused_get *paused;

static void pause_at_point(const char *point)
{
    if (strcmp(point, "get_cleared") != 0)
        return;
    atomic_store(&paused->at_point, 1);
    while (!atomic_load(&paused->go))
        usleep(1000);
}

static int child_gets_one_pausing(void *arg)
{
    struct paused_get *p = arg;
    uint64_t x = 0;
    size_t len;
    mp__queue_test_hook = pause_at_point;
    int rc = mp_queue_get(p->q, &x, sizeof x, &len, 30);
    atomic_store(&p->got, x);
    return rc == 0 ? 0 : 1;
}

static bool consumer_paused(void *arg)
{
    return atomic_load(&((struct paused_get *)arg)->at_point) != 0;
}

static void test_queue_repair_beside_a_paused_consumer_keeps_the_next_item(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    kill_point = "put_committed";
    kill_countdown = 0;
    struct kill_job k = { q, sizeof(uint64_t), 10, 1 };
    assert_int_equal(tu_wait(tu_fork(child_puts_until_killed, &k), 30 * tu_slow()), -SIGKILL);
    paused = mp_shared_alloc(sizeof *paused);
    assert_non_null(paused);
    paused->q = q;
    pid_t consumer = tu_fork(child_gets_one_pausing, paused);
    assert_true(tu_wait_for(consumer_paused, paused, 10 * tu_slow()));
    put_u64(q, 1000000);                      /* repairs beside it */
    atomic_store(&paused->go, 1);
    assert_int_equal(tu_wait(consumer, 30 * tu_slow()), 0);
    assert_int_equal(atomic_load(&paused->got), 10);
    assert_true(mp__queue_valid(q));
    uint64_t x = 0;
    size_t len;
    TU_OK(mp_queue_get(q, &x, sizeof x, &len, 5 * tu_slow()));
    assert_int_equal(x, 1000000);
    TU_ASSERT_RC(mp_queue_get_nowait(q, &x, sizeof x, &len), MP_EEMPTY);
    mp_shared_free(paused);
    mp_queue_free(q);
}

/* A process killed after its commit and before its wake-up call wakes
 * nobody; the sleeper on the other side must find the commit anyway. */
struct sleeper { mp_queue *q; _Atomic int rc; _Atomic bool done; };

static void *sleep_in_get(void *arg)
{
    struct sleeper *s = arg;
    char b[16];
    size_t len;
    atomic_store(&s->rc, mp_queue_get(s->q, b, sizeof b, &len, MP_FOREVER));
    atomic_store(&s->done, true);
    return NULL;
}

static void *sleep_in_put(void *arg)
{
    struct sleeper *s = arg;
    atomic_store(&s->rc, mp_queue_put(s->q, "b", 1, MP_FOREVER));
    atomic_store(&s->done, true);
    return NULL;
}

static bool sleeper_done(void *arg)
{
    return atomic_load(&((struct sleeper *)arg)->done);
}

static int child_puts_one(void *arg)
{
    mp__queue_test_hook = kill_at_point;
    mp_queue_put(arg, "a", 1, MP_FOREVER);
    return 0;
}

static int child_gets_one(void *arg)
{
    char b[16];
    size_t len;
    mp__queue_test_hook = kill_at_point;
    mp_queue_get(arg, b, sizeof b, &len, MP_FOREVER);
    return 0;
}

static void sleeper_sees_a_dead_committer(bool getter)
{
    struct sleeper s = { .q = new_queue(1) };
    if (!getter)
        TU_OK(mp_queue_put(s.q, "a", 1, 0));          /* full: the putter sleeps */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, getter ? sleep_in_get : sleep_in_put, &s), 0);
    assert_true(tu_wait_threads_asleep(10));          /* past its spin, asleep */
    kill_point = getter ? "put_committed" : "get_committed";
    kill_countdown = 0;
    pid_t pid = tu_fork(getter ? child_puts_one : child_gets_one, s.q);
    assert_int_equal(tu_wait(pid, 10), -SIGKILL);
    assert_true(tu_wait_for(sleeper_done, &s, 3 * tu_slow()));
    pthread_join(t, NULL);
    TU_OK(atomic_load(&s.rc));
    assert_true(mp__queue_valid(s.q));
    assert_int_equal(mp_queue_qsize(s.q), getter ? 0 : 1);
    mp_queue_free(s.q);
}

static void test_queue_getter_sees_an_item_whose_producer_died_before_waking_it(void **state)
{
    (void)state;
    sleeper_sees_a_dead_committer(true);
}

static void test_queue_putter_sees_room_whose_consumer_died_before_waking_it(void **state)
{
    (void)state;
    sleeper_sees_a_dead_committer(false);
}

/* A consumer slow inside its get (a long copy, a preemption) keeps its
 * lock even against a waiter that cannot look it up in /proc: each item
 * is still got once. */
static unsigned slow_once;
static _Atomic int *slow_inside;       /* shared: the slow consumer is in its copy */

static void slow_at_copy(const char *point)
{
    if (strcmp(point, "get_copied") == 0 && slow_once++ == 0) {
        atomic_store(slow_inside, 1);
        usleep(300000);
    }
}

static bool is_inside(void *arg)
{
    (void)arg;
    return atomic_load(slow_inside) != 0;
}

static int child_gets_slowly(void *arg)
{
    uint64_t x;
    size_t len;
    mp__queue_test_hook = slow_at_copy;
    int rc = mp_queue_get(arg, &x, sizeof x, &len, MP_FOREVER);
    return rc == 0 && x == 1 ? 0 : 1;
}

static int get_at_emfile(void *arg)
{
    if (!tu_exhaust_fds())
        return 10;
    uint64_t x;
    size_t len;
    int rc = mp_queue_get(arg, &x, sizeof x, &len, MP_FOREVER);
    return rc == 0 && x == 2 ? 0 : 1;
}

static void test_queue_slow_consumer_keeps_its_lock_from_a_waiter_blind_to_proc(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    for (uint64_t x = 1; x <= 3; x++)
        put_u64(q, x);
    slow_inside = mp_shared_alloc(sizeof *slow_inside);
    assert_non_null(slow_inside);
    pid_t slow = tu_fork(child_gets_slowly, q);
    assert_true(tu_wait_for(is_inside, NULL, 10));
    pid_t blind = tu_fork(get_at_emfile, q);
    assert_int_equal(tu_wait(slow, 10), 0);
    assert_int_equal(tu_wait(blind, 10), 0);
    assert_true(mp__queue_valid(q));
    assert_int_equal(mp_queue_qsize(q), 1);
    uint64_t x;
    size_t len;
    TU_OK(mp_queue_get(q, &x, sizeof x, &len, 0));
    assert_int_equal(x, 3);
    mp_shared_free((void *)slow_inside);
    mp_queue_free(q);
}

/* ------------------------------------------------------------------ a kill -9 storm */

/* Producers and consumers are SIGKILLed wherever they happen to be, and
 * replaced, many times over. Each producer incarnation puts (incarnation,
 * seq) items and records how many puts returned; consumers count every item
 * they get. At the end: no item twice, none torn, each incarnation's items a
 * prefix of its sequence (plus perhaps the put in flight), and no more items
 * missing than consumers killed. Consumers mark every item done, so join
 * then returns at once, reporting at most one lost item per consumer killed. */
enum { STORM_INCARNATIONS = 64, STORM_SEQ = 1 << 15 };

struct storm {
    mp_queue *q;
    _Atomic uint32_t returned[STORM_INCARNATIONS];
    _Atomic uint8_t seen[STORM_INCARNATIONS][STORM_SEQ];
    _Atomic uint32_t torn;
};

static int storm_incarnation;

static size_t storm_size(uint32_t seq)
{
    return seq % 16 == 15 ? QUEUE_INLINE_MAX + 5000 : 64;   /* some go out of line */
}

static int storm_producer(void *arg)
{
    struct storm *st = arg;
    int inc = storm_incarnation;
    unsigned char *item = malloc(QUEUE_INLINE_MAX + 5000);
    for (uint32_t seq = 0; seq < STORM_SEQ; seq++) {
        uint64_t id = (uint64_t)inc << 32 | seq;
        make_item(item, storm_size(seq), id);
        if (mp_queue_put(st->q, item, storm_size(seq), MP_FOREVER) != 0)
            break;
        atomic_store(&st->returned[inc], seq + 1);
    }
    free(item);
    return 0;
}

static int storm_consumer(void *arg)
{
    struct storm *st = arg;
    mp_buf out = { 0 };
    int rc;
    while ((rc = mp_queue_get_buf(st->q, &out, MP_FOREVER)) == 0) {
        uint64_t id;
        memcpy(&id, out.data, sizeof id);
        uint32_t inc = (uint32_t)(id >> 32), seq = (uint32_t)id;
        unsigned char *p = out.data;
        pattern(p, 8, (unsigned)id);
        if (inc >= STORM_INCARNATIONS || seq >= STORM_SEQ || out.len != storm_size(seq) ||
            !pattern_ok(p, out.len, (unsigned)id)) {
            atomic_fetch_add(&st->torn, 1);
            continue;
        }
        atomic_fetch_add(&st->seen[inc][seq], 1);
        if (mp_queue_task_done(st->q) != 0)
            atomic_fetch_add(&st->torn, 1);
    }
    mp_buf_free(&out);
    return rc == MP_EEOF ? 0 : 1;
}

static pid_t storm_start(struct storm *st, bool producer, int *incarnations)
{
    if (producer)
        storm_incarnation = (*incarnations)++;
    return tu_fork(producer ? storm_producer : storm_consumer, st);
}

static void storm_check(struct storm *st, int incarnations, int consumers_killed)
{
    assert_int_equal(atomic_load(&st->torn), 0);
    long missing = 0, delivered = 0;
    for (int inc = 0; inc < incarnations; inc++) {
        uint32_t r = atomic_load(&st->returned[inc]);
        for (uint32_t seq = 0; seq < STORM_SEQ; seq++) {
            uint8_t n = atomic_load(&st->seen[inc][seq]);
            if (n > 1)
                fail_msg("item %d/%u delivered %u times", inc, seq, n);
            if (seq > r && n)
                fail_msg("item %d/%u delivered, but its put never began", inc, seq);
            missing += seq < r && !n;
            delivered += n;
        }
    }
    print_message("storm: %d producers started, %d consumers killed, %ld items delivered, "
                  "%ld lost with them\n", incarnations, consumers_killed, delivered, missing);
    if (missing > consumers_killed)
        fail_msg("%ld items lost, but only %d consumers were killed", missing, consumers_killed);
}

static void test_queue_kill9_storm_loses_only_what_the_dead_held(void **state)
{
    (void)state;
    struct storm *st = mp_shared_alloc(sizeof *st);
    assert_non_null(st);
    st->q = new_queue(64);
    int incarnations = 0, consumers_killed = 0, rounds = (int)(40 / tu_slow());
    pid_t prod[2], cons[2];
    for (int i = 0; i < 2; i++) {
        prod[i] = storm_start(st, true, &incarnations);
        cons[i] = storm_start(st, false, &incarnations);
    }
    srand(12345);
    for (int round = 0; round < rounds; round++) {
        usleep((useconds_t)(2000 + rand() % 20000));   /* let them run: a random moment */
        bool producer = (round % 2 == 0) && incarnations < STORM_INCARNATIONS;
        int i = rand() % 2;
        pid_t *victim = producer ? &prod[i] : &cons[i];
        kill(*victim, SIGKILL);
        int rc = tu_wait(*victim, 10);
        assert_true(rc == -SIGKILL || rc == 0);
        consumers_killed += !producer && rc == -SIGKILL;
        *victim = storm_start(st, producer, &incarnations);
    }
    for (int i = 0; i < 2; i++) {      /* the last producers are killed too */
        kill(prod[i], SIGKILL);
        assert_true(tu_wait(prod[i], 10) != TU_TIMEOUT);
    }
    assert_true(mp__queue_valid(st->q));
    TU_OK(mp_queue_shutdown(st->q));
    for (int i = 0; i < 2; i++)
        assert_int_equal(tu_wait(cons[i], 60), 0);
    assert_true(mp__queue_valid(st->q));
    storm_check(st, incarnations, consumers_killed);
    assert_true(mp_queue_empty(st->q));
    int rc = mp_queue_join(st->q, 30 * tu_slow());
    unsigned long lost = 0;
    if (rc == MP_EBROKEN)
        lost = strtoul(strstr(mp_last_error(), ": ") + 2, NULL, 10);
    else
        TU_OK(rc);
    print_message("storm: join reported %lu items lost\n", lost);
    assert_true(lost <= (unsigned long)consumers_killed);
    assert_true(mp__queue_valid(st->q));
    mp_queue_free(st->q);
    mp_shared_free(st);
}

/* ------------------------------------------------------------------ idle cost */

static int child_waits_two_seconds(void *arg)
{
    mp_queue *q = arg;
    char b[8];
    size_t len;
    return mp_queue_get(q, b, sizeof b, &len, 2.0) == MP_EEMPTY ? 0 : 1;
}

static void test_queue_idle_blocked_consumer_uses_no_cpu(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)            /* CPU time would be valgrind's own */
        skip();
    mp_queue *q = new_queue(0);
    double t0 = tu_now();
    pid_t pid = tu_fork(child_waits_two_seconds, q);
    struct rusage ru;
    int st;
    assert_int_equal(wait4(pid, &st, 0, &ru), pid);
    double wall = tu_now() - t0;
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    assert_true(wall >= 1.9);
    if (cpu / wall >= 0.01)
        fail_msg("idle consumer used %.2f%% CPU", cpu / wall * 100);
    mp_queue_free(q);
}

/* ------------------------------------------------------------------ spinning */

/* A round trip's echo: each item on ping names how long (us) to busy-wait
 * before it goes back on pong; 0 ends. */
struct echo { mp_queue *ping, *pong; };

static int child_echoes_after_a_delay(void *arg)
{
    struct echo *e = arg;
    uint64_t us;
    size_t len;
    while (mp_queue_get(e->ping, &us, sizeof us, &len, 30 * tu_slow()) == 0 && us) {
        for (double until = tu_now() + (double)us / 1e6; tu_now() < until;)
            ;
        if (mp_queue_put(e->pong, &us, sizeof us, MP_FOREVER) != 0)
            return 1;
    }
    return 0;
}

/* Round trips of delay_us each; the sleeps (voluntary context switches:
 * a yield is not one) this thread made in them. */
static long round_trips_sleeping(struct echo *e, int n, uint64_t delay_us)
{
    struct rusage before, after;
    getrusage(RUSAGE_THREAD, &before);
    for (int i = 0; i < n; i++) {
        put_u64(e->ping, delay_us);
        assert_int_equal(get_u64(e->pong), delay_us);
    }
    getrusage(RUSAGE_THREAD, &after);
    return after.ru_nvcsw - before.ru_nvcsw;
}

/* Replies slower than any spin (300 us) shrink a waiter's spin budget to
 * its floor; replies in 5 us must then bring it back, or every later wait
 * sleeps though a spin of a few microseconds would have seen the item. */
static void test_queue_spin_budget_recovers_after_slow_replies(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND || sysconf(_SC_NPROCESSORS_ONLN) < 2)
        skip();                          /* no spinning on one CPU */
    struct echo e = { new_queue(0), new_queue(0) };
    pid_t pid = tu_fork(child_echoes_after_a_delay, &e);
    /* Other work on the machine (a parallel test, a sanitizer's threads)
     * can make any wait end asleep, so the best of a few tries counts: a
     * budget that never recovers sleeps on nearly every wait, every try. */
    long sleeps = 200;
    for (int try = 0; try < 5 && sleeps >= 100; try++) {
        round_trips_sleeping(&e, 40, 300);
        round_trips_sleeping(&e, 100, 5);    /* time to recover */
        sleeps = round_trips_sleeping(&e, 200, 5);
    }
    put_u64(e.ping, 0);
    assert_int_equal(tu_wait(pid, 30 * tu_slow()), 0);
    if (sleeps >= 100)
        fail_msg("%ld of 200 waits for a 5 us reply slept", sleeps);
    mp_queue_free(e.ping);
    mp_queue_free(e.pong);
}

/* Both ends on one CPU: the one whose reply we wait for can only run if we
 * give the CPU up. Spinning through the budget instead starves it, and
 * the wait ends in a sleep every time. */
static void test_queue_spinner_yields_to_a_peer_on_its_cpu(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND || sysconf(_SC_NPROCESSORS_ONLN) < 2)
        skip();
    cpu_set_t one, all;
    assert_int_equal(sched_getaffinity(0, sizeof all, &all), 0);
    CPU_ZERO(&one);
    for (int c = 0; c < CPU_SETSIZE && CPU_COUNT(&one) == 0; c++)
        if (CPU_ISSET(c, &all))
            CPU_SET(c, &one);
    assert_int_equal(sched_setaffinity(0, sizeof one, &one), 0);   /* the child inherits it */
    struct echo e = { new_queue(0), new_queue(0) };
    pid_t pid = tu_fork(child_echoes_after_a_delay, &e);
    round_trips_sleeping(&e, 100, 1);
    long sleeps = 400;                   /* the best of a few tries, as above */
    for (int try = 0; try < 5 && sleeps >= 200; try++)
        sleeps = round_trips_sleeping(&e, 400, 1);
    put_u64(e.ping, 0);
    assert_int_equal(tu_wait(pid, 30 * tu_slow()), 0);
    assert_int_equal(sched_setaffinity(0, sizeof all, &all), 0);
    if (sleeps >= 200)
        fail_msg("%ld of 400 waits for a peer on the same CPU slept", sleeps);
    mp_queue_free(e.ping);
    mp_queue_free(e.pong);
}

/* ------------------------------------------------------------------ joining past a dead consumer */

struct doomed { mp_queue *q; int got, done; };

/* Gets d->got items, marks d->done of them done, and dies. */
static int child_gets_then_dies(void *arg)
{
    struct doomed *d = arg;
    for (int i = 0; i < d->got; i++)
        get_u64(d->q);
    for (int i = 0; i < d->done; i++)
        if (mp_queue_task_done(d->q) != 0)
            return 1;
    raise(SIGKILL);
    return 2;
}

/* A consumer killed between get and task_done would leave join waiting for
 * ever (Python's does): join instead writes its items off as lost and
 * returns MP_EBROKEN once everything else is done. A later join, with
 * nothing more lost, returns 0 again. */
static void test_queue_join_reports_items_a_dead_consumer_never_finished(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    for (uint64_t i = 0; i < 5; i++)
        put_u64(q, i);
    struct doomed d = { q, 3, 1 };     /* 3 got, 1 done: 2 lost */
    pid_t pid = tu_fork(child_gets_then_dies, &d);
    assert_int_equal(tu_wait(pid, 30), -SIGKILL);
    TU_ASSERT_RC(mp_queue_join(q, 0), MP_ETIMEDOUT);  /* 2 items not even got */
    get_u64(q);
    TU_OK(mp_queue_task_done(q));
    get_u64(q);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_queue_join(q, 0.2), MP_ETIMEDOUT); /* ours is not done either */
    TU_OK(mp_queue_task_done(q));
    TU_ASSERT_RC(mp_queue_join(q, 30 * tu_slow()), MP_EBROKEN);
    assert_true(tu_now() - t0 < 10 * tu_slow());
    assert_non_null(strstr(mp_last_error(), "2 items"));
    TU_OK(mp_queue_join(q, 0));        /* reported once: nothing new is lost */
    TU_ASSERT_RC(mp_queue_task_done(q), MP_EINVAL);
    put_u64(q, 9);                     /* and the queue keeps working */
    TU_ASSERT_RC(mp_queue_join(q, 0), MP_ETIMEDOUT);
    assert_int_equal(get_u64(q), 9);
    TU_OK(mp_queue_task_done(q));
    TU_OK(mp_queue_join(q, 0));
    assert_true(mp__queue_valid(q));
    mp_queue_free(q);
}

/* A joiner already asleep when the consumer dies wakes with MP_EBROKEN. */
static void test_queue_join_waiting_when_a_consumer_dies_returns_ebroken(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    put_u64(q, 1);
    put_u64(q, 2);
    struct doomed d = { q, 2, 1 };
    pid_t pid = tu_fork(child_gets_then_dies, &d);
    TU_ASSERT_RC(mp_queue_join(q, 30 * tu_slow()), MP_EBROKEN);
    assert_int_equal(tu_wait(pid, 30), -SIGKILL);
    mp_queue_free(q);
}

/* The worst moment: killed right after its get's commit, still holding the
 * consumers' lock. The item counts as the dead process's (the journal
 * replays that too), so join reports it instead of waiting for it. */
static void test_queue_join_counts_a_consumer_killed_at_its_commit(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    put_items(q, 100, 1, 3);
    kill_point = "get_committed";
    kill_countdown = 1;                /* item 1 is got; 2 is cut after its commit */
    struct kill_job k = { q, 100, 0, 0 };
    pid_t pid = tu_fork(child_gets_until_killed, &k);
    assert_int_equal(tu_wait(pid, 30), -SIGKILL);
    expect_items(q, 100, (uint64_t[]){ 3 }, 1);
    TU_OK(mp_queue_task_done(q));
    TU_ASSERT_RC(mp_queue_join(q, 30 * tu_slow()), MP_EBROKEN);
    assert_non_null(strstr(mp_last_error(), "2 items"));
    assert_true(mp__queue_valid(q));
    mp_queue_free(q);
}

/* A producer killed after its commit, before it counted the item, and no
 * producer after it to replay its journal: the item is in the queue all
 * the same, so join waits for it to be got and marked done, whether it
 * looks before the get or after. */
static void test_queue_join_waits_for_the_item_of_a_producer_killed_at_its_commit(void **state)
{
    (void)state;
    for (int got_first = 0; got_first < 2; got_first++) {
        mp_queue *q = new_queue(0);
        kill_point = "put_committed";
        kill_countdown = 0;
        struct kill_job k = { q, 100, 10, 1 };
        assert_int_equal(tu_wait(tu_fork(child_puts_until_killed, &k), 30 * tu_slow()), -SIGKILL);
        if (!got_first) {
            TU_ASSERT_RC(mp_queue_join(q, 0), MP_ETIMEDOUT);
            TU_ASSERT_RC(mp_queue_join(q, 0.05), MP_ETIMEDOUT);
        }
        expect_items(q, 100, (uint64_t[]){ 10 }, 1);
        TU_ASSERT_RC(mp_queue_join(q, 0), MP_ETIMEDOUT);    /* got, not done */
        TU_ASSERT_RC(mp_queue_join(q, 0.05), MP_ETIMEDOUT);
        TU_OK(mp_queue_task_done(q));
        TU_OK(mp_queue_join(q, 0));
        assert_true(mp__queue_valid(q));
        mp_queue_free(q);
    }
}

/* A consumer killed right after its task_done counted lost nothing: the
 * item it got was done. A join must not write it off as lost (so report
 * MP_EBROKEN, and count the other consumer's item, not done yet, as
 * accounted for), and the other consumer's task_done must be taken.
 * Before, task_done counted the call in the queue and only then to the
 * caller's taker, so a death between the two left the dead taker owing
 * an item that was done: join returned MP_EBROKEN ("1 item" lost) while
 * our item was still being worked on, and our task_done was refused with
 * MP_EINVAL. A kill storm on 63-byte items hit this about once every ten
 * consumer kills. */
static int child_gets_and_dies_in_task_done(void *arg)
{
    mp_queue *q = arg;
    get_u64(q);
    kill_point = "task_done_counted";
    kill_countdown = 0;
    mp__queue_test_hook = kill_at_point;
    mp_queue_task_done(q);
    return 1;                          /* not reached */
}

static void test_queue_consumer_killed_right_after_task_done_loses_nothing(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    put_u64(q, 1);
    put_u64(q, 2);
    pid_t pid = tu_fork(child_gets_and_dies_in_task_done, q);
    assert_int_equal(tu_wait(pid, 30), -SIGKILL);
    assert_int_equal(get_u64(q), 2);
    TU_ASSERT_RC(mp_queue_join(q, 0.05), MP_ETIMEDOUT);   /* ours is not done */
    TU_OK(mp_queue_task_done(q));
    TU_OK(mp_queue_join(q, 30 * tu_slow()));               /* and nothing was lost */
    TU_ASSERT_RC(mp_queue_task_done(q), MP_EINVAL);
    assert_true(mp__queue_valid(q));
    mp_queue_free(q);
}

/* An item one process got and another marked done is not lost when the
 * getter dies: task_done counts against whichever consumer still owes one. */
static int child_marks_done(void *arg)
{
    return mp_queue_task_done(arg) == 0 ? 0 : 1;
}

static void test_queue_join_counts_task_done_from_another_process(void **state)
{
    (void)state;
    mp_queue *q = new_queue(0);
    put_u64(q, 1);
    struct doomed d = { q, 1, 0 };
    pid_t getter = tu_fork(child_gets_then_dies, &d);
    assert_int_equal(tu_wait(getter, 30), -SIGKILL);
    pid_t marker = tu_fork(child_marks_done, q);
    assert_int_equal(tu_wait(marker, 30), 0);
    TU_OK(mp_queue_join(q, 0));
    mp_queue_free(q);
}

/* More getter processes than the queue has takers, one after another: each
 * gets an item, hands it on to the parent and exits; the parent marks
 * them all done. None is lost: only a join writes items off. */
struct hand_on { mp_queue *work, *back; };

static int child_gets_and_hands_on(void *arg)
{
    struct hand_on *h = arg;
    uint64_t v;
    size_t len;
    if (mp_queue_get(h->work, &v, sizeof v, &len, 30) != 0 ||
        mp_queue_put(h->back, &v, sizeof v, 30) != 0)
        return 1;
    return 0;
}

static void test_queue_getters_past_the_takers_hand_items_on_and_join(void **state)
{
    (void)state;
    enum { N = 40 };                    /* > 32 takers */
    struct hand_on h = { new_queue(0), new_queue(0) };
    for (uint64_t i = 0; i < N; i++) {
        put_u64(h.work, i);
        assert_int_equal(tu_wait(tu_fork(child_gets_and_hands_on, &h), 30), 0);
    }
    for (int i = 0; i < N; i++) {
        uint64_t v;
        size_t len;
        TU_OK(mp_queue_get(h.back, &v, sizeof v, &len, 10));
        TU_OK(mp_queue_task_done(h.work));
    }
    TU_ASSERT_RC(mp_queue_task_done(h.work), MP_EINVAL);   /* one more than got */
    TU_OK(mp_queue_join(h.work, 10));
    mp_queue_free(h.work);
    mp_queue_free(h.back);
}

int main(void)
{
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue_keeps_fifo_order),
        cmocka_unit_test(test_queue_passes_items_of_every_size_in_order),
        cmocka_unit_test(test_queue_zero_byte_item_needs_no_buffer),
        cmocka_unit_test(test_queue_get_returns_etoobig_and_keeps_the_item),
        cmocka_unit_test(test_queue_qsize_empty_full_are_exact),
        cmocka_unit_test(test_queue_unbounded_grows_past_its_first_segment),
        cmocka_unit_test(test_queue_backlogs_reuse_the_segments_they_leave),
        cmocka_unit_test(test_queue_refuses_bad_arguments_and_handles),
        cmocka_unit_test(test_queue_put_returns_efull_when_bounded),
        cmocka_unit_test(test_queue_get_returns_eempty_on_time),
        cmocka_unit_test(test_queue_producer_exit_right_after_put_loses_nothing),
        cmocka_unit_test(test_queue_bounded_put_blocks_until_a_get),
        cmocka_unit_test(test_queue_shutdown_fails_puts_and_drains_gets),
        cmocka_unit_test(test_queue_shutdown_wakes_blocked_getters_and_putters),
        cmocka_unit_test(test_queue_works_in_fork_spawn_and_forkserver_children),
        cmocka_unit_test(test_queue_waiter_killed_in_its_sleep_blocks_nobody),
        cmocka_unit_test(test_queue_sleepers_are_always_woken),
        cmocka_unit_test(test_queue_join_waits_until_every_item_is_done),
        cmocka_unit_test(test_queue_task_done_more_than_got_returns_einval),
        cmocka_unit_test(test_queue_join_reports_items_a_dead_consumer_never_finished),
        cmocka_unit_test(test_queue_join_waits_for_the_item_of_a_producer_killed_at_its_commit),
        cmocka_unit_test(test_queue_join_waiting_when_a_consumer_dies_returns_ebroken),
        cmocka_unit_test(test_queue_join_counts_a_consumer_killed_at_its_commit),
        cmocka_unit_test(test_queue_join_counts_task_done_from_another_process),
        cmocka_unit_test(test_queue_consumer_killed_right_after_task_done_loses_nothing),
        cmocka_unit_test(test_queue_getters_past_the_takers_hand_items_on_and_join),
        cmocka_unit_test(test_queue_4x4_processes_lose_and_duplicate_nothing),
        cmocka_unit_test(test_queue_bounded_4x4_loses_and_duplicates_nothing),
        cmocka_unit_test(test_queue_works_between_threads),
        cmocka_unit_test(test_queue_kill_before_put_commit_drops_only_that_item),
        cmocka_unit_test(test_queue_kill_after_put_commit_delivers_the_item_once),
        cmocka_unit_test(test_queue_big_item_of_a_killed_producer_is_freed_or_delivered),
        cmocka_unit_test(test_queue_big_item_of_a_killed_consumer_is_freed),
        cmocka_unit_test(test_queue_big_item_taken_by_a_producer_killed_in_the_allocator_is_freed),
        cmocka_unit_test(test_queue_big_item_freed_by_a_consumer_killed_in_the_free_is_freed_once),
        cmocka_unit_test(test_queue_kill_before_get_commit_leaves_the_item_queued),
        cmocka_unit_test(test_queue_kill_after_get_commit_never_duplicates),
        cmocka_unit_test(test_queue_repair_after_two_deaths_keeps_the_next_item),
        cmocka_unit_test(test_queue_repair_beside_a_paused_consumer_keeps_the_next_item),
        cmocka_unit_test(test_queue_getter_sees_an_item_whose_producer_died_before_waking_it),
        cmocka_unit_test(test_queue_putter_sees_room_whose_consumer_died_before_waking_it),
        cmocka_unit_test(test_queue_slow_consumer_keeps_its_lock_from_a_waiter_blind_to_proc),
        cmocka_unit_test(test_queue_kill9_storm_loses_only_what_the_dead_held),
        cmocka_unit_test(test_queue_idle_blocked_consumer_uses_no_cpu),
        cmocka_unit_test(test_queue_spin_budget_recovers_after_slow_replies),
        cmocka_unit_test(test_queue_spinner_yields_to_a_peer_on_its_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
