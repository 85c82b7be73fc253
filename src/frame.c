/* frame.c - raw descriptor I/O and CPython's frames
 * (multiprocessing.connection): a 4-byte big-endian signed length and the
 * body, or -1 and an 8-byte length for a body over 0x7fffffff.
 *
 * Whole-buffer reads and writes that survive EINTR, partial writes and
 * non-blocking descriptors, never raise SIGPIPE, and read a frame's body
 * only as fast as its bytes arrive, so a peer lying about a length costs
 * little. Used by the conn handles, the authkey handshake, the listener,
 * the manager and the fuzz targets; it knows no handle.
 */
#include "conn_internal.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define RECV_FIRST_CHUNK ((size_t)64 << 10)   /* grow beyond this only as bytes arrive */
#define IO_CHUNK_MAX ((size_t)1 << 30)        /* Linux moves at most ~2 GiB per call */

/* ------------------------------------------------------------------ raw I/O */

/* The time left before d as a relative timespec for ppoll; NULL = forever. */
static struct timespec *deadline_timespec(const mp_deadline *d, struct timespec *ts)
{
    if (!d || d->forever)
        return NULL;
    double left = deadline_left(d);
    ts->tv_sec = (time_t)left;
    ts->tv_nsec = (long)((left - (double)ts->tv_sec) * 1e9);
    return ts;
}

/* ppoll until something is ready or d passes: the count, 0, or -errno. */
int fd_poll_all(struct pollfd *p, size_t n, const mp_deadline *d)
{
    for (;;) {
        struct timespec ts;
        int r = ppoll(p, (nfds_t)n, deadline_timespec(d, &ts), NULL);
        if (r >= 0)
            return r;
        if (errno != EINTR)
            return -errno;
        if (d && deadline_passed(d))
            return 0;
    }
}

int fd_poll(int fd, short events, const mp_deadline *d)
{
    return fd_poll_woken(fd, events, -1, d);
}

/* poll() skips an entry whose fd is negative: no wake_fd costs nothing. */
int fd_poll_woken(int fd, short events, int wake_fd, const mp_deadline *d)
{
    struct pollfd p[2] = { { .fd = fd, .events = events }, { .fd = wake_fd, .events = POLLIN } };
    int r = fd_poll_all(p, 2, d);
    if (r > 0 && p[1].revents)
        return MP_ECLOSED;
    return r > 0 && (p[0].revents & POLLNVAL) ? -EBADF : r;
}

int fd_read_full(int fd, void *buf, size_t n, const mp_deadline *d)
{
    return fd_read_woken(fd, buf, n, -1, d);
}

/* Timed, every read waits in poll first. Watched by wake_fd alone, a
 * socket is read without sleeping (MSG_DONTWAIT) and polled only when
 * nothing is there, so bytes already queued cost no poll; anything else
 * is polled first. */
