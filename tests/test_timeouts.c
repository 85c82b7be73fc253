/* test_timeouts.c - one rule for every blocking call in mproc.h: MP_FOREVER
 * and +inf block, 0 and positive values bound the wait, and NaN or any other
 * negative value is refused with MP_EINVAL at once (Python's ValueError).
 *
 * Each call is made on a live object that would block if the timeout were
 * taken for "forever", in a forked child with a one-second bound, so a call
 * that hangs fails its row instead of the whole binary. Zero, -0.0 and
 * vanishing timeouts poll; finite ones too long to matter (up to DBL_MAX)
 * wait as MP_FOREVER does. */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <stdio.h>
#include <unistd.h>

static struct {
    mp_process *proc;
    mp_thread *thread;
    mp_lock *lock, *rlock, *mlock;
    mp_semaphore *sem;
    mp_event *event;
    mp_condition *cond, *cond2;
    mp_barrier *barrier;
    mp_queue *queue, *full;
    mp_conn *pa, *pb, *sa, *sb;
    mp_listener *listener;
    mp_pool *pool;
    mp_future *future;
    mp_iter *iter;
    mp_manager *manager;
    mp_mqueue *mqueue;
} o;

static _Atomic int thread_may_end;

static int sleeps_until_killed(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return 0;
}

static int thread_waits(void *arg)
{
    (void)arg;
    while (!atomic_load(&thread_may_end))
        usleep(1000);
    return 0;
}

static int slow_task(const void *in, size_t len, mp_buf *out)
{
    (void)in, (void)len, (void)out;
    sleep(30);
    return 0;
}

/* ------------------------------------------------------------------ the calls */

static int c_process_join(double t)   { return mp_process_join(o.proc, t); }
static int c_thread_join(double t)    { return mp_thread_join(o.thread, t); }
static int c_lock_acquire(double t)   { return mp_lock_acquire(o.lock, t); }
static int c_rlock_acquire(double t)  { return mp_lock_acquire(o.rlock, t); }
static int c_mlock_acquire(double t)  { return mp_lock_acquire(o.mlock, t); }
static int c_sem_acquire(double t)    { return mp_semaphore_acquire(o.sem, t); }
static int c_event_wait(double t)     { return mp_event_wait(o.event, t); }
static int c_cond_acquire(double t)   { return mp_condition_acquire(o.cond, t); }
static bool never(void *ctx)
{
    (void)ctx;
    return false;
}
/* The child takes cond2's lock, so only the timeout is wrong (the child
 * before it died holding it: MP_EOWNERDEAD is held too). */
static bool take_cond2(void)
{
    int rc = mp_condition_acquire(o.cond2, 0);
    return rc == 0 || rc == MP_EOWNERDEAD;
}
static int c_cond_wait(double t)
{
    return take_cond2() ? mp_condition_wait(o.cond2, t) : -1;
}
static int c_cond_wait_for(double t)
{
    return take_cond2() ? mp_condition_wait_for(o.cond2, never, NULL, t) : -1;
}
static int c_barrier_wait(double t)   { return mp_barrier_wait(o.barrier, t); }
static int c_queue_get(double t)
{
    char buf[8];
    size_t len;
    return mp_queue_get(o.queue, buf, sizeof buf, &len, t);
}
static int c_queue_get_buf(double t)
{
    mp_buf b = { 0 };
    int rc = mp_queue_get_buf(o.queue, &b, t);
    mp_buf_free(&b);
    return rc;
}
static int c_queue_put(double t)      { return mp_queue_put(o.full, "x", 1, t); }
static int c_queue_join(double t)     { return mp_queue_join(o.full, t); }
static int c_conn_poll(double t)      { return mp_conn_poll(o.pa, t); }
static int c_conn_recv_fd(double t)
{
    int fd;
    return mp_conn_recv_fd(o.sa, &fd, t);
}
static int c_wait(double t)
{
    int fd = mp_conn_fileno(o.pa);
    bool ready;
    return mp_wait(&fd, 1, &ready, t);
}
static int c_accept(double t)
{
    mp_conn *c = NULL;
    return mp_listener_accept(o.listener, &c, t);
}
static int c_client(double t)
{
    mp_conn *c = NULL;
    return mp_client(&c, "tcp:192.0.2.1:9", NULL, 0, t);     /* TEST-NET-1: never answers */
}
static int c_iter_next(double t)
{
    size_t i;
    return mp_iter_next(o.iter, &i, NULL, t);
}
static int c_pool_join(double t)      { return mp_pool_join(o.pool, t); }
static int c_future_wait(double t)    { return mp_future_wait(o.future, t); }
static int c_future_result(double t)  { return mp_future_result(o.future, NULL, t); }
static int c_futures_wait(double t)   { return mp_futures_wait(&o.future, 1, MP_ALL_COMPLETED, t); }
static int c_mqueue_get(double t)
{
    mp_buf b = { 0 };
    int rc = mp_mqueue_get(o.mqueue, &b, t);
    mp_buf_free(&b);
    return rc;
}
static int c_mqueue_put(double t)     { return mp_mqueue_put(o.mqueue, "x", 1, t); }

