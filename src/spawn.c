/* spawn.c - start a fresh copy of the program and run the target before main.
 *
 * The parent forks and execs /proc/self/exe with its own argv and one extra
 * environment variable naming the arena (fd, address, size) and the process
 * record. In the new image a constructor sees the variable before main runs,
 * maps the arena at the same address, finds the target by fnref, runs it and
 * exits: the user's main never runs there, so it needs no guard.
 */
#include "process_internal.h"
#include "fdreg.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static bool is_ours(const char *entry)
{
    return strncmp(entry, SPAWN_ENV "=", sizeof SPAWN_ENV) == 0 ||
           strncmp(entry, SERVER_ENV "=", sizeof SERVER_ENV) == 0;
}

/* An environment built for one exec. It stays on a runtime list while in
 * use: a fork by another thread meanwhile then leaves its child a block that
 * a global still points to, not one that looks leaked (to valgrind). */
struct env_block {
    struct env_block *next, *prev;
    char *envp[];
};

char **spawn_env(const char *name, const char *value)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    size_t var_len = strlen(name) + 1 + strlen(value) + 1;
    struct mp_runtime *r = runtime();
    runtime_lock();                 /* no fork between malloc and listing */
    struct env_block *b = malloc(sizeof *b + (n + 2) * sizeof(char *) + var_len);
    if (!b) {
        runtime_unlock();
        return NULL;
    }
    b->prev = NULL;
    b->next = r->envs;
    if (b->next)
        b->next->prev = b;
    r->envs = b;
    runtime_unlock();
    char **envp = b->envp;
    char *var = (char *)(envp + n + 2);
    snprintf(var, var_len, "%s=%s", name, value);
    size_t k = 0;
    envp[k++] = var;
    for (size_t i = 0; i < n; i++)
        if (!is_ours(environ[i]))
            envp[k++] = environ[i];
    envp[k] = NULL;
    return envp;
}

void spawn_env_free(char **envp)
{
    if (!envp)
        return;
    struct env_block *b = (struct env_block *)((char *)envp - offsetof(struct env_block, envp));
    struct mp_runtime *r = runtime();
    runtime_lock();
    if (b->prev)
        b->prev->next = b->next;
    else
        r->envs = b->next;
    if (b->next)
        b->next->prev = b->prev;
    free(b);
    runtime_unlock();
}

/* In the child between fork and exec: only async-signal-safe calls. */
int spawn_exec_self(const char *path, const char *const *argv, char **envp,
                    const int *keep_fds, size_t nkeep)
{
    for (size_t i = 0; i < nkeep; i++) {
        int rc = proc_fd_inherit(keep_fds[i], true);
        if (rc != 0)
            return -rc;
    }
    execve(path, (char *const *)argv, envp);
    return errno;
}

int spawn_exec(const char *name, const char *spec, const int *keep_fds, size_t nkeep,
               bool daemon, int parent_close, pid_t *out)
{
    const char *path;
    const char *const *argv = process_exec_argv(&path);
    char **envp = spawn_env(name, spec);
    int pipefd[2] = { -1, -1 }, rc = 0;
    pid_t pid = -1;
    if (!argv || !envp)
        rc = MP_ENOMEM;
    else if (pipe2(pipefd, O_CLOEXEC) != 0)
        rc = -errno;
    pid_t parent = getpid();
    if (rc == 0 && (pid = fork()) == 0) {
        close(pipefd[0]);
        if (daemon)
            process_daemon_guard(parent);   /* PDEATHSIG survives exec */
        /* The fork server must not hold connections open: EOF would never come. */
        if (strcmp(name, SPAWN_ENV) == 0)
            fdreg_keep_across_exec();
        int err = spawn_exec_self(path, argv, envp, keep_fds, nkeep);
        ssize_t w = write(pipefd[1], &err, sizeof err);
        (void)w;
        _exit(127);
    }
    if (rc == 0 && pid < 0)
        rc = -errno;
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    if (parent_close >= 0)
        close(parent_close);
    process_fork_unlock();              /* no write end is left to inherit */
    int err = 0;
    ssize_t n = 0;
    if (rc == 0) {
        do
            n = read(pipefd[0], &err, sizeof err);
        while (n < 0 && errno == EINTR);
    }
    if (n > 0) {                        /* exec failed: the child is ours to reap */
        waitpid(pid, NULL, 0);
        rc = err ? -err : MP_ENOMEM;
    }
    if (rc == 0)
        *out = pid;
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    spawn_env_free(envp);
    return rc;
}

