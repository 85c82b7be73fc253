/* test_pool.c - the pool: apply, map, imap, crash recovery, timeouts,
 * lifecycle, start methods and backends (futures: test_future.c). */
#include "pool_tasks.h"

#include <dlfcn.h>
#include <pthread.h>

#include "proc_targets.h"

static _Atomic int *shared_counter;

static void init_count(void *arg)
{
    _Atomic int *c;
    memcpy(&c, arg, sizeof c);
    atomic_fetch_add(c, 1);
}

/* ------------------------------------------------------------------ arguments */

static void test_pool_new_rejects_bad_options(void **state)
{
    (void)state;
    mp_pool *p = (mp_pool *)1;
    int x = 1;
    TU_ASSERT_RC(mp_pool_new(NULL, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_new(&p, &(mp_pool_opts){ .processes = -1 }), MP_EINVAL);
    assert_null(p);
    TU_ASSERT_RC(mp_pool_new(&p, &(mp_pool_opts){ .maxtasksperchild = -1 }), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_new(&p, &(mp_pool_opts){ .task_timeout = -1 }), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_new(&p, &(mp_pool_opts){ .initarg_size = 4 }), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_new(&p, &(mp_pool_opts){ .method = (mp_start_method)42 }), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_new(&p, &(mp_pool_opts){ .backend = (mp_backend)42 }), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_new(&p, &(mp_pool_opts){ .backend = MP_MPI }), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_new(&p, &(mp_pool_opts){ .backend = MP_THREADS, .task_timeout = 1 }), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_apply_async(NULL, t_square, &x, sizeof x, (mp_future **)&p), MP_EINVAL);
}

static void test_pool_calls_reject_bad_arguments(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    mp_future *f;
    int x = 1, out;
    TU_ASSERT_RC(mp_pool_apply_async(p, NULL, &x, sizeof x, &f), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_apply_async(p, t_square, NULL, 4, &f), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_apply_async(p, t_square, &x, sizeof x, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_apply_async(p, (mp_fn)(uintptr_t)16, &x, sizeof x, &f), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_map(p, t_square, NULL, 3, 4, &out, 4, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_map(p, t_square, &x, 1, 4, NULL, 4, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_map(p, t_square, &x, SIZE_MAX / 2, 4, &out, 4, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_imap(p, t_square, &x, 1, 4, 0, false, NULL), MP_EINVAL);
    mp_iter *it = (mp_iter *)&x;
    /* One chunk per item: a table of chunks whose size wraps to 8 bytes
     * (items of 0 bytes: no input range to refuse first). */
    TU_ASSERT_RC(mp_pool_imap(p, t_square, &x, SIZE_MAX / 8 + 2, 0, 1, false, &it), MP_ENOMEM);
    assert_null(it);
    TU_ASSERT_RC(mp_pool_imap(p, t_square, &x, SIZE_MAX / 8 + 2, 4, 1, false, &it), MP_ETOOBIG);
    TU_ASSERT_RC(mp_pool_join(p, 1), MP_ESTATE);          /* not closed yet */
    TU_ASSERT_RC(mp_pool_join(NULL, 1), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_close(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_terminate(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_future_wait(NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_future_result(NULL, NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_future_cancel(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_future_on_done(NULL, NULL, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_futures_wait(NULL, 1, MP_ALL_COMPLETED, 0), MP_EINVAL);
    f = submit_int(p, t_square, 3);
    TU_ASSERT_RC(mp_futures_wait(&f, 1, 99, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_future_on_done(f, NULL, NULL), MP_EINVAL);
    TU_OK(mp_future_wait(f, 30));
    mp_future_free(f);
    TU_ASSERT_RC(mp_future_wait(f, 0), MP_EINVAL);         /* freed: refused, not a crash */
    TU_ASSERT_RC(mp_iter_next(NULL, NULL, NULL, 0), MP_EINVAL);
    mp_iter_free(NULL);
    mp_future_free(NULL);
    mp_pool_free(NULL);
    mp_pool_free(p);
}

/* ------------------------------------------------------------------ apply */

static void test_pool_apply_returns_the_result(void **state)
{
    (void)state;
    mp_pool *p = pool_of(2, MP_PROCESSES);
    int x = 12, v = 0;
    mp_buf b = { 0 };
    TU_OK(mp_pool_apply(p, t_square, &x, sizeof x, &b));
    assert_int_equal(b.len, sizeof v);
    memcpy(&v, b.data, sizeof v);
    assert_int_equal(v, 144);
    mp_buf_free(&b);
    expect_squares(p, 0, 64);
    mp_pool_free(p);
}

static void test_pool_task_error_gives_etask_and_its_code(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    mp_future *f = submit_int(p, t_fail_with_input, 42);
    mp_buf b = { 0 };
    TU_ASSERT_RC(mp_future_result(f, &b, 30), MP_ETASK);
    assert_int_equal(mp_future_code(f), 42);
    assert_int_equal(b.len, 3);                      /* what it wrote comes back too */
    assert_memory_equal(b.data, "bad", 3);
    assert_true(mp_future_done(f));
    mp_future_free(f);
    int x = 9;
    TU_ASSERT_RC(mp_pool_apply(p, t_fail_with_input, &x, sizeof x, &b), MP_ETASK);
    mp_buf_free(&b);
    mp_pool_free(p);
}

static void test_pool_submit_to_closed_pool_returns_eclosed(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    int x = 1, out;
    mp_future *f;
    mp_iter *it;
    TU_OK(mp_pool_close(p));
    TU_OK(mp_pool_close(p));
    TU_ASSERT_RC(mp_pool_apply_async(p, t_square, &x, sizeof x, &f), MP_ECLOSED);
    TU_ASSERT_RC(mp_pool_apply(p, t_square, &x, sizeof x, NULL), MP_ECLOSED);
    TU_ASSERT_RC(mp_pool_map(p, t_square, &x, 1, 4, &out, 4, 0), MP_ECLOSED);
    TU_ASSERT_RC(mp_pool_imap(p, t_square, &x, 1, 4, 0, false, &it), MP_ECLOSED);
    TU_OK(mp_pool_join(p, 30));
    TU_OK(mp_pool_terminate(p));
    TU_ASSERT_RC(mp_pool_apply_async(p, t_square, &x, sizeof x, &f), MP_ECLOSED);
    mp_pool_free(p);
}

static void test_pool_close_lets_queued_tasks_finish(void **state)
{
    (void)state;
    mp_pool *p = pool_of(2, MP_PROCESSES);
    mp_future *fs[20];
    for (int i = 0; i < 20; i++)
        fs[i] = submit_int(p, t_square, i);
    TU_OK(mp_pool_close(p));
    TU_OK(mp_pool_join(p, 30));
    for (int i = 0; i < 20; i++) {
        int v;
        assert_true(mp_future_done(fs[i]));
        TU_OK(result_int(fs[i], &v));
        assert_int_equal(v, i * i);
        mp_future_free(fs[i]);
    }
    mp_pool_free(p);
}
/* ------------------------------------------------------------------ crashes */

static void expect_crash_reported(int method, mp_fn fn, int arg, int rc, int code)
{
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .method = method }));
    mp_future *before[8], *after[8];
    for (int i = 0; i < 8; i++)
        before[i] = submit_int(p, t_square, i);
    mp_future *bad = submit_int(p, fn, arg);
    for (int i = 0; i < 8; i++)
        after[i] = submit_int(p, t_square, i + 8);
    TU_ASSERT_RC(mp_future_result(bad, NULL, 30), rc);
    if (fn != t_exit_with_input || EXIT_STATUS_KEPT)
        assert_int_equal(mp_future_code(bad), code);
    int exitcode = 0;                   /* a signal and an exit() of one number differ */
    if (rc != MP_ECRASHED) {
        TU_ASSERT_RC(mp_future_exitcode(bad, &exitcode), MP_ESTATE);
    } else if (fn == t_signal_self) {
        TU_OK(mp_future_exitcode(bad, &exitcode));
        assert_int_equal(exitcode, -code);
    } else if (EXIT_STATUS_KEPT) {
        TU_OK(mp_future_exitcode(bad, &exitcode));
        assert_int_equal(exitcode, code);
    }
    for (int i = 0; i < 8; i++) {                      /* every other task completes */
        int v;
        TU_OK(result_int(before[i], &v));
        assert_int_equal(v, i * i);
        TU_OK(result_int(after[i], &v));
        assert_int_equal(v, (i + 8) * (i + 8));
        mp_future_free(before[i]);
        mp_future_free(after[i]);
    }
    mp_future_free(bad);
    expect_squares(p, 0, 16);                          /* and the pool stays usable */
    mp_pool_free(p);
}

static void test_pool_killed_worker_fails_only_its_task(void **state)
{
    (void)state;
    expect_crash_reported(MP_FORK, t_signal_self, SIGKILL, MP_ECRASHED, SIGKILL);
}

static void test_pool_exit_in_task_reports_its_status(void **state)
{
    (void)state;
    expect_crash_reported(MP_FORK, t_exit_with_input, 3, MP_ECRASHED, 3);
}

static void test_pool_abort_in_task_reports_sigabrt(void **state)
{
    (void)state;
    expect_crash_reported(MP_FORK, t_signal_self, SIGABRT, MP_ECRASHED, SIGABRT);
}

static void test_pool_worker_killed_from_outside_is_replaced(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *f = submit_int(p, t_pid, 0);
    pid_t pid;
    mp_buf b = { 0 };
    TU_OK(mp_future_result(f, &b, 30));
    memcpy(&pid, b.data, sizeof pid);
    mp_future_free(f);
    mp_future *victim = submit_wait(p, flag);
    mp_future *next = submit_int(p, t_square, 4);
    assert_true(tu_wait_for(started, (void *)flag, 30));
    kill(pid, SIGKILL);                                          /* an OOM kill, say */
    TU_ASSERT_RC(mp_future_result(victim, NULL, 30), MP_ECRASHED);
    assert_int_equal(mp_future_code(victim), SIGKILL);
    int v;
    TU_OK(result_int(next, &v));
    assert_int_equal(v, 16);
    mp_future_free(victim);
    mp_future_free(next);
    mp_buf_free(&b);
    mp_shared_free(flag);
    mp_pool_free(p);
}

static void test_pool_task_timeout_kills_only_the_overrunning_task(void **state)
{
    (void)state;
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .task_timeout = 0.3 * tu_slow() }));
    mp_future *slow = submit_int(p, t_spin_forever, 0);
    mp_future *fs[16];
    for (int i = 0; i < 16; i++)
        fs[i] = submit_int(p, t_square, i);
    TU_ASSERT_RC(mp_future_result(slow, NULL, 30), MP_EKILLED);
    assert_int_equal(mp_future_code(slow), SIGKILL);
    for (int i = 0; i < 16; i++) {
        int v;
        TU_OK(result_int(fs[i], &v));
        assert_int_equal(v, i * i);
        mp_future_free(fs[i]);
    }
    mp_future_free(slow);
    expect_squares(p, 0, 8);
    mp_pool_free(p);
}

static void test_pool_task_timeout_applies_to_each_item_of_a_map(void **state)
{
    (void)state;
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .task_timeout = 0.3 * tu_slow() }));
    int in[40], out[40];
    for (int i = 0; i < 40; i++)
        in[i] = i;
    mp_future *f;
    TU_OK(mp_pool_map_async(p, t_square_or_hang, in, 40, sizeof *in, out, sizeof *out, 8, &f));
    TU_ASSERT_RC(mp_future_result(f, NULL, 30), MP_EKILLED);
    size_t index;
    TU_OK(mp_future_failed_index(f, &index));
    assert_int_equal(index, 5);
    for (int i = 0; i < 40; i++)           /* the items after it in its chunk ran too */
        if (i != 5)
            assert_int_equal(out[i], i * i);
    mp_future_free(f);
    mp_pool_free(p);
}

/* ------------------------------------------------------------------ map */

static void check_map(mp_pool *p, size_t n, size_t chunksize)
{
    int *in = calloc(n + 1, sizeof *in), *out = malloc((n + 1) * sizeof *out);
    for (size_t i = 0; i < n; i++)
        in[i] = (int)i;
    memset(out, 0xff, (n + 1) * sizeof *out);
    TU_OK(mp_pool_map(p, t_square, in, n, sizeof *in, out, sizeof *out, chunksize));
    for (size_t i = 0; i < n; i++)
        assert_int_equal(out[i], (int)((unsigned)i * (unsigned)i));
    assert_int_equal(out[n], -1);                      /* nothing written past the end */
    free(in);
    free(out);
}

static void test_pool_map_keeps_order_for_every_chunking(void **state)
{
    (void)state;
    mp_pool *p = pool_of(2, MP_PROCESSES);
    check_map(p, 1000, 0);
    check_map(p, 1000, 7);          /* n not divisible by the chunk */
    check_map(p, 1000, 1000);
    check_map(p, 10, 100);          /* chunk larger than n */
    check_map(p, 1, 0);
    check_map(p, 0, 0);
    check_map(p, 100000, 0);
    mp_pool_free(p);
}

static void test_pool_map_reports_the_lowest_failing_index(void **state)
{
    (void)state;
    mp_pool *p = pool_of(2, MP_PROCESSES);
    int in[40], out[40];
    for (int i = 0; i < 40; i++)
        in[i] = i < 20 ? i + 20 : i - 20;   /* 13 at index 33, 7 at index 27 */
    in[0] = 13;                             /* and 13 again at 0: the lowest */
    mp_future *f;
    TU_OK(mp_pool_map_async(p, t_map_mixed, in, 40, sizeof *in, out, sizeof *out, 3, &f));
    TU_ASSERT_RC(mp_future_result(f, NULL, 30), MP_ETASK);
    assert_int_equal(mp_future_code(f), 50);
    size_t index;
    TU_OK(mp_future_failed_index(f, &index));
    assert_int_equal(index, 0);
    mp_future_free(f);
    for (int i = 0; i < 40; i++)            /* every other item completed */
        if (in[i] != 7 && in[i] != 13)
            assert_int_equal(out[i], in[i] * in[i]);
    in[0] = 0;                              /* now the crash (index 27) is the first */
    TU_OK(mp_pool_map_async(p, t_map_mixed, in, 40, sizeof *in, out, sizeof *out, 4, &f));
    TU_ASSERT_RC(mp_future_result(f, NULL, 30), MP_ECRASHED);
    assert_int_equal(mp_future_code(f), SIGKILL);
    TU_OK(mp_future_failed_index(f, &index));
    assert_int_equal(index, 27);
    mp_future_free(f);
    for (int i = 0; i < 40; i++)
        if (in[i] != 7 && in[i] != 13)
            assert_int_equal(out[i], in[i] * in[i]);
    TU_ASSERT_RC(mp_pool_map(p, t_map_mixed, in, 40, sizeof *in, out, sizeof *out, 0), MP_ECRASHED);
    tu_last_error_has("mp_pool_map: item 27, the lowest that failed: the worker running it was "
                      "killed by signal 9", NULL);
    in[0] = 13;
    TU_ASSERT_RC(mp_pool_map(p, t_map_mixed, in, 40, sizeof *in, out, sizeof *out, 0), MP_ETASK);
    tu_last_error_has("mp_pool_map: item 0,", "fn returned the error code 50", NULL);
    mp_pool_free(p);
}

static void test_pool_map_survives_a_crash_in_every_chunk(void **state)
{
    (void)state;
    mp_pool *p = pool_of(3, MP_PROCESSES);
    enum { N = 1000 };
    static int in[N], out[N];
    for (int i = 0; i < N; i++)
        in[i] = i + 1;                  /* items 24, 49, ... kill their worker */
    mp_future *f;
    TU_OK(mp_pool_map_async(p, t_square_or_die, in, N, sizeof *in, out, sizeof *out, 10, &f));
    TU_ASSERT_RC(mp_future_result(f, NULL, 60), MP_ECRASHED);
    size_t index;
    TU_OK(mp_future_failed_index(f, &index));
    assert_int_equal(index, 24);
    mp_future_free(f);
    for (int i = 0; i < N; i++)         /* the rest of each chunk ran on another worker */
        assert_int_equal(out[i], in[i] % 25 ? in[i] * in[i] : 0);
    mp_iter *it;
    TU_OK(mp_pool_imap(p, t_square_or_die, in, N, sizeof *in, 7, true, &it));
    size_t count = 0, crashed = 0;
    int rc;
    while ((rc = mp_iter_next(it, &index, NULL, 60)) != MP_EEOF) {
        assert_true(rc == 0 || rc == MP_ECRASHED);
        assert_int_equal(rc == MP_ECRASHED, in[index] % 25 == 0);
        crashed += rc == MP_ECRASHED;
        count++;
    }
    assert_int_equal(count, N);
    assert_int_equal(crashed, N / 25);
    mp_iter_free(it);
    expect_squares(p, 0, 10);
    mp_pool_free(p);
}

struct pair { int a, b; };

static int add_pair(const void *in, size_t len, mp_buf *out)
{
    struct pair pr;
    if (len != sizeof pr)
        return 99;                         /* runs in a worker: no cmocka here */
    memcpy(&pr, in, sizeof pr);
    long sum = (long)pr.a + pr.b;
    return mp_buf_append(out, &sum, sizeof sum);
}

static void test_pool_starmap_is_map_over_argument_structs(void **state)
{
    (void)state;
    mp_pool *p = pool_of(2, MP_PROCESSES);
    struct pair args[100];                 /* pool.starmap(add, [(a, b), ...]) */
    long sums[100];
    for (int i = 0; i < 100; i++)
        args[i] = (struct pair){ i, 1000 * i };
    TU_OK(mp_pool_map(p, add_pair, args, 100, sizeof *args, sums, sizeof *sums, 0));
    for (int i = 0; i < 100; i++)
        assert_int_equal(sums[i], 1001 * i);
    mp_pool_free(p);
}

static void test_pool_map_result_larger_than_out_size_is_etoobig(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    int in[4] = { 1, 2, 3, 4 };
    short out[4];
    TU_ASSERT_RC(mp_pool_map(p, t_square, in, 4, sizeof *in, out, sizeof *out, 0), MP_ETOOBIG);
    mp_pool_free(p);
}

/* ------------------------------------------------------------------ imap */

static void check_imap(mp_pool *p, bool unordered, size_t chunksize)
{
    int in[100] = { 0 };
    bool seen[100] = { false };
    for (int i = 0; i < 100; i++)
        in[i] = i;
    mp_iter *it;
    TU_OK(mp_pool_imap(p, t_repeat, in, 100, sizeof *in, chunksize, unordered, &it));
    mp_buf b = { 0 };
    size_t index, count = 0;
    int rc;
    while ((rc = mp_iter_next(it, &index, &b, 30)) == 0) {
        if (!unordered)
            assert_int_equal(index, count);
        assert_true(index < 100 && !seen[index]);
        seen[index] = true;
        assert_int_equal(b.len, index);
        count++;
    }
    TU_ASSERT_RC(rc, MP_EEOF);
    TU_ASSERT_RC(mp_iter_next(it, &index, &b, 0), MP_EEOF);
    assert_int_equal(count, 100);
    mp_iter_free(it);
    mp_buf_free(&b);
}

static void test_pool_imap_streams_in_order_and_unordered(void **state)
{
    (void)state;
    mp_pool *p = pool_of(2, MP_PROCESSES);
    check_imap(p, false, 0);
    check_imap(p, false, 3);
    check_imap(p, true, 0);
    check_imap(p, true, 7);
    mp_iter *it;
    TU_OK(mp_pool_imap(p, t_repeat, NULL, 0, 4, 0, false, &it));
    TU_ASSERT_RC(mp_iter_next(it, NULL, NULL, 1), MP_EEOF);
    mp_iter_free(it);
    mp_pool_free(p);
}

static void test_pool_imap_reports_crashed_item_and_continues(void **state)
{
    (void)state;
    mp_pool *p = pool_of(2, MP_PROCESSES);
    int in[20];
    for (int i = 0; i < 20; i++)
        in[i] = i;
    mp_iter *it;
    TU_OK(mp_pool_imap(p, t_map_mixed, in, 20, sizeof *in, 5, false, &it));
    size_t index, count = 0;
    int rc;
    while ((rc = mp_iter_next(it, &index, NULL, 30)) != MP_EEOF) {
        assert_int_equal(index, count++);
        if (index == 7) {
            TU_ASSERT_RC(rc, MP_ECRASHED);
            assert_int_equal(mp_iter_code(it), SIGKILL);
        } else if (index == 13) {
            TU_ASSERT_RC(rc, MP_ETASK);
            assert_int_equal(mp_iter_code(it), 50);
        } else {
            TU_OK(rc);
        }
    }
    assert_int_equal(count, 20);
    mp_iter_free(it);
    /* An iterator freed before it is drained is cleaned up by the pool. */
    TU_OK(mp_pool_imap(p, t_square, in, 20, sizeof *in, 1, true, &it));
    mp_iter_free(it);
    mp_pool_free(p);
}

/* ------------------------------------------------------------------ workers */

static void test_pool_maxtasksperchild_replaces_workers(void **state)
{
    (void)state;
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 1, .maxtasksperchild = 2 }));
    pid_t pids[6];
    for (int i = 0; i < 6; i++) {
        mp_buf b = { 0 };
        TU_OK(mp_pool_apply(p, t_pid, NULL, 0, &b));
        memcpy(&pids[i], b.data, sizeof(pid_t));
        mp_buf_free(&b);
    }
    for (int i = 0; i < 6; i += 2) {
        assert_int_equal(pids[i], pids[i + 1]);   /* two tasks per worker */
        if (i)
            assert_int_not_equal(pids[i], pids[i - 1]);
    }
    mp_pool_free(p);
}

