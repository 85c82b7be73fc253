/* test_barrier_kill.c - a party killed inside mp_barrier_wait with the
 * barrier's lock held, at the worst moments (mp__barrier_test_hook,
 * MPROC_WHITEBOX): the barrier breaks, and after a reset every later round
 * gives each party its own index, with nobody counted twice or never. A
 * party stopped there (SIGSTOP) holds no timed wait past its timeout. */
#include "sync_helpers.h"

#include "sync_internal.h"

#include <string.h>

static const char *kill_point;

static void die_at_point(const char *point)
{
    if (strcmp(point, kill_point) == 0)
        raise(SIGKILL);
}

/* A party whose wait dies at kill_point. */
static int wait_and_die(void *arg)
{
    mp__barrier_test_hook = die_at_point;
    mp_barrier_wait(arg, 30);
    return 1;                            /* not reached: it died in there */
}

static void *wait_thread(void *arg)
{
    return (void *)(intptr_t)mp_barrier_wait(arg, 10 * tu_slow());
}

/* Rounds of `parties` (this thread and the others as threads): each gives
 * out every index once. The first waiter waits more than a slice before
 * the others come, so a dead party still marked in its slot is found. */
static void rounds_work(mp_barrier *b, unsigned parties, int rounds)
{
    for (int r = 0; r < rounds; r++) {
        pthread_t th[4];
        for (unsigned i = 0; i + 1 < parties; i++) {
            th[i] = thread_start(wait_thread, b);
            if (i == 0)
                usleep(250 * 1000);      /* > 2 slices (BARRIER_SLICE) */
        }
        int seen = 0, me = mp_barrier_wait(b, 10 * tu_slow());
        assert_true(me >= 0 && me < (int)parties);
        seen |= 1 << me;
        for (unsigned i = 0; i + 1 < parties; i++) {
            intptr_t idx = (intptr_t)thread_join(th[i]);
            assert_true(idx >= 0 && idx < (int)parties);
            seen |= 1 << idx;
        }
        assert_int_equal(seen, (1 << parties) - 1);
    }
}

/* Killed counted, before its slot is marked: its count would stay for ever
 * and the barrier would never fill again (each later round timed out). */
static void test_barrier_party_killed_between_count_and_slot(void **state)
{
    (void)state;
    mp_barrier *b;
    TU_OK(mp_barrier_new(&b, 3));
    kill_point = "barrier_counted";
    pid_t pid = tu_fork(wait_and_die, b);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), -SIGKILL);
    assert_true(mp_barrier_broken(b));
    TU_OK(mp_barrier_reset(b));
    rounds_work(b, 3, 3);
    mp_barrier_free(b);
}

/* Killed leaving a round it tripped, uncounted but its slot still marked:
 * the slot's repair would count it out a second time. */
static void test_barrier_party_killed_between_uncount_and_slot(void **state)
{
    (void)state;
    mp_barrier *b;
    TU_OK(mp_barrier_new(&b, 2));
    kill_point = "barrier_uncounted";
    pid_t pid = tu_fork(wait_and_die, b);
    int rc = mp_barrier_wait(b, 10 * tu_slow());   /* the round trips; the child dies leaving it */
    assert_true(rc == 0 || rc == 1 || rc == MP_EBROKEN);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), -SIGKILL);
    TU_OK(mp_barrier_reset(b));
    rounds_work(b, 2, 3);
    mp_barrier_free(b);
}

/* ------------------------------------------------------------------ stopped */

/* A party stopped (SIGSTOP: a debugger, job control) at kill_point with
 * the barrier's lock held. A thread resumes it after 10 s, so a wait that
 * does wait for it fails slowly instead of hanging the test. */
static _Atomic pid_t stopped_pid;

static void stop_at_point(const char *point)
{
    if (strcmp(point, kill_point) == 0)
        raise(SIGSTOP);
}

/* One wait, stopped at kill_point: exits 100 if it returned MP_EBROKEN. */
static int wait_and_stop(void *arg)
{
    mp__barrier_test_hook = stop_at_point;
    int rc = mp_barrier_wait(arg, 30);
    return rc == MP_EBROKEN ? 100 : rc >= 0 ? rc : 101;
}

static bool is_stopped(void *arg)
{
    return tu_proc_state(*(pid_t *)arg) == 'T';
}

/* Waits until pid is stopped; a thread will resume it after 10 s if the
 * test has not by then. */
static pthread_t watch_stopped(pid_t pid)
{
    assert_true(tu_wait_for(is_stopped, &pid, 10));
    atomic_store(&stopped_pid, pid);
    return thread_start(tu_resume_later, &stopped_pid);
}

/* Forks a party that stops at point with the lock held. */
static pid_t fork_stopped_party(mp_barrier *b, const char *point, pthread_t *resumer)
{
    kill_point = point;
    pid_t pid = tu_fork(wait_and_stop, b);
    *resumer = watch_stopped(pid);
    return pid;
}

/* Resumes the stopped party, before the 10 s thread did (no wait waited
 * for it); it exits with exit_code, the barrier is broken with nobody
 * counted, and after a reset every round gives out each index once. */
static void resume_and_mend(mp_barrier *b, pthread_t resumer, pid_t pid, int exit_code)
{
    pid_t stopped = atomic_exchange(&stopped_pid, 0);
    if (stopped)
        kill(stopped, SIGCONT);
    thread_join(resumer);
    assert_int_equal(stopped, pid);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), exit_code);
    assert_true(mp_barrier_broken(b));
    assert_int_equal(mp_barrier_n_waiting(b), 0);
    TU_OK(mp_barrier_reset(b));
    rounds_work(b, (unsigned)mp_barrier_parties(b), 3);
    mp_barrier_free(b);
}

