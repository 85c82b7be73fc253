/* test_mpi_pool.c - the pool on MPI ranks: the same calls, answered by ranks.
 *
 * Run directly, the program relaunches itself as `mpirun -np 3` (two serving
 * ranks); `test_mpi_pool dead-rank` kills a rank inside a task and must end
 * with MP_ECRASHED or with mpirun's report that the rank died: never hang;
 * `test_mpi_pool exit-busy` returns from main while a rank is busy, and
 * `exit-stuck` while a rank is stuck: the job must end, aborted if need be;
 * `lost-rank` injects a rank loss an MPI might survive: MP_ECRASHED.
 */
#include "testutil.h"
#include "mproc_mpi.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RANKS 3

static int get_int(const void *in) { int x; memcpy(&x, in, sizeof x); return x; }

/* ------------------------------------------------------------------ tasks (run on ranks) */

static int t_square(const void *in, size_t len, mp_buf *out)
{
    int x = get_int(in);
    x *= x;
    return mp_buf_append(out, &x, sizeof x);
}

static int t_rank(const void *in, size_t len, mp_buf *out)
{
    int r = mp_mpi_rank();
    return mp_buf_append(out, &r, sizeof r);
}

static int t_fail_with_input(const void *in, size_t len, mp_buf *out)
{
    mp_buf_append(out, "bad", 3);
    return get_int(in);
}

static int t_odd_fails(const void *in, size_t len, mp_buf *out)
{
    int x = get_int(in);
    if (x % 2)
        return 7;
    return mp_buf_append(out, &x, sizeof x);
}

static int t_repeat(const void *in, size_t len, mp_buf *out)
{
    int n = get_int(in);               /* n bytes of 'a' + n % 26 */
    if (mp_buf_reserve(out, (size_t)n + 1) != 0)
        return 1;
    memset(out->data, 'a' + n % 26, (size_t)n);
    out->len = (size_t)n;
    return 0;
}

static int t_sleep_ms(const void *in, size_t len, mp_buf *out)
{
    int ms = get_int(in);              /* the rank is busy: nothing here synchronises */
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
    return mp_buf_append(out, &ms, sizeof ms);
}

static int t_signal_self(const void *in, size_t len, mp_buf *out)
{
    raise(get_int(in));
    return 0;
}

static int init_value;                 /* per rank: what the initializer set */
static int init_calls;

static void set_init_value(void *arg)
{
    init_value = arg ? get_int(arg) : -1;
    init_calls++;
}

static int t_init_value(const void *in, size_t len, mp_buf *out)
{
    int v[2] = { init_value, init_calls };
    return mp_buf_append(out, v, sizeof v);
}

/* ------------------------------------------------------------------ helpers */

static mp_pool *new_pool(const mp_pool_opts *extra)
{
    mp_pool_opts o = extra ? *extra : (mp_pool_opts){ 0 };
    o.backend = MP_MPI;
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &o));
    return p;
}

static int apply_int(mp_pool *p, mp_fn fn, int x, int *result)
{
    mp_buf out = { 0 };
    int rc = mp_pool_apply(p, fn, &x, sizeof x, &out);
    if (rc == 0 && out.len == sizeof *result)
        memcpy(result, out.data, sizeof *result);
    mp_buf_free(&out);
    return rc;
}

/* ------------------------------------------------------------------ tests */

static void test_mpi_pool_runs_tasks_on_ranks_other_than_zero(void **state)
{
    mp_pool *p = new_pool(NULL);
    for (int i = 0; i < 8; i++) {
        int r = -1;
        TU_OK(apply_int(p, t_rank, 0, &r));
        assert_true(r >= 1 && r < RANKS);
    }
    mp_pool_free(p);
}

static void test_mpi_apply_returns_the_result_of_a_function_in_the_executable(void **state)
{
    mp_pool *p = new_pool(NULL);
    int r = 0;
    TU_OK(apply_int(p, t_square, 12, &r));
    assert_int_equal(r, 144);
    mp_pool_free(p);
}

