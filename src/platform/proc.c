/* proc.c - the Linux process calls: pidfds, waitid, prctl, fd passing.
 *
 * A pidfd names one process for good (no pid reuse race): it becomes
 * readable when the process ends, takes signals, and waitid(P_PIDFD) reaps
 * through it. No policy here; process.c decides who reaps what.
 */
#include "platform/platform.h"

#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int proc_pidfd_open(pid_t pid)
{
    if (!proc_have_pidfd())
        return -ENOSYS;                             /* also when forced off */
    long fd = syscall(SYS_pidfd_open, pid, 0);     /* always close-on-exec */
    return fd < 0 ? -errno : (int)fd;
}

bool proc_have_pidfd(void)
{
    static _Atomic int have;        /* 0 unknown, 1 yes, -1 no */
    if (!atomic_load(&have)) {
        /* MPROC_NO_PIDFD=1 takes the fallback path on purpose (its tests). */
        const char *off = getenv("MPROC_NO_PIDFD");
        long fd = off && *off == '1' ? -1 : syscall(SYS_pidfd_open, getpid(), 0);
        if (fd >= 0)
            close((int)fd);
        atomic_store(&have, fd >= 0 ? 1 : -1);
    }
    return atomic_load(&have) > 0;
}

int proc_signal(int fd, pid_t pid, int sig)
{
    long rc = fd >= 0 && proc_have_pidfd() ? syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0)
                                           : kill(pid, sig);
    return rc == 0 ? 0 : -errno;
}

int proc_wait_pid(pid_t pid, siginfo_t *si, bool nohang)
{
    for (;;) {
        memset(si, 0, sizeof *si);
        if (waitid(P_PID, (id_t)pid, si, WEXITED | (nohang ? WNOHANG : 0)) == 0)
            return si->si_pid != 0;
        if (errno != EINTR)
            return -errno;
    }
}

/* The fields of /proc/<pid>/stat after the command name (which may hold
 * anything, ")" too), read into buf. Works for any thread's id as well.
 * NULL if unreadable; then *gone says whether that is because there is no
 * such task (ENOENT, ESRCH), and not some other failure (EMFILE, EACCES
 * under hidepid, no /proc): only the former is evidence of an end. */
static const char *stat_fields(pid_t pid, char *buf, size_t cap, bool *gone)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    *gone = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *gone = errno == ENOENT || errno == ESRCH;
        return NULL;
    }
    ssize_t n = read(fd, buf, cap - 1);
    int err = errno;
    close(fd);
    if (n <= 0) {
        *gone = n < 0 && err == ESRCH;
        return NULL;
    }
    buf[n] = '\0';
    const char *end = strrchr(buf, ')');
    return end && end[1] == ' ' && end[2] ? end + 2 : NULL;
}

/* Field n (n >= 3) of a stat line whose field 3, the state, is at f. */
static const char *stat_field(const char *f, int n)
{
    for (int field = 3; field < n && f; field++) {
        f = strchr(f, ' ');
        f = f ? f + 1 : NULL;
    }
    return f;
}

/* From a process's stat at f: every thread of it has ended. Its leader
 * reads 'Z' as soon as it ended, even while other threads run on (it called
 * pthread_exit): field 20 still counts those. */
static bool group_ended(const char *f)
{
    if (f[0] != 'Z' && f[0] != 'X')
        return false;
    const char *n = stat_field(f, 20);
    return !n || strtol(n, NULL, 10) <= 1;
}

void proc_leave_main_thread(void)
{
    char buf[512];
    bool gone;
    const char *f = stat_fields(getpid(), buf, sizeof buf, &gone);
    const char *n = f ? stat_field(f, 20) : NULL;
    if (n && strtol(n, NULL, 10) > 1)
        for (;;)
            syscall(SYS_exit, 0);        /* this thread alone: the others run on */
    exit(0);
}

bool proc_fault_signal(int sig)
{
    switch (sig) {
    case SIGSEGV: case SIGBUS: case SIGILL: case SIGFPE: case SIGABRT: case SIGSYS: case SIGTRAP:
        return true;
    default:
        return false;
    }
}

