/* test_process.c - mp_process under fork: lifecycle, names, exit codes,
 * daemons, exit handling, and every error a call can return. */
#include "testutil.h"
#include "proc_checks.h"

#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static int returns_arg(void *arg)
{
    return *(int *)arg;
}

static int sleeps_forever(void *arg)
{
    (void)arg;
    pid_t parent = getppid();
    while (getppid() == parent)     /* until killed, or orphaned by a failed test */
        usleep(10000);
    return 0;
}

static mp_process *start(mp_target fn, void *arg, const mp_process_opts *o)
{
    mp_process *p = NULL;
    TU_OK(mp_process_new(&p, fn, arg, o));
    TU_OK(mp_process_start(p));
    return p;
}

static void stop(mp_process *p)
{
    TU_OK(mp_process_kill(p));
    TU_OK(mp_process_join(p, 10 * tu_slow()));
    TU_OK(mp_process_free(p));
}

/* ------------------------------------------------------------------ happy paths */

static void test_process_exit_code_is_targets_return_value(void **state)
{
    (void)state;
    int v = 42;
    assert_int_equal(finish(start(returns_arg, &v, &(mp_process_opts){ .arg_size = sizeof v })), 42);
    v = 0;
    assert_int_equal(finish(start(returns_arg, &v, NULL)), 0);
}

static int changes_its_copy(void *arg)
{
    int *v = arg;
    if (*v != 7)
        return 1;
    *v = 99;
    return 0;
}

static void test_process_arg_size_copies_the_bytes(void **state)
{
    (void)state;
    int *shared = mp_shared_alloc(sizeof *shared);
    *shared = 7;
    mp_process *p = start(changes_its_copy, shared, &(mp_process_opts){ .arg_size = sizeof *shared });
    assert_int_equal(finish(p), 0);
    assert_int_equal(*shared, 7);        /* the child changed its own copy */
    mp_shared_free(shared);
}

static void test_process_arg_without_size_is_passed_unchanged(void **state)
{
    (void)state;
    int *shared = mp_shared_alloc(sizeof *shared);
    *shared = 7;
    assert_int_equal(finish(start(changes_its_copy, shared, NULL)), 0);
    assert_int_equal(*shared, 99);       /* the same shared word */
    mp_shared_free(shared);
}

struct family { pid_t pid, ppid; char name[64], parent[64]; bool same_record; char grandchild[64]; };

static int grandchild(void *arg)
{
    struct family *f = arg;
    snprintf(f->grandchild, sizeof f->grandchild, "%s", mp_process_name(mp_current_process()));
    return 0;
}

static int reports_family(void *arg)
{
    struct family *f = arg;
    f->pid = getpid();
    f->ppid = getppid();
    snprintf(f->name, sizeof f->name, "%s", mp_process_name(mp_current_process()));
    snprintf(f->parent, sizeof f->parent, "%s", mp_process_name(mp_parent_process()));
    f->same_record = mp_process_pid(mp_current_process()) == getpid();
    mp_process *g = NULL;
    if (mp_process_new(&g, grandchild, f, NULL) != 0 || mp_process_start(g) != 0 ||
        mp_process_join(g, MP_FOREVER) != 0)
        return 1;
    return mp_process_free(g) == 0 ? 0 : 2;
}

static void test_process_knows_its_name_pid_and_parent(void **state)
{
    (void)state;
    assert_string_equal(mp_process_name(mp_current_process()), "MainProcess");
    assert_null(mp_parent_process());
    assert_int_equal(mp_process_pid(mp_current_process()), getpid());
    struct family *f = mp_shared_alloc(sizeof *f);
    mp_process *p = start(reports_family, f, NULL);
    char name[64];
    snprintf(name, sizeof name, "%s", mp_process_name(p));
    pid_t pid = mp_process_pid(p);
    assert_int_equal(finish(p), 0);
    assert_int_equal(f->pid, pid);
    assert_int_equal(f->ppid, getpid());
    assert_string_equal(f->name, name);
    assert_string_equal(f->parent, "MainProcess");
    assert_true(f->same_record);
    assert_memory_equal(name, "Process-", 8);
    char want[80];
    snprintf(want, sizeof want, "%s:1", name);          /* Process-N:1, like Python */
    assert_string_equal(f->grandchild, want);
    mp_shared_free(f);
}

