/* wire.c - sockets and CPython frames for the manager, on conn's handshake.
 *
 * conn_recv_frame reads a header, then a body, and sleeps in poll; the
 * manager's hot path needs better: one input buffer per socket that recv
 * fills with whatever has arrived (a frame is a pointer into it, so a
 * request costs one recv and one send) and a short spin before sleeping,
 * or, for a reader that must not spin, a poll before the recv.
 * Lengths are checked against the caller's limit before the
 * buffer grows for a frame, so a hostile header cannot make us allocate.
 */
#include "manager/wire.h"

#include "conn_internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>


void wire_init(struct wire *w, int fd, uint32_t spin_ns)
{
    memset(w, 0, sizeof *w);
    w->fd = fd;
    w->spin_ns = spin_ns;
}

void wire_close(struct wire *w)
{
    if (w->fd >= 0)
        close(w->fd);
    free(w->in);
    memset(w, 0, sizeof *w);
    w->fd = -1;
}

/* Waits until fd is ready for events or the deadline (NULL: none) passes. */
static int wire_poll(int fd, short events, const mp_deadline *d)
{
    int ms = -1;
    if (d && !d->forever) {
        if (deadline_left(d) <= 0)
            return MP_ETIMEDOUT;
        ms = deadline_poll_ms(d);        /* capped: a caller polls again for the rest */
    }
    struct pollfd pfd = { .fd = fd, .events = events };
    int r = poll(&pfd, 1, ms);
    if (r < 0 && errno != EINTR)
        return MP_EBROKEN;
    return 0;
}

/* fd_write_full would fstat the descriptor on every frame to tell a pipe
 * from a socket; this is always a socket, and this is the hot path. The
 * send does not block: a peer that stops reading (or a network that went
 * dark) costs at most the deadline. */