static const struct row {
    const char *name;
    int (*call)(double timeout);
} rows[] = {
    { "mp_process_join", c_process_join },
    { "mp_thread_join", c_thread_join },
    { "mp_lock_acquire", c_lock_acquire },
    { "mp_lock_acquire (rlock)", c_rlock_acquire },
    { "mp_lock_acquire (manager lock)", c_mlock_acquire },
    { "mp_semaphore_acquire", c_sem_acquire },
    { "mp_event_wait", c_event_wait },
    { "mp_condition_acquire", c_cond_acquire },
    { "mp_condition_wait", c_cond_wait },
    { "mp_condition_wait_for", c_cond_wait_for },
    { "mp_barrier_wait", c_barrier_wait },
    { "mp_queue_get", c_queue_get },
    { "mp_queue_get_buf", c_queue_get_buf },
    { "mp_queue_put", c_queue_put },
    { "mp_queue_join", c_queue_join },
    { "mp_conn_poll", c_conn_poll },
    { "mp_conn_recv_fd", c_conn_recv_fd },
    { "mp_wait", c_wait },
    { "mp_listener_accept", c_accept },
    { "mp_client", c_client },
    { "mp_iter_next", c_iter_next },
    { "mp_pool_join", c_pool_join },
    { "mp_future_wait", c_future_wait },
    { "mp_future_result", c_future_result },
    { "mp_futures_wait", c_futures_wait },
    { "mp_mqueue_get", c_mqueue_get },
    { "mp_mqueue_put", c_mqueue_put },
};

static const double bad[] = { -1e-9, -0.5, -2.0, -INFINITY, NAN };

static int probe_child(void *arg)
{
    const double *args = arg;
    const struct row *r = &rows[(size_t)args[0]];
    return r->call(args[1]) == MP_EINVAL ? 0 : 1;
}

static int setup(void **state)
{
    (void)state;
    int sv[2];
    /* The manager first: its server is forked and starts threads, which
     * ThreadSanitizer refuses in a child of a process that has threads. */
    if (mp_manager_start(&o.manager, NULL) ||
        mp_manager_queue(o.manager, "q", 0, &o.mqueue) ||
        mp_manager_lock(o.manager, "l", &o.mlock) ||
        mp_process_new(&o.proc, sleeps_until_killed, NULL, NULL) ||
        mp_process_start(o.proc) ||
        mp_thread_new(&o.thread, thread_waits, NULL, NULL) || mp_thread_start(o.thread) ||
        mp_lock_new(&o.lock) || mp_lock_acquire(o.lock, 0) ||
        mp_rlock_new(&o.rlock) || mp_semaphore_new(&o.sem, 0) || mp_event_new(&o.event) ||
        mp_condition_new(&o.cond, NULL) || mp_condition_new(&o.cond2, NULL) || mp_barrier_new(&o.barrier, 2) ||
        mp_queue_new(&o.queue, NULL) ||
        mp_queue_new(&o.full, &(mp_queue_opts){ .maxsize = 1 }) ||
        mp_queue_put(o.full, "x", 1, 0) ||
        mp_pipe(&o.pa, &o.pb, false) || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) ||
        mp_conn_from_fd(&o.sa, sv[0]) || mp_conn_from_fd(&o.sb, sv[1]) ||
        mp_listener_new(&o.listener, "unix:@mproc-test-timeouts", NULL, 0) ||
        mp_pool_new(&o.pool, &(mp_pool_opts){ .processes = 1 }) ||
        mp_pool_apply_async(o.pool, slow_task, NULL, 0, &o.future) ||
        mp_pool_imap(o.pool, slow_task, "ab", 2, 1, 1, false, &o.iter) ||
        mp_pool_close(o.pool))
        return -1;
    /* The item in o.full was put but never got, so join waits; taking the
     * rlock and the condition's lock from a forked child would not block, so
     * the parent's hold is what makes them blocking there. */
    return mp_lock_acquire(o.rlock, 0) || mp_condition_acquire(o.cond, 0) ||
           mp_lock_acquire(o.mlock, 0) ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    mp_pool_terminate(o.pool);
    mp_iter_free(o.iter);
    mp_future_free(o.future);
    mp_pool_free(o.pool);
    mp_lock_release(o.mlock);
    mp_lock_free(o.mlock);
    mp_mqueue_free(o.mqueue);
    mp_manager_shutdown(o.manager);
    mp_manager_free(o.manager);
    mp_process_kill(o.proc);
    mp_process_join(o.proc, MP_FOREVER);
    mp_process_free(o.proc);
    atomic_store(&thread_may_end, 1);
    mp_thread_join(o.thread, MP_FOREVER);
    mp_thread_free(o.thread);
    mp_listener_free(o.listener);
    mp_conn_close(o.pa);
    mp_conn_close(o.pb);
    mp_conn_close(o.sa);
    mp_conn_close(o.sb);
    return 0;
}

