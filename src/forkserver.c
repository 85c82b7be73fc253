/* forkserver.c - children forked from a clean, single-threaded server.
 *
 * On first use a process execs a copy of the program whose constructor runs
 * the server loop instead of main. The client sends a record's address over
 * a unix socketpair; the server forks, runs the target in the child, and
 * answers with the pid and a pidfd (SCM_RIGHTS). It reaps its children and
 * publishes their status in the record, so the client joins on a futex word.
 * It watches the client's pidfd: when the client dies it kills the client's
 * daemons and leaves. When the server dies, the client reaps it and starts
 * another on the next request (process.c settles the orphans' records).
 *
 * The server inherits nothing from the client after it started, so each
 * request carries the descriptors of the client's live connections
 * (SCM_RIGHTS) and their numbers; the child puts them back at those
 * numbers, and an mp_conn reached through the argument works as under fork.
 * The descriptors of the record's pass_fds go first, the same way, and stay
 * open across an exec of the child.
 */
#include "process_internal.h"
#include "fdreg.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SHUTDOWN_GRACE 2.0   /* seconds the server gets to leave after EOF */
#define VERDICT_SLICE 0.01   /* how often a child waiting for its verdict looks at its elders */

/* The client's working directory, which the child starts in (as
 * Python's), and only the first dirlen bytes of it are sent. */
struct request {
    uint64_t record;
    uint32_t nfds, dirlen;
    int32_t numbers[PROC_FDS_MAX];
    char dir[PATH_MAX];
};
#define REQUEST_SIZE(dirlen) (offsetof(struct request, dir) + (dirlen))
struct reply { int32_t rc; int32_t pid; };

/* A start's verdict (mp_process.verdict): none yet, or its client's. */
enum { FS_WAITING, FS_GO, FS_NO_GO };

/* ------------------------------------------------------------------ client side */

static int server_launch(struct mp_runtime *r)
{
    int sv[2];
    int afd = arena_fd();
    if (afd < 0)
        return afd;
    process_fork_lock();
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        process_fork_unlock();
        return -errno;
    }
    r->fs_sock = sv[0];                 /* from now on, forked children close it */
    char spec[160];
    snprintf(spec, sizeof spec, "%d:%d:%" PRIxPTR ":%zx:%d", sv[1], afd,
             (uintptr_t)arena_base(), arena_size(), (int)getpid());
    int keep[2] = { sv[1], afd };
    pid_t pid;
    /* The fork counts the server as a holder of our handles, but its exec
     * closes them all: by the time spawn_exec returns it has exec'd (or
     * failed and been reaped), so those holds go back at once. */
    struct fdreg_lease *lease = fdreg_lease_new();
    fdreg_lease_dies_at_exec(lease);
    process_starting(lease);
    fdreg_lease_arm(lease);
    int rc = spawn_exec(SERVER_ENV, spec, keep, 2, false, sv[1], &pid);
    fdreg_lease_arm(NULL);
    process_started(lease);
    process_lease_undo(NULL, lease);
    if (rc != 0) {
        close(sv[0]);
        r->fs_sock = -1;
        return rc;
    }
    r->fs_pid = pid;
    return 0;
}

/* Closes the connection and reaps the server (our child), killing it if it
 * does not leave within the grace period. True if it is known to have
 * ended by its own doing (an exit, a fault signal, or hanging on until we
 * killed it); false if a signal from outside ended it (SIGKILL, SIGTERM,
 * ...) or nobody can tell (reaped by someone else). */
static bool server_close(struct mp_runtime *r)
{
    if (r->fs_sock < 0)
        return false;
    close(r->fs_sock);
    r->fs_sock = -1;
    mp_deadline d = deadline_in(SHUTDOWN_GRACE);
    siginfo_t si;
    bool own = false;
    int got;
    while ((got = proc_wait_pid(r->fs_pid, &si, true)) == 0) {
        if (deadline_passed(&d)) {
            kill(r->fs_pid, SIGKILL);
            proc_wait_pid(r->fs_pid, &si, false);
            got = -1;
            own = true;
            break;
        }
        usleep(500);                /* it is on its way out: EOF is its signal */
    }
    if (got == 1)
        own = si.si_code == CLD_EXITED || proc_fault_signal(si.si_status);
    r->fs_pid = 0;
    return own;
}

/* Sends p's request with our handles' descriptors, their holds in
 * p->lease, and reads the answer. *sent: the server has the request (and
 * may have started a child), whatever the answer. */
