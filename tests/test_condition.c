/* test_condition.c - Condition: who must hold the lock, notify(n) wakes at
 * most n of those waiting, a recursive lock is released fully, processes
 * wake each other, and a killed waiter swallows no notification and leaves
 * no record behind.
 * MPROC_WHITEBOX: linked with the static library, for the arena's figures. */
#include "sync_helpers.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct room {
    mp_condition *cond;
    atomic_int ready, woken, rc, go;
};

static struct room *room_new(mp_lock *l)
{
    struct room *r = mp_shared_alloc(sizeof *r);
    assert_non_null(r);
    TU_OK(mp_condition_new(&r->cond, l));
    return r;
}

static void room_free(struct room *r)
{
    mp_condition_free(r->cond);
    mp_shared_free(r);
}

/* Queues on the condition; ready counts it while the lock is held, so once
 * another holder sees ready == n, n waiters are queued. */
static int wait_in_room(void *arg)
{
    struct room *r = arg;
    if (mp_condition_acquire(r->cond, 30) != 0)
        return 1;
    atomic_fetch_add(&r->ready, 1);
    int rc = mp_condition_wait(r->cond, 30);
    atomic_store(&r->rc, rc);
    atomic_fetch_add(&r->woken, 1);
    return mp_condition_release(r->cond) == 0 && rc == 0 ? 0 : 2;
}

static void *wait_in_room_thread(void *arg)
{
    return (void *)(intptr_t)wait_in_room(arg);
}

struct count_of { atomic_int *v; int want; };

static bool reached_(void *arg)
{
    struct count_of *c = arg;
    return atomic_load(c->v) >= c->want;
}

static bool count_reaches(atomic_int *v, int want, double timeout)
{
    struct count_of c = { v, want };
    return tu_wait_for(reached_, &c, timeout);
}

/* Waits until n waiters are queued, holding the lock on return. */
static void acquire_with_waiters(struct room *r, int n)
{
    assert_true(count_reaches(&r->ready, n, 10));
    TU_OK(mp_condition_acquire(r->cond, 10));
}

/* ------------------------------------------------------------------ arguments */