static void test_mpi_apply_async_resolves_every_future(void **state)
{
    enum { N = 200 };
    mp_pool *p = new_pool(NULL);
    mp_future *f[N];
    for (int i = 0; i < N; i++)
        TU_OK(mp_pool_apply_async(p, t_square, &i, sizeof i, &f[i]));
    assert_int_equal(mp_futures_wait(f, N, MP_ALL_COMPLETED, 60 * tu_slow()), N);
    mp_buf out = { 0 };
    for (int i = 0; i < N; i++) {
        TU_OK(mp_future_result(f[i], &out, 0));
        assert_int_equal(get_int(out.data), i * i);
        mp_future_free(f[i]);
    }
    mp_buf_free(&out);
    mp_pool_free(p);
}

static void count_done(mp_future *f, void *ctx)
{
    atomic_fetch_add((_Atomic int *)ctx, 1);
}

static bool all_callbacks(void *ctx)
{
    return atomic_load((_Atomic int *)ctx) == 10;
}

static void test_mpi_on_done_callbacks_run_in_rank_zero(void **state)
{
    mp_pool *p = new_pool(NULL);
    _Atomic int done = 0;
    mp_future *f[10];
    for (int i = 0; i < 10; i++) {
        TU_OK(mp_pool_apply_async(p, t_square, &i, sizeof i, &f[i]));
        TU_OK(mp_future_on_done(f[i], count_done, &done));
    }
    assert_true(tu_wait_for(all_callbacks, &done, 30 * tu_slow()));
    for (int i = 0; i < 10; i++)
        mp_future_free(f[i]);
    mp_pool_free(p);
}

static void test_mpi_large_inputs_and_outputs_cross_intact(void **state)
{
    mp_pool *p = new_pool(NULL);
    mp_buf out = { 0 };
    int n = 3 << 20;                   /* past any eager limit: rendezvous both ways */
    TU_OK(mp_pool_apply(p, t_repeat, &n, sizeof n, &out));
    assert_int_equal(out.len, (size_t)n);
    assert_int_equal(((char *)out.data)[0], 'a' + n % 26);
    assert_int_equal(((char *)out.data)[n - 1], 'a' + n % 26);
    mp_buf_free(&out);
    mp_pool_free(p);
}

static void test_mpi_task_error_is_etask_with_code_and_output(void **state)
{
    mp_pool *p = new_pool(NULL);
    mp_future *f;
    int x = 42;
    TU_OK(mp_pool_apply_async(p, t_fail_with_input, &x, sizeof x, &f));
    mp_buf out = { 0 };
    TU_ASSERT_RC(mp_future_result(f, &out, 30 * tu_slow()), MP_ETASK);
    assert_int_equal(mp_future_code(f), 42);
    assert_int_equal(out.len, 3);
    assert_memory_equal(out.data, "bad", 3);
    mp_buf_free(&out);
    mp_future_free(f);
    mp_pool_free(p);
}

static void test_mpi_map_squares_every_item_in_order(void **state)
{
    enum { N = 100000 };
    mp_pool *p = new_pool(NULL);
    int *in = malloc(N * sizeof *in), *out = malloc(N * sizeof *out);
    for (int i = 0; i < N; i++)
        in[i] = i % 1000;
    TU_OK(mp_pool_map(p, t_square, in, N, sizeof *in, out, sizeof *out, 0));
    for (int i = 0; i < N; i++)
        assert_int_equal(out[i], (i % 1000) * (i % 1000));
    TU_OK(mp_pool_map(p, t_square, in, 50, sizeof *in, out, sizeof *out, 1));
    assert_int_equal(out[49], 49 * 49);
    free(in);
    free(out);
    mp_pool_free(p);
}

static void test_mpi_map_reports_the_lowest_failing_item(void **state)
{
    int in[10] = { 0, 2, 4, 5, 6, 8, 9, 10, 12, 14 }, out[10];
    mp_pool *p = new_pool(NULL);
    mp_future *f;
    TU_OK(mp_pool_map_async(p, t_odd_fails, in, 10, sizeof *in, out, sizeof *out, 3, &f));
    TU_ASSERT_RC(mp_future_result(f, NULL, 30 * tu_slow()), MP_ETASK);
    size_t index;
    TU_OK(mp_future_failed_index(f, &index));
    assert_int_equal(index, 3);
    assert_int_equal(mp_future_code(f), 7);
    assert_int_equal(out[9], 14);      /* every item ran */
    mp_future_free(f);
    mp_pool_free(p);
}

