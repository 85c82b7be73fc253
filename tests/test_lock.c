/* test_lock.c - Lock and RLock: exclusion between threads and processes,
 * every error code, timeouts on time, and a holder killed with SIGKILL. */
#include "sync_helpers.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ arguments */

static void test_lock_new_refuses_null_out(void **state)
{
    (void)state;
    TU_ASSERT_RC(mp_lock_new(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_rlock_new(NULL), MP_EINVAL);
}

static void test_lock_calls_refuse_null_and_freed_handles(void **state)
{
    (void)state;
    TU_ASSERT_RC(mp_lock_acquire(NULL, 1), MP_EINVAL);
    TU_ASSERT_RC(mp_lock_release(NULL), MP_EINVAL);
    mp_lock_free(NULL);
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    mp_lock_free(l);
    TU_ASSERT_RC(mp_lock_acquire(l, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_lock_release(l), MP_EINVAL);
    mp_lock_free(l);                          /* a second free is refused quietly */
    uint32_t junk[32] = { 0x12345678 };
    TU_ASSERT_RC(mp_lock_acquire((mp_lock *)junk, 0), MP_EINVAL);
}

static void test_lock_acquire_refuses_nan_timeout(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    TU_ASSERT_RC(mp_lock_acquire(l, 0.0 / 0.0), MP_EINVAL);
    TU_OK(mp_lock_acquire(l, 0));
    TU_OK(mp_lock_release(l));
    mp_lock_free(l);
}

/* ------------------------------------------------------------------ one owner */

static void test_lock_release_of_unlocked_lock_returns_einval(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    TU_ASSERT_RC(mp_lock_release(l), MP_EINVAL);
    TU_OK(mp_lock_acquire(l, MP_FOREVER));
    TU_OK(mp_lock_release(l));
    TU_ASSERT_RC(mp_lock_release(l), MP_EINVAL);
    mp_lock_free(l);
}

static void *release_from_thread(void *arg)
{
    return (void *)(intptr_t)mp_lock_release(arg);
}

static void test_lock_release_by_another_thread_returns_einval(void **state)
{
    (void)state;
    mp_lock *locks[2];
    TU_OK(mp_lock_new(&locks[0]));
    TU_OK(mp_rlock_new(&locks[1]));
    for (int i = 0; i < 2; i++) {
        TU_OK(mp_lock_acquire(locks[i], MP_FOREVER));
        pthread_t t = thread_start(release_from_thread, locks[i]);
        assert_int_equal((intptr_t)thread_join(t), MP_EINVAL);
        TU_OK(mp_lock_release(locks[i]));
        mp_lock_free(locks[i]);
    }
}

static int child_releases(void *arg)
{
    return mp_lock_release(arg) == MP_EINVAL ? 0 : 1;
}

static void test_lock_release_by_another_process_returns_einval(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    TU_OK(mp_lock_acquire(l, MP_FOREVER));
    assert_int_equal(tu_wait(tu_fork(child_releases, l), 10), 0);
    TU_OK(mp_lock_release(l));
    mp_lock_free(l);
}

static void test_lock_reacquire_by_its_owner_times_out_or_refuses_forever(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    TU_OK(mp_lock_acquire(l, MP_FOREVER));
    TU_ASSERT_RC(mp_lock_acquire(l, 0), MP_ETIMEDOUT);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_lock_acquire(l, 0.2), MP_ETIMEDOUT);
    assert_on_time(tu_now() - t0, 0.2);
    t0 = tu_now();
    TU_ASSERT_RC(mp_lock_acquire(l, MP_FOREVER), -EDEADLK);
    TU_ASSERT_RC(mp_lock_acquire(l, 1e12), -EDEADLK);       /* as good as forever */
    assert_true(tu_now() - t0 < 0.1 * tu_slow());
    TU_OK(mp_lock_release(l));
    mp_lock_free(l);
}

static void test_lock_with_macro_releases_after_the_block(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    int ran = 0;
    MP_WITH_LOCK(l) {
        ran++;
        TU_ASSERT_RC(mp_lock_acquire(l, 0), MP_ETIMEDOUT);
    }
    assert_int_equal(ran, 1);
    TU_OK(mp_lock_acquire(l, 0));
    TU_OK(mp_lock_release(l));
    mp_lock_free(l);
}

/* The macro's body must not run without the lock: the caller would touch
 * guarded data unguarded. */
static void test_lock_with_macro_skips_the_body_when_the_acquire_fails(void **state)
{
    (void)state;
    int ran = 0;
    MP_WITH_LOCK(NULL)
        ran++;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    mp_lock_free(l);
    MP_WITH_LOCK(l)
        ran++;
    TU_OK(mp_lock_new(&l));
    TU_OK(mp_lock_acquire(l, 0));
    MP_WITH_LOCK(l)                       /* -EDEADLK: this thread holds it already */
        ran++;
    assert_int_equal(ran, 0);
    TU_OK(mp_lock_release(l));             /* still held once: the macro released nothing */
    TU_ASSERT_RC(mp_lock_release(l), MP_EINVAL);
    mp_lock_free(l);
}

static void test_lock_with_rc_hands_the_code_to_the_caller(void **state)
{
    (void)state;
    int rc = 1, ran = 0;
    MP_WITH_LOCK_RC(NULL, rc)
        ran++;
    TU_ASSERT_RC(rc, MP_EINVAL);
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    TU_OK(mp_lock_acquire(l, 0));
    MP_WITH_LOCK_RC(l, rc)
        ran++;
    TU_ASSERT_RC(rc, -EDEADLK);
    assert_int_equal(ran, 0);
    TU_OK(mp_lock_release(l));
    MP_WITH_LOCK_RC(l, rc) {
        TU_OK(rc);
        ran++;
    }
    assert_int_equal(ran, 1);
    /* Any int lvalue takes the code, whatever its name: the macro's own
     * member of the same name (.rc) once took the caller's name instead. */
    int lock_rc = 1;
    struct { int rc, other; } codes = { 1, 1 };
    int *where = &codes.other;
    MP_WITH_LOCK_RC(l, lock_rc)
        ran++;
    MP_WITH_LOCK_RC(l, codes.rc)
        ran++;
    MP_WITH_LOCK_RC(l, *where)
        ran++;
    TU_OK(lock_rc);
    TU_OK(codes.rc);
    TU_OK(codes.other);
    assert_int_equal(ran, 4);
    TU_OK(mp_lock_acquire(l, 0));
    TU_OK(mp_lock_release(l));
    mp_lock_free(l);
}

/* break and continue leave the body early and still release the lock. */
static void test_lock_with_macro_releases_on_break_and_continue(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    int after = 0;
    for (int i = 0; i < 3; i++) {
        MP_WITH_LOCK(l) {
            if (i == 1)
                continue;
            if (i == 2)
                break;
            after++;
        }
        TU_OK(mp_lock_acquire(l, 0));      /* released whichever way the body ended */
        TU_OK(mp_lock_release(l));
    }
    assert_int_equal(after, 1);
    int rc;
    MP_WITH_LOCK_RC(l, rc) {
        MP_WITH_LOCK_RC(l, rc)             /* nested on a plain Lock: -EDEADLK, skipped */
            fail_msg("the inner body ran without the lock");
        TU_ASSERT_RC(rc, -EDEADLK);
        break;
    }
    TU_OK(mp_lock_acquire(l, 0));
    TU_OK(mp_lock_release(l));
    mp_lock_free(l);
}

/* ------------------------------------------------------------------ timeouts */

static int child_holds_until_killed(void *arg)
{
    void **a = arg;
    if (mp_lock_acquire(a[0], MP_FOREVER) != 0)
        return 1;
    atomic_store(&((tu_flag *)a[1])->n, 1);
    return block_forever();
}

static pid_t start_holder(mp_lock *l, void **args)
{
    args[0] = l;
    args[1] = flag_new();
    pid_t pid = tu_fork(child_holds_until_killed, args);
    assert_true(flag_wait(args[1], 10));
    return pid;
}

static void test_lock_acquire_times_out_on_time_when_held_elsewhere(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    void *args[2];
    pid_t pid = start_holder(l, args);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_lock_acquire(l, 0), MP_ETIMEDOUT);
    assert_true(tu_now() - t0 < 0.05 * tu_slow());
    t0 = tu_now();
    TU_ASSERT_RC(mp_lock_acquire(l, 0.25), MP_ETIMEDOUT);
    assert_on_time(tu_now() - t0, 0.25);
    kill_child(pid);
    mp_shared_free(args[1]);
    mp_lock_free(l);
}

