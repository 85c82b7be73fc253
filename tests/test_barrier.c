/* test_barrier.c - Barrier as threading.Barrier: distinct indices each round,
 * a timeout or abort breaks it for every waiter, reset mends it, and a party
 * killed while waiting breaks it instead of wedging the others. */
#include "sync_helpers.h"

#include <limits.h>
#include <signal.h>
#include <sys/time.h>

#include <stdlib.h>

#define ROUNDS 20

struct track {
    mp_barrier *b;
    double timeout;
    atomic_int seen[ROUNDS];    /* bit i: index i came out in that round */
    atomic_int started;
};

static struct track *track_new(unsigned parties)
{
    struct track *t = mp_shared_alloc(sizeof *t);
    assert_non_null(t);
    TU_OK(mp_barrier_new(&t->b, parties));
    t->timeout = 30;
    return t;
}

static void track_free(struct track *t)
{
    mp_barrier_free(t->b);
    mp_shared_free(t);
}

static int pass_rounds(void *arg)
{
    struct track *t = arg;
    for (int r = 0; r < ROUNDS; r++) {
        int i = mp_barrier_wait(t->b, 30);
        if (i < 0 || i >= mp_barrier_parties(t->b))
            return 1;
        atomic_fetch_or(&t->seen[r], 1 << i);
    }
    return 0;
}

static void *pass_rounds_thread(void *arg)
{
    return (void *)(intptr_t)pass_rounds(arg);
}

/* One wait; the exit code says what it returned: index, or 100 for broken. */
static int wait_once(void *arg)
{
    struct track *t = arg;
    atomic_fetch_add(&t->started, 1);
    int rc = mp_barrier_wait(t->b, t->timeout);
    return rc == MP_EBROKEN ? 100 : rc >= 0 ? rc : 101;
}

static void *wait_once_thread(void *arg)
{
    return (void *)(intptr_t)wait_once(arg);
}

static bool n_waiting_is_(void *arg)
{
    void **a = arg;
    return mp_barrier_n_waiting(a[0]) == (int)(intptr_t)a[1];
}

static bool n_waiting_reaches(mp_barrier *b, int n)
{
    void *a[2] = { b, (void *)(intptr_t)n };
    return tu_wait_for(n_waiting_is_, a, 10);
}

/* ------------------------------------------------------------------ arguments */