static void test_process_names_count_up_and_can_be_chosen(void **state)
{
    (void)state;
    mp_process *a, *b, *c;
    int zero = 0;
    TU_OK(mp_process_new(&a, returns_arg, &zero, NULL));
    TU_OK(mp_process_new(&b, returns_arg, &zero, NULL));
    TU_OK(mp_process_new(&c, returns_arg, &zero, &(mp_process_opts){ .name = "worker" }));
    unsigned na, nb;
    assert_int_equal(sscanf(mp_process_name(a), "Process-%u", &na), 1);
    assert_int_equal(sscanf(mp_process_name(b), "Process-%u", &nb), 1);
    assert_int_equal(nb, na + 1);
    assert_string_equal(mp_process_name(c), "worker");
    assert_int_equal(mp_process_pid(a), 0);               /* not started: no pid */
    mp_process *d;                                        /* "": unnamed, as Python's */
    TU_OK(mp_process_new(&d, returns_arg, &zero, &(mp_process_opts){ .name = "" }));
    unsigned nd;
    assert_int_equal(sscanf(mp_process_name(d), "Process-%u", &nd), 1);
    assert_int_equal(nd, nb + 2);                         /* c took a number too (Python) */
    TU_OK(mp_process_free(a));
    TU_OK(mp_process_free(b));
    TU_OK(mp_process_free(c));
    TU_OK(mp_process_free(d));
}

/* Children starting children, deeper than a name can spell: each starts
 * (Python has no limit), and a default name keeps the youngest generations.
 * Exit code: 0, 1 when a start failed, 2 when a name is wrong, 3 when a
 * join timed out. */
static int starts_a_deeper_child(void *arg)
{
    int left = *(int *)arg - 1;
    if (left == 0) {
        const char *name = mp_process_name(mp_current_process());
        return strncmp(name, "Process-...:", 12) == 0 && strstr(name, ":1:1:1") ? 0 : 2;
    }
    mp_process *p;
    if (mp_process_new(&p, starts_a_deeper_child, &left, &(mp_process_opts){
                           .arg_size = sizeof left }) != 0 || mp_process_start(p) != 0)
        return 1;
    int code = 3;                   /* no cmocka in a child: plain calls */
    if (mp_process_join(p, 60) == 0)
        mp_process_exitcode(p, &code);
    mp_process_free(p);
    return code;
}

static void test_a_family_deeper_than_a_name_still_starts(void **state)
{
    (void)state;
    int depth = 40;
    assert_int_equal(finish(start(starts_a_deeper_child, &depth, &(mp_process_opts){
                                      .arg_size = sizeof depth })), 0);
}

static void test_process_sentinel_becomes_readable_when_it_ends(void **state)
{
    (void)state;
    mp_process *p = start(sleeps_forever, NULL, NULL);
    int fd = mp_process_sentinel(p);
    assert_true(fd >= 0);
    struct pollfd pfd = { fd, POLLIN, 0 };
    assert_int_equal(poll(&pfd, 1, 0), 0);
    assert_true(mp_process_is_alive(p));
    TU_OK(mp_process_terminate(p));
    assert_int_equal(poll(&pfd, 1, (int)(10000 * tu_slow())), 1);
    TU_OK(mp_process_join(p, 10));
    assert_false(mp_process_is_alive(p));
    int code;
    TU_OK(mp_process_exitcode(p, &code));
    assert_int_equal(code, -SIGTERM);
    TU_OK(mp_process_free(p));
}

static void test_process_killed_reports_minus_sigkill(void **state)
{
    (void)state;
    mp_process *p = start(sleeps_forever, NULL, NULL);
    TU_OK(mp_process_kill(p));
    int code;
    TU_OK(mp_process_join(p, 10 * tu_slow()));
    TU_OK(mp_process_exitcode(p, &code));
    assert_int_equal(code, -SIGKILL);
    TU_OK(mp_process_kill(p));           /* finished: a no-op, as Python */
    TU_OK(mp_process_free(p));
}

static bool proc_entry_gone(void *arg)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d", *(pid_t *)arg);
    return access(path, F_OK) != 0;
}

static void test_process_leaves_no_zombie_after_join(void **state)
{
    (void)state;
    int v = 3;
    mp_process *p = start(returns_arg, &v, &(mp_process_opts){ .arg_size = sizeof v });
    pid_t pid = mp_process_pid(p);
    TU_OK(mp_process_join(p, 10 * tu_slow()));
    assert_true(proc_entry_gone(&pid));  /* reaped by join itself */
    assert_int_equal(waitpid(pid, NULL, WNOHANG), -1);
    TU_OK(mp_process_free(p));
}

