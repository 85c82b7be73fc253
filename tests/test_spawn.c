/* test_spawn.c - the spawn and forkserver start methods: targets from the
 * executable and from a shared library, copied arguments, exit codes and
 * signals, shared memory, daemons, and main never running in the child.
 * Every test runs once per method (the cmocka state is the method). */
#include "testutil.h"
#include "proc_targets.h"
#include "proc_checks.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

static int main_ran;                 /* set first thing in main */

static mp_start_method method_of(void **state)
{
    return (mp_start_method)(intptr_t)*state;
}

static mp_process *start(void **state, mp_target fn, void *arg, size_t arg_size, bool daemon)
{
    mp_process *p = NULL;
    mp_process_opts o = { .method = method_of(state), .arg_size = arg_size, .daemon = daemon };
    TU_OK(mp_process_new(&p, fn, arg, &o));
    TU_OK(mp_process_start(p));
    return p;
}

static bool proc_entry_gone(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d", pid);
    return access(path, F_OK) != 0;
}

struct job { int a, b; char text[32]; };

static int sums_job(void *arg)
{
    struct job *j = arg;
    return strcmp(j->text, "copied") == 0 ? j->a + j->b : 255;
}

static void test_runs_executable_target_with_copied_arg(void **state)
{
    struct job j = { 40, 2, "copied" };
    mp_process *p = start(state, sums_job, &j, sizeof j, false);
    memset(&j, 0, sizeof j);             /* the child has its own copy */
    assert_int_equal(finish(p), 42);
}

static void test_runs_shared_library_target(void **state)
{
    int *out = mp_shared_alloc(sizeof *out);
    struct lib_job j = { 30, 7, out };
    assert_int_equal(finish(start(state, lib_target_sum, &j, sizeof j, false)), 37);
    assert_int_equal(*out, 37);          /* written through an arena pointer */
    mp_shared_free(out);
}

static void test_child_dying_by_signal_reports_minus_signal(void **state)
{
    int sig = SIGUSR2;
    assert_int_equal(finish(start(state, lib_target_raise, &sig, sizeof sig, false)), -SIGUSR2);
    sig = SIGUSR1;
    assert_int_equal(finish(start(state, lib_target_raise, &sig, sizeof sig, false)), -SIGUSR1);
}

static int returns_ten(void *arg)
{
    (void)arg;
    return 10;
}

static int waits_forever(void *arg)
{
    (void)arg;
    pid_t parent = getppid();
    while (getppid() == parent)     /* until killed, or orphaned by a failed test */
        usleep(10000);
    return 0;
}

static void test_kill_terminate_and_join_timeout(void **state)
{
    mp_process *p = start(state, waits_forever, NULL, 0, false);
    assert_true(mp_process_is_alive(p));
    double t0 = tu_now();
    TU_ASSERT_RC(mp_process_join(p, 0.2), MP_ETIMEDOUT);
    assert_true(tu_now() - t0 >= 0.2);
    TU_ASSERT_RC(mp_process_free(p), MP_ESTATE);
    TU_OK(mp_process_kill(p));
    assert_int_equal(finish(p), -SIGKILL);
    p = start(state, waits_forever, NULL, 0, false);
    TU_OK(mp_process_terminate(p));
    assert_int_equal(finish(p), -SIGTERM);
}

struct seen { int main_ran; pid_t pid; char name[64], parent[64], grandchild[64]; int value; };

static int grandchild(void *arg)
{
    struct seen *s = arg;
    snprintf(s->grandchild, sizeof s->grandchild, "%s", mp_process_name(mp_current_process()));
    return 0;
}

static int reports_what_it_sees(void *arg)
{
    struct seen *s = *(struct seen **)arg;   /* an arena pointer inside the copy */
    s->main_ran = main_ran;
    s->pid = getpid();
    s->value++;
    snprintf(s->name, sizeof s->name, "%s", mp_process_name(mp_current_process()));
    snprintf(s->parent, sizeof s->parent, "%s", mp_process_name(mp_parent_process()));
    mp_process *g;
    if (mp_process_new(&g, grandchild, s, NULL) != 0 || mp_process_start(g) != 0 ||
        mp_process_join(g, MP_FOREVER) != 0 || mp_process_free(g) != 0)
        return 1;
    return 0;
}

