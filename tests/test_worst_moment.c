/* test_worst_moment.c - a process killed between a change it published and
 * the wake-up that tells the others, or a waiter killed as it is woken: the
 * sleepers on the other side must find the change anyway. And a system call
 * that fails for a passing reason must not make a live process look dead.
 *
 * The kill comes from inside: this file defines syscall(), which the
 * library's futex_wake() calls, so an armed process SIGKILLs itself at its
 * next FUTEX_WAKE (after the store it publishes, before the wake reaches the
 * kernel), or as its FUTEX_WAIT returns woken. MPROC_WHITEBOX: linked with
 * the static library, so the library's calls come here. */
#include "testutil.h"

#include <dlfcn.h>
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t die_at_wake, die_when_woken;

long syscall(long n, ...)
{
    va_list ap;
    long a[6];
    va_start(ap, n);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    int op = (int)(a[1] & FUTEX_CMD_MASK);
    if (n == SYS_futex && die_at_wake && op == FUTEX_WAKE)
        kill(getpid(), SIGKILL);
    static long (*real)(long, ...);
    if (!real)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    long rc = real(n, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (n == SYS_futex && die_when_woken && rc == 0 &&
        (op == FUTEX_WAIT || op == FUTEX_WAIT_BITSET))
        kill(getpid(), SIGKILL);
    return rc;
}

static void nap_ms(int ms)
{
    struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&t, NULL);
}

/* A thread that blocks in one call (MP_FOREVER) and records its return. */
struct blocked {
    int (*call)(void *obj);
    void *obj;
    _Atomic int rc;
    _Atomic bool done;
};

static void *run_blocked(void *arg)
{
    struct blocked *b = arg;
    atomic_store(&b->rc, b->call(b->obj));
    atomic_store(&b->done, true);
    return NULL;
}

static bool blocked_done(void *arg)
{
    return atomic_load(&((struct blocked *)arg)->done);
}

/* Starts b, lets it fall asleep, runs killer(obj) in a child that must die
 * by SIGKILL, and expects b to return within 3 s: its result. */
static int sleeper_outlives_a_killed_waker(struct blocked *b, int (*killer)(void *), void *obj)
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, run_blocked, b), 0);
    assert_true(tu_wait_threads_asleep(10));       /* past its spin: asleep */
    assert_int_equal(tu_wait(tu_fork(killer, obj), 10), -SIGKILL);
    assert_true(tu_wait_for(blocked_done, b, 3));
    pthread_join(t, NULL);
    return atomic_load(&b->rc);
}

/* ------------------------------------------------------------------ semaphore */

static int acquire_forever(void *s)
{
    return mp_semaphore_acquire(s, MP_FOREVER);
}

static int release_then_die(void *s)
{
    die_at_wake = 1;
    mp_semaphore_release(s);
    return 0;                                      /* not reached */
}

static void test_semaphore_acquirer_gets_a_count_whose_releaser_died_before_waking_it(void **state)
{
    (void)state;
    mp_semaphore *s;
    TU_OK(mp_semaphore_new(&s, 0));
    struct blocked b = { .call = acquire_forever, .obj = s };
    TU_OK(sleeper_outlives_a_killed_waker(&b, release_then_die, s));
    mp_semaphore_free(s);
}

static int acquire_and_die_when_woken(void *s)
{
    die_when_woken = 1;
    mp_semaphore_acquire(s, MP_FOREVER);
    return 0;                                      /* not reached */
}

/* The kernel gave the one wake-up to an acquirer that died before taking
 * the count: the next acquirer must still get it. */
static void test_semaphore_count_passes_on_when_the_woken_acquirer_dies(void **state)
{
    (void)state;
    mp_semaphore *s;
    TU_OK(mp_semaphore_new(&s, 0));
    pid_t first = tu_fork(acquire_and_die_when_woken, s);
    assert_true(tu_wait_asleep(first, 10));        /* the child sleeps first */
    struct blocked b = { .call = acquire_forever, .obj = s };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, run_blocked, &b), 0);
    assert_true(tu_wait_threads_asleep(10));       /* queued behind the child */
    TU_OK(mp_semaphore_release(s));
    assert_true(tu_wait_for(blocked_done, &b, 3));
    pthread_join(t, NULL);
    TU_OK(atomic_load(&b.rc));
    kill(first, SIGKILL);              /* if our thread was woken first, the child still sleeps */
    assert_int_equal(tu_wait(first, 10), -SIGKILL);
    mp_semaphore_free(s);
}

/* ------------------------------------------------------------------ event */

static int wait_event_forever(void *e)
{
    return mp_event_wait(e, MP_FOREVER);
}

static int set_then_die(void *e)
{
    die_at_wake = 1;
    mp_event_set(e);
    return 0;                                      /* not reached */
}

static void test_event_waiter_sees_a_flag_whose_setter_died_before_waking_it(void **state)
{
    (void)state;
    mp_event *e;
    TU_OK(mp_event_new(&e));
    struct blocked b = { .call = wait_event_forever, .obj = e };
    TU_OK(sleeper_outlives_a_killed_waker(&b, set_then_die, e));
    mp_event_free(e);
}

/* ------------------------------------------------------------------ condition */