static int ask(int sock, struct mp_process *p, const char *dir, struct reply *rep, int *pidfd,
               bool *sent)
{
    struct request req = { (uint64_t)(uintptr_t)p, 0, (uint32_t)strlen(dir), { 0 }, "" };
    int live[PROC_FDS_MAX];
    *sent = false;
    memcpy(req.dir, dir, req.dirlen);
    for (size_t i = 0; i < p->n_pass_fds; i++)      /* checked at start: open, distinct */
        req.numbers[req.nfds++] = p->pass_fds[i];
    size_t n_live = fdreg_live_fds(p->lease, live, PROC_FDS_MAX - req.nfds);
    for (size_t i = 0; i < n_live; i++) {    /* one closed behind our back would fail them all */
        bool listed = false;
        for (size_t j = 0; j < p->n_pass_fds && !listed; j++)
            listed = live[i] == p->pass_fds[j];
        if (!listed && fcntl(live[i], F_GETFD) >= 0)
            req.numbers[req.nfds++] = live[i];
    }
    atomic_store(&p->verdict, FS_WAITING);
    int rc = proc_send_fds(sock, &req, REQUEST_SIZE(req.dirlen), req.numbers, req.nfds);
    if (rc != 0)
        return rc;
    *sent = true;
    ssize_t n = proc_recv_fd(sock, rep, sizeof *rep, pidfd);
    if (n == (ssize_t)sizeof *rep)
        return 0;
    if (*pidfd >= 0)
        close(*pidfd);
    return n < 0 ? (int)n : n == 0 ? -ECONNRESET : MP_EPROTO;
}

/* Tells the child of a start whether its client has the server's answer:
 * it runs only then, so a start that failed never runs its target, and one
 * that succeeded always does, whatever happens to the server meanwhile. */
static void give_verdict(struct mp_process *p, bool go)
{
    atomic_store(&p->verdict, go ? FS_GO : FS_NO_GO);
    futex_wake(&p->verdict, 1);
}

int forkserver_start(struct mp_process *p, int *pidfd)
{
    struct mp_runtime *r = runtime();
    struct reply rep = { 0, 0 };
    int rc = 0;
    bool sent = false;
    char dir[PATH_MAX];
    if (!getcwd(dir, sizeof dir))   /* as Python's os.getcwd() in the start */
        return mp_fail(-errno, "mp_process_start", "a fork-server child starts in the working "
                       "directory, which cannot be read: %s", strerror(errno));
    pthread_mutex_lock(&r->fs_lock);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (r->fs_sock < 0 && (rc = server_launch(r)) != 0)
            break;
        /* The child's holds on our handles, as for fork (process.c): it
         * adopts them from p->lease, and we give back the rest once it has
         * ended (fs_settle). */
        p->lease = fdreg_lease_new();
        process_starting(p->lease);
        rc = ask(r->fs_sock, p, dir, &rep, pidfd, &sent);
        if (sent)
            give_verdict(p, rc == 0 && rep.rc == 0);
        process_started(p->lease);
        if (!sent)                  /* no child can have read the lease */
            process_lease_undo(p, p->lease);
        if (rc == -EPIPE) {
            /* it died before the request: start another */
            if (server_close(r))
                rc = MP_EBROKEN;
            continue;
        }
        /* It died with the request: a child it forked dies before running
         * (run_kid), but a retry now could meet one not dead yet. The
         * caller may try again; that start launches a new server. A server
         * that died of its own fault says MP_EBROKEN instead: ECONNRESET
         * and EPIPE mean killed from outside, which a pool survives. */
        if (rc == -ECONNRESET && server_close(r))
            rc = MP_EBROKEN;
        break;
    }
    pthread_mutex_unlock(&r->fs_lock);
    if (rc == 0 && rep.rc != 0) {   /* refused: no child runs (one it made is reaped) */
        if (*pidfd >= 0)
            close(*pidfd);
        process_lease_undo(p, p->lease);
        rc = rep.rc;
    } else if (rc != 0 && sent) {
        /* The server may have forked a child with our request, which
         * reads (and writes) p, its argument and its lease: they are kept
         * for good (p->unanswered). It has our verdict: it exits without
         * running and never takes its lease, so the holds go back now. */
        fdreg_lease_abandon(p->lease);
        p->unanswered = true;
    }
    return rc;
}

void forkserver_after_fork_child(void)
{
    struct mp_runtime *r = runtime();
    pthread_mutex_init(&r->fs_lock, NULL);
    if (r->fs_sock >= 0)
        close(r->fs_sock);          /* the parent's server, not ours */
    r->fs_sock = -1;
    r->fs_pid = 0;
}

/* Never waits behind a start under way: it waits for the server's answer
 * with no timeout (a stopped server gives none), and a timed join asks
 * here. Busy, it says the server runs; callers nap and ask again. */