bool proc_pid_ended(pid_t pid)
{
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return true;
    char buf[512];
    bool gone;
    const char *f = stat_fields(pid, buf, sizeof buf, &gone);
    return f ? group_ended(f) : gone;
}

int proc_task_start(pid_t tid, uint64_t *start)
{
    char buf[512];
    bool gone;
    const char *f = stat_fields(tid, buf, sizeof buf, &gone);
    if (!f)
        return gone ? 0 : -1;
    if (f[0] == 'Z' || f[0] == 'X')
        return 0;
    f = stat_field(f, 22);
    if (!f)
        return -1;
    *start = strtoull(f, NULL, 10);
    return 1;
}

/* PIDFD_GET_INFO (Linux 6.15): after a process is reaped, whoever holds a
 * pidfd of it can still read its wait status. Declared here: older headers
 * lack it; older kernels answer ENOTTY or leave the bit out of the mask. */
struct pidfd_exit_info {
    uint64_t mask, cgroupid;
    uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
    int32_t exit_code;
};
#define PIDFD_INFO_EXIT_BIT (1ull << 3)
#define PIDFD_GET_INFO_CMD _IOWR(0xFF, 11, struct pidfd_exit_info)

static int code_from_status(int status)
{
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

static bool exit_info(int pidfd, int *code)
{
    struct pidfd_exit_info info = { .mask = PIDFD_INFO_EXIT_BIT };
    if (ioctl(pidfd, PIDFD_GET_INFO_CMD, &info) != 0 || !(info.mask & PIDFD_INFO_EXIT_BIT))
        return false;
    *code = code_from_status(info.exit_code);
    return true;
}

/* A zombie nobody has reaped shows its wait status in field 52 of its
 * stat; the pidfd still taking signal 0 afterwards proves the pid was
 * still ours when read (a pid is not reused before its zombie is reaped). */
static bool zombie_status(int pidfd, pid_t pid, int *code)
{
    char buf[1024];
    bool gone;
    const char *f = stat_fields(pid, buf, sizeof buf, &gone);
    if (!f || f[0] != 'Z' || !group_ended(f))
        return false;
    f = stat_field(f, 52);
    if (!f || syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) != 0)
        return false;
    *code = code_from_status((int)strtol(f, NULL, 10));
    return true;
}

int proc_exit_code(int pidfd, pid_t pid, int *code)
{
    if (pidfd < 0 || !proc_have_pidfd())
        return 0;
    /* Reaped, a zombie, or reaped between the two looks. */
    return exit_info(pidfd, code) || zombie_status(pidfd, pid, code) || exit_info(pidfd, code);
}

int proc_exit_pipe(int fds[2])
{
    fds[0] = fds[1] = -1;
    if (proc_have_pidfd()) {
        /* No pipe: a slot for the pidfd, taken before the fork, so that the
         * descriptor limit fails the start (EMFILE), not the watch of a
         * child already running. */
        fds[0] = eventfd(0, EFD_CLOEXEC);
        return fds[0] >= 0 ? 0 : -errno;
    }
    return pipe2(fds, O_CLOEXEC) == 0 ? 0 : -errno;
}

int proc_poll_fd(int fd, const mp_deadline *d)
{
    for (;;) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        int rc = poll(&pfd, 1, deadline_poll_ms(d));
        if (rc > 0)
            return 1;
        if (rc == 0) {
            if (deadline_passed(d))
                return 0;
            continue;            /* poll rounds down: go again for the rest */
        }
        if (errno != EINTR)
            return -errno;
    }
}

int proc_set_pdeathsig(int sig)
{
    return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0 ? 0 : -errno;
}

void proc_set_name(const char *name)
{
    prctl(PR_SET_NAME, name, 0, 0, 0);    /* truncated to 15 bytes by the kernel */
}

int proc_fd_inherit(int fd, bool inherit)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0)
        return -errno;
    flags = inherit ? flags & ~FD_CLOEXEC : flags | FD_CLOEXEC;
    return fcntl(fd, F_SETFD, flags) == 0 ? 0 : -errno;
}