static void test_mpi_imap_yields_results_of_any_size_in_order(void **state)
{
    enum { N = 40 };
    int in[N];
    for (int i = 0; i < N; i++)
        in[i] = i * 10;
    mp_pool *p = new_pool(NULL);
    mp_iter *it;
    TU_OK(mp_pool_imap(p, t_repeat, in, N, sizeof *in, 3, false, &it));
    mp_buf out = { 0 };
    size_t index;
    for (int i = 0; i < N; i++) {
        TU_OK(mp_iter_next(it, &index, &out, 30 * tu_slow()));
        assert_int_equal(index, (size_t)i);
        assert_int_equal(out.len, (size_t)in[i]);
    }
    TU_ASSERT_RC(mp_iter_next(it, &index, &out, 30 * tu_slow()), MP_EEOF);
    mp_iter_free(it);
    mp_buf_free(&out);
    mp_pool_free(p);
}

static void test_mpi_imap_unordered_yields_every_item_once(void **state)
{
    enum { N = 40 };
    int in[N];
    bool seen[N] = { false };
    for (int i = 0; i < N; i++)
        in[i] = i;
    mp_pool *p = new_pool(NULL);
    mp_iter *it;
    TU_OK(mp_pool_imap(p, t_odd_fails, in, N, sizeof *in, 4, true, &it));
    mp_buf out = { 0 };
    size_t index;
    int rc;
    while ((rc = mp_iter_next(it, &index, &out, 30 * tu_slow())) != MP_EEOF) {
        assert_true(index < N && !seen[index]);
        seen[index] = true;
        TU_ASSERT_RC(rc, index % 2 ? MP_ETASK : 0);
        if (index % 2)
            assert_int_equal(mp_iter_code(it), 7);
    }
    for (int i = 0; i < N; i++)
        assert_true(seen[i]);
    mp_iter_free(it);
    mp_buf_free(&out);
    mp_pool_free(p);
}

static void test_mpi_closed_pool_refuses_tasks_and_joins(void **state)
{
    mp_pool *p = new_pool(NULL);
    int r;
    TU_OK(mp_pool_close(p));
    TU_ASSERT_RC(apply_int(p, t_square, 3, &r), MP_ECLOSED);
    TU_OK(mp_pool_join(p, 30 * tu_slow()));
    mp_pool_free(p);
}

static void test_mpi_pool_refuses_more_processes_than_serving_ranks(void **state)
{
    mp_pool *p = NULL;
    mp_pool_opts o = { .backend = MP_MPI, .processes = RANKS };
    TU_ASSERT_RC(mp_pool_new(&p, &o), MP_EINVAL);
    assert_null(p);
    o.processes = 1;                   /* fewer is fine: rank 1 only */
    TU_OK(mp_pool_new(&p, &o));
    int r;
    TU_OK(apply_int(p, t_rank, 0, &r));
    assert_int_equal(r, 1);
    mp_pool_free(p);
}

static void test_mpi_second_pool_while_the_first_owns_the_ranks_is_estate(void **state)
{
    mp_pool *p = new_pool(NULL), *q = NULL;
    mp_pool_opts o = { .backend = MP_MPI };
    TU_ASSERT_RC(mp_pool_new(&q, &o), MP_ESTATE);
    mp_pool_free(p);
    TU_OK(mp_pool_new(&q, &o));        /* the ranks are free again */
    mp_pool_free(q);
}

static void test_mpi_initializer_runs_on_each_rank_with_a_copy_of_its_argument(void **state)
{
    int arg = 77;
    mp_pool_opts o = { .initializer = set_init_value, .initarg = &arg, .initarg_size = sizeof arg };
    mp_pool *p = new_pool(&o);
    mp_buf out = { 0 };
    int x = 0;
    TU_OK(mp_pool_apply(p, t_init_value, &x, sizeof x, &out));
    assert_int_equal(((int *)out.data)[0], 77);
    assert_int_equal(init_value, 0);   /* not here: on the rank */
    mp_buf_free(&out);
    mp_pool_free(p);
}

static void test_mpi_initarg_pointer_without_size_is_einval(void **state)
{
    int arg = 1;
    mp_pool *p = NULL;
    mp_pool_opts o = { .backend = MP_MPI, .initializer = set_init_value, .initarg = &arg };
    TU_ASSERT_RC(mp_pool_new(&p, &o), MP_EINVAL);
    assert_null(p);
}