static void test_child_sees_shared_memory_names_and_no_main(void **state)
{
    struct seen *s = mp_shared_alloc(sizeof *s);
    s->value = 41;
    mp_process *p = start(state, reports_what_it_sees, &s, sizeof s, false);
    char name[64], want[80];
    snprintf(name, sizeof name, "%s", mp_process_name(p));
    pid_t pid = mp_process_pid(p);
    assert_int_equal(finish(p), 0);
    assert_int_equal(s->main_ran, 0);    /* taken aside before main */
    assert_int_equal(s->pid, pid);
    assert_int_equal(s->value, 42);
    assert_string_equal(s->name, name);
    assert_string_equal(s->parent, "MainProcess");
    snprintf(want, sizeof want, "%s:1", name);
    assert_string_equal(s->grandchild, want);
    assert_true(proc_entry_gone(pid));   /* no zombie after join */
    mp_shared_free(s);
}

static void test_sentinel_is_readable_once_the_child_ends(void **state)
{
    mp_process *p = start(state, waits_forever, NULL, 0, false);
    struct pollfd pfd = { mp_process_sentinel(p), POLLIN, 0 };
    assert_true(pfd.fd >= 0);
    assert_int_equal(poll(&pfd, 1, 0), 0);
    TU_OK(mp_process_kill(p));
    assert_int_equal(poll(&pfd, 1, (int)(10000 * tu_slow())), 1);
    assert_int_equal(finish(p), -SIGKILL);
}

static void test_target_outside_any_object_is_refused(void **state)
{
    void *heap = malloc(64);
    mp_process *p;
    TU_OK(mp_process_new(&p, (mp_target)heap, NULL, &(mp_process_opts){ .method = method_of(state) }));
    TU_ASSERT_RC(mp_process_start(p), MP_EINVAL);
    assert_false(mp_process_is_alive(p));
    TU_OK(mp_process_free(p));
    free(heap);
}

static int starts_with_a_huge_environment(void *arg)
{
    mp_start_method m = *(mp_start_method *)arg;
    static char big[200 * 1024];         /* one string over MAX_ARG_STRLEN: E2BIG */
    memset(big, 'x', sizeof big - 1);
    setenv("MPROC_TEST_HUGE", big, 1);
    mp_process *p;
    int v = 0;
    mp_process_opts o = { .method = m, .arg_size = sizeof v };
    if (mp_process_new(&p, sums_job, &v, &o) != 0)
        return 1;
    int rc = mp_process_start(p);
    if (rc != -E2BIG)
        return 2;
    if (mp_process_is_alive(p) || mp_process_free(p) != 0)
        return 3;
    return mp_active_children(NULL, 0) == 0 ? 0 : 4;
}

static void test_exec_failure_is_reported_by_start(void **state)
{
    mp_start_method m = method_of(state);
    if (RUNNING_ON_VALGRIND)
        skip();                          /* valgrind kills a child whose exec fails (101) */
    assert_int_equal(tu_wait(tu_fork(starts_with_a_huge_environment, &m), 20), 0);
}

static void test_many_children_in_a_row(void **state)
{
    for (int i = 0; i < 20; i++) {
        struct job j = { i, 1, "copied" };
        assert_int_equal(finish(start(state, sums_job, &j, sizeof j, false)), i + 1);
    }
}

struct helper_arg { mp_start_method method; int fd; };

static int starts_daemon_and_reports(void *arg)
{
    struct helper_arg *h = arg;
    mp_process *d;
    mp_process_opts o = { .method = h->method, .daemon = true };
    if (mp_process_new(&d, waits_forever, NULL, &o) != 0 || mp_process_start(d) != 0)
        return 1;
    pid_t pid = mp_process_pid(d);
    if (write(h->fd, &pid, sizeof pid) != sizeof pid)
        return 2;
    for (;;)
        pause();
}

/* Dead: no /proc entry, or a zombie waiting for init (its orphan). */
static bool dead(void *arg)
{
    char st = tu_proc_state(*(pid_t *)arg);
    return st == 0 || st == 'Z' || st == 'X';
}

static size_t children_of(pid_t pid, pid_t *out, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, pid);
    FILE *f = fopen(path, "r");
    size_t n = 0;
    int v;
    while (f && n < cap && fscanf(f, "%d", &v) == 1)
        out[n++] = v;
    if (f)
        fclose(f);
    return n;
}

