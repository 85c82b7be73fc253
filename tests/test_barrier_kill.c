/* test_barrier_kill.c - a party killed inside mp_barrier_wait with the
 * barrier's lock held, at the worst moments (mp__barrier_test_hook,
 * MPROC_WHITEBOX): the barrier breaks, and after a reset every later round
 * gives each party its own index, with nobody counted twice or never. */
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

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_barrier_party_killed_between_count_and_slot),
        cmocka_unit_test(test_barrier_party_killed_between_uncount_and_slot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