struct cond { mp_lock *lock; mp_condition *c; };

static int wait_condition_forever(void *arg)
{
    struct cond *c = arg;
    mp_lock_acquire(c->lock, MP_FOREVER);
    int rc = mp_condition_wait(c->c, MP_FOREVER);
    mp_lock_release(c->lock);
    return rc;
}

static int notify_then_die(void *arg)
{
    struct cond *c = arg;
    mp_lock_acquire(c->lock, MP_FOREVER);
    die_at_wake = 1;
    mp_condition_notify(c->c, 1);
    return 0;                                      /* not reached */
}

/* The notifier dies holding the lock, so the waiter gets it back with
 * MP_EOWNERDEAD: woken all the same. */
static void test_condition_waiter_is_woken_though_its_notifier_died_before_waking_it(void **state)
{
    (void)state;
    struct cond c;
    TU_OK(mp_lock_new(&c.lock));
    TU_OK(mp_condition_new(&c.c, c.lock));
    struct blocked b = { .call = wait_condition_forever, .obj = &c };
    int rc = sleeper_outlives_a_killed_waker(&b, notify_then_die, &c);
    assert_true(rc == 0 || rc == MP_EOWNERDEAD);
    mp_condition_free(c.c);
    mp_lock_free(c.lock);
}

/* ------------------------------------------------------------------ pool */

/* Where the caller's waiting thread says who it is, in the arena, so the
 * worker (another process) can watch it fall asleep. */
struct waiter_id {
    mp_future *f;
    _Atomic pid_t tid;
};

static int task_dies_at_its_wake(const void *in, size_t len, mp_buf *out)
{
    (void)out;
    struct waiter_id *w;
    if (len != sizeof w)
        return 1;
    memcpy(&w, in, sizeof w);
    die_at_wake = 1;                               /* this worker dies at its next wake */
    for (int i = 0; i < 1000 && !atomic_load(&w->tid); i++)
        nap_ms(10);
    return tu_wait_asleep(atomic_load(&w->tid), 10) ? 0 : 1;   /* the caller sleeps */
}

static int wait_future_forever(void *arg)
{
    struct waiter_id *w = arg;
    atomic_store(&w->tid, gettid());
    return mp_future_wait(w->f, MP_FOREVER);
}

/* The worker made the future final and died before waking its waiter. */
static void test_future_waiter_returns_when_the_worker_dies_before_waking_it(void **state)
{
    (void)state;
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 1 }));
    struct waiter_id *w = mp_shared_alloc(sizeof *w);
    assert_non_null(w);
    atomic_store(&w->tid, 0);
    mp_future *f;
    TU_OK(mp_pool_apply_async(p, task_dies_at_its_wake, &w, sizeof w, &f));
    w->f = f;
    struct blocked b = { .call = wait_future_forever, .obj = w };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, run_blocked, &b), 0);
    assert_true(tu_wait_for(blocked_done, &b, 5));
    pthread_join(t, NULL);
    TU_OK(atomic_load(&b.rc));
    TU_OK(mp_future_result(f, NULL, 0));           /* final before the death: its result */
    mp_future_free(f);
    mp_pool_free(p);
    mp_shared_free(w);
}

/* ------------------------------------------------------------------ process */

static int sleeps_5s(void *arg)
{
    (void)arg;
    sleep(5);
    return 7;
}

/* pidfd_open fails here with ENOMEM (a seccomp filter, this process only):
 * a passing failure, which says nothing of whether the process ended. */
static int ask_without_pidfds(void *arg)
{
    mp_process *a = *(mp_process **)arg;
    if (!tu_fail_pidfd_open())
        return 10;
    if (!mp_process_is_alive(a))
        return 11;
    if (mp_process_join(a, 0.3) != MP_ETIMEDOUT)
        return 12;
    return 0;
}

static void test_process_is_not_taken_for_ended_when_pidfd_open_fails(void **state)
{
    (void)state;
    mp_process *a, *asker;
    TU_OK(mp_process_new(&a, sleeps_5s, NULL, NULL));
    TU_OK(mp_process_start(a));
    TU_OK(mp_process_new(&asker, ask_without_pidfds, &a,
                         &(mp_process_opts){ .arg_size = sizeof a }));
    TU_OK(mp_process_start(asker));
    TU_OK(mp_process_join(asker, 10));
    int code = -1;
    TU_OK(mp_process_exitcode(asker, &code));
    assert_int_equal(code, 0);
    TU_OK(mp_process_kill(a));
    TU_OK(mp_process_join(a, 10));
    mp_process_free(asker);
    mp_process_free(a);
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_semaphore_acquirer_gets_a_count_whose_releaser_died_before_waking_it),
        cmocka_unit_test(test_semaphore_count_passes_on_when_the_woken_acquirer_dies),
        cmocka_unit_test(test_event_waiter_sees_a_flag_whose_setter_died_before_waking_it),
        cmocka_unit_test(test_condition_waiter_is_woken_though_its_notifier_died_before_waking_it),
        cmocka_unit_test(test_future_waiter_returns_when_the_worker_dies_before_waking_it),
        cmocka_unit_test(test_process_is_not_taken_for_ended_when_pidfd_open_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