static void test_mpi_maxtasksperchild_reruns_the_initializer_on_the_same_rank(void **state)
{
    mp_pool_opts o = { .processes = 1, .maxtasksperchild = 1, .initializer = set_init_value };
    mp_pool *p = new_pool(&o);
    mp_buf out = { 0 };
    int x = 0, last = 0;
    for (int i = 0; i < 3; i++) {
        TU_OK(mp_pool_apply(p, t_init_value, &x, sizeof x, &out));
        int calls = ((int *)out.data)[1];
        assert_true(calls > last);     /* a rank is not a fresh process: the count goes on */
        last = calls;
    }
    mp_buf_free(&out);
    mp_pool_free(p);
}

static void test_mpi_task_timeout_kills_the_task_and_the_rank_serves_again(void **state)
{
    mp_pool_opts o = { .processes = 1, .task_timeout = 0.2 };
    mp_pool *p = new_pool(&o);
    int r = 0;
    TU_ASSERT_RC(apply_int(p, t_sleep_ms, 1500, &r), MP_EKILLED);
    TU_OK(apply_int(p, t_square, 5, &r));   /* after the rank ends the abandoned call */
    assert_int_equal(r, 25);
    mp_pool_free(p);
}

static void test_mpi_terminate_fails_running_and_queued_tasks_with_ekilled(void **state)
{
    mp_pool *p = new_pool(NULL);
    mp_future *f[4];
    int ms = 1000;
    for (int i = 0; i < 4; i++)
        TU_OK(mp_pool_apply_async(p, t_sleep_ms, &ms, sizeof ms, &f[i]));
    TU_OK(mp_pool_terminate(p));
    for (int i = 0; i < 4; i++) {
        TU_ASSERT_RC(mp_future_result(f[i], NULL, 30 * tu_slow()), MP_EKILLED);
        mp_future_free(f[i]);
    }
    mp_pool_free(p);
    p = new_pool(NULL);                /* the ranks finish, and serve the next pool */
    int r;
    TU_OK(apply_int(p, t_square, 6, &r));
    assert_int_equal(r, 36);
    mp_pool_free(p);
}

static void test_mpi_main_runs_on_rank_zero_of_the_job(void **state)
{
    assert_int_equal(mp_mpi_rank(), 0);
    assert_int_equal(mp_mpi_size(), RANKS);
}

static int child_tries_an_mpi_pool(void *arg)
{
    mp_pool *p = NULL;
    mp_pool_opts o = { .backend = MP_MPI };
    return mp_pool_new(&p, &o) == MP_ESTATE && !p ? 0 : 1;
}

static void test_mpi_forked_child_of_rank_zero_cannot_drive_the_ranks(void **state)
{
    pid_t pid = tu_fork(child_tries_an_mpi_pool, NULL);
    assert_int_equal(tu_wait(pid, 30 * tu_slow()), 0);
    mp_pool *p = new_pool(NULL);       /* and the ranks still serve rank 0 */
    int r;
    TU_OK(apply_int(p, t_square, 4, &r));
    assert_int_equal(r, 16);
    mp_pool_free(p);
}

/* ------------------------------------------------------------------ a rank that dies */

static int dead_rank(void)
{
    alarm((unsigned)(60 * tu_slow()));  /* rank 0 dying ends the job: never a hang */
    mp_pool_opts o = { .backend = MP_MPI };
    mp_pool *p;
    if (mp_pool_new(&p, &o) != 0)
        return 2;
    int sig = SIGKILL, r;
    int rc = apply_int(p, t_signal_self, sig, &r);
    printf("dead rank: %s\n", mp_errname(rc));
    fflush(stdout);
    mp_pool_free(p);
    return rc == MP_ECRASHED ? 0 : 1;
}

/* main returns with a pool open and a call running on a rank: the pool is
 * terminated, the rank's late reply is drained, every rank stops, exit 0. */
static int exit_with_busy_pool(void)
{
    alarm((unsigned)(60 * tu_slow()));
    mp_pool_opts o = { .backend = MP_MPI };
    mp_pool *p;
    mp_future *f;
    int ms = 1000;
    if (mp_pool_new(&p, &o) != 0 || mp_pool_apply_async(p, t_sleep_ms, &ms, sizeof ms, &f) != 0)
        return 2;
    mp_future_wait(f, 0.2);            /* most likely running by then; either way, no hang */
    printf("returning from main with a task running on a rank\n");
    return 0;
}

/* As above, but the abandoned call would outlast any patience: rank 0
 * aborts the job after its bounded wait instead of hanging in Finalize. */