static void test_active_children_lists_live_ones_and_reaps_the_rest(void **state)
{
    (void)state;
    int v = 0;
    mp_process *live = start(sleeps_forever, NULL, NULL);
    mp_process *quick = start(returns_arg, &v, &(mp_process_opts){ .arg_size = sizeof v });
    pid_t qpid = mp_process_pid(quick);
    mp_process *out[4];
    int fd = mp_process_sentinel(quick);
    struct pollfd pfd = { fd, POLLIN, 0 };
    assert_int_equal(poll(&pfd, 1, (int)(10000 * tu_slow())), 1);
    assert_int_equal(mp_active_children(out, 4), 1);
    assert_ptr_equal(out[0], live);
    assert_true(proc_entry_gone(&qpid)); /* reaped on the way */
    assert_int_equal(mp_active_children(NULL, 0), 1);
    TU_ASSERT_RC(mp_active_children(NULL, 1), MP_EINVAL);
    int code;
    TU_OK(mp_process_exitcode(quick, &code));
    assert_int_equal(code, 0);
    TU_OK(mp_process_free(quick));
    stop(live);
    assert_int_equal(mp_active_children(out, 4), 0);
}

/* ------------------------------------------------------------------ daemons and exit */

static int tries_to_start_a_child(void *arg)
{
    (void)arg;
    mp_process *p;
    int zero = 0;
    if (mp_process_new(&p, returns_arg, &zero, NULL) != 0)
        return 1;
    int rc = mp_process_start(p);
    mp_process_free(p);
    return rc == MP_ESTATE ? 0 : 2;
}

static void test_daemon_cannot_start_children(void **state)
{
    (void)state;
    mp_process *p = start(tries_to_start_a_child, NULL, &(mp_process_opts){ .daemon = true });
    assert_true(mp_process_daemon(p));
    assert_int_equal(finish(p), 0);
}

static int starts_daemon_and_reports(void *arg)
{
    int *fds = arg;
    mp_process *d;
    if (mp_process_new(&d, sleeps_forever, NULL, &(mp_process_opts){ .daemon = true }) != 0 ||
        mp_process_start(d) != 0)
        return 1;
    pid_t pid = mp_process_pid(d);
    if (write(fds[1], &pid, sizeof pid) != sizeof pid)
        return 2;
    for (;;)
        pause();
}

static void test_daemon_dies_when_its_parent_is_sigkilled(void **state)
{
    (void)state;
    /* Orphans come back to us, so we can see how the daemon died. */
    TU_OK(prctl(PR_SET_CHILD_SUBREAPER, 1));
    int fds[2];
    TU_OK(pipe(fds));
    pid_t helper = tu_fork(starts_daemon_and_reports, fds);
    pid_t daemon = 0;
    assert_int_equal(read(fds[0], &daemon, sizeof daemon), sizeof daemon);
    TU_OK(kill(helper, SIGKILL));
    assert_int_equal(tu_wait(helper, 10), -SIGKILL);
    int st = 0;
    double end = tu_now() + 1.0 * tu_slow();
    pid_t r = 0;
    while (r == 0 && tu_now() < end) {
        r = waitpid(daemon, &st, WNOHANG);
        if (r == 0)
            usleep(2000);
    }
    if (r == 0)
        kill(daemon, SIGKILL), waitpid(daemon, &st, 0);
    assert_int_equal(r, daemon);         /* gone within a second */
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    TU_OK(prctl(PR_SET_CHILD_SUBREAPER, 0));
    close(fds[0]);
    close(fds[1]);
}

struct at_exit_report { _Atomic int normal_done; pid_t daemon; };

static int finishes_late(void *arg)
{
    struct at_exit_report *r = arg;
    usleep(100000);                      /* the parent is already in exit() */
    r->normal_done = 1;
    return 0;
}

static int exits_with_children(void *arg)
{
    mp_process *n, *d;
    if (mp_process_new(&n, finishes_late, arg, NULL) != 0 || mp_process_start(n) != 0 ||
        mp_process_new(&d, sleeps_forever, NULL, &(mp_process_opts){ .daemon = true }) != 0 ||
        mp_process_start(d) != 0)
        return 1;
    ((struct at_exit_report *)arg)->daemon = mp_process_pid(d);
    exit(0);                             /* joins n, terminates d */
}

