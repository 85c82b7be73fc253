/* process.c - mp_process: lifecycle, names, joins and exit handling.
 *
 * Records live in the arena, so any process of the family can look at one.
 * The OS parent (the creator under fork and spawn, the fork server under
 * forkserver) waits on a pidfd, reaps its own pid and publishes the exit
 * status in the record's state word for everyone else. Should a fork server
 * die, its client settles its children's records itself from their pidfds
 * (fs_settle). Nothing here touches SIGCHLD or waits for a pid the library
 * did not start.
 */
#include "process_internal.h"
#include "fdreg.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define DAEMON_GRACE 1.0     /* seconds a daemon gets after SIGTERM at exit */
#define SERVER_CHECK 0.1     /* seconds between checks that the fork server lives */
#define SERVER_NAP 0.01      /* ... once its child has ended and waits to be published */

static struct mp_runtime rt = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .fs_lock = PTHREAD_MUTEX_INITIALIZER,
    .fork_lock = PTHREAD_MUTEX_INITIALIZER,
    .fs_sock = -1,
    .exe_fd = -1,
    .exit_fd = -1,
};
static pthread_once_t rt_once = PTHREAD_ONCE_INIT;
static _Atomic bool rt_ready;         /* runtime_init ran */

static void at_exit(void);
static void join_at_exit(void);

/* ------------------------------------------------------------------ runtime */

/* Fork hooks (fork.c): rt.lock is held across the fork. */
static void before_fork(void) { pthread_mutex_lock(&rt.lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&rt.lock); }

/* The child has only the forking thread and none of the parent's children:
 * forget them (their pidfds are the parent's business). Nothing to forget
 * before the runtime was first used. */
static void after_fork_child(void)
{
    pthread_mutex_unlock(&rt.lock);   /* locked by this same thread in before_fork */
    if (!atomic_load_explicit(&rt_ready, memory_order_acquire))
        return;
    rt.pid = getpid();
    pthread_mutex_init(&rt.fork_lock, NULL);   /* held by the forking thread, if at all */
    for (size_t i = 0; i < rt.nfds; i++)
        close(rt.fds[i].fd);
    rt.nfds = 0;
    rt.nchildren = 0;
    if (rt.exit_fd >= 0)            /* our parent watches us, not our children */
        close(rt.exit_fd);
    rt.exit_fd = -1;
    forkserver_after_fork_child();
    thread_after_fork_child();
}

MP_SETUP_CONSTRUCTOR static void fork_hooks(void)
{
    fork_hook_set(FORK_PROCESS, before_fork, after_fork_parent, after_fork_child);
}

static void runtime_init(void)
{
    rt.pid = getpid();
    atexit(at_exit);
    atomic_store_explicit(&rt_ready, true, memory_order_release);
}

struct mp_runtime *runtime(void)
{
    pthread_once(&rt_once, runtime_init);
    return &rt;
}

void runtime_lock(void) { pthread_mutex_lock(&runtime()->lock); }
void runtime_unlock(void) { pthread_mutex_unlock(&rt.lock); }

/* ------------------------------------------------------------------ small helpers */

static bool valid(const mp_process *p)
{
    return p && p->magic == MAGIC_PROCESS;
}

/* For messages: where p is in its life. */
static const char *state_name(const mp_process *p)
{
    switch (atomic_load(&p->state)) {
    case PROC_NEW: return "not started";
    case PROC_RUNNING: return "started already";
    default: return "finished";
    }
}

static bool i_reap(const mp_process *p)
{
    return p->reaper == runtime()->pid;
}

/* Makes room for one more element in a growing array. */
static int grow(void **array, size_t *cap, size_t used, size_t elem)
{
    if (used < *cap)
        return 0;
    size_t n = *cap ? *cap * 2 : 16;
    void *a = realloc(*array, n * elem);
    if (!a)
        return MP_ENOMEM;
    *array = a;
    *cap = n;
    return 0;
}

static int add_child(mp_process *p)
{
    ASSERT_HELD(&rt.lock);
    if (grow((void **)&rt.children, &rt.capchildren, rt.nchildren, sizeof *rt.children) != 0)
        return MP_ENOMEM;
    rt.children[rt.nchildren++] = p;
    return 0;
}

static void drop_child(mp_process *p)
{
    ASSERT_HELD(&rt.lock);
    for (size_t i = 0; i < rt.nchildren; i++)
        if (rt.children[i] == p) {
            rt.children[i] = rt.children[--rt.nchildren];
            return;
        }
}

/* Under rt.lock. The entry for p, if this process holds an fd for it. */
static struct proc_fd *find_fd(const mp_process *p)
{
    ASSERT_HELD(&rt.lock);
    for (size_t i = 0; i < rt.nfds; i++)
        if (rt.fds[i].p == p && rt.fds[i].pid == p->pid)
            return &rt.fds[i];
    return NULL;
}

static int add_fd(mp_process *p, int fd)
{
    if (grow((void **)&rt.fds, &rt.capfds, rt.nfds, sizeof *rt.fds) != 0)
        return MP_ENOMEM;
    rt.fds[rt.nfds++] = (struct proc_fd){ p, p->pid, fd };
    return 0;
}

static void drop_fds(const mp_process *p)
{
    for (size_t i = 0; i < rt.nfds;) {
        if (rt.fds[i].p == p) {
            close(rt.fds[i].fd);
            rt.fds[i] = rt.fds[--rt.nfds];
        } else {
            i++;
        }
    }
}

/* Under rt.lock. An fd readable once p has ended: our pidfd, one opened now
 * (p is someone else's child), or, for a process already gone, an eventfd
 * that is readable from the start. */