static void test_condition_calls_refuse_bad_arguments(void **state)
{
    (void)state;
    mp_condition *c;
    TU_ASSERT_RC(mp_condition_new(NULL, NULL), MP_EINVAL);
    mp_semaphore *s;
    TU_OK(mp_semaphore_new(&s, 1));
    TU_ASSERT_RC(mp_condition_new(&c, (mp_lock *)s), MP_EINVAL);   /* not a lock */
    assert_null(c);
    mp_semaphore_free(s);
    TU_ASSERT_RC(mp_condition_acquire(NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_condition_release(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_condition_wait(NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_condition_notify(NULL, 1), MP_EINVAL);
    TU_ASSERT_RC(mp_condition_notify_all(NULL), MP_EINVAL);
    mp_condition_free(NULL);
    TU_OK(mp_condition_new(&c, NULL));
    TU_OK(mp_condition_acquire(c, 0));
    TU_ASSERT_RC(mp_condition_wait(c, 0.0 / 0.0), MP_EINVAL);
    TU_ASSERT_RC(mp_condition_notify(c, -1), MP_EINVAL);
    TU_OK(mp_condition_notify(c, 0));
    TU_OK(mp_condition_release(c));
    mp_condition_free(c);
    TU_ASSERT_RC(mp_condition_acquire(c, 0), MP_EINVAL);          /* freed */
}

static void *notify_from_thread(void *arg)
{
    return (void *)(intptr_t)mp_condition_notify(arg, 1);
}

static void test_condition_wait_and_notify_require_holding_the_lock(void **state)
{
    (void)state;
    mp_condition *c;
    TU_OK(mp_condition_new(&c, NULL));
    TU_ASSERT_RC(mp_condition_wait(c, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_condition_notify(c, 1), MP_EINVAL);
    TU_ASSERT_RC(mp_condition_notify_all(c), MP_EINVAL);
    TU_ASSERT_RC(mp_condition_release(c), MP_EINVAL);
    assert_true(strncmp(mp_last_error(), "mp_condition_release: ", 22) == 0);
    TU_OK(mp_condition_acquire(c, 0));
    pthread_t t = thread_start(notify_from_thread, c);   /* held, but not by that thread */
    assert_int_equal((intptr_t)thread_join(t), MP_EINVAL);
    TU_OK(mp_condition_notify_all(c));
    TU_OK(mp_condition_release(c));
    mp_condition_free(c);
}

/* ------------------------------------------------------------------ waiting */

static void test_condition_wait_times_out_on_time_holding_the_lock(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    mp_condition *c;
    TU_OK(mp_condition_new(&c, l));
    TU_OK(mp_lock_acquire(l, 0));
    double t0 = tu_now();
    TU_ASSERT_RC(mp_condition_wait(c, 0.25), MP_ETIMEDOUT);
    assert_on_time(tu_now() - t0, 0.25);
    TU_ASSERT_RC(mp_lock_acquire(l, 0), MP_ETIMEDOUT);       /* held again, by us */
    TU_OK(mp_condition_notify(c, 1));                       /* nobody waits: a no-op */
    TU_ASSERT_RC(mp_condition_wait(c, 0.05), MP_ETIMEDOUT); /* not notified in advance */
    TU_OK(mp_lock_release(l));
    mp_condition_free(c);
    mp_lock_free(l);
}

static void test_condition_notify_wakes_at_most_n_waiters(void **state)
{
    (void)state;
    struct room *r = room_new(NULL);
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        t[i] = thread_start(wait_in_room_thread, r);
    acquire_with_waiters(r, 3);
    TU_OK(mp_condition_notify(r->cond, 1));
    TU_OK(mp_condition_release(r->cond));
    assert_true(count_reaches(&r->woken, 1, 10));
    assert_false(count_reaches(&r->woken, 2, 0.2));         /* exactly one */
    TU_OK(mp_condition_acquire(r->cond, 10));
    TU_OK(mp_condition_notify(r->cond, 5));                 /* the two left */
    TU_OK(mp_condition_release(r->cond));
    for (int i = 0; i < 3; i++)
        assert_int_equal((intptr_t)thread_join(t[i]), 0);
    room_free(r);
}

static void *notify_when_free(void *arg)
{
    mp_condition *c = arg;
    if (mp_condition_acquire(c, 10) != 0)      /* possible only once wait let go of it */
        return (void *)1;
    int rc = mp_condition_notify(c, 1);
    mp_condition_release(c);
    return (void *)(intptr_t)rc;
}

static void test_condition_wait_releases_a_recursive_lock_fully_and_restores_it(void **state)
{
    (void)state;
    mp_condition *c;
    TU_OK(mp_condition_new(&c, NULL));
    for (int i = 0; i < 3; i++)
        TU_OK(mp_condition_acquire(c, 0));
    pthread_t t = thread_start(notify_when_free, c);
    TU_OK(mp_condition_wait(c, 10));
    assert_int_equal((intptr_t)thread_join(t), 0);
    for (int i = 0; i < 3; i++)
        TU_OK(mp_condition_release(c));
    TU_ASSERT_RC(mp_condition_release(c), MP_EINVAL);
    mp_condition_free(c);
}

/* ------------------------------------------------------------------ processes */

static int wait_for_go(void *arg)
{
    struct room *r = arg;
    if (mp_condition_acquire(r->cond, 30) != 0)
        return 1;
    atomic_fetch_add(&r->ready, 1);
    int rc = 0;
    while (!atomic_load(&r->go) && rc == 0)
        rc = mp_condition_wait(r->cond, 30);
    mp_condition_release(r->cond);
    return rc == 0 ? 0 : 2;
}

static void test_condition_notify_all_wakes_waiting_processes(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    struct room *r = room_new(l);
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = tu_fork(wait_for_go, r);
    acquire_with_waiters(r, 3);
    atomic_store(&r->go, 1);
    TU_OK(mp_condition_notify_all(r->cond));
    TU_OK(mp_condition_release(r->cond));
    for (int i = 0; i < 3; i++)
        assert_int_equal(tu_wait(pids[i], 10), 0);
    room_free(r);
    mp_lock_free(l);
}

static void test_condition_killed_waiter_swallows_no_notification(void **state)
{
    (void)state;
    struct room *r = room_new(NULL);
    pid_t dead = tu_fork(wait_in_room, r);      /* first in the queue... */
    assert_true(count_reaches(&r->ready, 1, 10));
    TU_OK(mp_condition_acquire(r->cond, 10));  /* ...and asleep once we hold the lock */
    TU_OK(mp_condition_release(r->cond));
    kill_child(dead);
    pthread_t t = thread_start(wait_in_room_thread, r);
    acquire_with_waiters(r, 2);
    TU_OK(mp_condition_notify(r->cond, 1));    /* skips the dead one */
    TU_OK(mp_condition_release(r->cond));
    assert_int_equal((intptr_t)thread_join(t), 0);
    room_free(r);
}

static size_t arena_used(void)
{
    struct arena_stats st;
    assert_true(arena_check(&st));
    return st.used_bytes;
}

/* A waiter notified and killed before it took the lock back (it waits for
 * the notifier's release): its record must go, once a notify passes it or
 * the condition is freed, not stay in the arena for the family's life. */
static void test_condition_waiter_killed_after_its_notify_leaves_no_record(void **state)
{
    (void)state;
    struct room *r = room_new(NULL);
    size_t before = arena_used();
    for (int i = 0; i < 20; i++) {
        atomic_store(&r->ready, 0);
        pid_t pid = tu_fork(wait_in_room, r);
        acquire_with_waiters(r, 1);
        TU_OK(mp_condition_notify(r->cond, 1));    /* chosen: it now waits for the lock */
        kill_child(pid);
        TU_OK(mp_condition_release(r->cond));
    }
    TU_OK(mp_condition_acquire(r->cond, 10));      /* the next notify takes the dead out */
    TU_OK(mp_condition_notify(r->cond, 1));
    TU_OK(mp_condition_release(r->cond));
    assert_int_equal(arena_used(), before);
    room_free(r);
}

static int notify_and_die_holding_the_lock(void *arg)
{
    struct room *r = arg;
    if (mp_condition_acquire(r->cond, 30) != 0 || mp_condition_notify(r->cond, 1) != 0)
        return 1;
    atomic_store(&r->go, 1);
    return block_forever();
}

struct killer { struct room *room; pid_t pid; };

static void *kill_once_notified(void *arg)
{
    struct killer *k = arg;
    if (!count_reaches(&k->room->go, 1, 30))
        return (void *)1;
    return (void *)(intptr_t)kill(k->pid, SIGKILL);
}

static void test_condition_wait_reports_eownerdead_if_the_notifier_dies_holding_the_lock(void **state)
{
    (void)state;
    struct room *r = room_new(NULL);
    TU_OK(mp_condition_acquire(r->cond, 0));
    struct killer k = { r, tu_fork(notify_and_die_holding_the_lock, r) };
    pthread_t t = thread_start(kill_once_notified, &k);
    TU_ASSERT_RC(mp_condition_wait(r->cond, 30), MP_EOWNERDEAD);   /* notified, lock held */
    assert_int_equal((intptr_t)thread_join(t), 0);
    assert_int_equal(tu_wait(k.pid, 10), -SIGKILL);
    TU_OK(mp_condition_release(r->cond));
    TU_ASSERT_RC(mp_condition_release(r->cond), MP_EINVAL);
    room_free(r);
}

/* ------------------------------------------------------------------ a bounded buffer */

#define SLOTS 4
#define ITEMS 3000

struct buffer {
    mp_condition *not_empty, *not_full;     /* two conditions on one lock */
    mp_lock *lock;
    int items[SLOTS];
    int head, count, produced;
    atomic_long sum;
    atomic_int taken;
};

static bool waited(int rc)
{
    return rc == 0 || rc == MP_ETIMEDOUT;
}

static int produce(void *arg)
{
    struct buffer *b = arg;
    for (int i = 1; i <= ITEMS; i++) {
        if (mp_lock_acquire(b->lock, 30) != 0)
            return 1;
        while (b->count == SLOTS)
            if (!waited(mp_condition_wait(b->not_full, 0.01)))   /* short: exercise timeouts */
                return 2;
        b->items[(b->head + b->count++) % SLOTS] = i;
        mp_condition_notify(b->not_empty, 1);
        mp_lock_release(b->lock);
    }
    return 0;
}

static int consume(void *arg)
{
    struct buffer *b = arg;
    for (;;) {
        if (mp_lock_acquire(b->lock, 30) != 0)
            return 1;
        while (b->count == 0 && atomic_load(&b->taken) < 2 * ITEMS)
            if (!waited(mp_condition_wait(b->not_empty, 0.01)))
                return 2;
        if (b->count == 0) {
            mp_lock_release(b->lock);
            return 0;
        }
        int v = b->items[b->head];
        b->head = (b->head + 1) % SLOTS;
        b->count--;
        atomic_fetch_add(&b->sum, v);
        atomic_fetch_add(&b->taken, 1);
        mp_condition_notify(b->not_full, 1);
        if (atomic_load(&b->taken) == 2 * ITEMS)
            mp_condition_notify_all(b->not_empty);    /* the other consumer can stop */
        mp_lock_release(b->lock);
    }
}

static void test_condition_bounded_buffer_between_processes_loses_nothing(void **state)
{
    (void)state;
    struct buffer *b = mp_shared_alloc(sizeof *b);
    TU_OK(mp_lock_new(&b->lock));
    TU_OK(mp_condition_new(&b->not_empty, b->lock));
    TU_OK(mp_condition_new(&b->not_full, b->lock));
    pid_t pids[4];
    for (int i = 0; i < 4; i++)
        pids[i] = tu_fork(i < 2 ? produce : consume, b);
    for (int i = 0; i < 4; i++)
        assert_int_equal(tu_wait(pids[i], 60), 0);
    assert_int_equal(atomic_load(&b->taken), 2 * ITEMS);
    assert_int_equal(atomic_load(&b->sum), 2L * ITEMS * (ITEMS + 1) / 2);
    mp_condition_free(b->not_full);
    mp_condition_free(b->not_empty);
    mp_lock_free(b->lock);
    mp_shared_free(b);
}

/* ------------------------------------------------------------------ kill -9 at random */

static int ping_forever(void *arg)
{
    struct room *r = arg;
    for (;;) {
        int rc = mp_condition_acquire(r->cond, 30);
        if (rc != 0 && rc != MP_EOWNERDEAD)
            return 1;
        mp_condition_notify(r->cond, 1);
        rc = mp_condition_wait(r->cond, 0.002);
        if (rc != 0 && rc != MP_ETIMEDOUT && rc != MP_EOWNERDEAD)
            return 2;
        mp_condition_release(r->cond);
    }
}

static void test_condition_survives_waiters_and_notifiers_killed_at_random_moments(void **state)
{
    (void)state;
    struct room *r = room_new(NULL);
    srand((unsigned)getpid());
    for (int round = 0; round < 10; round++) {
        pid_t pids[3];
        for (int i = 0; i < 3; i++)
            pids[i] = tu_fork(ping_forever, r);
        for (int i = 0; i < 3; i++) {
            usleep((useconds_t)(rand() % 5000));     /* a random moment, not a synchronisation */
            kill_child(pids[i]);
        }
        int rc = mp_condition_acquire(r->cond, 1);
        assert_true(rc == 0 || rc == MP_EOWNERDEAD);
        TU_OK(mp_condition_notify_all(r->cond));     /* only dead records left: drops them */
        TU_OK(mp_condition_release(r->cond));
    }
    atomic_store(&r->ready, 0);                      /* and it still works */
    pthread_t t = thread_start(wait_in_room_thread, r);
    acquire_with_waiters(r, 1);
    TU_OK(mp_condition_notify(r->cond, 1));
    TU_OK(mp_condition_release(r->cond));
    assert_int_equal((intptr_t)thread_join(t), 0);
    room_free(r);
}

/* ------------------------------------------------------------------ wait_for */

/* A shared value and how often the predicate looked at it. */
struct gauge {
    mp_condition *cond;
    atomic_int value, looks, want;
};

static struct gauge *gauge_new(void)
{
    struct gauge *g = mp_shared_alloc(sizeof *g);
    assert_non_null(g);
    TU_OK(mp_condition_new(&g->cond, NULL));
    return g;
}

static void gauge_free(struct gauge *g)
{
    mp_condition_free(g->cond);
    mp_shared_free(g);
}

static bool gauge_reached(void *arg)
{
    struct gauge *g = arg;
    atomic_fetch_add(&g->looks, 1);
    return atomic_load(&g->value) >= atomic_load(&g->want);
}

static void test_condition_wait_for_returns_at_once_when_the_predicate_holds(void **state)
{
    (void)state;
    struct gauge *g = gauge_new();
    TU_OK(mp_condition_acquire(g->cond, 1));
    double t0 = tu_now();
    TU_OK(mp_condition_wait_for(g->cond, gauge_reached, g, 10));    /* want 0, value 0 */
    assert_true(tu_now() - t0 < 0.1 * tu_slow());
    assert_int_equal(atomic_load(&g->looks), 1);
    TU_OK(mp_condition_release(g->cond));
    gauge_free(g);
}

/* As Python: at the timeout the predicate is looked at once more, after
 * the last wait, and its value decides; the lock is held again. */
static void test_condition_wait_for_times_out_holding_the_lock(void **state)
{
    (void)state;
    struct gauge *g = gauge_new();
    atomic_store(&g->want, 1);
    TU_OK(mp_condition_acquire(g->cond, 1));
    double t0 = tu_now();
    TU_ASSERT_RC(mp_condition_wait_for(g->cond, gauge_reached, g, 0.2), MP_ETIMEDOUT);
    assert_on_time(tu_now() - t0, 0.2);
    assert_true(atomic_load(&g->looks) >= 2);
    atomic_store(&g->looks, 0);
    TU_ASSERT_RC(mp_condition_wait_for(g->cond, gauge_reached, g, 0), MP_ETIMEDOUT);
    assert_int_equal(atomic_load(&g->looks), 2);     /* before and after one wait(0) */
    TU_OK(mp_condition_release(g->cond));             /* held, once */
    TU_ASSERT_RC(mp_condition_release(g->cond), MP_EINVAL);
    gauge_free(g);
}

/* Raises value to 3 one step at a time, notifying at each: the waiter
 * (want 3) must sleep through the first two notifications. */
static int raise_in_steps(void *arg)
{
    struct gauge *g = arg;
    for (int i = 0; i < 3; i++) {
        if (mp_condition_acquire(g->cond, 30) != 0)
            return 1;
        atomic_fetch_add(&g->value, 1);
        mp_condition_notify_all(g->cond);
        mp_condition_release(g->cond);
        usleep(20000);
    }
    return 0;
}

static void *raise_in_steps_thread(void *arg)
{
    return (void *)(intptr_t)raise_in_steps(arg);
}

static void test_condition_wait_for_sleeps_until_the_predicate_holds(void **state)
{
    (void)state;
    struct gauge *g = gauge_new();
    atomic_store(&g->want, 3);
    TU_OK(mp_condition_acquire(g->cond, 1));
    pthread_t t = thread_start(raise_in_steps_thread, g);
    TU_OK(mp_condition_wait_for(g->cond, gauge_reached, g, 30 * tu_slow()));
    assert_int_equal(atomic_load(&g->value), 3);
    assert_true(atomic_load(&g->looks) >= 2);
    TU_OK(mp_condition_release(g->cond));
    assert_int_equal((intptr_t)thread_join(t), 0);

    atomic_store(&g->value, 0);                   /* and from another process */
    TU_OK(mp_condition_acquire(g->cond, 1));
    pid_t pid = tu_fork(raise_in_steps, g);
    TU_OK(mp_condition_wait_for(g->cond, gauge_reached, g, MP_FOREVER));
    assert_int_equal(atomic_load(&g->value), 3);
    TU_OK(mp_condition_release(g->cond));
    assert_int_equal(tu_wait(pid, 30), 0);
    gauge_free(g);
}

static void test_condition_wait_for_refuses_bad_arguments(void **state)
{
    (void)state;
    struct gauge *g = gauge_new();
    TU_ASSERT_RC(mp_condition_wait_for(g->cond, gauge_reached, g, 0), MP_EINVAL);   /* not held */
    assert_non_null(strstr(mp_last_error(), "mp_condition_wait_for: this thread does not hold"));
    TU_OK(mp_condition_acquire(g->cond, 1));
    TU_ASSERT_RC(mp_condition_wait_for(g->cond, NULL, g, 0), MP_EINVAL);
    assert_non_null(strstr(mp_last_error(), "pred is NULL"));
    TU_ASSERT_RC(mp_condition_wait_for(NULL, gauge_reached, g, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_condition_wait_for(g->cond, gauge_reached, g, NAN), MP_EINVAL);
    assert_int_equal(atomic_load(&g->looks), 0);      /* never called on bad arguments */
    TU_OK(mp_condition_release(g->cond));
    gauge_free(g);
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_condition_wait_for_returns_at_once_when_the_predicate_holds),
        cmocka_unit_test(test_condition_wait_for_times_out_holding_the_lock),
        cmocka_unit_test(test_condition_wait_for_sleeps_until_the_predicate_holds),
        cmocka_unit_test(test_condition_wait_for_refuses_bad_arguments),
        cmocka_unit_test(test_condition_calls_refuse_bad_arguments),
        cmocka_unit_test(test_condition_wait_and_notify_require_holding_the_lock),
        cmocka_unit_test(test_condition_wait_times_out_on_time_holding_the_lock),
        cmocka_unit_test(test_condition_notify_wakes_at_most_n_waiters),
        cmocka_unit_test(test_condition_wait_releases_a_recursive_lock_fully_and_restores_it),
        cmocka_unit_test(test_condition_notify_all_wakes_waiting_processes),
        cmocka_unit_test(test_condition_killed_waiter_swallows_no_notification),
        cmocka_unit_test(test_condition_waiter_killed_after_its_notify_leaves_no_record),
        cmocka_unit_test(test_condition_wait_reports_eownerdead_if_the_notifier_dies_holding_the_lock),
        cmocka_unit_test(test_condition_bounded_buffer_between_processes_loses_nothing),
        cmocka_unit_test(test_condition_survives_waiters_and_notifiers_killed_at_random_moments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