static void test_pool_initializer_runs_once_per_worker(void **state)
{
    (void)state;
    shared_counter = mp_shared_alloc(sizeof *shared_counter);
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 3, .initializer = init_count,
                                            .initarg = &shared_counter,
                                            .initarg_size = sizeof shared_counter }));
    expect_squares(p, 0, 30);
    TU_OK(mp_pool_close(p));
    TU_OK(mp_pool_join(p, 30));
    assert_int_equal(atomic_load(shared_counter), 3);
    mp_pool_free(p);
    mp_shared_free(shared_counter);
}

/* Initializers failing by their own fault: the pool's own cause. */
static void init_aborts(void *arg) { (void)arg; abort(); }
static void init_exits(void *arg) { (void)arg; exit(3); }
static void init_faults(void *arg) { (void)arg; raise(SIGSEGV); }

static void test_pool_initializer_that_kills_workers_breaks_the_pool(void **state)
{
    (void)state;
    void (*inits[])(void *) = { init_aborts, init_exits, init_faults };
    mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    for (int i = 0; i < 9; i++) {
        int zombies, before = count_children(&zombies);
        mp_pool *p;
        TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .initializer = inits[i % 3],
                                                .method = methods[i / 3] }));
        mp_future *f;
        int x = 2;
        int rc = mp_pool_apply_async(p, t_square, &x, sizeof x, &f);
        if (rc == 0) {                   /* queued before the pool gave up: */
            TU_ASSERT_RC(mp_future_result(f, NULL, 30 * tu_slow()), MP_EBROKEN);
            mp_future_free(f);
        } else {
            TU_ASSERT_RC(rc, MP_EBROKEN);
        }
        TU_OK(mp_pool_close(p));
        TU_OK(mp_pool_join(p, 30 * tu_slow()));     /* no endless respawning */
        TU_ASSERT_RC(mp_pool_apply_async(p, t_square, &x, sizeof x, &f), MP_EBROKEN);
        assert_non_null(strstr(mp_last_error(), "the pool is broken"));
        assert_int_equal(count_children(&zombies), before);
        mp_pool_free(p);
    }
}