bool forkserver_running(pid_t server)
{
    struct mp_runtime *r = runtime();
    siginfo_t si;
    if (pthread_mutex_trylock(&r->fs_lock) != 0)
        return true;
    bool alive = server == r->fs_pid && r->fs_sock >= 0 && proc_wait_pid(server, &si, true) == 0;
    if (!alive && server == r->fs_pid && r->fs_sock >= 0) {
        close(r->fs_sock);          /* it died (and is reaped now): forget it */
        r->fs_sock = -1;
        r->fs_pid = 0;
    }
    pthread_mutex_unlock(&r->fs_lock);
    return alive;
}

void forkserver_shutdown(void)
{
    struct mp_runtime *r = runtime();
    pthread_mutex_lock(&r->fs_lock);
    server_close(r);
    pthread_mutex_unlock(&r->fs_lock);
}

/* ------------------------------------------------------------------ server side */

/* fd: pidfd, or the exit pipe's read end; ending: that pipe has closed but
 * the kid is not reapable yet (it is between closing its files and exit). */
struct kid { struct mp_process *p; int fd; bool ending; };
struct server {
    int sock, client_fd;            /* client_fd -1: no pidfds, check getppid */
    pid_t client;
    struct kid *kids;
    size_t nkids, cap;
    struct pollfd *pfds;
};

static void reap_kid(struct server *s, size_t i, bool block)
{
    siginfo_t si;
    if (proc_wait_pid(s->kids[i].p->pid, &si, !block) != 1) {
        s->kids[i].ending = true;   /* readable, so it has ended or nearly */
        return;
    }
    close(s->kids[i].fd);
    process_publish_exit(s->kids[i].p, process_code_from_siginfo(&si));
    s->kids[i] = s->kids[--s->nkids];
}

static bool request_valid(const struct mp_process *p)
{
    return arena_contains(p, sizeof *p) && p->magic == MAGIC_PROCESS &&
           p->method == MP_FORKSERVER && atomic_load(&p->state) == PROC_RUNNING;
}

/* The client's connections, received with the request. */
struct passed { const struct request *req; int fds[PROC_FDS_MAX]; size_t n; };

static void passed_close(struct passed *c)
{
    for (size_t i = 0; i < c->n; i++)
        close(c->fds[i]);
    c->n = 0;
}

/* In the new child: waits for its client's verdict on the start (its
 * answer from the server usually came before we get here). A client
 * killed before it gave one stops the server too; a child that finds both
 * gone never runs. */
static bool verdict_go(struct mp_process *p, pid_t server)
{
    uint32_t v;
    while ((v = atomic_load(&p->verdict)) == FS_WAITING) {
        if (getppid() != server && proc_pid_ended(p->creator))
            return false;
        mp_deadline slice = deadline_in(VERDICT_SLICE);
        futex_wait(&p->verdict, FS_WAITING, &slice);
    }
    return v == FS_GO;
}

/* In the new child: drop the server's descriptors, put the client's
 * connections at their numbers, become p, run it. The exit pipe's write
 * end (no pidfds) first moves above those numbers, out of their way. */
static void run_kid(struct server *s, struct mp_process *p, pid_t server, int exit_pipe[2],
                    struct passed *c)
{
    /* A daemon dies with the server from now on. */
    if (p->daemon)
        process_daemon_guard(server);
    close(s->sock);
    if (s->client_fd >= 0)
        close(s->client_fd);
    for (size_t i = 0; i < s->nkids; i++)
        close(s->kids[i].fd);
    signal(SIGINT, SIG_DFL);
    process_exit_pipe_child(exit_pipe);
    int top = 0;
    for (size_t i = 0; i < c->n; i++)
        top = c->req->numbers[i] >= top ? c->req->numbers[i] + 1 : top;
    if (exit_pipe[1] >= 0 && exit_pipe[1] < top) {
        int moved = fcntl(exit_pipe[1], F_DUPFD_CLOEXEC, top);
        if (moved < 0)
            _exit(127);
        close(exit_pipe[1]);
        exit_pipe[1] = moved;
    }
    if (proc_place_fds(c->fds, c->req->numbers, c->n) != 0)
        _exit(127);
    process_keep_pass_fds(p);
    if (!verdict_go(p, server))
        _exit(127);                 /* our start failed: its caller was told so */
    process_enter_child(p, exit_pipe[1]);
    if (!fdreg_lease_adopt(p->lease))
        _exit(127);                 /* our requester died and its holds for us went back */
    exit(process_run_target(p));
}