static int fd_for(mp_process *p)
{
    ASSERT_HELD(&rt.lock);
    struct proc_fd *e = find_fd(p);
    if (e)
        return e->fd;
    int fd = MP_ESTATE;
    if (atomic_load(&p->state) == PROC_RUNNING) {   /* a zombie's too: it tells its code */
        fd = proc_pidfd_open(p->pid);
        /* No pidfds, or none now (EMFILE, ENOMEM): callers poll instead.
         * Only "no such process" is an end; never cache an "ended" answer
         * for a process that may live. */
        if (fd < 0 && fd != -ESRCH)
            return fd;
    }
    if (fd < 0)
        fd = eventfd(1, EFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (add_fd(p, fd) != 0) {
        close(fd);
        return MP_ENOMEM;
    }
    return fd;
}

int process_code_from_siginfo(const siginfo_t *si)
{
    if (si->si_code == CLD_EXITED)
        return si->si_status;
    return -si->si_status;          /* CLD_KILLED, CLD_DUMPED */
}

void process_publish_exit(mp_process *p, int code)
{
    p->exitcode = code;
    atomic_store(&p->state, PROC_DONE);         /* seq_cst, against the waiter count */
    if (atomic_load(&p->waiters))
        futex_wake(&p->state, INT32_MAX);
}

/* Under rt.lock. The exit pipe closes as the child exits, a moment before
 * it can be reaped: wait out that moment, but not for ever (the child may
 * have closed the pipe itself). */
static bool exit_pipe_closed(const mp_process *p)
{
    struct proc_fd *e = find_fd(p);
    mp_deadline now = deadline_in(0);
    return e && proc_poll_fd(e->fd, &now) == 1;
}

static int wait_for_zombie(mp_process *p, siginfo_t *si)
{
    mp_deadline d = deadline_in(0.1);
    int rc;
    while ((rc = proc_wait_pid(p->pid, si, true)) == 0 && !deadline_passed(&d))
        usleep(20);
    return rc;
}

void process_lease_undo(mp_process *p, struct fdreg_lease *lease)
{
    if (p)
        p->lease = NULL;
    fdreg_lease_end(lease);
}

/* This process's own record, or NULL: a raw fork's child still has its
 * parent's as current, and must not name its starts there (the parent's
 * reaper would abandon them while this child lives). */
static mp_process *own_record(void)
{
    mp_process *me = atomic_load(&runtime()->current);
    return me && me->pid == rt.pid ? me : NULL;
}

/* Replaces the first of our record's start names that is from with to
 * (by CAS: other threads name and clear their own starts meanwhile). */
static void rename_start(struct fdreg_lease *from, struct fdreg_lease *to)
{
    mp_process *me = own_record();
    for (int i = 0; me && i < PROC_STARTS_NAMED; i++) {
        struct fdreg_lease *seen = from;
        if (atomic_compare_exchange_strong(&me->starting[i], &seen, to))
            return;
    }
}

void process_starting(struct fdreg_lease *lease)
{
    if (lease)
        rename_start(NULL, lease);
}

void process_started(struct fdreg_lease *lease)
{
    if (lease)
        rename_start(lease, NULL);
}

void *_Atomic *hand_claim(void)
{
    mp_process *me = own_record();
    for (int i = 0; me && i < PROC_HANDS; i++) {
        void *seen = NULL;
        if (!atomic_load_explicit(&me->hand[i], memory_order_relaxed) &&
            atomic_compare_exchange_strong(&me->hand[i], &seen, HAND_CLAIMED))
            return &me->hand[i];
    }
    return NULL;
}

void *_Atomic *hand_hold(void *p)
{
    void *_Atomic *slot = hand_claim();
    if (slot)
        atomic_store_explicit(slot, p, memory_order_release);
    return slot;
}

void hand_release(void *_Atomic *slot)
{
    if (slot)
        atomic_store_explicit(slot, NULL, memory_order_release);
}

void *hand_alloc(size_t size, bool zero, const mp_deadline *d, void *_Atomic **slot)
{
    *slot = hand_claim();
    void *p = arena_alloc_held(size, zero, d, *slot);
    if (!p) {
        hand_release(*slot);
        *slot = NULL;
    }
    return p;
}

void hand_free(void *_Atomic *slot, void *p)
{
    arena_free_held(slot, p);
}

/* Under rt.lock (or before p is shared): p has ended, so the holds it kept
 * on our handles go back, once (p->lease is taken), and so do those a
 * start of its own had counted for a child when it died, and the blocks it
 * held in hand. */
static void end_lease(mp_process *p)
{
    if (p->unanswered)              /* its lease may be a running child's: kept */
        return;
    process_lease_undo(p, p->lease);
    for (int i = 0; i < PROC_STARTS_NAMED; i++)
        fdreg_lease_abandon(atomic_exchange(&p->starting[i], NULL));
    /* A slot claimed and not filled: p may have died inside arena_alloc_held
     * holding the arena's lock, its block taken and named only in the
     * journal. Taking the lock repairs that, which fills the slot. */
    for (int i = 0; i < PROC_HANDS; i++)
        if (atomic_load(&p->hand[i]) == HAND_CLAIMED) {
            arena_settle();
            break;
        }
    for (int i = 0; i < PROC_HANDS; i++) {
        void *b = atomic_exchange(&p->hand[i], NULL);
        if (b && b != HAND_CLAIMED)
            arena_free(b);
    }
}

/* Under rt.lock, as p's reaper: reaps p if it has ended. true once done. */
static bool reap_if_ended(mp_process *p)
{
    ASSERT_HELD(&rt.lock);
    if (atomic_load(&p->state) == PROC_DONE)
        return true;
    siginfo_t si;
    int rc = proc_wait_pid(p->pid, &si, true);
    if (rc == 0 && !proc_have_pidfd() && exit_pipe_closed(p))
        rc = wait_for_zombie(p, &si);
    if (rc != 0)                    /* gone: its holds go back before a join returns */
        end_lease(p);
    if (rc == 1)
        process_publish_exit(p, process_code_from_siginfo(&si));
    else if (rc < 0)                /* not ours to wait for after all (SIGCHLD ignored) */
        process_publish_exit(p, 0);
    return rc != 0;
}

enum { FS_RUNNING, FS_ENDING, FS_DONE };

/* A fork-server child seen from its creator: the server reaps it and
 * publishes its status. */
static bool fs_child(const mp_process *p)
{
    return p->method == MP_FORKSERVER && !i_reap(p) && p->creator == rt.pid;
}

static int fs_fd_locked(const mp_process *p)
{
    ASSERT_HELD(&rt.lock);
    struct proc_fd *e = find_fd(p);
    return e ? e->fd : -1;
}

static int fs_fd(const mp_process *p)
{
    runtime_lock();
    int fd = fs_fd_locked(p);
    runtime_unlock();
    return fd;
}

/* Under rt.lock. A fork-server child has ended (published): the holds it
 * kept on our handles go back, once, by whichever of its creator's calls
 * sees it first. */
static int fs_done(mp_process *p)
{
    ASSERT_HELD(&rt.lock);
    end_lease(p);
    return FS_DONE;
}

/* Where a fork-server child is: FS_DONE once published; FS_ENDING when it
 * has ended and its live server is about to publish. A dead server never
 * will (nor can it write any more: it is reaped), so then the creator
 * publishes what the kernel still tells through the child's pidfd, or
 * MP_EXITCODE_UNKNOWN. join, is_alive and exitcode all ask here, so they
 * agree in every state. */
static int fs_settle_locked(mp_process *p, int fd)
{
    ASSERT_HELD(&rt.lock);
    if (atomic_load_explicit(&p->state, memory_order_acquire) == PROC_DONE)
        return fs_done(p);
    mp_deadline now = deadline_in(0);
    if (fd >= 0 ? proc_poll_fd(fd, &now) != 1 : !proc_pid_ended(p->pid))
        return FS_RUNNING;
    if (forkserver_running(p->reaper))          /* tries its lock only: never waits */
        return FS_ENDING;
    int code;
    if (proc_exit_code(fd, p->pid, &code) != 1)
        code = MP_EXITCODE_UNKNOWN;
    if (atomic_load(&p->state) != PROC_DONE)     /* published before the server died */
        process_publish_exit(p, code);
    return fs_done(p);
}

static int fs_settle(mp_process *p, int fd)
{
    runtime_lock();
    int where = fs_settle_locked(p, fd);
    runtime_unlock();
    return where;
}

/* Under rt.lock: has p ended? Settles it (reaped, or published) if so. */
static bool ended_locked(mp_process *p)
{
    ASSERT_HELD(&rt.lock);
    if (fs_child(p))
        return fs_settle_locked(p, fs_fd_locked(p)) == FS_DONE;
    return i_reap(p) ? reap_if_ended(p) : atomic_load(&p->state) == PROC_DONE;
}

static bool ended_now(mp_process *p)
{
    runtime_lock();
    bool done = ended_locked(p);
    runtime_unlock();
    return done;
}

/* ------------------------------------------------------------------ the current process */

static mp_process *current_record(void)
{
    runtime_lock();
    if (!rt.current) {
        mp_process *p = arena_alloc(sizeof *p);
        if (p) {
            p->magic = MAGIC_PROCESS;
            atomic_store(&p->state, PROC_RUNNING);
            atomic_store(&p->started, 1);
            p->pid = getpid();
            strcpy(p->name, "MainProcess");
            rt.current = p;
        }
    }
    mp_process *cur = rt.current;
    runtime_unlock();
    return cur;
}

mp_process *mp_current_process(void)
{
    return current_record();
}

mp_process *mp_parent_process(void)
{
    mp_process *cur = current_record();
    return cur ? cur->parent : NULL;
}

void process_enter_child(mp_process *p, int exit_fd)
{
    runtime();
    rt.current = p;
    rt.method = p->method;          /* our children's default, as Python's start forces */
    rt.next_child = 0;
    rt.exit_fd = exit_fd;
    p->pid = getpid();
}

void process_fork_lock(void)
{
    pthread_mutex_lock(&runtime()->fork_lock);
}

void process_fork_unlock(void)
{
    pthread_mutex_unlock(&rt.fork_lock);
}

void process_exit_pipe_child(int fds[2])
{
    if (fds[0] >= 0)
        close(fds[0]);
}

int process_exit_pipe_parent(int fds[2], pid_t pid)
{
    if (fds[1] >= 0)
        close(fds[1]);
    if (!proc_have_pidfd())
        return fds[0];              /* the exit pipe's read end */
    close(fds[0]);                  /* the slot kept for the pidfd */
    int fd = proc_pidfd_open(pid);
    if (fd < 0 && fd != -ESRCH) {   /* a start we cannot watch is undone */
        siginfo_t si;
        kill(pid, SIGKILL);
        proc_wait_pid(pid, &si, false);
    }
    return fd;
}

static void target_left_main_thread(void *unused)
{
    (void)unused;
    proc_leave_main_thread();
}

/* A spawn or fork-server child runs its target inside a constructor, before
 * main. A target that ends its thread there (pthread_exit, or another
 * thread cancels it) would unwind past the constructor, where glibc keeps
 * nothing to return to after main: a SIGSEGV. Its cleanup handler ends the
 * thread, or the process, as glibc does after main. A fork child runs its
 * target from its starter's stack, inside main or a thread: glibc's own. */
static int run_target_in_constructor(mp_target fn, void *arg)
{
    int code;
    pthread_cleanup_push(target_left_main_thread, NULL);
    code = fn(arg);
    pthread_cleanup_pop(0);
    return code;
}

int process_run_target(mp_process *p)
{
    if (p->method == MP_FORK)
        return p->target(p->arg) & 0xff;
    mp_target fn = (mp_target)fnref_resolve(&p->target_ref);
    if (!fn)
        return 127;                 /* like a shell's "command not found" */
    return run_target_in_constructor(fn, p->arg) & 0xff;
}

void process_daemon_guard(pid_t expected_parent)
{
    /* The signal is sent when the creating *thread* exits; if the parent
     * was gone before prctl, getppid already shows the new parent. */
    proc_set_pdeathsig(SIGKILL);
    if (getppid() != expected_parent)
        raise(SIGKILL);
}

/* Under rt.lock. Opened once and kept: /proc/self/fd/N execs this very
 * image even if the file was replaced, and valgrind maps it to its client. */
static void open_exe(void)
{
    ASSERT_HELD(&rt.lock);
    if (rt.exe_fd >= 0)
        return;
    rt.exe_fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (rt.exe_fd >= 0)
        snprintf(rt.exe_path, sizeof rt.exe_path, "/proc/self/fd/%d", rt.exe_fd);
}

const char *const *process_exec_argv(const char **path)
{
    runtime_lock();
    open_exe();
    *path = rt.exe_fd >= 0 ? rt.exe_path : "/proc/self/exe";
    if (!rt.argv) {
        char *data;
        size_t len;
        if (proc_read_file("/proc/self/cmdline", &data, &len) == 0) {
            size_t n = 0;
            for (size_t i = 0; i < len; i++)
                n += data[i] == '\0';
            char **argv = calloc(n + 2, sizeof *argv);
            if (argv) {
                size_t k = 0;
                for (size_t i = 0; i < len; i += strlen(data + i) + 1)
                    argv[k++] = data + i;
                rt.cmdline = data;
                rt.argv = argv;
            } else {
                free(data);
            }
        }
    }
    const char *const *argv = (const char *const *)rt.argv;
    runtime_unlock();
    return argv;
}

/* ------------------------------------------------------------------ lifecycle */

static bool method_valid(mp_start_method m)
{
    return m == MP_START_DEFAULT || m == MP_FORK || m == MP_SPAWN || m == MP_FORKSERVER;
}

/* The identity of the parent's child number n, "1:2:n" (Python's
 * _identity), into out. A family too deep for PROC_IDENT_MAX keeps its
 * youngest generations: "...:7:1:n". */
static void ident_child(char out[PROC_IDENT_MAX], const char *parent, unsigned n)
{
    char full[PROC_IDENT_MAX + 16];
    int len = snprintf(full, sizeof full, "%s%s%u", parent, parent[0] ? ":" : "", n);
    const char *tail = full;
    if (len >= PROC_IDENT_MAX)          /* the last ":n" always fits */
        while ((tail = strchr(tail + 1, ':')) && strlen(tail) + 3 >= PROC_IDENT_MAX)
            ;
    size_t dots = tail == full ? 0 : 3, rest = strlen(tail);
    memcpy(out, "...", dots);
    memcpy(out + dots, tail, rest + 1);     /* fits: see above */
}

static int name_child(mp_process *p, const mp_process *parent, const char *name)
{
    const char *fn = "mp_process_new";
    runtime_lock();
    unsigned n = ++rt.next_child;
    runtime_unlock();
    ident_child(p->ident, parent->ident, n);
    int len = name && *name ? snprintf(p->name, sizeof p->name, "%s", name)
                            : snprintf(p->name, sizeof p->name, "Process-%s", p->ident);
    if (len < 0 || (size_t)len >= sizeof p->name)
        return mp_fail(MP_EINVAL, fn, "opts.name is %d bytes; a name has at most %d",
                       len, PROC_NAME_MAX - 1);
    return 0;
}

/* fn's check of a pass_fds list: each >= 0, listed once, open. */
static int check_pass_fds(const char *fn, const int *fds, size_t n)
{
    if (n && !fds)
        return mp_fail(MP_EINVAL, fn, "opts.n_pass_fds is %zu but opts.pass_fds is NULL", n);
    if (n > MP_PASS_FDS_MAX)
        return mp_fail(MP_EINVAL, fn, "opts.n_pass_fds is %zu; at most %d descriptors pass",
                       n, MP_PASS_FDS_MAX);
    for (size_t i = 0; i < n; i++) {
        if (fds[i] < 0)
            return mp_fail(MP_EINVAL, fn, "opts.pass_fds[%zu] is %d, not a descriptor", i, fds[i]);
        for (size_t j = 0; j < i; j++)
            if (fds[j] == fds[i])
                return mp_fail(MP_EINVAL, fn, "opts.pass_fds[%zu] and [%zu] are both %d; "
                               "list each descriptor once", j, i, fds[i]);
        if (fcntl(fds[i], F_GETFD) < 0)
            return mp_fail(-EBADF, fn, "opts.pass_fds[%zu] is %d, which is not open here",
                           i, fds[i]);
    }
    return 0;
}

void process_keep_pass_fds(const mp_process *p)
{
    for (size_t i = 0; i < p->n_pass_fds; i++)
        proc_fd_inherit(p->pass_fds[i], true);
}

int mp_process_new(mp_process **out, mp_target target, void *arg, const mp_process_opts *o)
{
    static const mp_process_opts defaults = { 0 };
    const char *fn = __func__;
    if (!o)
        o = &defaults;
    if (!out)
        return mp_fail(MP_EINVAL, fn, "p (where the new process goes) is NULL");
    if (!target)
        return mp_fail(MP_EINVAL, fn, "target is NULL; pass the function the child runs");
    if (!method_valid(o->method))
        return mp_fail(MP_EINVAL, fn, "opts.method is %d, not an mp_start_method", (int)o->method);
    if (o->arg_size && !arg)
        return mp_fail(MP_EINVAL, fn, "opts.arg_size is %zu but arg is NULL", o->arg_size);
    int rc = mem_range_check(fn, "arg", arg, o->arg_size);   /* copied at start: no fault there */
    if (rc == 0)
        rc = check_pass_fds(fn, o->pass_fds, o->n_pass_fds);
    if (rc != 0)
        return rc;
    mp_process *parent = current_record();
    mp_process *p = arena_alloc(sizeof *p);
    int *fds = o->n_pass_fds ? arena_alloc(o->n_pass_fds * sizeof *fds) : NULL;
    if (!parent || !p || (o->n_pass_fds && !fds)) {
        arena_free(p);
        arena_free(fds);
        return mp_fail(MP_ENOMEM, fn, "no room in the shared arena for a process record");
    }
    rc = name_child(p, parent, o->name);
    if (rc != 0) {
        arena_free(p);
        arena_free(fds);
        return rc;
    }
    if (fds)
        memcpy(fds, o->pass_fds, o->n_pass_fds * sizeof *fds);
    p->pass_fds = fds;
    p->n_pass_fds = o->n_pass_fds;
    p->magic = MAGIC_PROCESS;
    atomic_store(&p->state, PROC_NEW);
    p->method = o->method;
    p->daemon = o->daemon;
    p->target = target;
    p->arg = arg;
    p->arg_size = o->arg_size;
    *out = p;
    return 0;
}

int mp_process_set_daemon(mp_process *p, bool daemon)
{
    if (!valid(p))
        return mp_fail_handle(__func__, "p", p);
    if (atomic_load(&p->state) != PROC_NEW)
        return mp_fail(MP_ESTATE, __func__, "process \"%s\" is %s; set daemon before "
                       "mp_process_start", p->name, state_name(p));
    p->daemon = daemon;
    return 0;
}

static int fork_start(mp_process *p, int *fd)
{
    int exit_pipe[2];
    struct fdreg_lease *lease = fdreg_lease_new();    /* NULL: its holds stay, as before */
    process_fork_lock();
    int rc = proc_exit_pipe(exit_pipe);
    pid_t parent = rt.pid;
    process_starting(lease);
    fdreg_lease_arm(lease);
    pid_t pid = rc == 0 ? fork() : -1;
    fdreg_lease_arm(NULL);
    if (pid != 0)
        process_started(lease);
    if (pid < 0) {
        rc = rc ? rc : -errno;
        close(exit_pipe[0]);
        close(exit_pipe[1]);
        process_fork_unlock();
        process_lease_undo(p, lease);
        return rc;
    }
    if (pid == 0) {
        process_exit_pipe_child(exit_pipe);
        process_enter_child(p, exit_pipe[1]);
        if (p->daemon)
            process_daemon_guard(parent);
        int code = process_run_target(p);
        at_exit();                  /* join our own children and threads, */
        /* A forked child's handles go with it when it returns: each one's
         * count of holders drops, as if it had closed them. Not while a
         * daemon thread of its own may still use them (one started with
         * pthread_create directly is not seen: it must not use a handle
         * past its process's return). What it did not give back (killed,
         * _exit, a daemon thread) its reaper gives back through the lease. */
        if (mp_active_count() == 1)
            fdreg_close_all();
        fflush(NULL);               /* but not the parent's atexit handlers */
        _exit(code);
    }
    p->pid = pid;
    p->reaper = parent;
    p->lease = lease;
    *fd = process_exit_pipe_parent(exit_pipe, pid);
    process_fork_unlock();
    if (*fd < 0 && *fd != -ESRCH) {             /* undone: the child is killed and reaped */
        process_lease_undo(p, lease);
        return *fd;
    }
    return 0;
}

/* Copies the argument into the arena and names the target for another
 * image: what every start method but fork needs before the child exists. */
static int prepare(mp_process *p, mp_start_method method)
{
    if (p->arg_size) {
        void *copy = arena_alloc_nozero(p->arg_size);
        if (!copy)
            return MP_ENOMEM;
        memcpy(copy, p->arg, p->arg_size);
        p->arg = p->arg_copy = copy;
    }
    p->method = method;
    if (method != MP_FORK && fnref_from((const void *)p->target, &p->target_ref) != 0)
        return mp_fail(MP_EINVAL, "mp_process_start", "the target is not a function of the "
                       "program or a loaded library, so a %s child cannot find it; use "
                       "MP_FORK", method == MP_SPAWN ? "spawn" : "fork-server");
    return 0;
}

/* Under spawn and forkserver the child has the arena and nothing else of
 * ours: an argument passed as is must point into the arena. */
static int check_arg(const mp_process *p, mp_start_method method)
{
    const char *how = method == MP_SPAWN ? "MP_SPAWN" : "MP_FORKSERVER";
    if (method == MP_FORK || !p->arg || p->arg_size || arena_contains(p->arg, 1))
        return 0;
    if (shm_mapping_contains(p->arg))
        return mp_fail(MP_EINVAL, "mp_process_start", "arg points into an mp_shm buffer, which "
                       "a %s child maps at another address; pass the mp_shm handle itself "
                       "and call mp_shm_buf in the child, or set opts.arg_size", how);
    return mp_fail(MP_EINVAL, "mp_process_start", "arg is not in shared memory and "
                   "opts.arg_size is 0, so a %s child could not read it; set opts.arg_size "
                   "to copy the bytes, or allocate arg with mp_shared_alloc", how);
}

static void unprepare(mp_process *p, void *arg)
{
    arena_free(p->arg_copy);
    p->arg = arg;
    p->arg_copy = NULL;
    atomic_store(&p->state, PROC_NEW);
}

int mp_process_start(mp_process *p)
{
    const char *fn = __func__;
    if (!valid(p))
        return mp_fail_handle(fn, "p", p);
    mp_process *me = current_record();
    if (!me)
        return mp_fail(MP_ENOMEM, fn, "no room in the shared arena for this process's record");
    uint32_t expect = PROC_NEW;
    if (p == me)
        return mp_fail(MP_ESTATE, fn, "p is the calling process itself");
    if (me->daemon)                 /* daemons have no children (as Python) */
        return mp_fail(MP_ESTATE, fn, "the calling process \"%s\" is a daemon, and a daemon "
                       "cannot have children (as in Python)", me->name);
    mp_start_method method = p->method ? p->method : mp_get_start_method();
    int rc = check_arg(p, method);
    if (rc == 0)
        rc = check_pass_fds(fn, p->pass_fds, p->n_pass_fds);
    if (rc != 0)
        return rc;
    if (!atomic_compare_exchange_strong(&p->state, &expect, PROC_RUNNING))
        return mp_fail(MP_ESTATE, fn, "process \"%s\" is %s; a process starts once (make "
                       "a new one to run the target again)", p->name,
                       expect == PROC_DONE ? "finished" : "started already");
    void *arg = p->arg;
    int pidfd = -1;
    rc = prepare(p, method);
    p->parent = me;
    /* atomic: settled_state reads it while the start is under way */
    __atomic_store_n(&p->creator, rt.pid, __ATOMIC_RELAXED);
    if (rc == 0) {
        fflush(NULL);               /* or buffered output is printed twice */
        if (method == MP_FORK)
            rc = fork_start(p, &pidfd);
        else if (method == MP_SPAWN)
            rc = spawn_start(p, &pidfd);
        else
            rc = forkserver_start(p, &pidfd);
    }
    if (rc != 0 && p->unanswered) { /* a child may run with p: it is spent, not new again */
        p->exitcode = MP_EXITCODE_UNKNOWN;
        atomic_store(&p->state, PROC_DONE);
        return mp_fail(rc, fn, "the fork server died with the request (%s); a child it may "
                       "have forked does not run the target; make a new process to start "
                       "again", mp_errname(rc));
    }
    if (rc != 0) {
        unprepare(p, arg);
        return mp_fail_code(rc, fn);
    }
    runtime_lock();
    rc = add_child(p);
    if (rc == 0 && pidfd >= 0)
        rc = add_fd(p, pidfd);
    else if (pidfd < 0 && i_reap(p)) {
        end_lease(p);
        process_publish_exit(p, 0); /* already reaped by the kernel: SIGCHLD ignored */
    }
    runtime_unlock();
    atomic_store(&p->started, 1);   /* the child exists: other threads' calls go on */
    futex_wake(&p->started, INT_MAX);
    return mp_fail_code(rc, fn);
}

/* How often a call waiting for another thread's start looks whether the
 * starting process still lives. */
#define START_LOOK_S 0.01

/* p's start may be under way in another thread (or process): its state
 * says RUNNING from the starter's CAS on, but its pid is known only once
 * the child exists, and a signal, join or look by pid before that would
 * aim at pid 0 (kill(0) signals our whole process group). Waits until the
 * start has its child, failed, or d passes, and returns the state it
 * settled on: PROC_NEW (never started, or the start failed), PROC_RUNNING
 * with its child, PROC_DONE; or MP_ETIMEDOUT, or MP_ESTATE if the starting
 * process died first. Callers decide on this one answer: a second load of
 * state could see a start that began after the first, with no pid yet. */
static int settled_state(const mp_process *p, const mp_deadline *d)
{
    mp_process *q = (mp_process *)p;
    for (;;) {
        int state = (int)atomic_load(&q->state);
        if (state != PROC_RUNNING || atomic_load(&q->started))
            return state;
        if (deadline_passed(d))
            return MP_ETIMEDOUT;
        pid_t by = __atomic_load_n(&q->creator, __ATOMIC_RELAXED);
        if (by > 0 && by != rt.pid && kill(by, 0) != 0 && errno == ESRCH)
            return MP_ESTATE;
        mp_deadline slice = deadline_in(START_LOOK_S);
        if (deadline_left(d) < deadline_left(&slice))
            slice = *d;
        futex_wait(&q->started, 0, &slice);
    }
}

/* settled_state without a deadline, for the calls that take none: the
 * state, or the message for a starter that died first (MP_ESTATE). */
static int settled_or_fail(const mp_process *p, const char *fn)
{
    mp_deadline forever = deadline_in(MP_FOREVER);
    int state = settled_state(p, &forever);
    if (state >= 0)
        return state;
    return mp_fail(MP_ESTATE, fn, "process \"%s\" was being started by a process that died "
                   "before its child existed", p->name);
}

static int wait_published(mp_process *p, const mp_deadline *d)
{
    for (;;) {
        int fd = fs_fd(p);
        int where = fs_settle(p, fd);
        if (where == FS_DONE)
            return 0;
        if (deadline_passed(d))
            return MP_ETIMEDOUT;
        if (where == FS_RUNNING && fd >= 0) {
            int rc = proc_poll_fd(fd, d);    /* until it ends: the server matters only then */
            if (rc < 0)
                return rc;
            continue;
        }
        mp_deadline slice = deadline_in(where == FS_RUNNING ? SERVER_CHECK : SERVER_NAP);
        if (deadline_left(d) < deadline_left(&slice))
            slice = *d;
        atomic_fetch_add(&p->waiters, 1);
        if (atomic_load(&p->state) != PROC_DONE)
            futex_wait(&p->state, PROC_RUNNING, &slice);
        atomic_fetch_sub(&p->waiters, 1);
    }
}

/* Without pidfds nothing wakes us for someone else's child: look at /proc
 * every millisecond (a fallback for old kernels and valgrind only). */
static int poll_until_ended(mp_process *p, const mp_deadline *d)
{
    while (atomic_load(&p->state) != PROC_DONE && !proc_pid_ended(p->pid)) {
        if (deadline_passed(d))
            return MP_ETIMEDOUT;
        usleep(1000);
    }
    return 0;
}

/* Why a join, a signal or a sentinel makes no sense for p in state (as
 * settled_state gave it), or NULL. */
static const char *not_joinable(const mp_process *p, int state)
{
    if (state == PROC_NEW)
        return "was never started; call mp_process_start first";
    if (p == rt.current)
        return "is the calling process itself";
    return NULL;
}

static int join(mp_process *p, double timeout);

int mp_process_join(mp_process *p, double timeout)
{
    const char *fn = __func__;
    if (!valid(p))
        return mp_fail_handle(fn, "p", p);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(fn, timeout);
    const char *why = not_joinable(p, (int)atomic_load(&p->state));
    if (why)
        return mp_fail(MP_ESTATE, fn, "process \"%s\" %s", p->name, why);
    int rc = join(p, timeout);
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, fn, "process \"%s\" still runs after %g s", p->name,
                       timeout == 0 ? 0.0 : timeout);      /* not "-0 s" */
    if (rc == MP_ESTATE)
        return mp_fail(rc, fn, "process \"%s\" has no child: its start, under way in another "
                       "thread, failed or died with the process making it", p->name);
    return mp_fail_code(rc, fn);
}