int proc_read_file(const char *path, char **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    mp_buf b = { 0 };
    char chunk[4096];
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        if ((rc = mp_buf_append(&b, chunk, (size_t)n)) != 0)
            break;
    }
    close(fd);
    if (rc == 0)
        rc = mp_buf_append(&b, "", 1);       /* keep a terminating NUL */
    if (rc != 0) {
        mp_buf_free(&b);
        return rc;
    }
    *data = b.data;
    *len = b.len - 1;
    return 0;
}

/* Room for as many descriptors as one message may carry (SCM_MAX_FD). */
union fd_ctl { char buf[CMSG_SPACE(PROC_FDS_MAX * sizeof(int))]; struct cmsghdr align; };

int proc_send_fds(int sock, const void *data, size_t len, const int *fds, size_t nfds)
{
    struct iovec iov = { (void *)data, len };
    union fd_ctl ctl;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (nfds > PROC_FDS_MAX)
        return MP_EINVAL;
    if (nfds > 0) {
        memset(&ctl, 0, sizeof ctl);
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n == (ssize_t)len)
            return 0;
        if (n >= 0)
            return MP_EPROTO;    /* a seqpacket socket sends whole records */
        if (errno != EINTR)
            return -errno;
    }
}

int proc_send_fd(int sock, const void *data, size_t len, int fd)
{
    return proc_send_fds(sock, data, len, &fd, fd >= 0 ? 1 : 0);
}

/* all_or_none: a set the kernel truncated (EMFILE) is closed and refused. */
static ssize_t recv_fds(int sock, void *data, size_t len, int *fds, size_t cap, size_t *nfds,
                        bool all_or_none)
{
    struct iovec iov = { data, len };
    union fd_ctl ctl;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                          .msg_controllen = CMSG_SPACE((cap < PROC_FDS_MAX ? cap : PROC_FDS_MAX) *
                                                       sizeof(int)) };
    *nfds = 0;
    ssize_t n;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t got = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *at = CMSG_DATA(c);
        for (size_t i = 0; i < got; i++) {
            int fd;
            memcpy(&fd, at + i * sizeof fd, sizeof fd);
            if (*nfds < cap)
                fds[(*nfds)++] = fd;
            else
                close(fd);       /* more than asked for: never leak them */
        }
    }
    if (all_or_none && (msg.msg_flags & MSG_CTRUNC)) {
        for (size_t i = 0; i < *nfds; i++)
            close(fds[i]);
        *nfds = 0;
        return -EMFILE;
    }
    return n;
}

ssize_t proc_recv_fds(int sock, void *data, size_t len, int *fds, size_t cap, size_t *nfds)
{
    return recv_fds(sock, data, len, fds, cap, nfds, true);
}

/* A lost descriptor is -1 here, the record still arrives: the caller
 * knows what it asked for (a started child must not be disowned). */
ssize_t proc_recv_fd(int sock, void *data, size_t len, int *fd)
{
    size_t got;
    *fd = -1;
    return recv_fds(sock, data, len, fd, 1, &got, false);
}

/* First lift every received descriptor above all the wanted numbers, so
 * none sits where another must go, then drop each at its number. */
int proc_place_fds(const int *received, const int *numbers, size_t n)
{
    int lifted[PROC_FDS_MAX], top = 0, rc = 0;
    if (n > PROC_FDS_MAX)
        return MP_EINVAL;
    for (size_t i = 0; i < n; i++)
        top = numbers[i] >= top ? numbers[i] + 1 : top;
    for (size_t i = 0; i < n; i++) {
        lifted[i] = fcntl(received[i], F_DUPFD_CLOEXEC, top);
        if (lifted[i] < 0 && rc == 0)
            rc = -errno;
        close(received[i]);
    }
    for (size_t i = 0; i < n; i++) {
        if (lifted[i] < 0)
            continue;
        if (dup3(lifted[i], numbers[i], O_CLOEXEC) < 0 && rc == 0)
            rc = -errno;
        close(lifted[i]);
    }
    return rc;
}
