/* test_thread.c - mp_thread: names, exit codes, timed joins, counts,
 * joining at exit, and every error a call can return. */
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int returns_arg(void *arg)
{
    return (int)(intptr_t)arg;
}

static _Atomic int gate;

static int waits_for_gate(void *arg)
{
    (void)arg;
    while (!atomic_load(&gate))
        usleep(1000);
    return 5;
}

static mp_thread *start(mp_target fn, void *arg, const mp_thread_opts *o)
{
    mp_thread *t = NULL;
    TU_OK(mp_thread_new(&t, fn, arg, o));
    TU_OK(mp_thread_start(t));
    return t;
}

static void test_thread_exit_code_is_targets_return_value(void **state)
{
    (void)state;
    mp_thread *t = start(returns_arg, (void *)(intptr_t)-12345, NULL);
    TU_OK(mp_thread_join(t, 10));
    int code = 0;
    TU_OK(mp_thread_exitcode(t, &code));
    assert_int_equal(code, -12345);          /* the whole int: no process exit status */
    assert_false(mp_thread_is_alive(t));
    TU_OK(mp_thread_free(t));
}

static void test_thread_names_count_up_and_can_be_chosen(void **state)
{
    (void)state;
    mp_thread *a, *b, *c, *d;
    TU_OK(mp_thread_new(&a, returns_arg, NULL, NULL));
    TU_OK(mp_thread_new(&c, returns_arg, NULL, &(mp_thread_opts){ .name = "reader" }));
    TU_OK(mp_thread_new(&b, returns_arg, NULL, NULL));
    TU_OK(mp_thread_new(&d, returns_arg, NULL, &(mp_thread_opts){ .name = "" }));
    unsigned na, nb, nd;
    assert_int_equal(sscanf(mp_thread_name(a), "Thread-%u", &na), 1);
    assert_int_equal(sscanf(mp_thread_name(b), "Thread-%u", &nb), 1);
    assert_int_equal(nb, na + 1);           /* a named thread takes no number (Python) */
    assert_string_equal(mp_thread_name(c), "reader");
    assert_int_equal(sscanf(mp_thread_name(d), "Thread-%u", &nd), 1);   /* "": unnamed */
    assert_int_equal(nd, nb + 1);
    TU_OK(mp_thread_free(a));
    TU_OK(mp_thread_free(b));
    TU_OK(mp_thread_free(c));
    TU_OK(mp_thread_free(d));
}

static _Atomic(mp_thread *) seen_self;

static int records_itself(void *arg)
{
    (void)arg;
    atomic_store(&seen_self, mp_current_thread());
    return 0;
}

static void test_current_thread_is_main_or_the_thread_itself(void **state)
{
    (void)state;
    assert_string_equal(mp_thread_name(mp_current_thread()), "MainThread");
    assert_true(mp_thread_is_alive(mp_current_thread()));
    mp_thread *t = start(records_itself, NULL, NULL);
    TU_OK(mp_thread_join(t, 10));
    assert_ptr_equal(atomic_load(&seen_self), t);
    TU_OK(mp_thread_free(t));
}

static int names_its_thread(void *arg)
{
    (void)arg;
    return strcmp(mp_thread_name(mp_current_thread()), "MainThread") == 0 ? 0 : 1;
}

static void test_forked_child_runs_on_its_main_thread(void **state)
{
    (void)state;
    assert_string_equal(mp_thread_name(mp_current_thread()), "MainThread");
    assert_int_equal(tu_wait(tu_fork(names_its_thread, NULL), 10), 0);
}

static void test_thread_join_timeout_returns_etimedout_on_time(void **state)
{
    (void)state;
    atomic_store(&gate, 0);
    mp_thread *t = start(waits_for_gate, NULL, NULL);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_thread_join(t, 0.2), MP_ETIMEDOUT);
    double took = tu_now() - t0;
    assert_true(took >= 0.2 && took < 0.2 + 2.0 * tu_slow());
    TU_ASSERT_RC(mp_thread_join(t, 0), MP_ETIMEDOUT);
    int code;
    TU_ASSERT_RC(mp_thread_exitcode(t, &code), MP_ESTATE);
    TU_ASSERT_RC(mp_thread_free(t), MP_ESTATE);       /* still running */
    assert_true(mp_thread_is_alive(t));
    atomic_store(&gate, 1);
    TU_OK(mp_thread_join(t, 10));
    TU_OK(mp_thread_join(t, 10));                     /* twice is fine */
    TU_OK(mp_thread_exitcode(t, &code));
    assert_int_equal(code, 5);
    TU_OK(mp_thread_free(t));
}