static void test_exit_joins_normal_children_and_terminates_daemons(void **state)
{
    (void)state;
    struct at_exit_report *r = mp_shared_alloc(sizeof *r);
    pid_t helper = tu_fork(exits_with_children, r);
    assert_int_equal(tu_wait(helper, 20), 0);
    assert_int_equal(r->normal_done, 1);
    assert_true(r->daemon > 0);
    assert_true(proc_entry_gone(&r->daemon));
    mp_shared_free(r);
}

/* ------------------------------------------------------------------ failures */

/* join(p, 0) and is_alive agree at every moment of a child's life:
 * once is_alive says no, join(p, 0) joins (the forkserver and spawn
 * cases are in test_spawn.c). */
static void test_process_join_zero_and_is_alive_agree(void **state)
{
    (void)state;
    for (int killed = 0; killed < 2; killed++) {
        mp_process *p;
        int five = 5;
        TU_OK(mp_process_new(&p, killed ? sleeps_forever : returns_arg, &five, NULL));
        TU_OK(mp_process_start(p));
        if (killed)
            TU_OK(mp_process_kill(p));
        join_zero_agrees_with_is_alive(p);
        int code;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, killed ? -SIGKILL : 5);
        TU_OK(mp_process_free(p));
    }
}

static void test_process_start_twice_returns_estate(void **state)
{
    (void)state;
    int v = 0;
    mp_process *p = start(returns_arg, &v, &(mp_process_opts){ .arg_size = sizeof v });
    TU_ASSERT_RC(mp_process_start(p), MP_ESTATE);
    assert_int_equal(finish(p), 0);
}

static void test_process_set_daemon_after_start_returns_estate(void **state)
{
    (void)state;
    mp_process *p;
    TU_OK(mp_process_new(&p, sleeps_forever, NULL, NULL));
    TU_OK(mp_process_set_daemon(p, true));
    assert_true(mp_process_daemon(p));
    TU_OK(mp_process_set_daemon(p, false));
    TU_OK(mp_process_start(p));
    TU_ASSERT_RC(mp_process_set_daemon(p, true), MP_ESTATE);
    assert_false(mp_process_daemon(p));
    stop(p);
}

static void test_process_free_while_running_returns_estate(void **state)
{
    (void)state;
    mp_process *p = start(sleeps_forever, NULL, NULL);
    TU_ASSERT_RC(mp_process_free(p), MP_ESTATE);
    TU_ASSERT_RC(mp_process_free(mp_current_process()), MP_ESTATE);
    stop(p);
}

static void test_process_join_timeout_returns_etimedout_on_time(void **state)
{
    (void)state;
    mp_process *p = start(sleeps_forever, NULL, NULL);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_process_join(p, 0.2), MP_ETIMEDOUT);
    double took = tu_now() - t0;
    assert_true(took >= 0.2);
    assert_true(took < 0.2 + 2.0 * tu_slow());
    TU_ASSERT_RC(mp_process_join(p, 0), MP_ETIMEDOUT);
    int code;
    TU_ASSERT_RC(mp_process_exitcode(p, &code), MP_ESTATE);   /* still running */
    stop(p);
}

static void test_process_calls_before_start_return_estate(void **state)
{
    (void)state;
    mp_process *p;
    int code;
    TU_OK(mp_process_new(&p, sleeps_forever, NULL, NULL));
    TU_ASSERT_RC(mp_process_join(p, 0), MP_ESTATE);
    TU_ASSERT_RC(mp_process_exitcode(p, &code), MP_ESTATE);
    TU_ASSERT_RC(mp_process_terminate(p), MP_ESTATE);
    TU_ASSERT_RC(mp_process_kill(p), MP_ESTATE);
    TU_ASSERT_RC(mp_process_sentinel(p), MP_ESTATE);
    assert_false(mp_process_is_alive(p));
    TU_ASSERT_RC(mp_process_join(mp_current_process(), 0), MP_ESTATE);
    TU_OK(mp_process_free(p));           /* never started: free at once */
}

