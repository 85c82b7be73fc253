/* test_pool_claim.c - a worker killed while it claims a task, or when there
 * is no memory for its notice (MPROC_WHITEBOX).
 *
 * A worker names the head task in its slot before it marks it running and
 * takes it off the list, so that whenever it dies its slot or the list
 * still names the task. Killed between the two, it leaves the task queued
 * and its slot naming it: another worker then runs that task, and the dead
 * worker's notice must not fail it under that worker. The pool's test hook
 * kills the first worker to reach that point ("claimed") and holds the
 * collector at the notice ("notice") until the task runs elsewhere.
 */
#include "pool_tasks.h"

#include "internal.h"
#include "pool_internal.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static _Atomic int *shared;             /* [0] release, [1] started, [2] one kill done */

/* Two process workers that run hook at the pool's test points (set
 * before they are forked), and shared[] zeroed. */
static mp_pool *pool_with_hook(void (*hook)(const char *point))
{
    shared = mp_shared_alloc(3 * sizeof *shared);
    assert_non_null(shared);
    mp__pool_test_hook = hook;
    return pool_of(2, MP_PROCESSES);
}

static void kill_once_at_claim(const char *point)
{
    if (strcmp(point, "claimed") == 0 && atomic_exchange(&shared[2], 1) == 0)
        raise(SIGKILL);                 /* in the worker, its slot naming the head */
    if (strcmp(point, "notice") == 0) { /* in the collector: the task runs elsewhere first */
        for (int i = 0; i < 10000 && !atomic_load(&shared[1]); i++)
            usleep(1000);
    }
}

static void test_pool_task_claimed_by_a_dying_worker_runs_once_elsewhere(void **state)
{
    (void)state;
    mp_pool *p = pool_with_hook(kill_once_at_claim);
    mp_future *f = submit_wait(p, shared);
    bool ran = tu_wait_for(started, (void *)shared, 30);
    atomic_store(&shared[0], 1);        /* let it finish */
    int rc = mp_future_result(f, NULL, 30 * tu_slow());
    mp__pool_test_hook = NULL;
    assert_true(ran);
    assert_int_equal(atomic_load(&shared[2]), 1);   /* a worker did die at its claim */
    TU_OK(rc);                          /* not MP_ECRASHED while another worker ran it */
    mp_future_free(f);
    expect_squares(p, 0, 8);
    mp_pool_free(p);
    mp_shared_free(shared);
}

/* With no memory for a notice (arena and heap both full), a task whose
 * worker died still fails with MP_ECRASHED, through the worker slot's own
 * notice; twice in a row from the same slot; and the pool works on. */
static bool refuse_notices(const char *what)
{
    return strcmp(what, "notice") == 0;
}

static void test_pool_fails_a_dead_workers_task_with_no_memory_for_its_notice(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    mp__pool_refuse_alloc = refuse_notices;
    for (int i = 0; i < 2; i++) {
        mp_future *f = submit_int(p, t_signal_self, SIGKILL);
        TU_ASSERT_RC(mp_future_result(f, NULL, 10 * tu_slow()), MP_ECRASHED);
        mp_future_free(f);
    }
    mp__pool_refuse_alloc = NULL;
    expect_squares(p, 0, 8);
    mp_pool_free(p);
}

/* A second death in the same slot while the slot's own notice still
 * carries the first (the collector has not handled it yet), memory still
 * short: the second task also ends MP_ECRASHED. The slot is not restarted
 * before its notice is handed back, so no third death can come first. */
static int t_count_and_die(const void *in, size_t len, mp_buf *out)
{
    (void)in, (void)len, (void)out;
    atomic_fetch_add(&shared[0], 1);
    raise(SIGKILL);
    return 0;
}

static void hold_notices(const char *point)
{
    if (strcmp(point, "notice") != 0)
        return;
    atomic_fetch_add(&shared[1], 1);
    for (int i = 0; i < 30000 && !atomic_load(&shared[2]); i++)
        usleep(1000);
}

static bool shared_reaches(void *arg)
{
    const int *want = arg;
    return atomic_load(&shared[want[0]]) >= want[1];
}

