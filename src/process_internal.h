/* process_internal.h - what process.c, spawn.c, forkserver.c and thread.c share.
 *
 * A process record lives in the family arena, so the same pointer names the
 * same process in every member of the family; whoever reaps the process
 * publishes its exit status in the record (a futex word) for everyone else.
 * Everything per-process (fds, child lists, counters) is in one mp_runtime.
 */
#ifndef MPROC_PROCESS_INTERNAL_H
#define MPROC_PROCESS_INTERNAL_H

#include "internal.h"
#include "platform/platform.h"

#include <signal.h>
#include <sys/types.h>

enum { PROC_NEW, PROC_RUNNING, PROC_DONE };   /* mp_process.state */

#define PROC_NAME_MAX 64
#define PROC_IDENT_MAX 48

/* Rules (shared: a record is in the arena, seen by the whole family).
 * magic, name, ident, parent, target, target_ref, arg, arg_copy, arg_size,
 * pass_fds, n_pass_fds, daemon and method are written by the creator
 * while state is PROC_NEW (mp_process_new, the setters, and start before
 * its CAS to PROC_RUNNING) and only read after. pid, creator and reaper
 * are written by the starter once the child exists (the child writes its
 * own pid too, the same value), then started turns 1: a call of another
 * thread on a RUNNING record waits for that first (settled_state). exitcode is
 * written by the reaper alone (process_publish_exit, or the client that
 * settles a dead fork server's orphans, under rt.lock) before state's
 * seq_cst store of PROC_DONE publishes it; readers load state first.
 * state moves NEW -> RUNNING (one CAS) -> DONE, and back to NEW only on a
 * failed start by its starter. waiters is atomic, counted by joiners. */
/* Starts of one process that may be under way at once and still be
 * named in its record (process_starting). */
#define PROC_STARTS_NAMED 8
/* Blocks one process may hold in hand at once (internal.h, hand_claim). */
#define PROC_HANDS 8

struct mp_process {
    uint32_t magic;
    _Atomic uint32_t state;          /* PROC_*; futex word, woken at PROC_DONE */
    _Atomic uint32_t waiters;        /* sleeping on state: wake only if any */
    _Atomic uint32_t started;        /* 1 once a start has its child: pid, creator and
                                      * reaper are written (futex word; settled_state) */
    int exitcode;                    /* valid at PROC_DONE: code or -signal */
    pid_t pid;
    pid_t creator;                   /* the process that called mp_process_start */
    pid_t reaper;                    /* its OS parent: creator, or the fork server */
    mp_start_method method;          /* resolved at start: never MP_START_DEFAULT */
    bool daemon;
    char name[PROC_NAME_MAX];
    char ident[PROC_IDENT_MAX];      /* "1:2": counters down the family, as Python's _identity */
    struct mp_process *parent;       /* the creator's own record */
    mp_target target;                /* fork: called directly */
    fnref target_ref;                /* spawn, forkserver: found again in the new image */
    void *arg;                       /* what the target gets (the copy when arg_size > 0) */
    void *arg_copy;                  /* arena copy to free, or NULL */
    size_t arg_size;                 /* bytes to copy at start; 0 = pass arg as is */
    int *pass_fds;                   /* arena copy of opts.pass_fds, or NULL */
    size_t n_pass_fds;
    struct fdreg_lease *lease;       /* fork: the child's holds on our handles, or NULL */
    /* In this process's own record: the leases of the starts of ours
     * under way (one slot each, taken by a CAS from NULL, as several
     * threads may start children at once), each from before its holds are
     * counted until the start has its child (or none); its reaper abandons
     * them if we die in between. */
    struct fdreg_lease *_Atomic starting[PROC_STARTS_NAMED];
    /* In this process's own record: the blocks it holds in hand (a slot
     * each, claimed by a CAS from NULL); its reaper frees them. */
    void *_Atomic hand[PROC_HANDS];
    /* A fork-server start's verdict, given by its client once the
     * server's answer came (FS_GO) or did not (FS_NO_GO); the child waits
     * for it before it runs (futex word; forkserver.c). */
    _Atomic uint32_t verdict;
    /* A fork-server start that failed after the server got its request:
     * a child it forked may still run with this record, its argument
     * copy and its lease, so none of them is ever freed or reused. */
    bool unanswered;
};

/* One per process; reset in the child after fork (process.c's fork hook).
 *
 * Rules (process-local). Three mutexes, in this order when nested (the
 * full list: docs/architecture.md): fs_lock, then fork_lock, then lock.
 *   lock (runtime_lock, ASSERT_HELD in the helpers): current's creation,
 *     next_child, method, children/nchildren/capchildren,
 *     fds/nfds/capfds, threads (thread.c's list), next_thread, envs
 *     (spawn.c), cmdline, argv, exe_fd and exe_path. Held across fork by
 *     the fork hook, so the child gets every one of these whole.
 *   fs_lock: fs_sock and fs_pid (forkserver.c), one request at a time.
 *   fork_lock (process_fork_lock): no field; held around every fork of
 *     the library, from creating the descriptors only that child may hold
 *     to closing them in the parent.
 *   No lock: pid (written at init and in the child hook, before any other
 *     thread exists), current's later reads (atomic pointer), exit_fd
 *     (written at child entry, before the target runs).
 * The child hook re-initialises fs_lock and fork_lock (another thread may
 * have held them) and drops the parent's children, pidfds and server. */