static void test_active_count_counts_live_threads_and_main(void **state)
{
    (void)state;
    atomic_store(&gate, 0);
    int before = mp_active_count();
    assert_int_equal(before, 1);
    mp_thread *a = start(waits_for_gate, NULL, NULL);
    mp_thread *b = start(waits_for_gate, NULL, &(mp_thread_opts){ .daemon = true });
    assert_int_equal(mp_active_count(), 3);
    atomic_store(&gate, 1);
    TU_OK(mp_thread_join(a, 10));
    TU_OK(mp_thread_join(b, 10));
    assert_int_equal(mp_active_count(), 1);
    TU_OK(mp_thread_free(a));
    TU_OK(mp_thread_free(b));
}

static _Atomic int never;

static int waits_forever(void *arg)
{
    (void)arg;
    while (!atomic_load(&never))
        usleep(1000);
    return 0;
}

static int sets_flag_late(void *arg)
{
    usleep(100000);                 /* main is already in exit() */
    atomic_store((_Atomic int *)arg, 1);
    return 0;
}

static int exits_with_running_threads(void *arg)
{
    mp_thread *t, *d;
    if (mp_thread_new(&t, sets_flag_late, arg, NULL) != 0 || mp_thread_start(t) != 0)
        return 1;
    /* A daemon thread that never ends must not hold up the exit. */
    if (mp_thread_new(&d, waits_forever, NULL, &(mp_thread_opts){ .daemon = true }) != 0 ||
        mp_thread_start(d) != 0)
        return 1;
    exit(0);
}

static void test_exit_joins_non_daemon_threads_only(void **state)
{
    (void)state;
    _Atomic int *flag = mp_shared_alloc(sizeof *flag);
    pid_t pid = tu_fork(exits_with_running_threads, (void *)flag);
    assert_int_equal(tu_wait(pid, 20), 0);
    assert_int_equal(atomic_load(flag), 1);
    mp_shared_free((void *)flag);
}

