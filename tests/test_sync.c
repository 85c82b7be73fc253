/* test_sync.c - Semaphore, BoundedSemaphore and Event: counts, bounds,
 * timeouts on time, wake-ups across processes, killed waiters. */
#include "sync_helpers.h"

#include <limits.h>

/* ------------------------------------------------------------------ semaphore */

static void test_semaphore_calls_refuse_bad_arguments(void **state)
{
    (void)state;
    TU_ASSERT_RC(mp_semaphore_new(NULL, 1), MP_EINVAL);
    TU_ASSERT_RC(mp_bounded_semaphore_new(NULL, 1), MP_EINVAL);
    mp_semaphore *s;
    TU_ASSERT_RC(mp_semaphore_new(&s, (unsigned)INT_MAX + 1), MP_EINVAL);
    assert_null(s);
    TU_ASSERT_RC(mp_semaphore_acquire(NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_semaphore_release(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_semaphore_value(NULL), MP_EINVAL);
    mp_semaphore_free(NULL);
    TU_OK(mp_semaphore_new(&s, 1));
    TU_ASSERT_RC(mp_semaphore_acquire(s, 0.0 / 0.0), MP_EINVAL);
    mp_semaphore_free(s);
    TU_ASSERT_RC(mp_semaphore_acquire(s, 0), MP_EINVAL);      /* freed */
    TU_ASSERT_RC(mp_semaphore_release(s), MP_EINVAL);
    mp_lock *l;                                               /* another kind of handle */
    TU_OK(mp_lock_new(&l));
    TU_ASSERT_RC(mp_semaphore_acquire((mp_semaphore *)l, 0), MP_EINVAL);
    mp_lock_free(l);
}

static void test_semaphore_counts_acquires_and_releases(void **state)
{
    (void)state;
    mp_semaphore *s;
    TU_OK(mp_semaphore_new(&s, 2));
    assert_int_equal(mp_semaphore_value(s), 2);
    TU_OK(mp_semaphore_acquire(s, 0));
    TU_OK(mp_semaphore_acquire(s, MP_FOREVER));
    assert_int_equal(mp_semaphore_value(s), 0);
    TU_ASSERT_RC(mp_semaphore_acquire(s, 0), MP_ETIMEDOUT);
    for (int i = 0; i < 5; i++)                               /* unbounded: past the start */
        TU_OK(mp_semaphore_release(s));
    assert_int_equal(mp_semaphore_value(s), 5);
    mp_semaphore_free(s);
}

static void test_bounded_semaphore_release_past_bound_returns_einval(void **state)
{
    (void)state;
    mp_semaphore *s;
    TU_OK(mp_bounded_semaphore_new(&s, 2));
    TU_ASSERT_RC(mp_semaphore_release(s), MP_EINVAL);
    TU_OK(mp_semaphore_acquire(s, 0));
    TU_OK(mp_semaphore_release(s));
    TU_ASSERT_RC(mp_semaphore_release(s), MP_EINVAL);
    assert_int_equal(mp_semaphore_value(s), 2);
    mp_semaphore_free(s);
    TU_OK(mp_bounded_semaphore_new(&s, 0));
    TU_ASSERT_RC(mp_semaphore_release(s), MP_EINVAL);
    mp_semaphore_free(s);
    TU_OK(mp_semaphore_new(&s, INT_MAX));                     /* unbounded, but an int */
    TU_ASSERT_RC(mp_semaphore_release(s), MP_EINVAL);
    assert_int_equal(mp_semaphore_value(s), INT_MAX);
    mp_semaphore_free(s);
}

static void test_semaphore_acquire_times_out_on_time(void **state)
{
    (void)state;
    mp_semaphore *s;
    TU_OK(mp_semaphore_new(&s, 0));
    double t0 = tu_now();
    TU_ASSERT_RC(mp_semaphore_acquire(s, 0.25), MP_ETIMEDOUT);
    assert_on_time(tu_now() - t0, 0.25);
    mp_semaphore_free(s);
}

struct gate {
    mp_semaphore *sem;
    atomic_int inside, most, done;
};

static int use_gate(void *arg)
{
    struct gate *g = arg;
    for (int i = 0; i < 50; i++) {
        if (mp_semaphore_acquire(g->sem, 30) != 0)
            return 1;
        int n = atomic_fetch_add(&g->inside, 1) + 1;
        for (int m = atomic_load(&g->most); n > m && !atomic_compare_exchange_weak(&g->most, &m, n);)
            ;
        sched_yield();
        atomic_fetch_sub(&g->inside, 1);
        if (mp_semaphore_release(g->sem) != 0)
            return 2;
    }
    atomic_fetch_add(&g->done, 1);
    return 0;
}

static void test_semaphore_admits_at_most_value_processes(void **state)
{
    (void)state;
    struct gate *g = mp_shared_alloc(sizeof *g);
    TU_OK(mp_bounded_semaphore_new(&g->sem, 2));
    pid_t pids[5];
    for (int i = 0; i < 5; i++)
        pids[i] = tu_fork(use_gate, g);
    for (int i = 0; i < 5; i++)
        assert_int_equal(tu_wait(pids[i], 60), 0);
    assert_int_equal(atomic_load(&g->done), 5);
    assert_true(atomic_load(&g->most) <= 2);
    assert_int_equal(mp_semaphore_value(g->sem), 2);
    mp_semaphore_free(g->sem);
    mp_shared_free(g);
}

static int acquire_sem_then_report(void *arg)
{
    return mp_semaphore_acquire(arg, 30) == 0 ? 0 : 1;
}

static void test_semaphore_release_wakes_a_sleeping_process(void **state)
{
    (void)state;
    mp_semaphore *s;
    TU_OK(mp_semaphore_new(&s, 0));
    pid_t pid = tu_fork(acquire_sem_then_report, s);
    assert_int_equal(tu_wait(pid, 0.3), TU_TIMEOUT);         /* it blocks... */
    pid = tu_fork(acquire_sem_then_report, s);
    TU_OK(mp_semaphore_release(s));                           /* ...until a release */
    assert_int_equal(tu_wait(pid, 10), 0);
    mp_semaphore_free(s);
}

static int acquire_sem_forever(void *arg)
{
    void **a = arg;
    atomic_store(&((tu_flag *)a[1])->n, 1);
    mp_semaphore_acquire(a[0], MP_FOREVER);
    return 3;
}

static void test_semaphore_waiter_killed_does_not_wedge_the_rest(void **state)
{
    (void)state;
    mp_semaphore *s;
    TU_OK(mp_semaphore_new(&s, 0));
    void *args[2] = { s, flag_new() };
    pid_t dead = tu_fork(acquire_sem_forever, args);
    assert_true(flag_wait(args[1], 10));
    assert_int_equal(tu_wait(dead, 0.2), TU_TIMEOUT);         /* killed while asleep */
    pid_t pid = tu_fork(acquire_sem_then_report, s);
    TU_OK(mp_semaphore_release(s));
    assert_int_equal(tu_wait(pid, 10), 0);
    assert_int_equal(mp_semaphore_value(s), 0);
    TU_OK(mp_semaphore_release(s));
    TU_OK(mp_semaphore_acquire(s, 0));
    mp_shared_free(args[1]);
    mp_semaphore_free(s);
}

/* ------------------------------------------------------------------ event */

static void test_event_calls_refuse_bad_arguments(void **state)
{
    (void)state;
    TU_ASSERT_RC(mp_event_new(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_event_set(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_event_clear(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_event_wait(NULL, 0), MP_EINVAL);
    assert_false(mp_event_is_set(NULL));
    mp_event_free(NULL);
    mp_event *e;
    TU_OK(mp_event_new(&e));
    TU_ASSERT_RC(mp_event_wait(e, 0.0 / 0.0), MP_EINVAL);
    mp_event_free(e);
    TU_ASSERT_RC(mp_event_set(e), MP_EINVAL);
}

static void test_event_set_clear_and_wait(void **state)
{
    (void)state;
    mp_event *e;
    TU_OK(mp_event_new(&e));
    assert_false(mp_event_is_set(e));
    TU_ASSERT_RC(mp_event_wait(e, 0), MP_ETIMEDOUT);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_event_wait(e, 0.25), MP_ETIMEDOUT);
    assert_on_time(tu_now() - t0, 0.25);
    TU_OK(mp_event_set(e));
    TU_OK(mp_event_set(e));
    assert_true(mp_event_is_set(e));
    TU_OK(mp_event_wait(e, 0));
    TU_OK(mp_event_wait(e, MP_FOREVER));
    TU_OK(mp_event_clear(e));
    assert_false(mp_event_is_set(e));
    mp_event_free(e);
}

static int wait_event(void *arg)
{
    void **a = arg;
    atomic_fetch_add(&((tu_flag *)a[1])->n, 1);
    return mp_event_wait(a[0], 30) == 0 && mp_event_is_set(a[0]) ? 0 : 1;
}

static bool all_four_(void *arg)
{
    return atomic_load(&((tu_flag *)arg)->n) == 4;
}

static void test_event_set_wakes_every_waiting_process(void **state)
{
    (void)state;
    mp_event *e;
    TU_OK(mp_event_new(&e));
    void *args[2] = { e, flag_new() };
    pid_t pids[4];
    for (int i = 0; i < 4; i++)
        pids[i] = tu_fork(wait_event, args);
    assert_true(tu_wait_for(all_four_, args[1], 10));
    TU_OK(mp_event_set(e));
    for (int i = 0; i < 4; i++)
        assert_int_equal(tu_wait(pids[i], 10), 0);
    mp_shared_free(args[1]);
    mp_event_free(e);
}

static void *wait_event_thread(void *arg)
{
    return (void *)(intptr_t)wait_event(arg);
}

static void test_event_set_wakes_threads_and_survives_a_killed_waiter(void **state)
{
    (void)state;
    mp_event *e;
    TU_OK(mp_event_new(&e));
    void *args[2] = { e, flag_new() };
    pid_t dead = tu_fork(wait_event, args);
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        t[i] = thread_start(wait_event_thread, args);
    assert_true(tu_wait_for(all_four_, args[1], 10));
    kill_child(dead);
    TU_OK(mp_event_set(e));
    for (int i = 0; i < 3; i++)
        assert_int_equal((intptr_t)thread_join(t[i]), 0);
    mp_shared_free(args[1]);
    mp_event_free(e);
}

/* A set cleared again at once still wakes a process already waiting
 * (Python's threading.Event.wait returns True: the flag was set after the
 * wait began); before, the waiter slept out its whole timeout. */
static int pulse_later(void *arg)
{
    usleep(200 * 1000);                /* the parent is asleep in its wait by then */
    return mp_event_set(arg) == 0 && mp_event_clear(arg) == 0 ? 0 : 1;
}

static void test_event_set_then_cleared_wakes_a_waiter(void **state)
{
    (void)state;
    mp_event *e;
    TU_OK(mp_event_new(&e));
    pid_t pid = tu_fork(pulse_later, e);
    double t0 = tu_now();
    TU_OK(mp_event_wait(e, 5.0 * tu_slow()));
    assert_true(tu_now() - t0 < 4.0 * tu_slow());
    assert_int_equal(tu_wait(pid, 10), 0);
    assert_false(mp_event_is_set(e));
    TU_ASSERT_RC(mp_event_wait(e, 0.05), MP_ETIMEDOUT);   /* cleared: a new wait waits */
    TU_OK(mp_event_set(e));
    TU_OK(mp_event_set(e));            /* twice: still set, one set */
    TU_OK(mp_event_wait(e, 0));
    TU_OK(mp_event_clear(e));
    TU_OK(mp_event_clear(e));
    TU_ASSERT_RC(mp_event_wait(e, 0), MP_ETIMEDOUT);
    mp_event_free(e);
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_semaphore_calls_refuse_bad_arguments),
        cmocka_unit_test(test_semaphore_counts_acquires_and_releases),
        cmocka_unit_test(test_bounded_semaphore_release_past_bound_returns_einval),
        cmocka_unit_test(test_semaphore_acquire_times_out_on_time),
        cmocka_unit_test(test_semaphore_admits_at_most_value_processes),
        cmocka_unit_test(test_semaphore_release_wakes_a_sleeping_process),
        cmocka_unit_test(test_semaphore_waiter_killed_does_not_wedge_the_rest),
        cmocka_unit_test(test_event_calls_refuse_bad_arguments),
        cmocka_unit_test(test_event_set_clear_and_wait),
        cmocka_unit_test(test_event_set_wakes_every_waiting_process),
        cmocka_unit_test(test_event_set_wakes_threads_and_survives_a_killed_waiter),
        cmocka_unit_test(test_event_set_then_cleared_wakes_a_waiter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