static int join(mp_process *p, double timeout)
{
    mp_deadline d = deadline_in(timeout);
    int state = settled_state(p, &d);
    if (state < 0)
        return state;
    if (state == PROC_NEW)
        return MP_ESTATE;           /* its start failed meanwhile */
    if (fs_child(p))
        return wait_published(p, &d);   /* ours, reaped by the fork server */
    for (;;) {
        if (atomic_load(&p->state) == PROC_DONE)
            return 0;
        runtime_lock();
        int fd = fd_for(p);
        runtime_unlock();
        if (fd < 0)                 /* no pidfds, or none to be had now */
            return poll_until_ended(p, &d);
        int rc = proc_poll_fd(fd, &d);
        if (rc <= 0)
            return rc == 0 ? MP_ETIMEDOUT : rc;
        if (!i_reap(p))
            return 0;               /* someone else's child has ended; its reaper publishes */
        if (!ended_now(p)) {        /* an exit pipe the child closed itself */
            if (deadline_passed(&d))
                return MP_ETIMEDOUT;
            usleep(1000);
        }
    }
}

/* Someone else's child, not published yet: has it ended, as this process
 * sees it (through its own pidfd, *fd, or /proc without one)? */
static bool ended_elsewhere(mp_process *p, int *fd)
{
    runtime_lock();
    *fd = fd_for(p);
    runtime_unlock();
    if (*fd < 0)
        return proc_pid_ended(p->pid);
    mp_deadline now = deadline_in(0);
    return proc_poll_fd(*fd, &now) != 0;
}