int spawn_start(struct mp_process *p, int *fd)
{
    int afd = arena_fd();
    int exit_pipe[2];
    if (afd < 0)
        return afd;
    /* The child's holds on our handles, as for fork (process.c): the new
     * image adopts them from p->lease, and the reaper gives back the rest. */
    struct fdreg_lease *lease = fdreg_lease_new();
    process_fork_lock();
    int rc = proc_exit_pipe(exit_pipe);
    if (rc != 0) {
        process_fork_unlock();
        process_lease_undo(p, lease);
        return rc;
    }
    char spec[128];
    snprintf(spec, sizeof spec, "%d:%" PRIxPTR ":%zx:%" PRIxPTR ":%d", afd,
             (uintptr_t)arena_base(), arena_size(), (uintptr_t)p, exit_pipe[1]);
    int keep[2 + MP_PASS_FDS_MAX] = { afd };
    size_t nkeep = 1;
    if (exit_pipe[1] >= 0)
        keep[nkeep++] = exit_pipe[1];
    for (size_t i = 0; i < p->n_pass_fds; i++)    /* the user's, kept at their numbers */
        keep[nkeep++] = p->pass_fds[i];
    pid_t pid;
    p->lease = lease;                   /* before the fork: the new image reads it */
    process_starting(lease);
    fdreg_lease_arm(lease);
    rc = spawn_exec(SPAWN_ENV, spec, keep, nkeep, p->daemon, exit_pipe[1], &pid);
    fdreg_lease_arm(NULL);
    process_started(lease);
    exit_pipe[1] = -1;                  /* closed by spawn_exec */
    if (rc != 0) {                      /* no child, or one that is reaped */
        if (exit_pipe[0] >= 0)
            close(exit_pipe[0]);
        process_lease_undo(p, lease);
        return rc;
    }
    p->pid = pid;
    p->reaper = getpid();
    *fd = process_exit_pipe_parent(exit_pipe, pid);
    if (*fd < 0 && *fd != -ESRCH) {     /* undone: the child is killed and reaped */
        process_lease_undo(p, lease);
        return *fd;
    }
    return 0;
}

/* ------------------------------------------------------------------ the child side */

static void run_spawned(const char *spec)
{
    int fd, exit_fd;
    uintptr_t base, rec;
    size_t size;
    if (sscanf(spec, "%d:%" SCNxPTR ":%zx:%" SCNxPTR ":%d", &fd, &base, &size, &rec, &exit_fd) != 5)
        _exit(127);
    unsetenv(SPAWN_ENV);            /* our own children must not see it */
    proc_set_name(program_invocation_short_name);   /* not the "N" of /proc/self/fd/N */
    if (arena_attach(fd, base, size) != 0)
        _exit(127);
    proc_fd_inherit(fd, false);
    if (exit_fd >= 0)
        proc_fd_inherit(exit_fd, false);
    struct mp_process *p = (struct mp_process *)rec;
    if (!arena_contains(p, sizeof *p) || p->magic != MAGIC_PROCESS)
        _exit(127);
    process_enter_child(p, exit_fd);
    if (!fdreg_lease_adopt(p->lease))
        _exit(127);                 /* our starter died and its holds for us went back */
    exit(process_run_target(p));    /* the normal exit path: atexit, stdio */
}

/* Runs before main in every image of a program linked with mproc; costs one
 * getenv when the process is not a spawned child or a fork server. */
__attribute__((constructor)) static void spawn_take_aside(void)
{
    const char *spec = getenv(SPAWN_ENV);
    if (spec) {
        run_spawned(spec);
        return;
    }
    spec = getenv(SERVER_ENV);
    if (spec) {
        char copy[160];
        snprintf(copy, sizeof copy, "%s", spec);
        unsetenv(SERVER_ENV);
        proc_set_name("mp-forkserver");
        _exit(spawn_run_server(copy));
    }
}
