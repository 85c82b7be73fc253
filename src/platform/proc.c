/* proc.c - the Linux process calls: pidfds, waitid, prctl, fd passing.
 *
 * A pidfd names one process for good (no pid reuse race): it becomes
 * readable when the process ends, takes signals, and waitid(P_PIDFD) reaps
 * through it. No policy here; process.c decides who reaps what.
 */
#include "process_internal.h"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int proc_pidfd_open(pid_t pid)
{
    long fd = syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0)
        return -errno;
    proc_fd_inherit((int)fd, false);
    return (int)fd;
}

int proc_pidfd_signal(int pidfd, int sig)
{
    if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) != 0)
        return -errno;
    return 0;
}

int proc_wait_pidfd(int pidfd, siginfo_t *si, bool nohang, bool keep)
{
    int flags = WEXITED | (nohang ? WNOHANG : 0) | (keep ? WNOWAIT : 0);
    for (;;) {
        memset(si, 0, sizeof *si);
        if (waitid(P_PIDFD, (id_t)pidfd, si, flags) == 0)
            return si->si_pid != 0;
        if (errno != EINTR)
            return -errno;
    }
}

int proc_poll_fd(int fd, const mp_deadline *d)
{
    for (;;) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        double left = deadline_left(d);
        int ms = d->forever ? -1 : (int)(left * 1000.0 + 0.999);
        int rc = poll(&pfd, 1, ms);
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

int proc_send_fd(int sock, const void *data, size_t len, int fd)
{
    struct iovec iov = { (void *)data, len };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fd >= 0) {
        memset(&ctl, 0, sizeof ctl);
        msg.msg_control = ctl.buf;
        msg.msg_controllen = sizeof ctl.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
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

ssize_t proc_recv_fd(int sock, void *data, size_t len, int *fd)
{
    struct iovec iov = { data, len };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
    *fd = -1;
    ssize_t n;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            memcpy(fd, CMSG_DATA(c), sizeof *fd);
    return n;
}