/* Work submitted while the pool breaks is refused as broken, never as
 * closed: nobody closed it. Each submits until the first refusal. */
static void test_pool_breaking_under_submissions_says_broken_not_closed(void **state)
{
    (void)state;
    int x = 2;
    for (int i = 0; i < 20; i++) {
        mp_pool *p;
        TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .initializer = init_exits }));
        int rc;
        mp_future *f;
        while ((rc = mp_pool_apply_async(p, t_square, &x, sizeof x, &f)) == 0)
            mp_future_free(f);
        TU_ASSERT_RC(rc, MP_EBROKEN);
        int in[4] = { 1, 2, 3, 4 }, out[4];
        while ((rc = mp_pool_map_async(p, t_square, in, 4, sizeof *in, out, sizeof *out, 1,
                                       &f)) == 0)
            mp_future_free(f);
        TU_ASSERT_RC(rc, MP_EBROKEN);
        mp_pool_free(p);
    }
}

static pid_t worker_pid(mp_pool *p)
{
    mp_buf b = { 0 };
    pid_t pid = 0;
    if (mp_pool_apply(p, t_pid, NULL, 0, &b) == 0)
        memcpy(&pid, b.data, sizeof pid);
    mp_buf_free(&b);
    return pid;
}

struct made { mp_pool *pool; pid_t pid; };