static void test_pool_fails_a_second_death_while_the_slots_notice_is_out(void **state)
{
    (void)state;
    shared = mp_shared_alloc(3 * sizeof *shared);
    assert_non_null(shared);
    mp_pool *p = pool_of(1, MP_PROCESSES);
    mp__pool_refuse_alloc = refuse_notices;
    mp__pool_test_hook = hold_notices;
    mp_future *first = submit_int(p, t_count_and_die, 0);
    assert_true(tu_wait_for(shared_reaches, (int[]){ 1, 1 }, 10 * tu_slow()));
    mp_future *second = submit_int(p, t_count_and_die, 0);
    assert_true(tu_wait_for(shared_reaches, (int[]){ 0, 2 }, 10 * tu_slow()));
    usleep(200000);                     /* the second death is reaped, the notice still out */
    atomic_store(&shared[2], 1);        /* the collector goes on */
    TU_ASSERT_RC(mp_future_result(first, NULL, 10 * tu_slow()), MP_ECRASHED);
    TU_ASSERT_RC(mp_future_result(second, NULL, 10 * tu_slow()), MP_ECRASHED);
    mp__pool_test_hook = NULL;
    mp__pool_refuse_alloc = NULL;
    mp_future_free(first);
    mp_future_free(second);
    expect_squares(p, 0, 8);
    mp_pool_free(p);
    mp_shared_free(shared);
}

/* A worker stopped (SIGSTOP) while it holds the task list, and another
 * killed meanwhile: terminate kills the stopped one (its lock comes back
 * through the robust mutex) rather than wait for the list behind it, and
 * the pool's monitor does not wait for the list holding the pool's lock
 * while it notes the other's death. A thread resumes the stopped worker
 * after a while, so the old order fails slowly instead of hanging. */
static _Atomic pid_t stopped_pid;

static void stop_once_at_claim(const char *point)
{
    if (strcmp(point, "claimed") == 0 && atomic_exchange(&shared[2], 1) == 0) {
        atomic_store(&shared[1], getpid());
        raise(SIGSTOP);
    }
}

static void kill_other_worker(pid_t pid, char st, int ppid, const char *stat, void *ctx)
{
    (void)st;
    (void)ctx;
    if (ppid == getpid() && pid != atomic_load(&stopped_pid) && !strstr(stat, "(mp-forkserver)"))
        kill(pid, SIGKILL);
}

static void test_pool_terminate_kills_a_worker_stopped_holding_the_task_list(void **state)
{
    (void)state;
    mp_pool *p = pool_with_hook(stop_once_at_claim);
    mp_future *f = submit_int(p, t_square, 3);
    assert_true(tu_wait_for(started, (void *)shared, 30));
    atomic_store(&stopped_pid, (pid_t)atomic_load(&shared[1]));
    usleep(50 * 1000);                  /* stopped, the list lock in hand */
    each_process(kill_other_worker, NULL);
    usleep(100 * 1000);                 /* the monitor notes that death */
    pthread_t t;
    TU_OK(pthread_create(&t, NULL, tu_resume_later, &stopped_pid));
    double t0 = tu_now();
    TU_OK(mp_pool_terminate(p));
    double took = tu_now() - t0;
    bool was_stopped = atomic_exchange(&stopped_pid, 0) != 0;
    TU_OK(pthread_join(t, NULL));
    mp__pool_test_hook = NULL;
    assert_true(was_stopped);           /* terminate did not wait for the resume */
    assert_true(took < 5.0);
    int rc = mp_future_result(f, NULL, 10 * tu_slow());
    assert_true(rc == MP_EKILLED || rc == MP_ECRASHED);
    mp_future_free(f);
    TU_OK(mp_pool_join(p, 10 * tu_slow()));
    mp_pool_free(p);
    mp_shared_free(shared);
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_task_claimed_by_a_dying_worker_runs_once_elsewhere),
        cmocka_unit_test(test_pool_terminate_kills_a_worker_stopped_holding_the_task_list),
        cmocka_unit_test(test_pool_fails_a_dead_workers_task_with_no_memory_for_its_notice),
        cmocka_unit_test(test_pool_fails_a_second_death_while_the_slots_notice_is_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