int wire_send(struct wire *w, const void *data, size_t len, const mp_deadline *d)
{
    uint8_t head[FRAME_HEADER_MAX];
    struct iovec iov[2] = { { head, frame_header_encode(len, head) }, { (void *)data, len } };
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };
    while (msg.msg_iovlen > 0) {
        ssize_t n = sendmsg(w->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wire_poll(w->fd, POLLOUT, d);
            if (rc < 0)
                return rc;
            continue;
        }
        if (n < 0)
            return MP_EBROKEN;
        while (msg.msg_iovlen > 0 && (size_t)n >= msg.msg_iov->iov_len) {
            n -= (ssize_t)msg.msg_iov->iov_len;
            msg.msg_iov++;
            msg.msg_iovlen--;
        }
        if (msg.msg_iovlen > 0) {
            msg.msg_iov->iov_base = (uint8_t *)msg.msg_iov->iov_base + n;
            msg.msg_iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

void wire_trim(struct wire *w)
{
    if (w->len == 0 && w->cap > WIRE_KEEP_BYTES) {
        free(w->in);
        w->in = NULL;
        w->start = w->cap = 0;
    }
}

void wire_buf_trim(mp_buf *b)
{
    if (b->cap > WIRE_KEEP_BYTES)
        mp_buf_free(b);
}

/* Makes room for `need` live bytes plus some read-ahead. */
static int wire_reserve(struct wire *w, size_t need)
{
    if (w->start > 0 && (w->len == 0 || w->start + need > w->cap)) {
        memmove(w->in, w->in + w->start, w->len);
        w->start = 0;
    }
    if (need <= w->cap)
        return 0;
    size_t cap = w->cap ? w->cap : 4096;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(w->in, cap);
    if (!p)
        return MP_ENOMEM;
    w->in = p;
    w->cap = cap;
    return 0;
}

/* Length of the frame at the head of the buffer: 1 known, 0 need more, <0 error. */
static int wire_header(struct wire *w, size_t maxlen, size_t *hdr, size_t *body)
{
    if (w->len < 4)
        return 0;
    const uint8_t *p = w->in + w->start;
    int32_t n = (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
    if (n >= 0) {
        *hdr = 4;
        *body = (size_t)n;
    } else if (n == -1) {
        if (w->len < 12)
            return 0;
        uint64_t big = 0;
        for (int i = 4; i < 12; i++)
            big = big << 8 | p[i];
        *hdr = 12;
        *body = big > SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)big;
    } else {
        return MP_EPROTO;
    }
    return *body > maxlen ? MP_ETOOBIG : 1;
}

/* Waits for the socket to become readable: spins first, then poll. A spin
 * is a recv that finds nothing (a system call), so yielding after each one
 * would double the time to notice a frame: every eighth is enough for a
 * peer that shares this CPU. */
static int wire_wait(struct wire *w, uint64_t spin_until, const mp_deadline *d)
{
    if (now_ns() < spin_until) {
        if ((++w->looks & 7) == 0)
            sched_yield();       /* on a busy machine the peer may need this CPU */
        return 0;
    }
    return wire_poll(w->fd, POLLIN, d);
}

void wire_drop_frame(struct wire *w)
{
    size_t hdr = 0, body = 0;
    if (wire_header(w, SIZE_MAX, &hdr, &body) == 1)
        w->skip = (uint64_t)hdr + body;
}

/* Drops what is buffered of the frame given up on: true once it is all gone. */
static bool skip_buffered(struct wire *w)
{
    size_t n = w->skip < w->len ? (size_t)w->skip : w->len;
    w->start += n;
    w->len -= n;
    w->skip -= n;
    if (w->len == 0)
        w->start = 0;
    return w->skip == 0;
}

int wire_recv(struct wire *w, const uint8_t **data, size_t *len, size_t maxlen,
              const mp_deadline *d)
{
    uint64_t spin_until = now_ns() + w->spin_ns;
    wire_trim(w);                   /* the last frame was consumed: it may have been big */
    /* Neither a spin nor a deadline, and nothing buffered: the peer has
     * not sent yet, so sleep in poll first rather than try a recv that
     * finds nothing (poll and recv instead of recv, poll and recv). Not a
     * blocking recv: a unix socket wakes it whenever the peer reads what
     * we sent, a wake-up for nothing on every round trip. */
    if (w->spin_ns == 0 && (!d || d->forever) && w->len == 0) {
        int rc = wire_poll(w->fd, POLLIN, NULL);
        if (rc < 0)
            return rc;
    }
    for (;;) {
        size_t hdr = 0, body = 0;
        int rc = w->skip && !skip_buffered(w) ? 0 : wire_header(w, maxlen, &hdr, &body);
        if (rc < 0)
            return rc;
        if (rc == 1 && w->len >= hdr + body) {
            *data = w->in + w->start + hdr;
            *len = body;
            w->start += hdr + body;
            w->len -= hdr + body;
            return 0;
        }
        /* Grow with what has arrived, not with what the header claims: a
         * peer announcing 16 MiB and sending nothing costs us nothing. */
        size_t want = rc == 1 ? hdr + body : 12;
        size_t grown = w->len * 2 + 65536;
        if (wire_reserve(w, want < grown ? want : grown) < 0)
            return MP_ENOMEM;
        ssize_t n = recv(w->fd, w->in + w->start + w->len, w->cap - w->start - w->len, MSG_DONTWAIT);
        if (n > 0) {
            w->len += (size_t)n;
            continue;
        }
        if (n == 0)
            return w->len == 0 ? MP_EEOF : MP_EBROKEN;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return MP_EBROKEN;
        if (rc == 1 && !w->not_tcp)          /* a header alone: its sender waits for our ACK */
            w->not_tcp = !sock_ack_now(w->fd);
        if ((rc = wire_wait(w, spin_until, d)) < 0)
            return rc;
    }
}

/* ------------------------------------------------------------------ addresses */

/* The listener's parsing and socket setup, with the manager's length cap. */
static int wire_parse(const char *address, bool passive, struct sockaddress *a)
{
    if (!address || strlen(address) >= WIRE_MAX_ADDRESS)
        return MP_EINVAL;
    return sock_parse_address(address, passive, a);
}

int wire_listen(const char *address, int *fd, char *actual, size_t cap)
{
    struct sockaddress a;
    int rc = wire_parse(address, true, &a);
    if (rc < 0)
        return rc;
    int s = sock_listen_on(&a);
    if (s < 0)
        return s;
    sock_format_address(s, address, actual, cap);
    *fd = s;
    return 0;
}

int wire_resolve(const char *address, struct sockaddress *a)
{
    return wire_parse(address, false, a);
}

int wire_connect_to(const struct sockaddress *a, int *fd, const mp_deadline *d)
{
    int s = sock_connect_by(a, d);
    if (s < 0)
        return s;
    wire_keepalive(s);
    *fd = s;
    return 0;
}

int wire_connect(const char *address, int *fd, const mp_deadline *d)
{
    struct sockaddress a;
    int rc = wire_resolve(address, &a);
    return rc < 0 ? rc : wire_connect_to(&a, fd, d);
}

void wire_keepalive(int fd)
{
    if (!sock_is_tcp(fd))
        return;
    int on = 1, idle = WIRE_KEEPIDLE_S, intvl = WIRE_KEEPINTVL_S, cnt = WIRE_KEEPCNT;
    unsigned user = WIRE_USER_TIMEOUT_S * 1000u;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user, sizeof user);
}

/* ------------------------------------------------------------------ handshake */

/* conn's handshake reads exact frames from the descriptor, so nothing is
 * buffered ahead of the first request: the wire buffer starts empty. */
int wire_auth_server(struct wire *w, const void *key, size_t keylen, const mp_deadline *d)
{
    int rc = auth_deliver_challenge(w->fd, key, keylen, AUTH_DEFAULT_DIGEST, d);
    return rc < 0 ? rc : auth_answer_challenge(w->fd, key, keylen, d);
}

int wire_auth_client(struct wire *w, const void *key, size_t keylen, const mp_deadline *d)
{
    int rc = auth_answer_challenge(w->fd, key, keylen, d);
    return rc < 0 ? rc : auth_deliver_challenge(w->fd, key, keylen, AUTH_DEFAULT_DIGEST, d);
}