static void *make_pool_and_leave(void *arg)
{
    struct made *m = arg;
    if (mp_pool_new(&m->pool, &(mp_pool_opts){ .processes = 1 }) == 0)
        m->pid = worker_pid(m->pool);
    return NULL;
}

static void test_pool_outlives_the_thread_that_made_it(void **state)
{
    (void)state;
    struct made m = { 0 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, make_pool_and_leave, &m), 0);
    pthread_join(t, NULL);
    assert_non_null(m.pool);
    assert_true(m.pid > 0);
    /* Workers are daemons killed when their starting thread ends: the pool's
     * own thread starts them, so they outlive the caller's thread. */
    assert_int_equal(worker_pid(m.pool), m.pid);
    mp_pool_free(m.pool);
}

static void test_pool_threads_backend_runs_everything(void **state)
{
    (void)state;
    mp_pool *p = pool_of(3, MP_THREADS);
    expect_squares(p, 0, 64);
    check_map(p, 10000, 0);
    check_imap(p, true, 0);
    mp_future *f = submit_int(p, t_pid, 0);
    pid_t pid;
    mp_buf b = { 0 };
    TU_OK(mp_future_result(f, &b, 30));
    memcpy(&pid, b.data, sizeof pid);
    assert_int_equal(pid, getpid());                  /* in this very process */
    mp_future_free(f);
    mp_buf_free(&b);
    TU_OK(mp_pool_close(p));
    TU_OK(mp_pool_join(p, 30));
    mp_pool_free(p);
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .backend = MP_THREADS,
                                            .maxtasksperchild = 1 }));
    expect_squares(p, 0, 20);                          /* twenty threads, one task each */
    mp_pool_free(p);
}