static void test_daemon_dies_when_its_parent_is_sigkilled(void **state)
{
    int fds[2];
    TU_OK(pipe(fds));
    struct helper_arg h = { method_of(state), fds[1] };
    pid_t helper = tu_fork(starts_daemon_and_reports, &h);
    pid_t daemon = 0;
    assert_int_equal(read(fds[0], &daemon, sizeof daemon), sizeof daemon);
    assert_false(dead(&daemon));
    /* The helper's children (the daemon, or its fork server) are orphaned
     * when it dies: have them come back to us, to reap them. */
    TU_OK(prctl(PR_SET_CHILD_SUBREAPER, 1));
    pid_t orphans[8];
    size_t norphans = children_of(helper, orphans, 8);
    TU_OK(kill(helper, SIGKILL));
    assert_int_equal(tu_wait(helper, 10), -SIGKILL);
    bool gone = tu_wait_for(dead, &daemon, 1.0);
    if (!gone)
        kill(daemon, SIGKILL);
    for (size_t i = 0; i < norphans; i++)
        tu_wait(orphans[i], 5);
    TU_OK(prctl(PR_SET_CHILD_SUBREAPER, 0));
    assert_true(gone);                   /* within a second */
    assert_true(norphans >= 1);
    close(fds[0]);
    close(fds[1]);
}

/* Returns code, or raises sig, once its fork server is gone. */
struct orphan_arg { _Atomic int *started; int code, sig; };

static int ends_once_orphaned(void *arg)
{
    struct orphan_arg *o = arg;
    pid_t parent = getppid();
    atomic_store(o->started, 1);
    while (getppid() == parent)
        usleep(10000);
    if (o->sig)
        raise(o->sig);
    return o->code;
}

static bool flag_set(void *arg)
{
    return atomic_load((_Atomic int *)arg) != 0;
}

/* As the library decides: forced off, or not there (valgrind, old kernels). */
static bool pidfds_on(void)
{
    const char *off = getenv("MPROC_NO_PIDFD");
    if (off && *off == '1')
        return false;
    long fd = syscall(SYS_pidfd_open, getpid(), 0);
    if (fd >= 0)
        close((int)fd);
    return fd >= 0;
}

/* PIDFD_INFO_EXIT: the status of a reaped process, from Linux 6.15. */
static bool kernel_keeps_exit_info(void)
{
    struct utsname u;
    int major = 0, minor = 0;
    return uname(&u) == 0 && sscanf(u.release, "%d.%d", &major, &minor) == 2 &&
           (major > 6 || (major == 6 && minor >= 15));
}

static bool orphaned_to_us(void *pid)
{
    return tu_proc_ppid(*(pid_t *)pid) == getpid();
}

/* Starts a child that ends (code, or sig) once its server is SIGKILLed,
 * kills the server, and returns the child; the orphan comes to us (the
 * caller is a subreaper). */
static mp_process *orphan_of_a_killed_server(void **state, int code, int sig, pid_t *child)
{
    _Atomic int *started = mp_shared_alloc(sizeof *started);
    struct orphan_arg o = { started, code, sig };
    mp_process *p = start(state, ends_once_orphaned, &o, sizeof o, false);
    assert_true(tu_wait_for(flag_set, (void *)started, 10 * tu_slow()));
    *child = mp_process_pid(p);
    pid_t server = tu_proc_ppid(*child);
    assert_true(server > 0 && server != getpid());
    TU_OK(kill(server, SIGKILL));
    mp_shared_free((void *)started);
    assert_true(tu_wait_for(orphaned_to_us, child, 10 * tu_slow()));
    return p;
}

static int joined_code(mp_process *p)
{
    int code = -1000;
    TU_OK(mp_process_join(p, 10 * tu_slow()));
    TU_OK(mp_process_exitcode(p, &code));
    return code;
}