int fd_read_woken(int fd, void *buf, size_t n, int wake_fd, const mp_deadline *d)
{
    bool poll_first = d && !d->forever;
    bool nowait = !poll_first && wake_fd >= 0;
    size_t done = 0;
    while (done < n) {
        if (poll_first) {
            int r = fd_poll_woken(fd, POLLIN, wake_fd, d);
            if (r <= 0)
                return r == 0 ? MP_ETIMEDOUT : r;
        }
        size_t want = n - done < IO_CHUNK_MAX ? n - done : IO_CHUNK_MAX;
        ssize_t got = nowait ? recv(fd, (char *)buf + done, want, MSG_DONTWAIT)
                             : read(fd, (char *)buf + done, want);
        if (got < 0 && errno == ENOTSOCK) {
            nowait = false;
            poll_first = true;
        } else if (got > 0) {
            done += (size_t)got;
        } else if (got == 0) {
            return MP_EEOF;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int r = fd_poll_woken(fd, POLLIN, wake_fd, d);
            if (r <= 0)
                return r == 0 ? MP_ETIMEDOUT : r;
        } else if (errno == ECONNRESET) {
            return MP_EEOF;
        } else if (errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

/* A write to a pipe whose reader is gone raises SIGPIPE. Rather than touch
 * the process's disposition, block it in this thread for the call and, if
 * the write raised it, take it back with sigtimedwait. If the caller had it
 * blocked already, leave it pending as a plain write would. */
static ssize_t pipe_writev(int fd, const struct iovec *iov, int n)
{
    sigset_t pipe_only, old;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
    ssize_t r = writev(fd, iov, n);
    int err = errno;
    if (r < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
        struct timespec zero = { 0, 0 };
        while (sigtimedwait(&pipe_only, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return r;
}

/* flags: MSG_DONTWAIT or 0, for a socket. */
static ssize_t writev_nosignal(int fd, const struct iovec *iov, int n, bool is_socket, int flags)
{
    if (!is_socket)
        return pipe_writev(fd, iov, n);
    struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n };
    ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL | flags);
    if (r < 0 && errno == ENOTSOCK)
        return pipe_writev(fd, iov, n);
    return r;
}

ssize_t fd_writev_nosignal(int fd, const struct iovec *iov, int n, bool is_socket)
{
    return writev_nosignal(fd, iov, n, is_socket, 0);
}

/* With wake_fd, a socket is written without sleeping in sendmsg (whose
 * sleep nothing of ours could end): a full buffer is waited out in poll. */
int fd_write_all(int fd, bool is_socket, int wake_fd, const void *head, size_t head_len,
                 const void *body, size_t body_len)
{
    int flags = wake_fd >= 0 ? MSG_DONTWAIT : 0;
    struct iovec iov[2] = { { (void *)head, head_len }, { (void *)body, body_len } };
    int first = head_len ? 0 : 1;
    while (first < 2) {
        struct iovec chunk[2];
        int n = 0;
        for (int i = first; i < 2; i++) {
            chunk[n] = iov[i];
            if (chunk[n].iov_len > IO_CHUNK_MAX)
                chunk[n].iov_len = IO_CHUNK_MAX;
            n++;
        }
        ssize_t w = writev_nosignal(fd, chunk, n, is_socket, flags);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                int r = fd_poll_woken(fd, POLLOUT, wake_fd, NULL);
                if (r < 0)
                    return r;
                continue;
            }
            return -errno;
        }
        size_t left = (size_t)w;
        while (first < 2 && left >= iov[first].iov_len) {
            left -= iov[first].iov_len;
            first++;
        }
        if (first < 2) {
            iov[first].iov_base = (char *)iov[first].iov_base + left;
            iov[first].iov_len -= left;
        }
    }
    return 0;
}

bool sock_is_tcp(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    return getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
           (ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
}

bool sock_ack_now(int fd)
{
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one) == 0;
}

bool fd_is_socket(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* Tries the socket call first: a pipe answers ENOTSOCK and takes the pipe path. */
int fd_write_full(int fd, const void *head, size_t head_len, const void *body, size_t body_len)
{
    return fd_write_all(fd, true, -1, head, head_len, body, body_len);
}

/* ------------------------------------------------------------------ frames */

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

size_t frame_header_encode(uint64_t len, uint8_t out[FRAME_HEADER_MAX])
{
    if (len <= FRAME_SMALL_MAX) {
        put_be32(out, (uint32_t)len);
        return 4;
    }
    put_be32(out, 0xffffffffu);   /* -1: an 8-byte length follows */
    put_be64(out + 4, len);
    return 12;
}

static int source_read(const struct frame_source *s, void *buf, size_t n)
{
    return s->read ? s->read(s->ctx, buf, n) : fd_read_full(s->fd, buf, n, s->d);
}

/* The first 4 bytes of a header: 0 and the length, 1 when -1 announces a
 * 64-bit length in the next 8 (then frame_header_long), MP_EPROTO for other
 * negatives. */
int frame_header_short(const uint8_t b[4], uint64_t *len)
{
    int32_t small = (int32_t)(uint32_t)get_be(b, 4);
    *len = small >= 0 ? (uint64_t)small : 0;
    return small >= 0 ? 0 : small == -1 ? 1 : MP_EPROTO;
}

/* A length no process can hold is malformed (MP_EPROTO), not MP_ETOOBIG,
 * which leaves a message pending for a bigger buffer. */
int frame_header_long(const uint8_t b[8], uint64_t *len)
{
    *len = get_be(b, 8);
    return *len > (uint64_t)PTRDIFF_MAX ? MP_EPROTO : 0;
}

/* Reads a header. A stream that ends inside it is MP_EEOF. */
int frame_read_header(const struct frame_source *src, uint64_t *len)
{
    uint8_t b[8];
    int rc = source_read(src, b, 4);
    if (rc == 0 && (rc = frame_header_short(b, len)) == 1 && (rc = source_read(src, b, 8)) == 0)
        rc = frame_header_long(b, len);
    return rc;
}

/* Reads a body of len bytes into out, growing it only as bytes arrive. */
int frame_read_body(const struct frame_source *src, mp_buf *out, size_t len, size_t *got)
{
    size_t first = len < RECV_FIRST_CHUNK ? len : RECV_FIRST_CHUNK;
    int rc = mp_buf_reserve(out, first ? first : 1);
    size_t done = 0;
    while (rc == 0 && done < len) {
        if (done == out->cap)
            rc = mp_buf_reserve(out, done > len / 2 ? len : done * 2);
        if (rc != 0)
            break;
        size_t want = (len < out->cap ? len : out->cap) - done;
        rc = source_read(src, (char *)out->data + done, want);
        if (rc == 0)
            done += want;
    }
    if (rc == 0)
        out->len = len;
    *got = done;
    return rc;
}

int conn_send_frame(int fd, const void *data, size_t len)
{
    if (fd < 0 || (!data && len))
        return MP_EINVAL;
    uint8_t head[FRAME_HEADER_MAX];
    size_t n = frame_header_encode(len, head);
    return fd_write_full(fd, head, n, data, len);
}

int conn_recv_frame(int fd, mp_buf *out, size_t maxlen, const mp_deadline *d)
{
    if (fd < 0 || !out)
        return MP_EINVAL;
    struct frame_source src = { NULL, NULL, fd, d };
    uint64_t len;
    int rc = frame_read_header(&src, &len);
    if (rc != 0)
        return rc;
    if (maxlen && len > maxlen)
        return MP_ETOOBIG;
    size_t got;
    return frame_read_body(&src, out, (size_t)len, &got);
}