/* A thread pool's task that asks its own pool to terminate, join or go
 * would wait for its own thread: refused (MP_ESTATE), as from a callback,
 * where the calls hung the process for good. The task reports the codes. */
static int t_waits_for_its_own_pool(const void *in, size_t len, mp_buf *out)
{
    (void)len;
    mp_pool *p;
    memcpy(&p, in, sizeof p);
    int rc[4] = { mp_pool_close(p), mp_pool_join(p, MP_FOREVER), mp_pool_join(p, 2),
                  mp_pool_terminate(p) };
    mp_pool_free(p);                                 /* does nothing from here */
    return mp_buf_append(out, rc, sizeof rc);
}

static void test_thread_pool_task_cannot_wait_for_its_own_pool(void **state)
{
    (void)state;
    tu_watchdog(60);
    mp_pool *p = pool_of(2, MP_THREADS);
    mp_future *f;
    TU_OK(mp_pool_apply_async(p, t_waits_for_its_own_pool, &p, sizeof p, &f));
    mp_buf b = { 0 };
    TU_OK(mp_future_result(f, &b, 30));
    int rc[4];
    assert_int_equal(b.len, sizeof rc);
    memcpy(rc, b.data, sizeof rc);
    TU_OK(rc[0]);                                    /* close is no wait */
    TU_ASSERT_RC(rc[1], MP_ESTATE);
    TU_ASSERT_RC(rc[2], MP_ESTATE);
    TU_ASSERT_RC(rc[3], MP_ESTATE);
    mp_future_free(f);
    mp_buf_free(&b);
    TU_OK(mp_pool_join(p, 30));                      /* the pool ends as it should */
    mp_pool_free(p);
}

