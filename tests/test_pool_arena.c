/* test_pool_arena.c - the pool gives back the arena memory it takes, through
 * crashes, cancels, detached futures, imap and terminate (MPROC_WHITEBOX).
 *
 * The arena's own count of bytes in use (arena_check) before and after the
 * rounds shows a leak: it must not move at all. */
#include "pool_tasks.h"

#include "internal.h"
#include "pool_internal.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

static void on_done_count(mp_future *f, void *ctx)
{
    (void)f;
    atomic_fetch_add((_Atomic int *)ctx, 1);
}

static void one_round(void)
{
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .maxtasksperchild = 40 }));
    enum { N = 400 };
    mp_future *fs[N];
    _Atomic int callbacks = 0;
    for (int i = 0; i < N; i++) {
        fs[i] = submit_int(p, i % 100 == 1 ? t_signal_self : t_square, i % 100 == 1 ? SIGKILL : i);
        if (i % 10 == 0)
            TU_OK(mp_future_on_done(fs[i], on_done_count, &callbacks));
    }
    for (int i = N - 1; i >= N - 20; i--)
        mp_future_cancel(fs[i]);              /* some of these may have started */
    for (int i = 0; i < N; i += 2) {          /* detach half while they may still run */
        mp_future_free(fs[i]);
        fs[i] = NULL;
    }
    for (int i = 1; i < N; i += 2) {
        mp_future_wait(fs[i], 30);
        mp_future_free(fs[i]);
    }
    static int in[2000], out[2000];
    for (int i = 0; i < 2000; i++)
        in[i] = i + 1;
    mp_pool_map(p, t_square_or_die, in, 2000, sizeof *in, out, sizeof *out, 7);
    mp_iter *it;
    /* Few chunks: how many result buffers are alive at once depends on timing. */
    TU_OK(mp_pool_imap(p, t_repeat, in, 300, sizeof *in, 50, true, &it));
    mp_buf b = { 0 };
    for (int i = 0; i < 150; i++)
        mp_iter_next(it, NULL, &b, 30);
    mp_iter_free(it);                          /* half read: the pool frees the rest */
    mp_buf_free(&b);
    for (int i = 0; i < 20; i++)
        mp_future_free(submit_int(p, t_spin_forever, 0));   /* pending at terminate */
    mp_pool_free(p);
}

static void test_pool_rounds_do_not_grow_the_arena(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++)                           /* warm-up: the peaks */
        one_round();
    struct arena_stats before, after;
    assert_true(arena_check(&before));
    for (int i = 0; i < 8; i++)
        one_round();
    assert_true(arena_check(&after));
    size_t grown = after.used_bytes > before.used_bytes ? after.used_bytes - before.used_bytes : 0;
    print_message("arena use grew by %zu KiB in 8 rounds after the warm-up\n", grown >> 10);
    /* Every block comes back, even from workers killed by the terminate. */
    assert_int_equal(grown, 0);
}

/* imap item: x bytes of output, appended at once. */
static int t_bytes(const void *in, size_t len, mp_buf *out)
{
    (void)len;
    static const char kib[1024];
    for (int n = get_int(in); n > 0; n -= (int)sizeof kib)
        if (mp_buf_append(out, kib, n < (int)sizeof kib ? (size_t)n : sizeof kib) != 0)
            return 1;
    return 0;
}

/* Terminate lands while workers grow their chunks' result buffers (a copy
 * of up to megabytes between taking the new block and publishing it) and
 * store big results: a worker killed there would leak the block. */
static void test_pool_terminate_in_a_hand_over_leaks_nothing(void **state)
{
    (void)state;
    enum { N = 4000 };
    static int in[N];
    for (int i = 0; i < N; i++)
        in[i] = 4096;
    mp_pool *warm;                               /* what the first pool sets up for good */
    TU_OK(mp_pool_new(&warm, &(mp_pool_opts){ .processes = 2 }));
    mp_pool_free(warm);
    struct arena_stats before, after;
    assert_true(arena_check(&before));
    for (int round = 0; round < 40; round++) {
        mp_pool *p;
        TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2 }));
        mp_iter *it;
        TU_OK(mp_pool_imap(p, t_bytes, in, N, sizeof *in, N / 2, true, &it));
        mp_future *f[4];
        for (int i = 0; i < 4; i++)
            f[i] = submit_int(p, t_bytes, 1 << 20);
        usleep((useconds_t)(round % 8) * 400);
        mp_pool_free(p);                         /* terminates: the workers are killed */
        for (int i = 0; i < 4; i++)
            mp_future_free(f[i]);
        mp_iter_free(it);
    }
    assert_true(arena_check(&after));
    size_t grown = after.used_bytes > before.used_bytes ? after.used_bytes - before.used_bytes : 0;
    print_message("arena use grew by %zu KiB in 40 terminated pools\n", grown >> 10);
    assert_int_equal(grown, 0);
}