static int exit_with_stuck_rank(void)
{
    alarm((unsigned)(60 * tu_slow()));
    mp_pool_opts o = { .backend = MP_MPI, .processes = 1, .task_timeout = 0.1 };
    mp_pool *p;
    int ms = 600000, r;
    if (mp_pool_new(&p, &o) != 0 || apply_int(p, t_sleep_ms, ms, &r) != MP_EKILLED)
        return 2;
    printf("rank 1 is stuck in a call the pool gave up on; exiting\n");
    fflush(stdout);
    mp_pool_free(p);
    return 0;
}

/* Under MPROC_MPI_FAULT_LOSE_RANK=1, rank 1 looks dead to MPI without
 * ending the job (as under ULFM): its task fails MP_ECRASHED, the pool
 * cannot replace its only worker and breaks; at exit the lost rank cannot
 * be stopped, so the job ends with rank 0's message. */
static int lost_rank(void)
{
    alarm((unsigned)(60 * tu_slow()));
    mp_pool_opts o = { .backend = MP_MPI, .processes = 1 };
    mp_pool *p;
    int r, first, second;
    if (mp_pool_new(&p, &o) != 0)
        return 2;
    first = apply_int(p, t_square, 3, &r);
    mp_future *f;
    second = mp_pool_apply_async(p, t_square, &r, sizeof r, &f);
    if (second == 0) {                 /* queued before the pool broke */
        second = mp_future_result(f, NULL, 30 * tu_slow());
        mp_future_free(f);
    }
    printf("lost rank: %s, then %s\n", mp_errname(first), mp_errname(second));
    fflush(stdout);
    mp_pool_free(p);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = mp_mpi_relaunch(RANKS, argv);
    if (rc != 0) {
        fprintf(stderr, "cannot start under mpirun: %s\n", mp_strerror(rc));
        return 1;
    }
    if (argc > 1 && strcmp(argv[1], "dead-rank") == 0)
        return dead_rank();
    if (argc > 1 && strcmp(argv[1], "exit-busy") == 0)
        return exit_with_busy_pool();
    if (argc > 1 && strcmp(argv[1], "exit-stuck") == 0)
        return exit_with_stuck_rank();
    if (argc > 1 && strcmp(argv[1], "lost-rank") == 0)
        return lost_rank();
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mpi_main_runs_on_rank_zero_of_the_job),
        cmocka_unit_test(test_mpi_pool_runs_tasks_on_ranks_other_than_zero),
        cmocka_unit_test(test_mpi_apply_returns_the_result_of_a_function_in_the_executable),
        cmocka_unit_test(test_mpi_apply_async_resolves_every_future),
        cmocka_unit_test(test_mpi_on_done_callbacks_run_in_rank_zero),
        cmocka_unit_test(test_mpi_large_inputs_and_outputs_cross_intact),
        cmocka_unit_test(test_mpi_task_error_is_etask_with_code_and_output),
        cmocka_unit_test(test_mpi_map_squares_every_item_in_order),
        cmocka_unit_test(test_mpi_map_reports_the_lowest_failing_item),
        cmocka_unit_test(test_mpi_imap_yields_results_of_any_size_in_order),
        cmocka_unit_test(test_mpi_imap_unordered_yields_every_item_once),
        cmocka_unit_test(test_mpi_closed_pool_refuses_tasks_and_joins),
        cmocka_unit_test(test_mpi_pool_refuses_more_processes_than_serving_ranks),
        cmocka_unit_test(test_mpi_second_pool_while_the_first_owns_the_ranks_is_estate),
        cmocka_unit_test(test_mpi_initializer_runs_on_each_rank_with_a_copy_of_its_argument),
        cmocka_unit_test(test_mpi_initarg_pointer_without_size_is_einval),
        cmocka_unit_test(test_mpi_maxtasksperchild_reruns_the_initializer_on_the_same_rank),
        cmocka_unit_test(test_mpi_task_timeout_kills_the_task_and_the_rank_serves_again),
        cmocka_unit_test(test_mpi_terminate_fails_running_and_queued_tasks_with_ekilled),
        cmocka_unit_test(test_mpi_forked_child_of_rank_zero_cannot_drive_the_ranks),
    };
    return cmocka_run_group_tests_name("mpi_pool", tests, NULL, NULL);
}