/* ------------------------------------------------------------------ exclusion */

struct counter {
    mp_lock *lock;
    volatile long value;
    int rounds;
};

static int add_under_lock(void *arg)
{
    struct counter *c = arg;
    for (int i = 0; i < c->rounds; i++) {
        if (mp_lock_acquire(c->lock, MP_FOREVER) != 0)
            return 1;
        long v = c->value;           /* a torn read-modify-write without the lock */
        if ((i & 63) == 0)
            sched_yield();
        c->value = v + 1;
        if (mp_lock_release(c->lock) != 0)
            return 2;
    }
    return 0;
}

static void *add_under_lock_thread(void *arg)
{
    return (void *)(intptr_t)add_under_lock(arg);
}

static void test_lock_excludes_processes(void **state)
{
    (void)state;
    struct counter *c = mp_shared_alloc(sizeof *c);
    TU_OK(mp_lock_new(&c->lock));
    c->rounds = 20000;
    pid_t pids[4];
    for (int i = 0; i < 4; i++)
        pids[i] = tu_fork(add_under_lock, c);
    for (int i = 0; i < 4; i++)
        assert_int_equal(tu_wait(pids[i], 60), 0);
    assert_int_equal(c->value, 4 * 20000);
    mp_lock_free(c->lock);
    mp_shared_free(c);
}