static void test_pool_spawn_and_forkserver_workers(void **state)
{
    (void)state;
    mp_start_method methods[] = { MP_SPAWN, MP_FORKSERVER };
    for (int m = 0; m < 2; m++) {
        mp_pool *p;
        TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .method = methods[m] }));
        expect_squares(p, 0, 32);
        check_map(p, 1000, 0);
        mp_pool_free(p);
    }
    expect_crash_reported(MP_SPAWN, t_signal_self, SIGKILL, MP_ECRASHED, SIGKILL);
    expect_crash_reported(MP_FORKSERVER, t_exit_with_input, 3, MP_ECRASHED, 3);
}

static void test_pool_runs_a_function_of_a_loaded_library_under_every_method(void **state)
{
    (void)state;
    char path[4096];
    const char *dir = getenv("MPROC_BINARY_DIR");
    snprintf(path, sizeof path, "%s/tests/libmproc_proc_targets.so", dir ? dir : ".");
    void *lib = dlopen(path, RTLD_NOW);
    if (!lib)
        skip();
    /* lib_target_sum(arg) reads its first argument as a struct lib_job and
     * returns a + b: as an mp_fn, the task "fails" with code a + b. */
    mp_fn fn = (mp_fn)dlsym(lib, "lib_target_sum");
    assert_non_null(fn);
    mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    for (int m = 0; m < 3; m++) {
        mp_pool *p;
        TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 1, .method = methods[m] }));
        struct lib_job job = { 20, 22 + m, NULL };
        mp_future *f;
        TU_OK(mp_pool_apply_async(p, fn, &job, sizeof job, &f));
        TU_ASSERT_RC(mp_future_result(f, NULL, 30), MP_ETASK);
        assert_int_equal(mp_future_code(f), 42 + m);
        mp_future_free(f);
        mp_pool_free(p);
    }
}

/* ------------------------------------------------------------------ lifecycle */

static void test_pool_terminate_kills_pending_and_leaves_no_process(void **state)
{
    (void)state;
    int zombies, before = count_children(&zombies);
    mp_pool *p = pool_of(2, MP_PROCESSES);
    mp_future *fs[10];
    for (int i = 0; i < 10; i++)
        fs[i] = submit_int(p, t_spin_forever, 0);
    int in[100] = { 0 };
    mp_future *map;
    TU_OK(mp_pool_map_async(p, t_spin_forever, in, 100, sizeof *in, NULL, 0, 0, &map));
    TU_ASSERT_RC(mp_future_wait(fs[0], 0.05), MP_ETIMEDOUT);
    double t0 = tu_now();
    TU_OK(mp_pool_terminate(p));
    assert_true(tu_now() - t0 < 10 * tu_slow());
    for (int i = 0; i < 10; i++) {
        TU_ASSERT_RC(mp_future_result(fs[i], NULL, 0), MP_EKILLED);
        mp_future_free(fs[i]);
    }
    TU_ASSERT_RC(mp_future_result(map, NULL, 0), MP_EKILLED);
    mp_future_free(map);
    TU_OK(mp_pool_join(p, 0));
    assert_int_equal(count_children(&zombies), before);
    assert_int_equal(zombies, 0);
    mp_pool_free(p);
}

static void test_pool_free_of_a_running_pool_terminates_it(void **state)
{
    (void)state;
    int zombies, before = count_children(&zombies);
    mp_pool *p = pool_of(2, MP_PROCESSES);
    mp_future *f = submit_int(p, t_spin_forever, 0);
    mp_future_free(f);
    mp_future *g = submit_int(p, t_spin_forever, 0);
    mp_pool_free(p);
    TU_ASSERT_RC(mp_future_result(g, NULL, 0), MP_EKILLED);
    mp_future_free(g);
    assert_int_equal(count_children(&zombies), before);
    assert_int_equal(zombies, 0);
}

static void test_pool_leaves_no_zombie_after_crashes_and_join(void **state)
{
    (void)state;
    int zombies, before = count_children(&zombies);
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .maxtasksperchild = 3 }));
    for (int i = 0; i < 6; i++)
        mp_future_free(submit_int(p, t_signal_self, SIGKILL));
    expect_squares(p, 0, 20);
    TU_OK(mp_pool_close(p));
    TU_OK(mp_pool_join(p, 30));
    assert_int_equal(count_children(&zombies), before);
    assert_int_equal(zombies, 0);
    mp_pool_free(p);
}

struct progress { _Atomic size_t calls, done, total; };

static void on_progress(size_t done, size_t total, void *ctx)
{
    struct progress *pr = ctx;
    assert_true(done <= total);
    pr->done = done;
    pr->total = total;
    atomic_fetch_add(&pr->calls, 1);
}

static void test_pool_progress_reports_items_done(void **state)
{
    (void)state;
    struct progress pr = { 0 };
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .progress = on_progress,
                                            .progress_ctx = &pr }));
    int in[1000], out[1000];
    for (int i = 0; i < 1000; i++)
        in[i] = i;
    TU_OK(mp_pool_map(p, t_square, in, 1000, sizeof *in, out, sizeof *out, 10));
    assert_true(pr.calls >= 1);
    assert_int_equal(pr.done, 1000);                  /* the last call comes before map returns */
    assert_int_equal(pr.total, 1000);
    mp_pool_free(p);
}

/* A forked child sees its parent's iterator, but may not wait on it: its
 * lock is the parent's. Killed while waiting there, it used to wedge the
 * parent's mp_iter_free for ever; now it is refused, and its free is a
 * no-op that leaves the parent's iterator whole. */
static int child_uses_parents_iter(void *arg)
{
    mp_iter *it = arg;
    size_t i;
    int rc = mp_iter_next(it, &i, NULL, 5);
    mp_iter_free(it);
    return rc == MP_ESTATE ? 0 : 1;
}