bool mp_process_is_alive(mp_process *p)
{
    if (!valid(p))
        return false;
    if (p == rt.current)
        return true;
    if (settled_or_fail(p, __func__) != PROC_RUNNING || ended_now(p))
        return false;
    if (i_reap(p) || fs_child(p))
        return true;                /* as join(p, 0) would say */
    int fd;
    return !ended_elsewhere(p, &fd);
}

static int send_signal(mp_process *p, int sig, const char *fn)
{
    if (!valid(p))
        return mp_fail_handle(fn, "p", p);
    int state = settled_or_fail(p, fn);
    if (state < 0)
        return state;
    const char *why = not_joinable(p, state);   /* a failed start is NEW again */
    if (why)
        return mp_fail(MP_ESTATE, fn, "process \"%s\" %s", p->name, why);
    if (state == PROC_DONE)
        return 0;                   /* finished: nothing to do (as Python) */
    runtime_lock();
    int fd = fd_for(p);
    int rc = proc_signal(fd, p->pid, sig);   /* fd < 0: by pid */
    runtime_unlock();
    return rc == -ESRCH || rc == -EINVAL ? 0 : mp_fail_code(rc, fn);   /* gone, or an eventfd */
}

int mp_process_terminate(mp_process *p) { return send_signal(p, SIGTERM, __func__); }
int mp_process_kill(mp_process *p) { return send_signal(p, SIGKILL, __func__); }