static int fork_kid(struct server *s, struct mp_process *p, struct reply *rep, struct passed *c)
{
    if (s->nkids == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        void *k = realloc(s->kids, cap * sizeof *s->kids);
        void *f = realloc(s->pfds, (cap + 2) * sizeof *s->pfds);
        if (k)
            s->kids = k;
        if (f)
            s->pfds = f;
        if (!k || !f)
            return MP_ENOMEM;
        s->cap = cap;
    }
    int exit_pipe[2];
    int rc = proc_exit_pipe(exit_pipe);
    if (rc != 0)
        return rc;
    pid_t server = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        rc = -errno;
        close(exit_pipe[0]);
        close(exit_pipe[1]);
        return rc;
    }
    if (pid == 0)
        run_kid(s, p, server, exit_pipe, c);
    p->pid = pid;
    p->reaper = server;
    int fd = process_exit_pipe_parent(exit_pipe, pid);
    if (fd < 0)                     /* EMFILE and such: the kid is killed and reaped */
        return fd;
    s->kids[s->nkids++] = (struct kid){ p, fd, false };
    rep->pid = pid;
    return 0;
}

/* false once the client has closed its end. */
static bool serve_request(struct server *s)
{
    struct request req;
    struct passed c = { &req, { 0 }, 0 };
    ssize_t n = proc_recv_fds(s->sock, &req, sizeof req, c.fds, PROC_FDS_MAX, &c.n);
    if (n == 0 || (n < 0 && n != -EMFILE))
        return false;
    struct reply rep = { n < 0 ? (int)n : MP_EPROTO, 0 };
    struct mp_process *p = (struct mp_process *)(uintptr_t)req.record;
    if (n >= (ssize_t)REQUEST_SIZE(0) && req.nfds == c.n && req.dirlen < sizeof req.dir &&
        n == (ssize_t)REQUEST_SIZE(req.dirlen) && request_valid(p)) {
        req.dir[req.dirlen] = '\0';
        /* The kid starts where its client is (a client that moved since
         * the last start moved too), or the start fails. */
        rep.rc = chdir(req.dir) == 0 ? fork_kid(s, p, &rep, &c) : -errno;
    }
    passed_close(&c);                   /* the child has its own copies now */
    int fd = rep.rc == 0 ? s->kids[s->nkids - 1].fd : -1;
    return proc_send_fd(s->sock, &rep, sizeof rep, fd) == 0 || rep.rc != 0;
}

static void kill_daemons(struct server *s)
{
    for (size_t i = 0; i < s->nkids; i++)
        if (s->kids[i].p->daemon)
            proc_signal(s->kids[i].fd, s->kids[i].p->pid, SIGKILL);
    for (size_t i = s->nkids; i-- > 0;)
        if (s->kids[i].p->daemon)
            reap_kid(s, i, true);
}

static bool client_gone(const struct server *s, const struct pollfd *client)
{
    return s->client_fd >= 0 ? client->revents != 0 : getppid() != s->client;
}

static void serve(struct server *s)
{
    for (;;) {
        size_t n = s->nkids;
        bool ending = false;
        s->pfds[0] = (struct pollfd){ s->sock, POLLIN, 0 };
        s->pfds[1] = (struct pollfd){ s->client_fd, POLLIN, 0 };
        for (size_t i = 0; i < n; i++) {
            ending |= s->kids[i].ending;
            s->pfds[i + 2] = (struct pollfd){ s->kids[i].ending ? -1 : s->kids[i].fd, POLLIN, 0 };
        }
        /* Short naps only while a kid is ending or the client has no pidfd. */
        int ms = ending ? 1 : s->client_fd < 0 ? 100 : -1;
        if (poll(s->pfds, n + 2, ms) < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        for (size_t i = n; i-- > 0;)    /* backwards: reaping moves the last kid */
            if (s->pfds[i + 2].revents || s->kids[i].ending)
                reap_kid(s, i, false);
        if (client_gone(s, &s->pfds[1]))
            return;
        if (s->pfds[0].revents && !serve_request(s))
            return;
    }
}

int spawn_run_server(const char *spec)
{
    struct server s = { -1, -1, 0, NULL, 0, 0, NULL };
    int afd;
    uintptr_t base;
    size_t size;
    if (sscanf(spec, "%d:%d:%" SCNxPTR ":%zx:%d", &s.sock, &afd, &base, &size, &s.client) != 5)
        return 2;
    signal(SIGINT, SIG_IGN);            /* Ctrl-C is for the client (as Python's) */
    if (arena_attach(afd, base, size) != 0)
        return 2;
    proc_fd_inherit(afd, false);
    proc_fd_inherit(s.sock, false);
    s.client_fd = proc_pidfd_open(s.client);
    if ((s.client_fd < 0 && s.client_fd != -ENOSYS) || getppid() != s.client)
        return 0;                       /* the client is gone already */
    s.pfds = malloc(2 * sizeof *s.pfds);
    if (!s.pfds)
        return 2;
    serve(&s);
    kill_daemons(&s);
    return 0;
}