static void test_lock_and_rlock_exclude_threads(void **state)
{
    (void)state;
    for (int kind = 0; kind < 2; kind++) {
        struct counter c = { .rounds = 20000 };
        TU_OK(kind ? mp_rlock_new(&c.lock) : mp_lock_new(&c.lock));
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            t[i] = thread_start(add_under_lock_thread, &c);
        for (int i = 0; i < 4; i++)
            assert_int_equal((intptr_t)thread_join(t[i]), 0);
        assert_int_equal(c.value, 4 * 20000);
        mp_lock_free(c.lock);
    }
}

/* ------------------------------------------------------------------ killed holders */

static void check_holder_killed(mp_lock *l)
{
    void *args[2];
    pid_t pid = start_holder(l, args);
    kill_child(pid);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_lock_acquire(l, 1), MP_EOWNERDEAD);
    assert_true(tu_now() - t0 < 1.0);
    TU_OK(mp_lock_release(l));                /* held once, whatever the dead one's depth */
    TU_ASSERT_RC(mp_lock_release(l), MP_EINVAL);
    TU_OK(mp_lock_acquire(l, 0));             /* and healthy again */
    TU_OK(mp_lock_release(l));
    mp_shared_free(args[1]);
}

static void test_lock_holder_killed_gives_next_acquirer_eownerdead(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    check_holder_killed(l);
    mp_lock_free(l);
}

/* More than the kernel's robust-list walk releases (ROBUST_LIST_LIMIT,
 * 2048 entries). */
#define MANY_LOCKS 2060

struct many_locks {
    mp_lock *l[MANY_LOCKS];
    tu_flag taken;
};