/* Its zombie still tells (the orphan is ours here, and not yet reaped). */
static void test_forkserver_child_keeps_its_code_when_the_server_dies(void **state)
{
    TU_OK(prctl(PR_SET_CHILD_SUBREAPER, 1));
    pid_t child;
    mp_process *p = orphan_of_a_killed_server(state, 7, 0, &child);
    assert_int_equal(joined_code(p), pidfds_on() ? 7 : MP_EXITCODE_UNKNOWN);
    TU_OK(mp_process_free(p));
    p = orphan_of_a_killed_server(state, 0, SIGUSR1, &child);
    assert_int_equal(joined_code(p), pidfds_on() ? -SIGUSR1 : MP_EXITCODE_UNKNOWN);
    assert_int_equal(tu_wait(child, 10), -SIGUSR1);
    TU_OK(mp_process_free(p));
    /* Reaped before the join (as init would): the pidfd still tells. */
    p = orphan_of_a_killed_server(state, 9, 0, &child);
    assert_int_equal(tu_wait(child, 10), 9);
    int want = pidfds_on() && kernel_keeps_exit_info() ? 9 : MP_EXITCODE_UNKNOWN;
    assert_int_equal(joined_code(p), want);
    TU_OK(prctl(PR_SET_CHILD_SUBREAPER, 0));
    TU_OK(mp_process_free(p));
    assert_int_equal(finish(start(state, returns_ten, NULL, 0, false)), 10);   /* a new server */
}

/* join(p, 0) and is_alive answer the same in every state, the server dead
 * or alive: once is_alive says no, join(p, 0) joins. */
static void test_join_zero_and_is_alive_agree_when_the_server_dies(void **state)
{
    TU_OK(prctl(PR_SET_CHILD_SUBREAPER, 1));
    pid_t child;
    mp_process *p = orphan_of_a_killed_server(state, 3, 0, &child);
    join_zero_agrees_with_is_alive(p);
    int code;
    TU_OK(mp_process_exitcode(p, &code));
    assert_int_equal(code, pidfds_on() ? 3 : MP_EXITCODE_UNKNOWN);
    assert_int_equal(tu_wait(child, 10), 3);
    TU_OK(prctl(PR_SET_CHILD_SUBREAPER, 0));
    TU_OK(mp_process_free(p));
}

static bool no_active_children(void *unused)
{
    (void)unused;
    return mp_active_children(NULL, 0) == 0;
}

/* As Python's active_children: a child that ended is dropped, even when the
 * server that would have published its end is dead. Its code stays known. */
static void test_active_children_drops_a_child_that_ended_after_its_server_died(void **state)
{
    TU_OK(prctl(PR_SET_CHILD_SUBREAPER, 1));
    pid_t child;
    mp_process *p = orphan_of_a_killed_server(state, 5, 0, &child);
    assert_true(tu_wait_for(no_active_children, NULL, 10 * tu_slow()));
    int code = -1000;
    TU_OK(mp_process_exitcode(p, &code));
    assert_int_equal(code, pidfds_on() ? 5 : MP_EXITCODE_UNKNOWN);
    assert_int_equal(tu_wait(child, 10), 5);
    TU_OK(prctl(PR_SET_CHILD_SUBREAPER, 0));
    TU_OK(mp_process_free(p));
}

/* A child whose main thread has ended while another thread runs is alive:
 * its leader is a zombie ('Z' in /proc) until the last thread ends. Seen
 * from a creator that is not its parent (a fork-server child) without
 * pidfds, /proc is all there is, and a zombie leader with threads left must
 * not read as ended: its holds would go back while it still uses them. */
static void *exits_once_told(void *arg)
{
    while (!atomic_load((_Atomic int *)arg))
        usleep(1000);
    _exit(4);
}

static int leader_ends_first(void *arg)
{
    pthread_t t;
    if (pthread_create(&t, NULL, exits_once_told, *(void **)arg) != 0)
        return 2;
    pthread_exit(NULL);
}

static bool leader_is_a_zombie(void *pid)
{
    return tu_proc_state(*(pid_t *)pid) == 'Z';
}

struct kin { pid_t child, parent; };

static bool parent_changed(void *arg)
{
    struct kin *k = arg;
    pid_t ppid = tu_proc_ppid(k->child);
    return ppid != 0 && ppid != k->parent;
}

static void still_alive(mp_process *p)
{
    assert_true(mp_process_is_alive(p));
    assert_int_equal(mp_process_join(p, 0), MP_ETIMEDOUT);
    assert_int_equal(mp_active_children(NULL, 0), 1);
}

