/* wire.c - sockets and CPython frames for the manager, on conn's handshake.
 *
 * conn_recv_frame reads a header, then a body, and sleeps in poll; the
 * manager's hot path needs better: one input buffer per socket that recv
 * fills with whatever has arrived (a frame is a pointer into it, so a
 * request costs one recv and one send) and a short spin before sleeping. Lengths are checked against the caller's limit before the
 * buffer grows for a frame, so a hostile header cannot make us allocate.
 */
#include "manager/wire.h"

#include "conn_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
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

/* fd_write_full would fstat the descriptor on every frame to tell a pipe
 * from a socket; this is always a socket, and this is the hot path. */
int wire_send(struct wire *w, const void *data, size_t len)
{
    uint8_t head[FRAME_HEADER_MAX];
    struct iovec iov[2] = { { head, frame_header_encode(len, head) }, { (void *)data, len } };
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };
    while (msg.msg_iovlen > 0) {
        ssize_t n = sendmsg(w->fd, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
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

/* Waits for the socket to become readable: spins first, then poll. */
static int wire_wait(struct wire *w, uint64_t spin_until, const mp_deadline *d)
{
    if (now_ns() < spin_until) {
        sched_yield();       /* on a busy machine the peer may need this CPU */
        return 0;
    }
    int ms = -1;
    if (d && !d->forever) {
        double left = deadline_left(d);
        if (left <= 0)
            return MP_ETIMEDOUT;
        ms = (int)(left * 1000.0) + 1;
    }
    struct pollfd pfd = { .fd = w->fd, .events = POLLIN };
    int r = poll(&pfd, 1, ms);
    if (r < 0 && errno != EINTR)
        return MP_EBROKEN;
    return 0;
}

int wire_recv(struct wire *w, const uint8_t **data, size_t *len, size_t maxlen,
              const mp_deadline *d)
{
    uint64_t spin_until = now_ns() + w->spin_ns;
    for (;;) {
        size_t hdr = 0, body = 0;
        int rc = wire_header(w, maxlen, &hdr, &body);
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
        if ((rc = wire_wait(w, spin_until, d)) < 0)
            return rc;
    }
}

/* ------------------------------------------------------------------ addresses */

struct wire_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    bool tcp;
    bool path;     /* a unix socket with a file name */
};

static int wire_parse_unix(const char *name, struct wire_addr *a)
{
    struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
    size_t n = strlen(name);
    if (n == 0 || n >= sizeof un->sun_path)
        return MP_EINVAL;
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, name, n);
    if (name[0] == '@') {
        un->sun_path[0] = '\0';        /* abstract: nothing on the file system */
        a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        a->path = true;
        a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    return 0;
}

static int wire_parse_tcp(const char *hostport, struct wire_addr *a)
{
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || colon[1] == '\0' || colon - hostport >= 256)
        return MP_EINVAL;
    char host[256];
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return MP_EINVAL;
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0 || !res)
        return MP_EINVAL;
    memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
    a->len = res->ai_addrlen;
    a->tcp = true;
    freeaddrinfo(res);
    return 0;
}

static int wire_parse(const char *address, struct wire_addr *a)
{
    memset(a, 0, sizeof *a);
    if (!address || strlen(address) >= WIRE_MAX_ADDRESS)
        return MP_EINVAL;
    if (strncmp(address, "unix:", 5) == 0)
        return wire_parse_unix(address + 5, a);
    if (strncmp(address, "tcp:", 4) == 0)
        return wire_parse_tcp(address + 4, a);
    return MP_EINVAL;
}

static void wire_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int wire_listen(const char *address, int *fd, char *actual, size_t cap)
{
    struct wire_addr a;
    int rc = wire_parse(address, &a);
    if (rc < 0)
        return rc;
    int s = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return errno_to_mp(errno);
    int one = 1;
    if (a.tcp)
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a.ss, a.len) < 0 || listen(s, 1024) < 0) {
        rc = errno_to_mp(errno);
        close(s);
        return rc;
    }
    snprintf(actual, cap, "%s", address);
    if (a.tcp) {
        struct sockaddr_in sin;
        socklen_t sl = sizeof sin;
        getsockname(s, (struct sockaddr *)&sin, &sl);
        char host[64];
        inet_ntop(AF_INET, &sin.sin_addr, host, sizeof host);
        snprintf(actual, cap, "tcp:%s:%u", host, (unsigned)ntohs(sin.sin_port));
    }
    *fd = s;
    return 0;
}

void wire_unlink(const char *address)
{
    struct wire_addr a;
    if (wire_parse(address, &a) == 0 && a.path)
        unlink(((struct sockaddr_un *)&a.ss)->sun_path);
}

int wire_connect(const char *address, int *fd, const mp_deadline *d)
{
    struct wire_addr a;
    int rc = wire_parse(address, &a);
    if (rc < 0)
        return rc;
    int s = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0)
        return errno_to_mp(errno);
    if (connect(s, (struct sockaddr *)&a.ss, a.len) < 0) {
        if (errno != EINPROGRESS && errno != EAGAIN) {
            rc = errno_to_mp(errno);
            goto fail;
        }
        double left = deadline_left(d);
        struct pollfd pfd = { .fd = s, .events = POLLOUT };
        int r = poll(&pfd, 1, d->forever ? -1 : (int)(left * 1000.0) + 1);
        int err = 0;
        socklen_t el = sizeof err;
        if (r == 0) {
            rc = MP_ETIMEDOUT;
            goto fail;
        }
        if (r < 0 || getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            rc = errno_to_mp(err ? err : errno);
            goto fail;
        }
    }
    fcntl(s, F_SETFL, fcntl(s, F_GETFL) & ~O_NONBLOCK);
    if (a.tcp)
        wire_nodelay(s);
    *fd = s;
    return 0;
fail:
    close(s);
    return rc;
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