static int takes_many_locks(void *arg)
{
    struct many_locks *m = arg;
    for (int i = 0; i < MANY_LOCKS; i++)
        if (mp_lock_acquire(m->l[i], 10) != 0)
            return 1;
    atomic_store(&m->taken.n, 1);
    return block_forever();
}

/* A process killed holding more locks than the kernel releases for it: the
 * oldest stayed held by nobody for ever. A waiter that sleeps a slice
 * finds the holder gone and takes the lock over, told MP_EOWNERDEAD. */
static void test_lock_holder_killed_holding_thousands_gives_every_one_back(void **state)
{
    (void)state;
    if (TU_TSAN)                        /* it follows at most 64 locks a thread holds */
        skip();
    struct many_locks *m = mp_shared_alloc(sizeof *m);
    assert_non_null(m);
    for (int i = 0; i < MANY_LOCKS; i++)
        TU_OK(mp_lock_new(&m->l[i]));
    pid_t pid = tu_fork(takes_many_locks, m);
    assert_true(flag_wait(&m->taken, 30));
    kill_child(pid);
    for (int i = 0; i < MANY_LOCKS; i++) {
        TU_ASSERT_RC(mp_lock_acquire(m->l[i], 5), MP_EOWNERDEAD);
        TU_OK(mp_lock_release(m->l[i]));
        mp_lock_free(m->l[i]);
    }
    mp_shared_free(m);
}

/* MP_EOWNERDEAD means held: the body runs, told so, to repair the data. */
static void test_lock_with_rc_runs_the_body_after_a_holder_died(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    void *args[2];
    kill_child(start_holder(l, args));
    int rc = 0, ran = 0;
    MP_WITH_LOCK_RC(l, rc) {
        TU_ASSERT_RC(rc, MP_EOWNERDEAD);
        TU_ASSERT_RC(mp_lock_acquire(l, 0), MP_ETIMEDOUT);
        ran++;
    }
    assert_int_equal(ran, 1);
    TU_OK(mp_lock_acquire(l, 0));
    TU_OK(mp_lock_release(l));
    mp_shared_free(args[1]);
    mp_lock_free(l);
}

static int child_holds_rlock_deep(void *arg)
{
    void **a = arg;
    for (int i = 0; i < 3; i++)
        if (mp_lock_acquire(a[0], MP_FOREVER) != 0)
            return 1;
    atomic_store(&((tu_flag *)a[1])->n, 1);
    return block_forever();
}

static void test_rlock_holder_killed_gives_next_acquirer_eownerdead(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_rlock_new(&l));
    check_holder_killed(l);
    void *args[2] = { l, flag_new() };         /* again, from three levels deep */
    pid_t pid = tu_fork(child_holds_rlock_deep, args);
    assert_true(flag_wait(args[1], 10));
    kill_child(pid);
    TU_ASSERT_RC(mp_lock_acquire(l, 1), MP_EOWNERDEAD);
    TU_OK(mp_lock_release(l));
    TU_ASSERT_RC(mp_lock_release(l), MP_EINVAL);
    mp_shared_free(args[1]);
    mp_lock_free(l);
}

static void *acquire_forever_and_release(void *arg)
{
    int rc = mp_lock_acquire(arg, MP_FOREVER);
    if (rc == MP_EOWNERDEAD && mp_lock_release(arg) != 0)
        rc = 1;
    return (void *)(intptr_t)rc;
}

static void test_lock_waiter_is_woken_with_eownerdead_when_holder_is_killed(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    void *args[2];
    pid_t pid = start_holder(l, args);
    pthread_t t = thread_start(acquire_forever_and_release, l);
    double t0 = tu_now();
    kill_child(pid);
    assert_int_equal((intptr_t)thread_join(t), MP_EOWNERDEAD);
    assert_true(tu_now() - t0 < 1.0 * tu_slow());
    mp_shared_free(args[1]);
    mp_lock_free(l);
}