/* A wait that cannot take the lock by its deadline returns MP_EBROKEN on
 * time (the lock wait is its time left, at least 10 ms), and the barrier
 * is broken for the stopped party when it goes on, as a wait that times
 * out breaks it. Before, the wait waited until the party was resumed. */
static void test_barrier_timed_wait_is_not_held_by_a_stopped_lock_holder(void **state)
{
    (void)state;
    mp_barrier *b;
    TU_OK(mp_barrier_new(&b, 3));
    pthread_t resumer;
    pid_t pid = fork_stopped_party(b, "barrier_counted", &resumer);
    double timeouts[] = { 0.2, 0 };
    for (int i = 0; i < 2; i++) {
        double t0 = tu_now();
        int rc = mp_barrier_wait(b, timeouts[i]);
        double took = tu_now() - t0;
        print_message("timed wait (%.1f s) with the lock holder stopped: %d after %.3f s\n",
                      timeouts[i], rc, took);
        TU_ASSERT_RC(rc, MP_EBROKEN);
        assert_on_time(took, timeouts[i]);
    }
    resume_and_mend(b, resumer, pid, 100);
}

struct timed_wait {
    mp_barrier *b;
    double timeout, took;
    int rc;
};

static void *timed_wait_thread(void *arg)
{
    struct timed_wait *w = arg;
    double t0 = tu_now();
    w->rc = mp_barrier_wait(w->b, w->timeout);
    w->took = tu_now() - t0;
    return NULL;
}

/* The waiter, held up by a party stopped with the lock, gave up on time. */
static void expect_gave_up_on_time(pthread_t waiter, struct timed_wait *w, const char *who)
{
    thread_join(waiter);
    print_message("%s (%.1f s) with a holder stopped meanwhile: %d after %.3f s\n",
                  who, w->timeout, w->rc, w->took);
    TU_ASSERT_RC(w->rc, MP_EBROKEN);
    assert_on_time(w->took, w->timeout);
}

static bool n_waiting_is_one(void *arg)
{
    return mp_barrier_n_waiting(arg) == 1;
}

/* A party already waiting (asleep between its slices) when another stops
 * holding the lock: taking the lock back after its slice holds it no
 * longer than its deadline. It leaves counted, its slot given back but
 * still marked, and the stopped party, resumed, takes it out and finds
 * the barrier broken: nobody counted twice or never. */
static void test_barrier_waiting_party_leaves_on_time_when_a_holder_stops(void **state)
{
    (void)state;
    mp_barrier *b;
    TU_OK(mp_barrier_new(&b, 3));
    struct timed_wait w = { .b = b, .timeout = 1.0 };
    pthread_t waiter = thread_start(timed_wait_thread, &w);
    double t0 = tu_now();
    assert_true(tu_wait_for(n_waiting_is_one, b, 10));
    pthread_t resumer;
    pid_t pid = fork_stopped_party(b, "barrier_counted", &resumer);
    assert_true(tu_now() - t0 < w.timeout);      /* stopped before the waiter's deadline */
    expect_gave_up_on_time(waiter, &w, "waiter");
    resume_and_mend(b, resumer, pid, 100);
}

/* Stops at its first sleep (lock free, counted) and again leaving the
 * round (lock held, uncounted, the round draining). */
static void stop_asleep_then_leaving(const char *point)
{
    static bool slept;
    if ((strcmp(point, "barrier_asleep") == 0 && !slept) || strcmp(point, "barrier_uncounted") == 0) {
        slept = true;
        raise(SIGSTOP);
    }
}

static int wait_stopping_twice(void *arg)
{
    mp__barrier_test_hook = stop_asleep_then_leaving;
    return mp_barrier_wait(arg, 30);
}

/* A party waiting for the last round to drain (not yet counted) when a
 * party of that round stops leaving it, the lock held: it too keeps its
 * deadline, and the barrier is broken once the stopped one goes on. */
static void test_barrier_entering_party_leaves_on_time_when_a_holder_stops(void **state)
{
    (void)state;
    mp_barrier *b;
    TU_OK(mp_barrier_new(&b, 2));
    pid_t pid = tu_fork(wait_stopping_twice, b);
    assert_true(tu_wait_for(is_stopped, &pid, 10));          /* asleep, counted */
    int me = mp_barrier_wait(b, 10 * tu_slow());             /* trips; the round drains */
    assert_true(me == 0 || me == 1);
    struct timed_wait w = { .b = b, .timeout = 1.0 };
    double t0 = tu_now();
    pthread_t waiter = thread_start(timed_wait_thread, &w);
    assert_true(tu_wait_threads_asleep(10));                 /* waiting for the drain */
    kill(pid, SIGCONT);
    pthread_t resumer = watch_stopped(pid);                  /* leaving, the lock held */
    assert_true(tu_now() - t0 < w.timeout);
    expect_gave_up_on_time(waiter, &w, "entering waiter");
    resume_and_mend(b, resumer, pid, 1 - me);                /* its round had tripped */
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_barrier_party_killed_between_count_and_slot),
        cmocka_unit_test(test_barrier_party_killed_between_uncount_and_slot),
        cmocka_unit_test(test_barrier_timed_wait_is_not_held_by_a_stopped_lock_holder),
        cmocka_unit_test(test_barrier_waiting_party_leaves_on_time_when_a_holder_stops),
        cmocka_unit_test(test_barrier_entering_party_leaves_on_time_when_a_holder_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