static void test_pool_iterator_belongs_to_its_process(void **state)
{
    (void)state;
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 1 }));
    static int in[4] = { 1, 2, 3, 4 };
    mp_iter *it;
    TU_OK(mp_pool_imap(p, t_square, in, 4, sizeof *in, 1, false, &it));
    assert_int_equal(tu_wait(tu_fork(child_uses_parents_iter, it), 10 * tu_slow()), 0);
    mp_buf b = { 0 };
    for (int k = 0; k < 4; k++) {
        size_t index;
        TU_OK(mp_iter_next(it, &index, &b, 10 * tu_slow()));
        assert_int_equal(index, (size_t)k);
        assert_int_equal(get_int(b.data), in[k] * in[k]);
    }
    mp_buf_free(&b);
    mp_iter_free(it);
    mp_pool_free(p);
}

static void test_pool_apply_async_refuses_a_length_past_memory(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)
        skip();                           /* valgrind reports such a range itself */
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 1 }));
    char *edge = tu_page_before_hole();
    mp_future *f = (mp_future *)1;
    TU_ASSERT_RC(mp_pool_apply_async(p, t_square, edge, (size_t)256 << 10, &f), MP_EINVAL);
    assert_null(f);
    mp_pool_free(p);
}

/* A map's in and out are checked as an apply's in is: the copy of in, and
 * the collector's writes to out, would fault (the caller's SIGSEGV). */
static void test_pool_map_refuses_in_and_out_past_memory(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)
        skip();
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 1 }));
    char *edge = tu_page_before_hole();
    int in[4] = { 1, 2, 3, 4 }, out[4];
    size_t n = (size_t)64 << 10;          /* 64 Ki ints: 256 KiB from the last page */
    TU_ASSERT_RC(mp_pool_map(p, t_square, edge, n, sizeof *in, out, sizeof *out, 0), MP_EINVAL);
    tu_last_error_has("in..in+262144 runs past this process's memory", NULL);
    TU_ASSERT_RC(mp_pool_map(p, t_square, in, n, sizeof *in, edge, sizeof *out, 0), MP_EINVAL);
    mp_future *f = (mp_future *)1;
    TU_ASSERT_RC(mp_pool_map_async(p, t_square, in, n, sizeof *in, edge, sizeof *out, 0, &f),
                 MP_EINVAL);
    assert_null(f);
    mp_iter *it = (mp_iter *)1;
    TU_ASSERT_RC(mp_pool_imap(p, t_square, edge, n, sizeof *in, 1, false, &it), MP_EINVAL);
    TU_OK(mp_pool_map(p, t_square, in, 4, sizeof *in, out, sizeof *out, 0));   /* still works */
    assert_int_equal(out[3], 16);
    mp_pool_free(p);
}

/* terminate from a callback is refused, and nothing is stopped by it. */
struct terminating { mp_pool *p; _Atomic int said; };

static void terminate_from_callback(mp_future *f, void *ctx)
{
    (void)f;
    struct terminating *c = ctx;
    atomic_store(&c->said, mp_pool_terminate(c->p) == MP_ESTATE ? 1 : 2);
}

static void test_pool_terminate_from_a_callback_changes_nothing(void **state)
{
    (void)state;
    struct terminating c = { NULL, 0 };
    TU_OK(mp_pool_new(&c.p, &(mp_pool_opts){ .processes = 1 }));
    _Atomic int *flag = shared_flag();
    mp_future *f = submit_wait(c.p, flag);      /* not done before its callback is set: */
    TU_OK(mp_future_on_done(f, terminate_from_callback, &c));   /* else it runs here */
    atomic_store(flag, 1);
    TU_OK(mp_future_wait(f, 10 * tu_slow()));
    for (int i = 0; i < 1000 && !atomic_load(&c.said); i++)
        usleep(10000);
    assert_int_equal(atomic_load(&c.said), 1);
    mp_future_free(f);
    f = submit_int(c.p, t_square, 4);                 /* still open and working */
    mp_buf b = { 0 };
    TU_OK(mp_future_result(f, &b, 10 * tu_slow()));
    assert_int_equal(get_int(b.data), 16);
    mp_buf_free(&b);
    mp_future_free(f);
    mp_pool_free(c.p);
    mp_shared_free(flag);
}

/* What a callback got from a map, an imap's next and an apply of its own
 * pool; done once it has all three. */
struct waiting_inside {
    mp_pool *p;
    int map, next, apply, wait_all, wait_first, completed;
    _Atomic int done;
};

static void wait_from_callback(mp_future *f, void *ctx)
{
    (void)f;
    struct waiting_inside *c = ctx;
    int in[3] = { 1, 2, 3 }, out[3];
    c->map = mp_pool_map(c->p, t_square, in, 3, sizeof *in, out, sizeof *out, 0);
    mp_iter *it;
    c->next = mp_pool_imap(c->p, t_square, in, 3, sizeof *in, 1, false, &it);
    if (c->next == 0) {
        mp_buf b = { 0 };
        c->next = mp_iter_next(it, NULL, &b, MP_FOREVER);
        mp_buf_free(&b);
        mp_iter_free(it);
    }
    c->apply = mp_pool_apply(c->p, t_square, in, sizeof *in, NULL);
    mp_future *m;                       /* a map's future, waited for among others */
    if (mp_pool_map_async(c->p, t_square, in, 3, sizeof *in, out, sizeof *out, 0, &m) == 0) {
        c->wait_all = mp_futures_wait(&m, 1, MP_ALL_COMPLETED, 2);
        c->wait_first = mp_futures_wait(&m, 1, MP_FIRST_COMPLETED, MP_FOREVER);
        mp_iter *ac;
        c->completed = mp_as_completed(&m, 1, &ac);
        if (c->completed == 0) {
            c->completed = mp_iter_next(ac, NULL, NULL, MP_FOREVER);
            mp_iter_free(ac);
        }
        mp_future_free(m);
    }
    atomic_store(&c->done, 1);
}

/* The pool's result thread finishes maps and feeds iterators, so a
 * callback on it that waits for one is refused rather than left waiting
 * for itself; an apply is finished by its worker and works. */