/* How many workers the hook below still kills: in the arena, so every
 * worker (forked: the hook is inherited) counts down the same number. */
static _Atomic int *kills_left;
static const char *kill_point;

static void kill_at_point(const char *point)
{
    if (strcmp(point, kill_point) == 0 && atomic_fetch_sub(kills_left, 1) > 0)
        raise(SIGKILL);
}

/* The same at an allocator's point, in a worker only (the test's own
 * process allocates too). */
static pid_t test_pid;

static void kill_worker_at_point(const char *point)
{
    if (getpid() != test_pid)
        kill_at_point(point);
}

/* A worker killed from outside (here: by itself, at the worst moment)
 * after taking a block and before publishing it leaves the block named in
 * its task, and the pool frees it with the task. */
static void killed_in_hand_over(const char *point, bool imap, int size, bool in_allocator)
{
    mp_pool *warm;
    TU_OK(mp_pool_new(&warm, &(mp_pool_opts){ .processes = 2, .method = MP_FORK }));
    mp_pool_free(warm);
    kills_left = mp_shared_alloc(sizeof *kills_left);
    assert_non_null(kills_left);
    struct arena_stats before, after;
    assert_true(arena_check(&before));
    atomic_store(kills_left, 6);
    kill_point = point;
    test_pid = getpid();
    if (in_allocator)
        mp__arena_test_hook = kill_worker_at_point;
    else
        mp__pool_test_hook = kill_at_point;
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .method = MP_FORK }));
    enum { N = 400 };
    static int in[N];
    for (int i = 0; i < N; i++)
        in[i] = size;
    int crashed = 0;
    if (imap) {
        mp_iter *it;
        TU_OK(mp_pool_imap(p, t_bytes, in, N, sizeof *in, N / 4, false, &it));
        mp_buf b = { 0 };
        int rc;
        while ((rc = mp_iter_next(it, NULL, &b, 30 * tu_slow())) != MP_EEOF) {
            crashed += rc == MP_ECRASHED;
            assert_true(rc == 0 || rc == MP_ECRASHED);
        }
        mp_buf_free(&b);
        mp_iter_free(it);
    } else {
        mp_future *fs[40];
        for (int i = 0; i < 40; i++)
            fs[i] = submit_int(p, t_bytes, size);
        for (int i = 0; i < 40; i++) {
            int rc = mp_future_result(fs[i], NULL, 30 * tu_slow());
            crashed += rc == MP_ECRASHED;
            assert_true(rc == 0 || rc == MP_ECRASHED);
            mp_future_free(fs[i]);
        }
    }
    TU_OK(mp_pool_close(p));
    TU_OK(mp_pool_join(p, 30 * tu_slow()));
    mp_pool_free(p);
    mp__pool_test_hook = NULL;
    mp__arena_test_hook = NULL;
    assert_int_equal(crashed, 6);                /* each kill hit a hand-over */
    assert_true(arena_check(&after));
    mp_shared_free((void *)kills_left);
    print_message("%s: arena use grew by %zu bytes after 6 kills\n", point,
                  after.used_bytes > before.used_bytes ? after.used_bytes - before.used_bytes : 0);
    assert_int_equal(after.used_bytes, before.used_bytes);
}

static void test_pool_worker_killed_growing_imap_records_leaks_nothing(void **state)
{
    (void)state;
    killed_in_hand_over("blob_copied", true, 4096, false);
}

static void test_pool_worker_killed_storing_a_big_result_leaks_nothing(void **state)
{
    (void)state;
    killed_in_hand_over("output_copied", false, 64 << 10, false);
}

/* Killed inside the allocator as it takes the result's block, at each
 * point after the commit (the repair rolls the allocation forward): the
 * block is named in the task by then, or by the repair. Before, the task
 * was named only after the allocator returned: outside kills of workers
 * returning 1 MiB results leaked one block per 80-180 kills. */
static void test_pool_worker_killed_allocating_a_big_result_leaks_nothing(void **state)
{
    (void)state;
    static const char *points[] = { "alloc_committed", "alloc_unlinked", "alloc_applied",
                                    "alloc_linked" };
    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++)
        killed_in_hand_over(points[i], false, 64 << 10, true);
}

int main(void)
{
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_rounds_do_not_grow_the_arena),
        cmocka_unit_test(test_pool_terminate_in_a_hand_over_leaks_nothing),
        cmocka_unit_test(test_pool_worker_killed_growing_imap_records_leaks_nothing),
        cmocka_unit_test(test_pool_worker_killed_storing_a_big_result_leaks_nothing),
        cmocka_unit_test(test_pool_worker_killed_allocating_a_big_result_leaks_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