static void test_child_whose_main_thread_ended_first_is_alive_until_its_last(void **state)
{
    _Atomic int *told = mp_shared_alloc(sizeof *told);
    mp_process *p = start(state, leader_ends_first, &told, sizeof told, false);
    pid_t pid = mp_process_pid(p);
    assert_true(tu_wait_for(leader_is_a_zombie, &pid, 10));
    still_alive(p);
    if (method_of(state) == MP_FORKSERVER) {   /* its server gone, we ask /proc */
        struct kin k = { pid, tu_proc_ppid(pid) };
        assert_true(k.parent > 0 && k.parent != getpid());
        TU_OK(kill(k.parent, SIGKILL));
        assert_true(tu_wait_for(parent_changed, &k, 10));
        still_alive(p);
    }
    atomic_store(told, 1);
    int code = finish(p);
    assert_true(code == 4 || (method_of(state) == MP_FORKSERVER && code == MP_EXITCODE_UNKNOWN));
    mp_shared_free((void *)told);
}

/* The same through a child's whole life, its reaper alive, and killed. */
static void test_join_zero_and_is_alive_agree_through_a_life(void **state)
{
    for (int killed = 0; killed < 2; killed++) {
        mp_process *p = start(state, killed ? waits_forever : returns_ten, NULL, 0, false);
        if (killed)
            TU_OK(mp_process_kill(p));
        join_zero_agrees_with_is_alive(p);
        assert_int_equal(finish(p), killed ? -SIGKILL : 10);
    }
}

static void test_forkserver_is_restarted_when_found_dead(void **state)
{
    mp_process *p = start(state, waits_forever, NULL, 0, false);
    pid_t server = tu_proc_ppid(mp_process_pid(p));
    TU_OK(mp_process_kill(p));
    assert_int_equal(finish(p), -SIGKILL);
    assert_true(server > 0 && server != getpid());
    TU_OK(kill(server, SIGKILL));          /* idle, and nobody notices */
    assert_true(tu_wait_for(dead, &server, 10));
    assert_int_equal(finish(start(state, returns_ten, NULL, 0, false)), 10);
    assert_true(tu_pid_gone(server));      /* the dead one was reaped on the way */
}

/* A stopped (SIGSTOP) fork server answers nothing: a thread starting a
 * process through it waits until it resumes, but a timed join of another
 * of its children, from another thread, still returns on time. */
struct starter { mp_process *p; int rc; };

static void *start_in_thread(void *arg)
{
    struct starter *s = arg;
    s->rc = mp_process_start(s->p);
    return NULL;
}

static void test_timed_join_holds_beside_a_start_on_a_stopped_server(void **state)
{
    mp_process *q = start(state, waits_forever, NULL, 0, false);
    pid_t server = tu_proc_ppid(mp_process_pid(q));
    assert_true(server > 0 && server != getpid());
    struct starter s = { NULL, 1 };
    TU_OK(mp_process_new(&s.p, waits_forever, NULL, &(mp_process_opts){ .method = MP_FORKSERVER }));
    TU_OK(kill(server, SIGSTOP));
    TU_OK(mp_process_kill(q));
    pthread_t t;
    TU_OK(pthread_create(&t, NULL, start_in_thread, &s));
    usleep(200 * 1000);                  /* the thread waits for the server's answer */
    double t0 = tu_now();
    TU_ASSERT_RC(mp_process_join(q, 0.5), MP_ETIMEDOUT);
    assert_true(tu_now() - t0 < 0.5 + 1.0 * tu_slow());
    TU_OK(kill(server, SIGCONT));
    TU_OK(pthread_join(t, NULL));
    TU_OK(s.rc);
    assert_int_equal(finish(q), -SIGKILL);
    TU_OK(mp_process_kill(s.p));
    assert_int_equal(finish(s.p), -SIGKILL);
}

static int exits_with_a_child(void *arg)
{
    struct helper_arg *h = arg;
    int *out = mp_shared_alloc(sizeof *out);
    struct lib_job j = { 1, 2, out };
    mp_process *p;
    mp_process_opts o = { .method = h->method, .arg_size = sizeof j };
    if (mp_process_new(&p, lib_target_sum, &j, &o) != 0 || mp_process_start(p) != 0)
        return 1;
    if (write(h->fd, &out, sizeof out) != sizeof out)
        return 2;
    exit(0);                             /* joins p first */
}