/* Someone else's child (not ours to reap, nor a fork-server child of ours)
 * whose end its reaper has not published yet: 1 with *code, as its zombie
 * (or, reaped, its pidfd) still tells; 0 ended, its code unknown here; -1
 * running (or not someone else's). */
static int code_from_kernel(mp_process *p, int *code)
{
    int fd;
    if (i_reap(p) || fs_child(p) || !ended_elsewhere(p, &fd))
        return -1;
    if (atomic_load_explicit(&p->state, memory_order_acquire) == PROC_DONE) {
        *code = p->exitcode;                    /* published meanwhile */
        return 1;
    }
    return fd >= 0 && proc_exit_code(fd, p->pid, code) == 1 ? 1 : 0;
}

int mp_process_exitcode(mp_process *p, int *code)
{
    const char *fn = __func__;
    if (!valid(p))
        return mp_fail_handle(fn, "p", p);
    if (!code)
        return mp_fail(MP_EINVAL, fn, "code (where the exit code goes) is NULL");
    int state = settled_or_fail(p, fn);
    if (state < 0)
        return state;
    if (state == PROC_NEW)
        return mp_fail(MP_ESTATE, fn, "process \"%s\" was never started", p->name);
    if (ended_now(p)) {
        *code = p->exitcode;
        return 0;
    }
    int known = code_from_kernel(p, code);
    if (known == 1)
        return 0;
    if (known == 0)
        return mp_fail(MP_ESTATE, fn, "process \"%s\" has ended, but its exit code is known "
                       "here only once its parent has reaped it (a join, is_alive or "
                       "mp_active_children there)", p->name);
    return mp_fail(MP_ESTATE, fn, "process \"%s\" is still running; join it first",
                   p->name);
}