static int hammer(void *arg)
{
    struct counter *c = arg;
    for (;;) {
        int rc = mp_lock_acquire(c->lock, 30);
        if (rc != 0 && rc != MP_EOWNERDEAD)
            return 1;
        c->value++;
        if (mp_lock_release(c->lock) != 0)
            return 2;
    }
}

static void test_lock_survives_holders_killed_at_random_moments(void **state)
{
    (void)state;
    struct counter *c = mp_shared_alloc(sizeof *c);
    TU_OK(mp_rlock_new(&c->lock));
    srand((unsigned)getpid());
    for (int round = 0; round < 20; round++) {
        pid_t pids[3];
        for (int i = 0; i < 3; i++)
            pids[i] = tu_fork(hammer, c);
        for (int i = 0; i < 3; i++) {
            usleep((useconds_t)(rand() % 3000));     /* a random moment, not a synchronisation */
            kill_child(pids[i]);
        }
        int rc = mp_lock_acquire(c->lock, 1);
        assert_true(rc == 0 || rc == MP_EOWNERDEAD);
        TU_OK(mp_lock_release(c->lock));
        TU_ASSERT_RC(mp_lock_release(c->lock), MP_EINVAL);
    }
    mp_lock_free(c->lock);
    mp_shared_free(c);
}

/* ------------------------------------------------------------------ RLock */

static void test_rlock_is_recursive_and_counts_releases(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_rlock_new(&l));
    for (int i = 0; i < 3; i++)
        TU_OK(mp_lock_acquire(l, 0));
    for (int i = 0; i < 3; i++) {
        pthread_t t = thread_start(release_from_thread, l);   /* still ours */
        assert_int_equal((intptr_t)thread_join(t), MP_EINVAL);
        TU_OK(mp_lock_release(l));
    }
    TU_ASSERT_RC(mp_lock_release(l), MP_EINVAL);
    mp_lock_free(l);
}

static void *try_acquire(void *arg)
{
    return (void *)(intptr_t)mp_lock_acquire(arg, 0.05);
}

static void test_rlock_is_held_until_the_last_release(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_rlock_new(&l));
    TU_OK(mp_lock_acquire(l, 0));
    TU_OK(mp_lock_acquire(l, 0));
    TU_OK(mp_lock_release(l));
    assert_int_equal((intptr_t)thread_join(thread_start(try_acquire, l)), MP_ETIMEDOUT);
    TU_OK(mp_lock_release(l));
    void *rc = thread_join(thread_start(try_acquire, l));
    assert_int_equal((intptr_t)rc, 0);       /* that thread ended holding it: */
    TU_ASSERT_RC(mp_lock_acquire(l, 1), MP_EOWNERDEAD);   /* a dead owner, like a process */
    TU_OK(mp_lock_release(l));
    mp_lock_free(l);
}

static int rlock_twice(void *arg)
{
    for (int i = 0; i < 2; i++)
        if (mp_lock_acquire(arg, 0) != 0)
            return 1;
    for (int i = 0; i < 2; i++)
        if (mp_lock_release(arg) != 0)       /* owner checks need the child's own tid */
            return 2;
    return mp_lock_release(arg) == MP_EINVAL ? 0 : 3;
}

static void test_rlock_owner_checks_use_the_forked_childs_own_tid(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_rlock_new(&l));
    TU_OK(mp_lock_acquire(l, 0));            /* the parent's tid is cached by now */
    TU_OK(mp_lock_release(l));
    assert_int_equal(tu_wait(tu_fork(rlock_twice, l), 10), 0);
    mp_lock_free(l);
}

/* ------------------------------------------------------------------ start methods */

struct spawned {
    mp_lock *lock;
    tu_flag *tried, *holding;
    long counter;
};