static void test_pool_map_from_a_callback_is_refused_not_hung(void **state)
{
    (void)state;
    struct waiting_inside c = { .p = NULL };
    TU_OK(mp_pool_new(&c.p, &(mp_pool_opts){ .processes = 2 }));
    _Atomic int *flag = shared_flag();
    mp_future *f = submit_wait(c.p, flag);
    TU_OK(mp_future_on_done(f, wait_from_callback, &c));
    atomic_store(flag, 1);
    TU_OK(mp_future_wait(f, 10 * tu_slow()));
    for (int i = 0; i < 1000 && !atomic_load(&c.done); i++)
        usleep(10000);
    assert_true(atomic_load(&c.done));
    assert_int_equal(c.map, MP_ESTATE);
    assert_int_equal(c.next, MP_ESTATE);
    assert_int_equal(c.apply, 0);
    assert_int_equal(c.wait_all, MP_ESTATE);
    assert_int_equal(c.wait_first, MP_ESTATE);
    assert_int_equal(c.completed, MP_ESTATE);
    mp_future_free(f);
    TU_OK(mp_pool_terminate(c.p));
    mp_pool_free(c.p);
    mp_shared_free(flag);
}

/* A program that returns from main with a pool still running, the pool its
 * first mproc call: the test binary runs itself again so (EXIT_CHILD_ENV). */
#define EXIT_CHILD_ENV "MPROC_TEST_POOL_EXIT_CHILD"

static int exit_with_a_live_pool(void)
{
    mp_pool *p;
    if (mp_pool_new(&p, &(mp_pool_opts){ .processes = 4 }) != 0)
        return 2;
    int x = 3;
    return mp_pool_apply(p, t_square, &x, sizeof x, NULL) == 0 ? 0 : 3;
}

static void test_pool_left_running_does_not_hang_the_exit(void **state)
{
    (void)state;
    enum { KIDS = 6 };                  /* the race it had was lost about half the time */
    pid_t kids[KIDS];
    for (int i = 0; i < KIDS; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            setenv(EXIT_CHILD_ENV, "1", 1);
            execl("/proc/self/exe", "test_pool", (char *)NULL);
            _exit(127);
        }
        assert_true(kids[i] > 0);
    }
    int status[KIDS];
    for (int i = 0; i < KIDS; i++)      /* each waited for (or killed) before any check */
        status[i] = tu_wait(kids[i], 10);   /* scaled by MPROC_TEST_SLOW */
    for (int i = 0; i < KIDS; i++) {
        assert_int_not_equal(status[i], TU_TIMEOUT);
        if (EXIT_STATUS_KEPT)
            assert_int_equal(status[i], 0);
    }
}

int main(void)
{
    if (getenv(EXIT_CHILD_ENV))
        return exit_with_a_live_pool();
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_new_rejects_bad_options),
        cmocka_unit_test(test_pool_calls_reject_bad_arguments),
        cmocka_unit_test(test_pool_apply_returns_the_result),
        cmocka_unit_test(test_pool_task_error_gives_etask_and_its_code),
        cmocka_unit_test(test_pool_submit_to_closed_pool_returns_eclosed),
        cmocka_unit_test(test_pool_close_lets_queued_tasks_finish),
        cmocka_unit_test(test_pool_killed_worker_fails_only_its_task),
        cmocka_unit_test(test_pool_exit_in_task_reports_its_status),
        cmocka_unit_test(test_pool_abort_in_task_reports_sigabrt),
        cmocka_unit_test(test_pool_worker_killed_from_outside_is_replaced),
        cmocka_unit_test(test_pool_task_timeout_kills_only_the_overrunning_task),
        cmocka_unit_test(test_pool_task_timeout_applies_to_each_item_of_a_map),
        cmocka_unit_test(test_pool_map_keeps_order_for_every_chunking),
        cmocka_unit_test(test_pool_map_reports_the_lowest_failing_index),
        cmocka_unit_test(test_pool_map_survives_a_crash_in_every_chunk),
        cmocka_unit_test(test_pool_starmap_is_map_over_argument_structs),
        cmocka_unit_test(test_pool_map_result_larger_than_out_size_is_etoobig),
        cmocka_unit_test(test_pool_imap_streams_in_order_and_unordered),
        cmocka_unit_test(test_pool_imap_reports_crashed_item_and_continues),
        cmocka_unit_test(test_pool_maxtasksperchild_replaces_workers),
        cmocka_unit_test(test_pool_initializer_runs_once_per_worker),
        cmocka_unit_test(test_pool_initializer_that_kills_workers_breaks_the_pool),
        cmocka_unit_test(test_pool_breaking_under_submissions_says_broken_not_closed),
        cmocka_unit_test(test_pool_outlives_the_thread_that_made_it),
        cmocka_unit_test(test_pool_threads_backend_runs_everything),
        cmocka_unit_test(test_thread_pool_task_cannot_wait_for_its_own_pool),
        cmocka_unit_test(test_pool_spawn_and_forkserver_workers),
        cmocka_unit_test(test_pool_runs_a_function_of_a_loaded_library_under_every_method),
        cmocka_unit_test(test_pool_terminate_kills_pending_and_leaves_no_process),
        cmocka_unit_test(test_pool_free_of_a_running_pool_terminates_it),
        cmocka_unit_test(test_pool_leaves_no_zombie_after_crashes_and_join),
        cmocka_unit_test(test_pool_progress_reports_items_done),
        cmocka_unit_test(test_pool_iterator_belongs_to_its_process),
        cmocka_unit_test(test_pool_apply_async_refuses_a_length_past_memory),
        cmocka_unit_test(test_pool_map_refuses_in_and_out_past_memory),
        cmocka_unit_test(test_pool_terminate_from_a_callback_changes_nothing),
        cmocka_unit_test(test_pool_map_from_a_callback_is_refused_not_hung),
        cmocka_unit_test(test_pool_left_running_does_not_hang_the_exit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