pid_t mp_process_pid(const mp_process *p)
{
    if (!valid(p))
        return 0;
    if (p == rt.current)
        return rt.pid;
    int state = settled_or_fail(p, __func__);
    return state == PROC_RUNNING || state == PROC_DONE ? p->pid : 0;
}

const char *mp_process_name(const mp_process *p)
{
    return valid(p) ? p->name : NULL;
}

bool mp_process_daemon(const mp_process *p)
{
    return valid(p) && p->daemon;
}

int mp_process_sentinel(const mp_process *p)
{
    if (!valid(p))
        return mp_fail_handle(__func__, "p", p);
    int state = settled_or_fail(p, __func__);
    if (state < 0)
        return state;
    const char *why = not_joinable(p, state);   /* a failed start is NEW again */
    if (why)
        return mp_fail(MP_ESTATE, __func__, "process \"%s\" %s", p->name, why);
    runtime_lock();
    int fd = fd_for((mp_process *)p);
    runtime_unlock();
    return mp_fail_code(fd, __func__);
}

int mp_process_free(mp_process *p)
{
    if (!p)
        return 0;
    if (!valid(p))
        return mp_fail_handle(__func__, "p", p);
    if (p == rt.current)
        return mp_fail(MP_ESTATE, __func__, "p is the calling process itself");
    int state = settled_or_fail(p, __func__);
    if (state < 0)
        return state;
    if (state == PROC_RUNNING && !ended_now(p))
        return mp_fail(MP_ESTATE, __func__, "process \"%s\" is still running; join it (or "
                       "kill and join it) first", p->name);
    if (p->unanswered)              /* a child may run with it: kept for good */
        return 0;
    runtime_lock();
    if (fs_child(p))                /* ended, maybe never settled here: its holds go back */
        end_lease(p);
    drop_child(p);
    drop_fds(p);
    runtime_unlock();
    arena_free(p->arg_copy);
    arena_free(p->pass_fds);
    p->magic = MAGIC_FREED;
    arena_free(p);
    return 0;
}