static void test_process_bad_arguments_return_einval(void **state)
{
    (void)state;
    mp_process *p = NULL;
    int v = 0, code;
    char long_name[200];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    TU_ASSERT_RC(mp_process_new(NULL, returns_arg, &v, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_process_new(&p, NULL, &v, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_process_new(&p, returns_arg, &v, &(mp_process_opts){ .method = 42 }), MP_EINVAL);
    TU_ASSERT_RC(mp_process_new(&p, returns_arg, NULL, &(mp_process_opts){ .arg_size = 4 }), MP_EINVAL);
    TU_ASSERT_RC(mp_process_new(&p, returns_arg, &v, &(mp_process_opts){ .name = long_name }), MP_EINVAL);
    TU_ASSERT_RC(mp_process_start(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_process_join(NULL, 1), MP_EINVAL);
    TU_ASSERT_RC(mp_process_terminate(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_process_kill(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_process_exitcode(NULL, &code), MP_EINVAL);
    TU_ASSERT_RC(mp_process_sentinel(NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_process_set_daemon(NULL, true), MP_EINVAL);
    assert_false(mp_process_is_alive(NULL));
    assert_false(mp_process_daemon(NULL));
    assert_null(mp_process_name(NULL));
    assert_int_equal(mp_process_pid(NULL), 0);
    TU_OK(mp_process_free(NULL));
    TU_ASSERT_RC(mp_set_start_method((mp_start_method)9), MP_EINVAL);

    TU_OK(mp_process_new(&p, returns_arg, &v, NULL));
    TU_ASSERT_RC(mp_process_exitcode(p, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_process_join(p, NAN), MP_EINVAL);
    TU_OK(mp_process_free(p));
    TU_ASSERT_RC(mp_process_start(p), MP_EINVAL);        /* freed handle refused */
    TU_ASSERT_RC(mp_process_free(p), MP_EINVAL);

    int not_a_process[32] = { 0 };
    TU_ASSERT_RC(mp_process_join((mp_process *)not_a_process, 0), MP_EINVAL);
}

static int starts_with_sigchld_ignored(void *arg)
{
    (void)arg;
    signal(SIGCHLD, SIG_IGN);            /* the kernel reaps children itself */
    int v = 3, code = -1;
    for (int i = 0; i < 5; i++) {
        mp_process *p;
        if (mp_process_new(&p, returns_arg, &v, &(mp_process_opts){ .arg_size = sizeof v }) != 0 ||
            mp_process_start(p) != 0)
            return 1;
        if (mp_process_join(p, 10) != 0 || mp_process_exitcode(p, &code) != 0)
            return 2;
        if (code != 0 && code != 3)      /* 0 when the status was gone before us */
            return 3;
        if (mp_process_free(p) != 0)
            return 4;
    }
    return 0;
}

static void test_join_returns_when_sigchld_is_ignored(void **state)
{
    (void)state;
    assert_int_equal(tu_wait(tu_fork(starts_with_sigchld_ignored, NULL), 30), 0);
}

/* ------------------------------------------------------------------ calls during a start */

static int sleeps_then_exits_5(void *arg)
{
    (void)arg;
    usleep(300 * 1000);
    return 5;
}

static void *starts_it(void *p)
{
    return (void *)(intptr_t)mp_process_start(p);
}

/* In its own process group (so that a signal to "pid 0" could only hit
 * it): another thread starts a process while this one kills it (what
 * 'k'), or joins it ('j'), as soon as it is no longer "never started".
 * The call must wait for the start, then act on the child itself. */
static int call_during_start(void *arg)
{
    int what = (int)(intptr_t)arg >> 8, method = (int)(intptr_t)arg & 0xff;
    setpgid(0, 0);
    mp_process *p;
    if (mp_process_new(&p, sleeps_then_exits_5, NULL, &(mp_process_opts){ .method = method }))
        return 10;
    pthread_t t;
    if (pthread_create(&t, NULL, starts_it, p) != 0)
        return 11;
    int rc;
    double until = tu_now() + 10;
    do                                  /* MP_ESTATE: not started yet */
        rc = what == 'k' ? mp_process_kill(p) : mp_process_join(p, 30);
    while (rc == MP_ESTATE && tu_now() < until);
    void *started;
    pthread_join(t, &started);
    if (rc != 0 || started != NULL)
        return 12;
    int code = 0;
    if (what == 'j' && (mp_process_exitcode(p, &code) != 0 || code != 5))
        return 13;           /* joined before the child ended */
    if (mp_process_join(p, 30) != 0 || mp_process_exitcode(p, &code) != 0)
        return 14;
    if (what == 'k' && code != -SIGKILL && code != 5)
        return 15;
    return mp_process_free(p) == 0 ? 0 : 16;
}

static void test_kill_and_join_during_another_threads_start_wait_for_the_child(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)            /* spawn and forkserver need pidfd_open */
        skip();
    mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    for (int round = 0; round < 3; round++)
        for (int m = 0; m < 3; m++)
            for (int what = 'j'; what <= 'k'; what++) {
                intptr_t arg = what << 8 | methods[m];
                assert_int_equal(tu_wait(tu_fork(call_during_start, (void *)arg), 60), 0);
            }
}

static int returns_5(void *arg)
{
    (void)arg;
    return 5;
}

struct racing_start {
    mp_process *p;
    atomic_int go;
};

static void *starts_once_the_kill_spins(void *arg)
{
    struct racing_start *r = arg;
    while (!atomic_load(&r->go))
        ;
    return (void *)(intptr_t)mp_process_start(r->p);
}

/* The kill spins on the record before the start begins, so that some of
 * its looks fall between the starter's CAS to RUNNING and the child's pid:
 * a kill that decided on one look at the state and acted on another
 * signalled pid 0, this whole process group (in about half the runs of
 * 2,000 starts here, and in nearly every run of a smaller program). */
static int kills_racing_starts(void *arg)
{
    int starts = (int)(intptr_t)arg;
    setpgid(0, 0);
    double until = tu_now() + 4;      /* fewer starts under the sanitizers */
    for (int i = 0; i < starts && tu_now() < until; i++) {
        struct racing_start r = { .go = 0 };
        if (mp_process_new(&r.p, returns_5, NULL, NULL))
            return 10;
        pthread_t t;
        if (pthread_create(&t, NULL, starts_once_the_kill_spins, &r) != 0)
            return 11;
        int rc;
        while ((rc = mp_process_kill(r.p)) == MP_ESTATE)
            atomic_store(&r.go, 1);
        void *started;
        pthread_join(t, &started);
        int code;
        if (rc != 0 || started != NULL || mp_process_join(r.p, 30) != 0 ||
            mp_process_exitcode(r.p, &code) != 0 || (code != -SIGKILL && code != 5))
            return 12;
        if (mp_process_free(r.p) != 0)
            return 13;
    }
    return 0;
}

static void test_kill_racing_a_start_never_signals_the_process_group(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)
        skip();
    assert_int_equal(tu_wait(tu_fork(kills_racing_starts, (void *)(intptr_t)2000), 60), 0);
}

static void test_start_method_defaults_to_fork_and_can_be_set(void **state)
{
    (void)state;
    assert_int_equal(mp_get_start_method(), MP_FORK);
    TU_OK(mp_set_start_method(MP_SPAWN));
    assert_int_equal(mp_get_start_method(), MP_SPAWN);
    TU_OK(mp_set_start_method(MP_START_DEFAULT));
    assert_int_equal(mp_get_start_method(), MP_FORK);
    assert_true(mp_cpu_count() >= 1);
}

static int exits_with_big_code(void *arg)
{
    (void)arg;
    return 256 + 5;                      /* exit status keeps the low 8 bits, as exit() */
}

static void test_process_exit_code_keeps_low_eight_bits(void **state)
{
    (void)state;
    assert_int_equal(finish(start(exits_with_big_code, NULL, NULL)), 5);
}

static int joins_sibling(void *arg)
{
    mp_process *sibling = *(mp_process **)arg;
    if (mp_process_is_alive(sibling) != true)
        return 1;
    if (mp_process_join(sibling, 0.05) != MP_ETIMEDOUT)
        return 2;
    int fd = mp_process_sentinel(sibling);     /* a pidfd opened here; none without pidfds */
    struct pollfd pfd = { fd, POLLIN, 0 };
    if (fd != -ENOSYS && (fd < 0 || poll(&pfd, 1, 0) != 0))
        return 6;
    if (mp_process_kill(sibling) != 0)
        return 3;
    if (mp_process_join(sibling, 10) != 0)
        return 4;
    if (fd != -ENOSYS && poll(&pfd, 1, 0) != 1)
        return 7;
    /* Not reaped yet (our parent is busy joining us): its zombie tells its
     * code through our pidfd; with none, the error says who will know. */
    int code = 0, rc = mp_process_exitcode(sibling, &code);
    if (fd != -ENOSYS ? rc != 0 || code != -SIGKILL
                      : rc != MP_ESTATE || !strstr(mp_last_error(), "once its parent has reaped"))
        return 8;
    return mp_process_is_alive(sibling) ? 5 : 0;
}

static void test_handle_works_in_another_process_of_the_family(void **state)
{
    (void)state;
    mp_process *victim = start(sleeps_forever, NULL, NULL);
    mp_process *killer = start(joins_sibling, &victim, &(mp_process_opts){ .arg_size = sizeof victim });
    assert_int_equal(finish(killer), 0);
    int code;
    TU_OK(mp_process_join(victim, 10 * tu_slow()));
    TU_OK(mp_process_exitcode(victim, &code));
    assert_int_equal(code, -SIGKILL);
    TU_OK(mp_process_free(victim));
}

static int starts_many(void *arg)
{
    mp_start_method m = *(mp_start_method *)arg;
    for (int i = 0; i < 10; i++) {
        mp_process *p;
        int v = i, code = -1;
        mp_process_opts o = { .method = m, .arg_size = sizeof v };
        if (mp_process_new(&p, returns_arg, &v, &o) != 0 || mp_process_start(p) != 0 ||
            mp_process_join(p, 30) != 0 || mp_process_exitcode(p, &code) != 0 ||
            mp_process_free(p) != 0)
            return 1;
        if (code != i) {
            fprintf(stderr, "method %d: child %d exited with %d\n", (int)m, i, code);
            return 2;
        }
    }
    return 0;
}

static void test_threads_start_and_join_processes_at_once(void **state)
{
    (void)state;
    mp_start_method methods[4] = { MP_FORK, MP_FORK, MP_SPAWN, MP_FORKSERVER };
    mp_thread *t[4];
    for (int i = 0; i < 4; i++) {
        TU_OK(mp_thread_new(&t[i], starts_many, &methods[i], NULL));
        TU_OK(mp_thread_start(t[i]));
    }
    for (int i = 0; i < 4; i++) {
        int code = -1;
        TU_OK(mp_thread_join(t[i], 60 * tu_slow()));
        TU_OK(mp_thread_exitcode(t[i], &code));
        assert_int_equal(code, 0);
        TU_OK(mp_thread_free(t[i]));
    }
    assert_int_equal(mp_active_children(NULL, 0), 0);
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_process_exit_code_is_targets_return_value),
        cmocka_unit_test(test_kill_and_join_during_another_threads_start_wait_for_the_child),
        cmocka_unit_test(test_kill_racing_a_start_never_signals_the_process_group),
        cmocka_unit_test(test_process_arg_size_copies_the_bytes),
        cmocka_unit_test(test_process_arg_without_size_is_passed_unchanged),
        cmocka_unit_test(test_process_knows_its_name_pid_and_parent),
        cmocka_unit_test(test_process_names_count_up_and_can_be_chosen),
        cmocka_unit_test(test_process_sentinel_becomes_readable_when_it_ends),
        cmocka_unit_test(test_process_killed_reports_minus_sigkill),
        cmocka_unit_test(test_process_leaves_no_zombie_after_join),
        cmocka_unit_test(test_active_children_lists_live_ones_and_reaps_the_rest),
        cmocka_unit_test(test_daemon_cannot_start_children),
        cmocka_unit_test(test_daemon_dies_when_its_parent_is_sigkilled),
        cmocka_unit_test(test_exit_joins_normal_children_and_terminates_daemons),
        cmocka_unit_test(test_process_join_zero_and_is_alive_agree),
        cmocka_unit_test(test_process_start_twice_returns_estate),
        cmocka_unit_test(test_process_set_daemon_after_start_returns_estate),
        cmocka_unit_test(test_process_free_while_running_returns_estate),
        cmocka_unit_test(test_process_join_timeout_returns_etimedout_on_time),
        cmocka_unit_test(test_process_calls_before_start_return_estate),
        cmocka_unit_test(test_process_bad_arguments_return_einval),
        cmocka_unit_test(test_start_method_defaults_to_fork_and_can_be_set),
        cmocka_unit_test(test_join_returns_when_sigchld_is_ignored),
        cmocka_unit_test(test_process_exit_code_keeps_low_eight_bits),
        cmocka_unit_test(test_handle_works_in_another_process_of_the_family),
        cmocka_unit_test(test_threads_start_and_join_processes_at_once),
        cmocka_unit_test(test_a_family_deeper_than_a_name_still_starts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