static void test_every_blocking_call_refuses_a_bad_timeout_at_once(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
            double args[2] = { (double)r, bad[b] };
            double t0 = tu_now();
            int rc = tu_wait(tu_fork(probe_child, args), 1.0 * tu_slow());
            if (rc != 0) {
                fprintf(stderr, "%s(timeout %g): %s after %.2f s\n", rows[r].name, bad[b],
                        rc == TU_TIMEOUT ? "still blocked" : "not MP_EINVAL", tu_now() - t0);
                failures++;
            }
        }
    }
    assert_int_equal(failures, 0);
}

/* The rule does not take MP_FOREVER's or zero's meaning away. */
static void test_zero_and_forever_keep_their_meaning(void **state)
{
    (void)state;
    TU_ASSERT_RC(mp_event_wait(o.event, 0), MP_ETIMEDOUT);
    TU_ASSERT_RC(mp_semaphore_acquire(o.sem, 0), MP_ETIMEDOUT);
    TU_OK(mp_semaphore_release(o.sem));
    TU_OK(mp_semaphore_acquire(o.sem, MP_FOREVER));
    TU_OK(mp_semaphore_release(o.sem));
    TU_OK(mp_semaphore_acquire(o.sem, INFINITY));
    TU_OK(mp_event_set(o.event));
    TU_OK(mp_event_wait(o.event, MP_FOREVER));
    TU_OK(mp_event_wait(o.event, INFINITY));
    TU_OK(mp_event_clear(o.event));
}

/* A zero, negative-zero or vanishing timeout is a poll: it returns at
 * once, and it is not refused as negative. */
static int tiny_child(void *arg)
{
    const double *args = arg;
    return rows[(size_t)args[0]].call(args[1]) == MP_EINVAL ? 1 : 0;
}

static void test_tiny_timeouts_poll_and_are_not_refused(void **state)
{
    (void)state;
    const double tiny[] = { 0.0, -0.0, 1e-9, 5e-324 };
    int failures = 0;
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        for (size_t k = 0; k < sizeof tiny / sizeof tiny[0]; k++) {
            double args[2] = { (double)r, tiny[k] };
            int rc = tu_wait(tu_fork(tiny_child, args), 1.0);
            if (rc != 0) {
                fprintf(stderr, "%s(timeout %g): %s\n", rows[r].name, tiny[k],
                        rc == TU_TIMEOUT ? "still blocked" : "MP_EINVAL");
                failures++;
            }
        }
        mp_barrier_reset(o.barrier);               /* a timed-out wait broke it */
    }
    assert_int_equal(failures, 0);
}

/* A finite timeout too long to matter waits as MP_FOREVER does: it must
 * not overflow into "already passed" (an early MP_ETIMEDOUT, MP_EEMPTY,
 * MP_EFULL) or be refused. Every call is made at once, each in its own
 * child, and each must still be waiting a while later. */
static int huge_child(void *arg)
{
    const double *args = arg;
    int rc = rows[(size_t)args[0]].call(args[1]);
    return rc == MP_EINVAL || rc == MP_ETIMEDOUT || rc == MP_EEMPTY || rc == MP_EFULL ? 1 : 0;
}

static void test_huge_timeouts_wait_like_forever(void **state)
{
    (void)state;
    const double huge[] = { 5e8, 1e10, 1e300, DBL_MAX };
    enum { N = sizeof rows / sizeof rows[0] };
    int failures = 0;
    for (size_t k = 0; k < sizeof huge / sizeof huge[0]; k++) {
        double args[N][2];
        pid_t pids[N];
        for (size_t r = 0; r < N; r++) {
            args[r][0] = (double)r;
            args[r][1] = huge[k];
            /* An iterator is its pool creator's alone: another process's
             * wait is refused (MP_ESTATE) at once, so it has no row here. */
            pids[r] = rows[r].call == c_iter_next ? 0 : tu_fork(huge_child, args[r]);
        }
        usleep((useconds_t)(300000 * tu_slow()));
        for (size_t r = 0; r < N; r++) {
            int st;
            if (pids[r] == 0)
                continue;
            if (waitpid(pids[r], &st, WNOHANG) == pids[r]) {
                if (WIFEXITED(st) && WEXITSTATUS(st) == 1) {
                    fprintf(stderr, "%s(timeout %g): returned a timeout or MP_EINVAL at once\n",
                            rows[r].name, huge[k]);
                    failures++;
                }
                continue;                          /* another code: not the timeout's doing */
            }
            kill(pids[r], SIGKILL);
            waitpid(pids[r], &st, 0);
        }
        mp_barrier_reset(o.barrier);               /* its waiter was killed */
    }
    assert_int_equal(failures, 0);
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_blocking_call_refuses_a_bad_timeout_at_once),
        cmocka_unit_test(test_zero_and_forever_keep_their_meaning),
        cmocka_unit_test(test_tiny_timeouts_poll_and_are_not_refused),
        cmocka_unit_test(test_huge_timeouts_wait_like_forever),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