/* ------------------------------------------------------------------ the family */

int mp_active_children(mp_process **out, size_t cap)
{
    if (!out && cap)
        return mp_fail(MP_EINVAL, __func__, "out is NULL but cap is %zu", cap);
    runtime_lock();
    size_t live = 0;
    for (size_t i = 0; i < rt.nchildren;) {
        mp_process *c = rt.children[i];
        if (ended_locked(c)) {      /* forgotten here, still the caller's handle */
            rt.children[i] = rt.children[--rt.nchildren];
            continue;
        }
        if (live < cap)
            out[live] = c;
        live++;
        i++;
    }
    runtime_unlock();
    return (int)live;
}

int mp_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int mp_set_start_method(mp_start_method m)
{
    if (!method_valid(m))
        return mp_fail(MP_EINVAL, __func__, "method is %d, not an mp_start_method", (int)m);
    runtime_lock();
    rt.method = m;
    runtime_unlock();
    return 0;
}

mp_start_method mp_get_start_method(void)
{
    runtime_lock();
    mp_start_method m = rt.method ? rt.method : MP_FORK;
    runtime_unlock();
    return m;
}

/* Python's _exit_function: daemons are terminated, everyone else joined.
 * A daemon that ignores SIGTERM gets SIGKILL after a grace period. A
 * spawned or fork-server child then closes the handles it still holds, as
 * a forked one does when it returns (fork_start): whoever ends its lease
 * (its reaper, or its creator) may be gone (killed), and then nothing else
 * gives back the holds its lease names; nor those on handles it made.
 * The spawned image (and the fork server, whose children exit through
 * here) registers this handler before any target runs, so it runs after
 * the target's own. */