static void test_thread_errors(void **state)
{
    (void)state;
    mp_thread *t = NULL;
    int code;
    char long_name[200];
    memset(long_name, 'y', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    TU_ASSERT_RC(mp_thread_new(NULL, returns_arg, NULL, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_thread_new(&t, NULL, NULL, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_thread_new(&t, returns_arg, NULL, &(mp_thread_opts){ .name = long_name }), MP_EINVAL);
    TU_ASSERT_RC(mp_thread_start(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_thread_join(NULL, 1), MP_EINVAL);
    TU_ASSERT_RC(mp_thread_exitcode(NULL, &code), MP_EINVAL);
    assert_false(mp_thread_is_alive(NULL));
    assert_null(mp_thread_name(NULL));
    TU_OK(mp_thread_free(NULL));

    TU_OK(mp_thread_new(&t, returns_arg, NULL, NULL));
    TU_ASSERT_RC(mp_thread_join(t, 0), MP_ESTATE);            /* not started */
    TU_ASSERT_RC(mp_thread_exitcode(t, &code), MP_ESTATE);
    TU_ASSERT_RC(mp_thread_exitcode(t, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_thread_join(t, NAN), MP_EINVAL);
    TU_OK(mp_thread_start(t));
    TU_ASSERT_RC(mp_thread_start(t), MP_ESTATE);              /* started twice */
    TU_OK(mp_thread_join(t, 10));
    TU_OK(mp_thread_free(t));

    TU_ASSERT_RC(mp_thread_join(mp_current_thread(), 0), MP_ESTATE);
    TU_ASSERT_RC(mp_thread_start(mp_current_thread()), MP_ESTATE);
    TU_ASSERT_RC(mp_thread_free(mp_current_thread()), MP_EINVAL);
}

static _Atomic int self_join_rc;

static int joins_itself(void *arg)
{
    (void)arg;
    atomic_store(&self_join_rc, mp_thread_join(mp_current_thread(), 0));
    return 0;
}

static void test_thread_cannot_join_itself(void **state)
{
    (void)state;
    mp_thread *t = start(joins_itself, NULL, NULL);
    TU_OK(mp_thread_join(t, 10));
    assert_int_equal(atomic_load(&self_join_rc), MP_ESTATE);
    TU_OK(mp_thread_free(t));
}

static int ends_by_pthread_exit(void *arg)
{
    (void)arg;
    pthread_exit(NULL);
}

/* A target that ends its thread with pthread_exit (or is cancelled) has
 * finished: join returns, and exit does not wait for it for ever. */
static void test_thread_ended_by_pthread_exit_is_finished(void **state)
{
    (void)state;
    mp_thread *t = start(ends_by_pthread_exit, NULL, NULL);
    TU_OK(mp_thread_join(t, 10));
    assert_false(mp_thread_is_alive(t));
    int code = 0;
    TU_OK(mp_thread_exitcode(t, &code));
    assert_int_equal(code, -1);
    TU_OK(mp_thread_free(t));
}

struct foreign_seen {
    _Atomic(mp_thread *) handle;
    atomic_int go;
};

static void *raw_thread_names_itself(void *arg)
{
    struct foreign_seen *f = arg;
    atomic_store(&f->handle, mp_current_thread());
    while (!atomic_load(&f->go))
        usleep(1000);
    return NULL;
}

/* A thread mproc did not start (a "Dummy" in Python) has a handle that other
 * threads may look at while it runs and just after it ends: never joined
 * (Python: "cannot join a dummy thread"), alive until it ends. */
static void test_foreign_threads_handle_is_alive_until_it_ends_and_never_joined(void **state)
{
    (void)state;
    struct foreign_seen f = { NULL, 0 };
    pthread_t raw;
    assert_int_equal(pthread_create(&raw, NULL, raw_thread_names_itself, &f), 0);
    for (double t0 = tu_now(); !atomic_load(&f.handle) && tu_now() - t0 < 10;)
        usleep(1000);
    mp_thread *h = atomic_load(&f.handle);
    assert_non_null(h);
    assert_non_null(strstr(mp_thread_name(h), "Dummy-"));
    assert_true(mp_thread_is_alive(h));
    TU_ASSERT_RC(mp_thread_join(h, MP_FOREVER), MP_ESTATE);   /* at once, not a hang */
    TU_ASSERT_RC(mp_thread_free(h), MP_EINVAL);
    atomic_store(&f.go, 1);
    assert_int_equal(pthread_join(raw, NULL), 0);
    assert_false(mp_thread_is_alive(h));
    TU_ASSERT_RC(mp_thread_join(h, MP_FOREVER), MP_ESTATE);
}

static int counts_threads(void *arg)
{
    (void)arg;
    return mp_active_count();
}

static int forks_a_counter(void *arg)
{
    (void)arg;
    return tu_wait(tu_fork(counts_threads, NULL), 10);
}

/* A child forked by a thread that is not the main one has that thread
 * alone: it is the child's main thread, as in Python, and counts once. */
static void test_child_forked_by_another_thread_counts_one_thread(void **state)
{
    (void)state;
    mp_thread *t = start(forks_a_counter, NULL, NULL);
    TU_OK(mp_thread_join(t, 10));
    int code = 0;
    TU_OK(mp_thread_exitcode(t, &code));
    assert_int_equal(code, 1);
    TU_OK(mp_thread_free(t));
}

int main(void)
{
    tu_watchdog(60);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_thread_exit_code_is_targets_return_value),
        cmocka_unit_test(test_thread_names_count_up_and_can_be_chosen),
        cmocka_unit_test(test_current_thread_is_main_or_the_thread_itself),
        cmocka_unit_test(test_forked_child_runs_on_its_main_thread),
        cmocka_unit_test(test_thread_join_timeout_returns_etimedout_on_time),
        cmocka_unit_test(test_active_count_counts_live_threads_and_main),
        cmocka_unit_test(test_exit_joins_non_daemon_threads_only),
        cmocka_unit_test(test_thread_errors),
        cmocka_unit_test(test_thread_cannot_join_itself),
        cmocka_unit_test(test_thread_ended_by_pthread_exit_is_finished),
        cmocka_unit_test(test_foreign_threads_handle_is_alive_until_it_ends_and_never_joined),
        cmocka_unit_test(test_child_forked_by_another_thread_counts_one_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