static void test_exit_joins_children_of_every_method(void **state)
{
    int fds[2];
    TU_OK(pipe(fds));
    struct helper_arg h = { method_of(state), fds[1] };
    mp_shared_free(mp_shared_alloc(1));  /* the helper's block must be in an arena we share */
    pid_t helper = tu_fork(exits_with_a_child, &h);
    assert_int_equal(tu_wait(helper, 20), 0);
    int *out = NULL;
    assert_int_equal(read(fds[0], &out, sizeof out), sizeof out);
    assert_int_equal(*out, 3);
    mp_shared_free(out);
    close(fds[0]);
    close(fds[1]);
}

#define FORKER_MAX 40
struct forker { mp_process *kids[FORKER_MAX]; int n; _Atomic int stop; };

static int forks_long_lived_children(void *arg)
{
    struct forker *f = arg;
    while (!atomic_load(&f->stop) && f->n < FORKER_MAX) {
        mp_process **k = &f->kids[f->n];
        if (mp_process_new(k, waits_forever, NULL, NULL) != 0 || mp_process_start(*k) != 0)
            return 1;
        f->n++;
    }
    return 0;
}

/* Descriptors a child must hold alone (exit, exec-error and server pipes)
 * must not leak into a child another thread forks at the same moment, or
 * a start or join would wait for that long-lived child. */
static void test_start_is_not_held_up_by_a_concurrent_fork(void **state)
{
    struct forker *f = calloc(1, sizeof *f);
    mp_thread *t;
    TU_OK(mp_thread_new(&t, forks_long_lived_children, f, NULL));
    TU_OK(mp_thread_start(t));
    double t0 = tu_now();
    for (int i = 0; i < 10; i++) {
        struct job j = { i, 0, "copied" };
        assert_int_equal(finish(start(state, sums_job, &j, sizeof j, false)), i);
    }
    assert_true(tu_now() - t0 < 15 * tu_slow());
    atomic_store(&f->stop, 1);
    TU_OK(mp_thread_join(t, 30 * tu_slow()));
    int code = -1;
    TU_OK(mp_thread_exitcode(t, &code));
    assert_int_equal(code, 0);
    TU_OK(mp_thread_free(t));
    for (int i = 0; i < f->n; i++) {
        TU_OK(mp_process_kill(f->kids[i]));
        TU_OK(mp_process_join(f->kids[i], 10 * tu_slow()));
        TU_OK(mp_process_free(f->kids[i]));
    }
    free(f);
}

/* The child of a caller that moved: it starts where the caller is now, and
 * its own children default to the method that started it (Python's
 * spawn.prepare: os.chdir(dir), set_start_method(start_method)). 0, or
 * which of the two it got wrong. */
struct where { char dir[256]; mp_start_method method; };

static int reports_where(void *arg)
{
    const struct where *w = arg;
    char cwd[sizeof w->dir];
    if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, w->dir) != 0)
        return 1;
    return mp_get_start_method() == w->method ? 0 : 2;
}

static void test_child_starts_where_its_caller_is_and_defaults_to_its_method(void **state)
{
    char home[4096], dir[] = "/tmp/mproc-cwd-XXXXXX";
    assert_non_null(getcwd(home, sizeof home));
    assert_non_null(mkdtemp(dir));
    assert_int_equal(finish(start(state, returns_ten, NULL, 0, false)), 10);   /* a server, here */
    TU_OK(chdir(dir));
    struct where w = { "", method_of(state) };
    assert_non_null(getcwd(w.dir, sizeof w.dir));           /* dir, symbolic links resolved */
    int code = finish(start(state, reports_where, &w, sizeof w, false));
    TU_OK(chdir(home));
    TU_OK(rmdir(dir));
    assert_int_equal(code, 0);
}

/* A caller whose directory is gone cannot say where a fork-server child
 * starts (Python's os.getcwd() raises): the start fails, and nothing runs. */