static int contend_then_hold(void *arg)
{
    struct spawned *sp = *(struct spawned **)arg;
    if (mp_lock_acquire(sp->lock, 0) != MP_ETIMEDOUT)      /* the parent holds it */
        return 1;
    atomic_store(&sp->tried->n, 1);
    if (mp_lock_acquire(sp->lock, 30) != 0)
        return 2;
    sp->counter++;
    atomic_store(&sp->holding->n, 1);
    return block_forever();                                 /* until killed, holding it */
}

static void test_lock_works_and_stays_robust_under_every_start_method(void **state)
{
    (void)state;
    SKIP_START_METHODS_UNDER_VALGRIND();
    mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    for (int m = 0; m < 3; m++) {
        struct spawned *sp = mp_shared_alloc(sizeof *sp);
        TU_OK(mp_lock_new(&sp->lock));
        sp->tried = flag_new();
        sp->holding = flag_new();
        TU_OK(mp_lock_acquire(sp->lock, 0));
        mp_process *p;
        mp_process_opts o = { .method = methods[m], .arg_size = sizeof sp };
        TU_OK(mp_process_new(&p, contend_then_hold, &sp, &o));
        TU_OK(mp_process_start(p));
        assert_true(flag_wait(sp->tried, 20));
        TU_OK(mp_lock_release(sp->lock));
        assert_true(flag_wait(sp->holding, 20));
        assert_int_equal(sp->counter, 1);
        TU_OK(mp_process_kill(p));
        TU_OK(mp_process_join(p, 20));
        TU_ASSERT_RC(mp_lock_acquire(sp->lock, 1), MP_EOWNERDEAD);
        TU_OK(mp_lock_release(sp->lock));
        TU_OK(mp_process_free(p));
        mp_shared_free(sp->tried);
        mp_shared_free(sp->holding);
        mp_lock_free(sp->lock);
        mp_shared_free(sp);
    }
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lock_new_refuses_null_out),
        cmocka_unit_test(test_lock_calls_refuse_null_and_freed_handles),
        cmocka_unit_test(test_lock_acquire_refuses_nan_timeout),
        cmocka_unit_test(test_lock_release_of_unlocked_lock_returns_einval),
        cmocka_unit_test(test_lock_release_by_another_thread_returns_einval),
        cmocka_unit_test(test_lock_release_by_another_process_returns_einval),
        cmocka_unit_test(test_lock_reacquire_by_its_owner_times_out_or_refuses_forever),
        cmocka_unit_test(test_lock_with_macro_releases_after_the_block),
        cmocka_unit_test(test_lock_with_macro_skips_the_body_when_the_acquire_fails),
        cmocka_unit_test(test_lock_with_rc_hands_the_code_to_the_caller),
        cmocka_unit_test(test_lock_with_macro_releases_on_break_and_continue),
        cmocka_unit_test(test_lock_acquire_times_out_on_time_when_held_elsewhere),
        cmocka_unit_test(test_lock_excludes_processes),
        cmocka_unit_test(test_lock_and_rlock_exclude_threads),
        cmocka_unit_test(test_lock_holder_killed_gives_next_acquirer_eownerdead),
        cmocka_unit_test(test_lock_holder_killed_holding_thousands_gives_every_one_back),
        cmocka_unit_test(test_lock_with_rc_runs_the_body_after_a_holder_died),
        cmocka_unit_test(test_rlock_holder_killed_gives_next_acquirer_eownerdead),
        cmocka_unit_test(test_lock_waiter_is_woken_with_eownerdead_when_holder_is_killed),
        cmocka_unit_test(test_lock_survives_holders_killed_at_random_moments),
        cmocka_unit_test(test_rlock_is_recursive_and_counts_releases),
        cmocka_unit_test(test_rlock_is_held_until_the_last_release),
        cmocka_unit_test(test_rlock_owner_checks_use_the_forked_childs_own_tid),
        cmocka_unit_test(test_lock_works_and_stays_robust_under_every_start_method),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