static void at_exit(void)
{
    runtime_lock();
    bool idle = !rt.nchildren && !rt.threads && rt.fs_sock < 0;
    bool spawned = rt.current && rt.current->pid == rt.pid &&
                   (rt.current->method == MP_SPAWN || rt.current->method == MP_FORKSERVER);
    runtime_unlock();
    if (!idle)
        join_at_exit();
    if (spawned && mp_active_count() == 1)
        fdreg_close_all();
}

static void join_at_exit(void)
{
    thread_join_all_at_exit();
    mp_process *kids[64];
    int n, before = INT32_MAX;
    /* Each round ends at least one child unless a join fails: then stop. */
    while ((n = mp_active_children(kids, 64)) > 0 && n < before) {
        before = n;
        if (n > 64)
            n = 64;
        for (int i = 0; i < n; i++)
            if (kids[i]->daemon)
                mp_process_terminate(kids[i]);
        for (int i = 0; i < n; i++) {
            if (!kids[i]->daemon) {
                mp_process_join(kids[i], MP_FOREVER);
            } else if (mp_process_join(kids[i], DAEMON_GRACE) != 0) {
                mp_process_kill(kids[i]);
                mp_process_join(kids[i], MP_FOREVER);
            }
        }
    }
    forkserver_shutdown();
}