static void test_start_from_a_removed_directory_fails_and_runs_nothing(void **state)
{
    char home[4096], dir[] = "/tmp/mproc-cwd-XXXXXX";
    assert_non_null(getcwd(home, sizeof home));
    assert_non_null(mkdtemp(dir));
    TU_OK(chdir(dir));
    TU_OK(rmdir(dir));
    mp_process *p;
    TU_OK(mp_process_new(&p, returns_ten, NULL, &(mp_process_opts){ .method = method_of(state) }));
    int rc = mp_process_start(p);
    TU_OK(chdir(home));
    TU_ASSERT_RC(rc, -ENOENT);
    TU_OK(mp_process_free(p));
    assert_int_equal(finish(start(state, returns_ten, NULL, 0, false)), 10);
}

static int reports_server(void *arg)
{
    atomic_store((_Atomic pid_t *)arg, getppid());
    return 0;
}

static int marks_it_ran(void *arg)
{
    atomic_store((_Atomic int *)arg, 1);
    return 6;
}

/* A start that returned 0 runs its target even if the server is killed at
 * once: the child waits for its caller's word, not for the server's life. */
static void test_started_child_runs_when_its_server_is_killed_at_once(void **state)
{
    _Atomic pid_t *server = mp_shared_alloc(sizeof *server);
    _Atomic int *ran = mp_shared_alloc(sizeof *ran);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(finish(start(state, reports_server, (void *)server, 0, false)), 0);
        atomic_store(ran, 0);
        mp_process *p = start(state, marks_it_ran, (void *)ran, 0, false);
        TU_OK(kill(atomic_load(server), SIGKILL));
        int code = -1000;
        TU_OK(mp_process_join(p, 10 * tu_slow()));
        TU_OK(mp_process_exitcode(p, &code));
        TU_OK(mp_process_free(p));
        assert_int_equal(atomic_load(ran), 1);
        if (pidfds_on())            /* without, a child orphaned by its server tells no code */
            assert_int_equal(code, 6);
    }
    mp_shared_free((void *)ran);
    mp_shared_free((void *)server);
}

static int set_method(void **state, mp_start_method m)
{
    *state = (void *)(intptr_t)m;
    return 0;
}
static int use_spawn(void **state) { return set_method(state, MP_SPAWN); }
static int use_forkserver(void **state) { return set_method(state, MP_FORKSERVER); }

#define BOTH(fn) cmocka_unit_test_setup(fn, use_spawn), cmocka_unit_test_setup(fn, use_forkserver)

int main(void)
{
    main_ran = 1;
    tu_watchdog(180);
    const struct CMUnitTest tests[] = {
        BOTH(test_runs_executable_target_with_copied_arg),
        BOTH(test_runs_shared_library_target),
        BOTH(test_child_dying_by_signal_reports_minus_signal),
        BOTH(test_kill_terminate_and_join_timeout),
        BOTH(test_child_sees_shared_memory_names_and_no_main),
        BOTH(test_sentinel_is_readable_once_the_child_ends),
        BOTH(test_target_outside_any_object_is_refused),
        BOTH(test_many_children_in_a_row),
        BOTH(test_exec_failure_is_reported_by_start),
        BOTH(test_start_is_not_held_up_by_a_concurrent_fork),
        BOTH(test_daemon_dies_when_its_parent_is_sigkilled),
        BOTH(test_exit_joins_children_of_every_method),
        BOTH(test_join_zero_and_is_alive_agree_through_a_life),
        cmocka_unit_test_setup(test_forkserver_child_keeps_its_code_when_the_server_dies, use_forkserver),
        cmocka_unit_test_setup(test_join_zero_and_is_alive_agree_when_the_server_dies, use_forkserver),
        cmocka_unit_test_setup(test_active_children_drops_a_child_that_ended_after_its_server_died, use_forkserver),
        BOTH(test_child_whose_main_thread_ended_first_is_alive_until_its_last),
        cmocka_unit_test_setup(test_forkserver_is_restarted_when_found_dead, use_forkserver),
        cmocka_unit_test_setup(test_timed_join_holds_beside_a_start_on_a_stopped_server, use_forkserver),
        BOTH(test_child_starts_where_its_caller_is_and_defaults_to_its_method),
        cmocka_unit_test_setup(test_start_from_a_removed_directory_fails_and_runs_nothing, use_forkserver),
        cmocka_unit_test_setup(test_started_child_runs_when_its_server_is_killed_at_once, use_forkserver),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