struct proc_fd { struct mp_process *p; pid_t pid; int fd; };
struct mp_runtime {
    pthread_mutex_t lock;
    pid_t pid;                       /* getpid(), kept: it is asked for often */
    struct mp_process *_Atomic current;   /* this process's record, made on demand */
    unsigned next_child;             /* last N given to a child of this process */
    mp_start_method method;          /* mp_set_start_method */
    struct mp_process **children;    /* started here and not yet freed */
    size_t nchildren, capchildren;
    struct proc_fd *fds;             /* pidfds this process holds, by record */
    size_t nfds, capfds;
    struct mp_thread *threads;       /* made here, not yet freed */
    unsigned next_thread;
    struct env_block *envs;          /* environments of execs under way (spawn.c) */
    char *cmdline;                   /* /proc/self/cmdline, for spawn's exec */
    char **argv;                     /* pointers into cmdline, NULL-terminated */
    int exe_fd;                      /* /proc/self/exe, opened once; -1 = not yet */
    char exe_path[32];               /* "/proc/self/fd/N": exec'able under valgrind too */
    int exit_fd;                     /* write end of our exit pipe, -1 = none */
    int fs_sock;                     /* fork server connection, -1 = none */
    pid_t fs_pid;
    pthread_mutex_t fs_lock;         /* one request at a time on fs_sock */
    pthread_mutex_t fork_lock;       /* process_fork_lock */
};

struct mp_runtime *runtime(void);     /* initialised on first call */
void runtime_lock(void);
void runtime_unlock(void);

/* process.c: the child side, shared by every start method. */
void process_enter_child(struct mp_process *p, int exit_fd);   /* runtime says: I am p */
/* An exit pipe around fork: the child keeps the write end, the parent gets
 * the fd to watch (the read end, or a pidfd). Should the pidfd fail (the
 * descriptor limit reached by another thread meanwhile) the child is killed
 * and reaped and the error returned; -ESRCH: already reaped by the kernel
 * (SIGCHLD ignored). */
void process_exit_pipe_child(int fds[2]);
int process_exit_pipe_parent(int fds[2], pid_t pid);
/* A start undone (no child, or one killed and reaped already): the holds
 * its fork counted for the child on our handles go back, and lease with
 * them (fdreg.h); p (if any) keeps none. */
struct fdreg_lease;
void process_lease_undo(struct mp_process *p, struct fdreg_lease *lease);
/* Names lease in this process's record as a start under way, before the
 * start counts its holds, and process_started un-names it once the start
 * has its child or none, so this process's reaper can give them back
 * should it die in between (fdreg_lease_abandon). Each start under way
 * has a slot of its own: another thread's start ending meanwhile leaves
 * it named. Past PROC_STARTS_NAMED starts at once, the others go unnamed
 * (their holds kept for good should we die in them). NULL: nothing. */
void process_starting(struct fdreg_lease *lease);
void process_started(struct fdreg_lease *lease);
/* Held around every fork of the library, from creating the descriptors a
 * child must hold alone (exit pipe, exec error pipe, the fork server's
 * socket) to closing them in the parent: no other child inherits them. */
void process_fork_lock(void);
void process_fork_unlock(void);
int process_run_target(struct mp_process *p);         /* the target's code, 0-255 */
/* In a spawned or fork-server child: clears FD_CLOEXEC on p's pass_fds. */
void process_keep_pass_fds(const struct mp_process *p);
void process_publish_exit(struct mp_process *p, int code);   /* reaper: status + wake */
int process_code_from_siginfo(const siginfo_t *si);
void process_daemon_guard(pid_t expected_parent);     /* PDEATHSIG + getppid check */
/* argv of this program (NULL-terminated) and a path that execs its image. */
const char *const *process_exec_argv(const char **path);

/* spawn.c / forkserver.c: start p (already RUNNING, arg copied); fill p->pid. */
int spawn_start(struct mp_process *p, int *pidfd);
int forkserver_start(struct mp_process *p, int *pidfd);
void forkserver_after_fork_child(void);
void forkserver_shutdown(void);
bool forkserver_running(pid_t server);                /* ours, and not exited */
#define SPAWN_ENV "MPROC_SPAWN"
#define SERVER_ENV "MPROC_FORKSERVER"
/* Forks a child that execs this program with name=spec in its environment,
 * keeping keep_fds open; exec failure comes back through an O_CLOEXEC pipe.
 * Called with process_fork_lock held: once the child exists the parent
 * closes parent_close (if >= 0) and releases the lock, then awaits the exec. */
int spawn_exec(const char *name, const char *spec, const int *keep_fds, size_t nkeep,
               bool daemon, int parent_close, pid_t *pid);
/* Builds "NAME=value" plus the current environment without NAME. */
char **spawn_env(const char *name, const char *value);
void spawn_env_free(char **envp);
/* In a child after fork: execs this program, keeping keep_fds open; returns errno. */
int spawn_exec_self(const char *path, const char *const *argv, char **envp,
                    const int *keep_fds, size_t nkeep);
int spawn_run_server(const char *spec);               /* forkserver.c: the server loop */

/* thread.c */
void thread_join_all_at_exit(void);
void thread_after_fork_child(void);

#endif