static void test_barrier_calls_refuse_bad_arguments(void **state)
{
    (void)state;
    mp_barrier *b;
    TU_ASSERT_RC(mp_barrier_new(NULL, 2), MP_EINVAL);
    TU_ASSERT_RC(mp_barrier_new(&b, 0), MP_EINVAL);
    assert_null(b);
    TU_ASSERT_RC(mp_barrier_new(&b, UINT_MAX), MP_EINVAL);     /* indices are ints */
    TU_ASSERT_RC(mp_barrier_wait(NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_barrier_abort(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_barrier_reset(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_barrier_parties(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_barrier_n_waiting(NULL), MP_EINVAL);
    assert_false(mp_barrier_broken(NULL));
    mp_barrier_free(NULL);
    TU_OK(mp_barrier_new(&b, 2));
    TU_ASSERT_RC(mp_barrier_wait(b, 0.0 / 0.0), MP_EINVAL);
    assert_int_equal(mp_barrier_parties(b), 2);
    assert_int_equal(mp_barrier_n_waiting(b), 0);
    mp_barrier_free(b);
    TU_ASSERT_RC(mp_barrier_wait(b, 0), MP_EINVAL);         /* freed */
}

static void test_barrier_of_one_party_never_blocks(void **state)
{
    (void)state;
    mp_barrier *b;
    TU_OK(mp_barrier_new(&b, 1));
    for (int i = 0; i < 3; i++)
        TU_OK(mp_barrier_wait(b, 0));
    mp_barrier_free(b);
}

/* ------------------------------------------------------------------ rounds */

static void test_barrier_gives_threads_distinct_indices_every_round(void **state)
{
    (void)state;
    struct track *t = track_new(3);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        th[i] = thread_start(pass_rounds_thread, t);
    for (int i = 0; i < 3; i++)
        assert_int_equal((intptr_t)thread_join(th[i]), 0);
    for (int r = 0; r < ROUNDS; r++)
        assert_int_equal(atomic_load(&t->seen[r]), 0x7);
    track_free(t);
}

static void test_barrier_gives_processes_distinct_indices_every_round(void **state)
{
    (void)state;
    struct track *t = track_new(4);
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = tu_fork(pass_rounds, t);
    assert_int_equal(pass_rounds(t), 0);                    /* and one thread of ours */
    for (int i = 0; i < 3; i++)
        assert_int_equal(tu_wait(pids[i], 30), 0);
    for (int r = 0; r < ROUNDS; r++)
        assert_int_equal(atomic_load(&t->seen[r]), 0xf);
    track_free(t);
}

/* ------------------------------------------------------------------ breaking */

static void test_barrier_wait_timeout_breaks_it_for_every_waiter(void **state)
{
    (void)state;
    struct track *t = track_new(4);
    pid_t pid = tu_fork(wait_once, t);
    pthread_t th = thread_start(wait_once_thread, t);
    assert_true(n_waiting_reaches(t->b, 2));
    double t0 = tu_now();
    TU_ASSERT_RC(mp_barrier_wait(t->b, 0.25), MP_EBROKEN);
    assert_on_time(tu_now() - t0, 0.25);
    assert_int_equal((intptr_t)thread_join(th), 100);
    assert_int_equal(tu_wait(pid, 10), 100);
    TU_ASSERT_RC(mp_barrier_wait(t->b, 10), MP_EBROKEN);    /* stays broken */
    assert_true(mp_barrier_broken(t->b));
    assert_int_equal(mp_barrier_n_waiting(t->b), 0);
    TU_OK(mp_barrier_reset(t->b));                           /* reset mends it */
    assert_false(mp_barrier_broken(t->b));
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = tu_fork(wait_once, t);
    int i = mp_barrier_wait(t->b, 10 * tu_slow());
    assert_true(i >= 0 && i < 4);
    int seen = 1 << i;
    for (int k = 0; k < 3; k++) {
        int rc = tu_wait(pids[k], 10);
        assert_true(rc >= 0 && rc < 4);
        seen |= 1 << rc;
    }
    assert_int_equal(seen, 0xf);
    track_free(t);
}

static void test_barrier_zero_timeout_breaks_it_at_once(void **state)
{
    (void)state;
    mp_barrier *b;
    TU_OK(mp_barrier_new(&b, 2));
    TU_ASSERT_RC(mp_barrier_wait(b, 0), MP_EBROKEN);
    TU_ASSERT_RC(mp_barrier_wait(b, 0), MP_EBROKEN);
    TU_OK(mp_barrier_reset(b));
    mp_barrier_free(b);
}

static void test_barrier_abort_breaks_it_for_every_waiter(void **state)
{
    (void)state;
    struct track *t = track_new(3);
    pid_t pid = tu_fork(wait_once, t);
    pthread_t th = thread_start(wait_once_thread, t);
    assert_true(n_waiting_reaches(t->b, 2));
    TU_OK(mp_barrier_abort(t->b));
    assert_int_equal((intptr_t)thread_join(th), 100);
    assert_int_equal(tu_wait(pid, 10), 100);
    TU_ASSERT_RC(mp_barrier_wait(t->b, 0), MP_EBROKEN);
    track_free(t);
}

static void test_barrier_reset_breaks_current_waiters_then_works(void **state)
{
    (void)state;
    struct track *t = track_new(2);
    pthread_t th = thread_start(wait_once_thread, t);
    assert_true(n_waiting_reaches(t->b, 1));
    TU_OK(mp_barrier_reset(t->b));
    assert_int_equal((intptr_t)thread_join(th), 100);        /* as Python: BrokenBarrierError */
    th = thread_start(wait_once_thread, t);
    int i = mp_barrier_wait(t->b, 10 * tu_slow());
    int j = (int)(intptr_t)thread_join(th);
    assert_true((i == 0 && j == 1) || (i == 1 && j == 0));
    track_free(t);
}

static void test_barrier_killed_party_breaks_it_instead_of_wedging(void **state)
{
    (void)state;
    struct track *t = track_new(3);
    t->timeout = MP_FOREVER;
    pid_t pid = tu_fork(wait_once, t);
    assert_true(n_waiting_reaches(t->b, 1));
    pthread_t th = thread_start(wait_once_thread, t);
    assert_true(n_waiting_reaches(t->b, 2));
    double t0 = tu_now();
    kill_child(pid);
    assert_int_equal((intptr_t)thread_join(th), 100);
    assert_true(tu_now() - t0 < 1.0 * tu_slow());
    assert_int_equal(mp_barrier_n_waiting(t->b), 0);
    TU_OK(mp_barrier_reset(t->b));                            /* and it can be mended */
    t->timeout = 30;
    pthread_t a = thread_start(wait_once_thread, t);
    pthread_t b = thread_start(wait_once_thread, t);
    int i = mp_barrier_wait(t->b, 10 * tu_slow());
    int seen = (1 << i) | (1 << (intptr_t)thread_join(a)) | (1 << (intptr_t)thread_join(b));
    assert_int_equal(seen, 0x7);
    track_free(t);
}

/* The party killed was the only one waiting, so no sleeper is there to take
 * it out: the next party to arrive (or to ask) must, and find the barrier
 * broken, not trip it with the dead one's count. */
static void test_barrier_party_killed_alone_breaks_it_for_the_next(void **state)
{
    (void)state;
    struct track *t = track_new(2);
    t->timeout = MP_FOREVER;
    pid_t pid = tu_fork(wait_once, t);
    assert_true(n_waiting_reaches(t->b, 1));
    kill_child(pid);
    assert_int_equal(mp_barrier_wait(t->b, 1.0 * tu_slow()), MP_EBROKEN);
    assert_true(mp_barrier_broken(t->b));
    TU_OK(mp_barrier_reset(t->b));

    pid = tu_fork(wait_once, t);                     /* the queries take it out too */
    assert_true(n_waiting_reaches(t->b, 1));
    kill_child(pid);
    assert_true(mp_barrier_broken(t->b));
    assert_int_equal(mp_barrier_n_waiting(t->b), 0);
    TU_OK(mp_barrier_reset(t->b));

    t->timeout = 30;                                 /* and it is mended */
    pthread_t a = thread_start(wait_once_thread, t);
    int i = mp_barrier_wait(t->b, 10 * tu_slow());
    assert_int_equal((1 << i) | (1 << (intptr_t)thread_join(a)), 0x3);
    track_free(t);
}

static void on_alarm(int sig)
{
    (void)sig;
}

static int kills_after_200ms(void *arg)
{
    usleep(200 * 1000);
    return kill((pid_t)(intptr_t)arg, SIGKILL) == 0 ? 0 : 1;
}

/* A sleeper takes out killed parties when its sleep ends with nothing
 * changed: a signal ends it too, and a process with an interval timer (a
 * profiler's SIGPROF, an alarm every 20 ms) would otherwise never see its
 * time slice pass, and wait for ever beside a dead party. */
static int waits_beside_a_killed_party_under_signals(void *arg)
{
    struct track *t = arg;
    pid_t party = tu_fork(wait_once, t);
    if (!n_waiting_reaches(t->b, 1))
        return 10;
    struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
    struct itimerval every_20ms = { { 0, 20 * 1000 }, { 0, 20 * 1000 } };
    if (sigaction(SIGALRM, &sa, NULL) != 0 || setitimer(ITIMER_REAL, &every_20ms, NULL) != 0)
        return 11;
    pid_t killer = tu_fork(kills_after_200ms, (void *)(intptr_t)party);
    int rc = mp_barrier_wait(t->b, MP_FOREVER);
    if (tu_wait(killer, 10) != 0 || tu_wait(party, 10) != -SIGKILL)
        return 12;
    return rc == MP_EBROKEN ? 0 : 13;
}

static void test_barrier_killed_party_is_noticed_by_a_sleeper_under_signals(void **state)
{
    (void)state;
    struct track *t = track_new(3);
    t->timeout = MP_FOREVER;
    assert_int_equal(tu_wait(tu_fork(waits_beside_a_killed_party_under_signals, t), 10), 0);
    track_free(t);
}

static int cycle_forever(void *arg)
{
    struct track *t = arg;
    for (;;) {
        int rc = mp_barrier_wait(t->b, 5);
        if (rc == MP_EBROKEN)
            mp_barrier_reset(t->b);
        else if (rc < 0)
            return 1;
    }
}

static void test_barrier_survives_parties_killed_at_random_moments(void **state)
{
    (void)state;
    struct track *t = track_new(3);
    srand((unsigned)getpid());
    for (int round = 0; round < 10; round++) {
        pid_t pids[3];
        for (int i = 0; i < 3; i++)
            pids[i] = tu_fork(cycle_forever, t);
        for (int i = 0; i < 3; i++) {
            usleep((useconds_t)(rand() % 5000));     /* a random moment, not a synchronisation */
            kill_child(pids[i]);
        }
        TU_OK(mp_barrier_reset(t->b));               /* the dead are taken out, then a round */
        pthread_t a = thread_start(wait_once_thread, t);
        pthread_t b = thread_start(wait_once_thread, t);
        int i = mp_barrier_wait(t->b, 10 * tu_slow());
        assert_true(i >= 0 && i < 3);
        int seen = (1 << i) | (1 << (intptr_t)thread_join(a)) | (1 << (intptr_t)thread_join(b));
        assert_int_equal(seen, 0x7);
    }
    track_free(t);
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_barrier_calls_refuse_bad_arguments),
        cmocka_unit_test(test_barrier_of_one_party_never_blocks),
        cmocka_unit_test(test_barrier_gives_threads_distinct_indices_every_round),
        cmocka_unit_test(test_barrier_gives_processes_distinct_indices_every_round),
        cmocka_unit_test(test_barrier_wait_timeout_breaks_it_for_every_waiter),
        cmocka_unit_test(test_barrier_zero_timeout_breaks_it_at_once),
        cmocka_unit_test(test_barrier_abort_breaks_it_for_every_waiter),
        cmocka_unit_test(test_barrier_reset_breaks_current_waiters_then_works),
        cmocka_unit_test(test_barrier_killed_party_breaks_it_instead_of_wedging),
        cmocka_unit_test(test_barrier_party_killed_alone_breaks_it_for_the_next),
        cmocka_unit_test(test_barrier_killed_party_is_noticed_by_a_sleeper_under_signals),
        cmocka_unit_test(test_barrier_survives_parties_killed_at_random_moments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
