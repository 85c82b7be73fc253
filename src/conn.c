/* conn.c - the mp_conn handle: connections and pipes that carry CPython's
 * frames (multiprocessing.connection), descriptor passing, and mp_wait.
 *
 * An mp_conn lives in the arena and names its descriptor by number, so a
 * child started afterwards (fork, or spawn, which keeps the registered
 * descriptors open across exec: fdreg.c) uses the same handle. Sends and
 * receives each take a robust lock so frames never interleave. On a socket
 * or pipe the frames go through the descriptor (frame.c), with a read-ahead
 * buffer in the handle; the two ends of mp_pipe carry them through byte
 * rings in the arena instead (pipe_ring.c), the descriptor carrying only
 * doorbells and EOF (docs/pipes.md). Unix-socket conns also carry
 * descriptors (Python's send_handle: one byte with SCM_RIGHTS); a
 * read-ahead that takes such a byte keeps its descriptors aside in this
 * process until mp_conn_recv_fd.
 */
#include "conn_handle.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define READ_SPIN_NS 20000                    /* spin this long before a read sleeps */
#define SKIP_CHUNK 4096                       /* a dropped frame's rest goes in reads this big */

static const mp_deadline forever = { { 0, 0 }, true };

/* ------------------------------------------------------------------ handles */

static int conn_check(mp_conn *c)
{
    return c && c->h.magic == MAGIC_CONN ? 0 : MP_EINVAL;
}

/* The MP_EINVAL for a conn argument that is not a live conn. */
static int fail_conn(const char *fn, const mp_conn *c)
{
    return mp_fail_handle(fn, "conn", c);
}

/* The MP_EINVAL for a call on the wrong end of a one-way pipe (or a conn
 * made for one direction only). */
static int fail_direction(const char *fn, bool wants_read)
{
    return mp_fail(MP_EINVAL, fn, "this conn cannot %s: with mp_pipe(&a, &b, false) a receives "
                   "and b sends; pass duplex true for both ways", wants_read ? "receive" : "send");
}

/* An I/O result of fn on c, with the message for an error: what the
 * common ones mean for a conn. */
static int fail_io(int rc, const char *fn, const mp_conn *c)
{
    if (rc >= 0)
        return rc;
    if (rc == MP_EEOF)
        return mp_fail(rc, fn, "the other end closed (fd %d): no more messages", c->h.fd);
    if (rc == -EPIPE || rc == -ECONNRESET)
        return mp_fail(rc, fn, "the other end is closed (fd %d): nobody reads this conn", c->h.fd);
    if (rc == MP_ECLOSED && call_closed())
        return mp_fail(rc, fn, "the conn was closed by mp_conn_close during the call");
    if (rc == MP_ECLOSED)
        return mp_fail(rc, fn, "fd %d of this conn was closed under it (close() on "
                       "mp_conn_fileno?); use mp_conn_close", c->h.fd);
    if (rc == MP_EPROTO || rc == MP_ETOOBIG)
        return mp_fail(rc, fn, "the peer sent a malformed frame header (fd %d): it does not "
                       "speak multiprocessing.connection's framing; close the conn", c->h.fd);
    return mp_fail_code(rc, fn);
}

/* The failure of call_enter: c was closed in this process (or its
 * descriptor number is another conn's now); not touched. */
static int fail_enter(int rc, const char *fn)
{
    if (rc == MP_ECLOSED)
        return mp_fail(rc, fn, "this conn was closed in this process (mp_conn_close, or "
                       "close() on its fileno); a process that still holds it may go on");
    return mp_fail(rc, fn, "no memory for this process's record of the conn");
}

/* Lengths from MEM_CHECK_MIN bytes on are checked against the process's
 * mappings before a copy would fault on them (mem_range_check). */
static int check_send_range(const char *fn, const void *data, size_t len)
{
    return mem_range_check(fn, "data", data, len);
}

/* No process holds c any more (its last hold went): it is ours alone, in
 * hand until freed, so a kill while a pipe's rings are freed here leaves c
 * to our reaper too. */
static void conn_destroy(mp_conn *c)
{
    void *_Atomic *held = hand_hold(c);
    c->h.magic = MAGIC_FREED;
    if (c->shm)
        pipe_shm_leave(c->shm, c->side);
    rmutex_destroy(&c->send_lock);
    rmutex_destroy(&c->recv_lock);
    hand_free(held, c);
}

void conn_destroy_unheld(struct fdhandle *h)
{
    conn_destroy((mp_conn *)h);
}

static void early_drop(const mp_conn *c);

void conn_release(mp_conn *c)
{
    early_drop(c);
    if (fdhandle_release(&c->h))
        conn_destroy(c);
}

int conn_from_fd(mp_conn **out, int fd, bool readable, bool writable)
{
    return conn_from_fd_until(out, fd, readable, writable, NULL);
}

int conn_from_fd_until(mp_conn **out, int fd, bool readable, bool writable, const mp_deadline *d)
{
    if (!out || fd < 0)
        return MP_EINVAL;
    errno = 0;
    mp_conn *c = arena_alloc_until(sizeof *c, d);
    if (!c)
        return errno == ETIMEDOUT ? MP_ETIMEDOUT : MP_ENOMEM;
    c->h.fd = fd;
    atomic_init(&c->h.refs, 1);
    atomic_init(&c->h.immortal, 0);
    c->readable = readable;
    c->writable = writable;
    c->is_socket = fd_is_socket(fd);
    c->is_tcp = c->is_socket && sock_is_tcp(fd);
    int rc = rmutex_init(&c->send_lock);
    if (rc == 0 && (rc = rmutex_init(&c->recv_lock)) != 0)
        rmutex_destroy(&c->send_lock);
    if (rc != 0) {
        arena_free(c);
        return rc;
    }
    c->h.magic = MAGIC_CONN;
    if ((rc = fdhandle_register_until(&c->h, d)) != 0) {
        conn_destroy(c);
        return rc;
    }
    calls_claim(c, fd);
    *out = c;
    return 0;
}

static int conn_pair(mp_conn **a, mp_conn **b, int fds[2], bool duplex)
{
    int rc = conn_from_fd(a, fds[0], true, duplex);
    if (rc != 0) {
        close(fds[0]);
        close(fds[1]);
        return rc;
    }
    rc = conn_from_fd(b, fds[1], duplex, true);
    if (rc != 0) {
        close(fds[1]);
        mp_conn_close(*a);
        *a = NULL;
    }
    return rc;
}

/* The descriptors are non-blocking: only doorbells and EOF cross them. */
int mp_pipe(mp_conn **a, mp_conn **b, bool duplex)
{
    if (!a || !b)
        return mp_fail(MP_EINVAL, __func__, "%s (where an end goes) is NULL", !a ? "a" : "b");
    void *_Atomic *held[PIPE_HELD];
    struct pipe_shm *s = pipe_shm_new(duplex, held);
    if (!s)
        return mp_fail(MP_ENOMEM, __func__, "the shared arena has no room for the pipe's "
                       "buffers (%zu KiB each way)", PIPE_RING_SIZE >> 10);
    int fds[2];
    int r = duplex ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds)
                   : pipe2(fds, O_CLOEXEC | O_NONBLOCK);
    int rc = r == 0 ? conn_pair(a, b, fds, duplex) : errno_to_mp(errno);
    if (rc != 0) {
        pipe_shm_discard(s, held);
        return mp_fail_code(rc, __func__);
    }
    pipe_shm_hand_over(held);       /* a kill from here to the attach leaks the rings */
    pipe_attach(*a, s, 0);
    pipe_attach(*b, s, 1);
    return 0;
}

/* Inside a call: one frame, under the send lock. */
static int send_frame(mp_conn *c, const void *data, size_t len)
{
    uint8_t head[FRAME_HEADER_MAX];
    size_t n = frame_header_encode(len, head);
    int rc = call_lock(&c->send_lock, &forever);
    if (rc != 0 && rc != MP_EOWNERDEAD)
        return rc;
    if (rc == MP_EOWNERDEAD && c->out)
        pipe_take_over(c);
    rc = c->out ? pipe_send(c, head, n, data, len)
                : fd_write_all(c->h.fd, c->is_socket, call_wake_fd(), head, n, data, len);
    rmutex_unlock(&c->send_lock);
    return rc;
}

int mp_conn_send_bytes(mp_conn *c, const void *data, size_t len)
{
    if (conn_check(c) != 0)
        return fail_conn(__func__, c);
    if (!data && len)
        return mp_fail(MP_EINVAL, __func__, "data is NULL but len is %zu", len);
    if (!c->writable)
        return fail_direction(__func__, false);
    int rc = check_send_range(__func__, data, len);
    if (rc != 0)
        return rc;
    if ((rc = call_enter(c)) != 0)
        return fail_enter(rc, __func__);
    rc = send_frame(c, data, len);
    rc = fail_io(rc == -EBADF ? MP_ECLOSED : rc, __func__, c);
    call_leave();
    return rc;
}

static ssize_t sock_read_ahead(mp_conn *c, uint8_t *buf, size_t cap, int flags);

/* One read. On a socket with nothing queued yet, spin a few microseconds
 * on non-blocking reads before sleeping: a sleeping reader makes every
 * send pay for a wake-up, and that dominates small messages. The sleep is
 * in poll, which a close in this process ends (-1, errno ECANCELED), never
 * in the read. */
static ssize_t read_spin(mp_conn *c, uint8_t *buf, size_t cap)
{
    if (c->is_socket) {
        uint64_t end = now_ns() + READ_SPIN_NS;
        for (unsigned i = 0;; i++) {
            ssize_t r = sock_read_ahead(c, buf, cap, MSG_DONTWAIT);
            if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
                return r;
            if (now_ns() >= end)
                break;
            if (i & 1)
                sched_yield();         /* the peer may need this very CPU */
            else
                cpu_relax();
        }
        if (c->is_tcp)
            sock_ack_now(c->h.fd);     /* a frame's body may wait for it */
    }
    int r = call_poll(c->h.fd, POLLIN, NULL);
    if (r < 0) {
        errno = r == MP_ECLOSED ? ECANCELED : -r;
        return -1;
    }
    return c->is_socket ? sock_read_ahead(c, buf, cap, MSG_DONTWAIT) : read(c->h.fd, buf, cap);
}

/* Under recv_lock: n bytes of the stream, buffered ones first (the rest of
 * a frame given up on). Never more: as Python's, a receive reads exactly
 * its frame, so what follows stays in the descriptor for whoever reads it
 * next, through this handle or through another made on the descriptor
 * (Python's send_handle pattern: read a request, hand the socket on). A
 * short remainder goes through the buffer, spinning briefly before it
 * sleeps (read_spin); a long one is read straight into dst. */
static int conn_read(mp_conn *c, void *dst, size_t n)
{
    ASSERT_RHELD(&c->recv_lock);
    if (c->in)
        return pipe_read(c, dst, n);
    uint32_t have = atomic_load(&c->ahead_len);
    size_t take = n < have ? n : have;
    if (n == 0)
        return 0;
    memcpy(dst, c->ahead + c->ahead_pos, take);
    c->ahead_pos += (uint32_t)take;
    atomic_store(&c->ahead_len, have - (uint32_t)take);
    dst = (char *)dst + take;
    n -= take;
    if (n == 0)
        return 0;
    if (n > READ_AHEAD / 2 || atomic_load(&c->h.immortal)) {
        if (c->is_tcp)
            sock_ack_now(c->h.fd);
        return fd_read_woken(c->h.fd, dst, n, call_wake_fd(), NULL);
    }
    early_drop(c);                      /* what was read ahead before is gone, */
    c->ahead_fills++;                   /* and so are descriptors kept for it */
    size_t got = 0;
    while (got < n) {
        ssize_t r = read_spin(c, c->ahead + got, n - got);
        if (r > 0)
            got += (size_t)r;
        else if (r == 0 || errno == ECONNRESET)
            return MP_EEOF;
        else if (errno == ECANCELED || errno == EBADF)
            return MP_ECLOSED;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -errno;
    }
    memcpy(dst, c->ahead, n);
    c->ahead_pos = (uint32_t)n;
    atomic_store(&c->ahead_len, (uint32_t)(got - n));
    return 0;
}

/* conn_read for frame_read_header and frame_read_body. */
static int conn_read_cb(void *c, void *dst, size_t n)
{
    return conn_read(c, dst, n);
}

/* ------------------------------------------------------------------ dropped frames */

/* Under recv_lock, a descriptor conn: the next n bytes of the stream are
 * the rest of a frame given up on. What of them is read ahead goes now;
 * the rest (skip_len) goes by the next call that reads (skip_rest), not in
 * this one: it may not have arrived, and the failing call should not wait
 * for it. */
static void skip_start(mp_conn *c, uint64_t n)
{
    uint32_t have = atomic_load(&c->ahead_len);
    uint32_t take = n < have ? (uint32_t)n : have;
    c->ahead_pos += take;
    atomic_store(&c->ahead_len, have - take);
    atomic_store(&c->skip_len, n - take);
}

/* Under recv_lock: drops what skip_start left on the descriptor, read
 * straight from it (the read-ahead is empty meanwhile), waiting for its
 * bytes until d. 0 once all are gone, MP_ETIMEDOUT, or the stream's error.
 * skip_len counts down as bytes go, so a call that gives up leaves the
 * rest to the next. Never reads past the frame: a byte with descriptors
 * after it stays for mp_conn_recv_fd. */
static int skip_rest(mp_conn *c, const mp_deadline *d)
{
    uint8_t scratch[SKIP_CHUNK];
    uint64_t left;
    while ((left = atomic_load(&c->skip_len)) > 0) {
        int r = call_poll(c->h.fd, POLLIN, d);
        if (r <= 0)
            return r == 0 ? MP_ETIMEDOUT : r == -EBADF ? MP_ECLOSED : r;
        ssize_t got = read(c->h.fd, scratch, left < SKIP_CHUNK ? (size_t)left : SKIP_CHUNK);
        if (got > 0)
            atomic_store(&c->skip_len, left - (uint64_t)got);
        else if (got == 0 || errno == ECONNRESET)
            return MP_EEOF;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return errno == EBADF ? MP_ECLOSED : -errno;
    }
    return 0;
}

/* skip_rest for mp_conn_poll and mp_wait, which hold no lock: takes
 * recv_lock until d. If another receiver keeps it that long, that one
 * drops the rest: 0, and the caller's answer is only a hint, as ever. */
static int skip_unlocked(mp_conn *c, const mp_deadline *d)
{
    int rc = call_lock(&c->recv_lock, d);
    if (rc == MP_ETIMEDOUT)
        return 0;
    if (rc != 0 && rc != MP_EOWNERDEAD)
        return rc;
    rc = skip_rest(c, d);
    rmutex_unlock(&c->recv_lock);
    return rc;
}

/* After poll() said a descriptor conn with a dropped frame's rest due is
 * readable: ready only if more than that rest is there (or EOF, or an
 * error for the receive to report). */
static bool ready_past_skip(mp_conn *c)
{
    mp_deadline now = deadline_in(0);
    int rc = skip_unlocked(c, &now);
    if (rc != 0)
        return rc != MP_ETIMEDOUT;
    return atomic_load(&c->ahead_len) > 0 || fd_poll(c->h.fd, POLLIN, &now) != 0;
}

static bool is_reading_conn(const struct fdhandle *h, int fd)
{
    return h->fd == fd && h->magic == MAGIC_CONN && ((const mp_conn *)h)->readable;
}

/* The readable conn of this process on fd, or NULL: one it registered, or
 * one that reached it across an exec or from the fork server. */
static mp_conn *conn_of_fd(int fd)
{
    return (mp_conn *)fdhandle_find(fd, is_reading_conn);
}

/* Before mp_wait sleeps: true when fd is a conn of this process with a
 * message already here (read-ahead or ring). A ring end that has none
 * raises its reader flag first, so a send while we sleep rings the fd,
 * and sets *ring. */
static bool fd_has_buffered(int fd, bool *ring)
{
    mp_conn *c = conn_of_fd(fd);
    if (!c)
        return false;
    if (!c->in)
        return atomic_load(&c->ahead_len) > 0;
    *ring = true;
    return pipe_wait_prepare(c);
}

/* After poll() said fd is readable: a ring end is ready only with data or
 * at EOF, not for a stale doorbell (which this drains); a descriptor conn
 * not for the rest of a dropped frame alone. */
static bool fd_really_ready(int fd)
{
    mp_conn *c = conn_of_fd(fd);
    if (!c)
        return true;
    if (c->in)
        return pipe_ready_after_poll(c);
    return atomic_load(&c->skip_len) == 0 || ready_past_skip(c);
}
/* Takes recv_lock and learns the length of the next message, reading its
 * header unless an earlier call left it pending. On success the lock is
 * held; the caller ends with recv_end. */
static int recv_begin(mp_conn *c, uint64_t *len)
{
    int rc = call_lock(&c->recv_lock, &forever);
    if (rc != 0 && rc != MP_EOWNERDEAD)
        return rc;
    if (rc == MP_EOWNERDEAD && c->in)
        pipe_repair(c);
    rc = 0;
    if (!c->has_pending && c->in) {
        rc = pipe_begin_frame(c);
    } else if (!c->has_pending && (rc = skip_rest(c, &forever)) == 0) {
        struct frame_source src = { conn_read_cb, c, c->h.fd, NULL };
        rc = frame_read_header(&src, &c->pending_len);
        c->has_pending = rc == 0;
    }
    *len = c->pending_len;
    if (rc != 0)
        rmutex_unlock(&c->recv_lock);
    return rc == -EBADF ? MP_ECLOSED : rc;
}

static int recv_end(mp_conn *c, int rc)
{
    rmutex_unlock(&c->recv_lock);
    return rc;
}

/* The pending frame's body was read, or failed halfway with unread bytes
 * of it left. A ring end then drops the rest as it arrives; a descriptor
 * conn too, after MP_ENOMEM (no memory for the body), when the stream is
 * intact. Any other failure there is the stream's own (EOF, a dead
 * descriptor), and the next receive meets it again. Pending until here, so
 * a reader that dies halfway leaves the frame for pipe_repair. */
static int recv_done(mp_conn *c, int rc, uint64_t unread)
{
    if (rc != 0 && c->in)
        c->skip_to = c->frame_end;
    else if (rc == MP_ENOMEM)
        skip_start(c, unread);
    c->has_pending = false;
    return recv_end(c, rc);
}

/* The arguments every receive checks, before it takes the lock. */
static int recv_check(const char *fn, mp_conn *c)
{
    if (conn_check(c) != 0)
        return fail_conn(fn, c);
    return c->readable ? 0 : fail_direction(fn, true);
}

/* Inside a call: the next message into buf. */
static int recv_into(mp_conn *c, void *buf, size_t cap, size_t *len)
{
    static const char fn[] = "mp_conn_recv_bytes";
    uint64_t n;
    int rc = recv_begin(c, &n);
    if (rc != 0)
        return fail_io(rc, fn, c);
    *len = (size_t)n;
    if (n > cap)                            /* the message stays pending for a bigger buffer */
        return mp_fail(recv_end(c, MP_ETOOBIG), fn, "the message is %" PRIu64 " bytes, "
                       "buf has %zu; it stays next: receive it with a buffer of *len bytes "
                       "or mp_conn_recv_buf", n, cap);
    return fail_io(recv_done(c, conn_read(c, buf, (size_t)n), 0), fn, c);
}

int mp_conn_recv_bytes(mp_conn *c, void *buf, size_t cap, size_t *len)
{
    int rc = recv_check(__func__, c);
    if (rc != 0)
        return rc;
    if (!len)
        return mp_fail(MP_EINVAL, __func__, "len (where the size goes) is NULL");
    if (!buf && cap)
        return mp_fail(MP_EINVAL, __func__, "buf is NULL but cap is %zu", cap);
    if ((rc = call_enter(c)) != 0)
        return fail_enter(rc, __func__);
    rc = recv_into(c, buf, cap, len);
    call_leave();
    return rc;
}

/* Inside a call: the next message into out, grown to fit. */
static int recv_grow(mp_conn *c, mp_buf *out, size_t maxlen)
{
    static const char fn[] = "mp_conn_recv_buf";
    uint64_t n;
    int rc = recv_begin(c, &n);
    if (rc != 0)
        return fail_io(rc, fn, c);
    if (maxlen && n > maxlen)               /* pending, and nothing allocated */
        return mp_fail(recv_end(c, MP_ETOOBIG), fn, "the message is %" PRIu64 " bytes, "
                       "over maxlen %zu; it stays next", n, maxlen);
    struct frame_source src = { conn_read_cb, c, c->h.fd, NULL };
    size_t got;
    rc = frame_read_body(&src, out, (size_t)n, &got);
    rc = recv_done(c, rc, n - got);
    if (rc == MP_ENOMEM)
        return mp_fail(rc, fn, "no memory for the message's %" PRIu64 " bytes: it was "
                       "dropped; the conn stays usable, the next receive gets the next message", n);
    return fail_io(rc, fn, c);
}

int mp_conn_recv_buf(mp_conn *c, mp_buf *out, size_t maxlen)
{
    int rc = recv_check(__func__, c);
    if (rc != 0)
        return rc;
    if (!out)
        return mp_fail(MP_EINVAL, __func__, "out is NULL");
    if ((rc = call_enter(c)) != 0)
        return fail_enter(rc, __func__);
    rc = recv_grow(c, out, maxlen);
    call_leave();
    return rc;
}

/* Inside a call: whether a message (or EOF) comes before d. */
static int poll_until(mp_conn *c, const mp_deadline *d)
{
    static const char fn[] = "mp_conn_poll";
    if (atomic_load(&c->skip_len) > 0) {          /* its bytes are no message */
        int rc = skip_unlocked(c, d);
        if (rc == MP_ETIMEDOUT || rc == MP_EEOF)
            return rc == MP_EEOF;
        if (rc != 0)
            return fail_io(rc, fn, c);
    }
    if (c->in)
        return fail_io(pipe_poll(c, d), fn, c);
    int r = call_poll(c->h.fd, POLLIN, d);
    return fail_io(r == -EBADF ? MP_ECLOSED : r, fn, c);
}

int mp_conn_poll(mp_conn *c, double timeout)
{
    int rc = recv_check(__func__, c);
    if (rc != 0)
        return rc;
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    if (c->has_pending || atomic_load(&c->ahead_len) > 0)
        return 1;
    mp_deadline d = deadline_in(timeout);
    if ((rc = call_enter(c)) != 0)
        return fail_enter(rc, __func__);
    rc = poll_until(c, &d);
    call_leave();
    return rc;
}

int mp_conn_fileno(const mp_conn *c)
{
    return c && c->h.magic == MAGIC_CONN ? c->h.fd : fail_conn(__func__, c);
}

void mp_conn_close(mp_conn *c)
{
    if (conn_check(c) != 0)
        return;
    calls_close(c);
}

/* ------------------------------------------------------------------ descriptors */

/* Python's send_handle/recv_handle on Linux: one byte, the count of
 * descriptors modulo 256, with the descriptors attached (SCM_RIGHTS), no
 * acknowledgement. A read ahead may take that byte along with the frames
 * before it (the kernel ends a read just after a byte carrying
 * descriptors): the descriptors then wait here, in this process, keyed by
 * the byte's place in the conn's read-ahead, until mp_conn_recv_fd. */
#define FDS_PER_BYTE_MAX 8          /* more than Python sends (1): refused, all closed */

struct early_fds {
    const mp_conn *c;
    uint32_t fills, pos;            /* the byte's place: ahead[pos] of that refill */
    int n;
    bool truncated;
    int fds[FDS_PER_BYTE_MAX];
    struct early_fds *next;
};

static struct {
    pthread_mutex_t lock;
    struct early_fds *head;
    _Atomic uint32_t count;         /* 0: nothing to look for (the usual case) */
} early = { PTHREAD_MUTEX_INITIALIZER, NULL, 0 };

/* The list's lock is held across fork (fork.c), so a child never inherits
 * it taken. */
static void early_lock(void) { pthread_mutex_lock(&early.lock); }
static void early_unlock(void) { pthread_mutex_unlock(&early.lock); }

MP_SETUP_CONSTRUCTOR static void early_init(void)
{
    fork_hook_set(FORK_CONN, early_lock, early_unlock, early_unlock);
}

/* The descriptors in m's control messages into fds (closing what does not fit). */
static void collect_fds(struct msghdr *m, int *fds, int *n, bool *truncated)
{
    *n = 0;
    *truncated = (m->msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(m); h; h = CMSG_NXTHDR(m, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
            if (*n < FDS_PER_BYTE_MAX)
                fds[(*n)++] = fd;
            else {
                close(fd);
                *truncated = true;
            }
        }
    }
}

static void close_fds(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

/* Under recv_lock: a socket read into the read-ahead buffer at buf that
 * keeps any descriptors arriving with it. */
static ssize_t sock_read_ahead(mp_conn *c, uint8_t *buf, size_t cap, int flags)
{
    union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int) * FDS_PER_BYTE_MAX)]; } u;
    struct iovec v = { buf, cap };
    struct msghdr m = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = &u, .msg_controllen = sizeof u };
    ssize_t r = recvmsg(c->h.fd, &m, flags | MSG_CMSG_CLOEXEC);
    if (r <= 0 || m.msg_controllen == 0)
        return r;
    struct early_fds *e = calloc(1, sizeof *e), lost;
    collect_fds(&m, e ? e->fds : lost.fds, e ? &e->n : &lost.n, e ? &e->truncated : &lost.truncated);
    if (!e) {
        close_fds(lost.fds, lost.n);    /* recv_fd will say no descriptor came */
        return r;
    }
    e->c = c;
    e->fills = c->ahead_fills;
    e->pos = (uint32_t)(buf - c->ahead) + (uint32_t)r - 1;
    pthread_mutex_lock(&early.lock);
    e->next = early.head;
    early.head = e;
    atomic_fetch_add(&early.count, 1);
    pthread_mutex_unlock(&early.lock);
    return r;
}

/* The early descriptors waiting for c's byte at pos of this refill (taken
 * off the list), or NULL. */
static struct early_fds *early_take(const mp_conn *c, uint32_t pos)
{
    if (!atomic_load(&early.count))
        return NULL;
    struct early_fds *found = NULL;
    pthread_mutex_lock(&early.lock);
    for (struct early_fds **at = &early.head; *at; at = &(*at)->next) {
        if ((*at)->c == c && (*at)->fills == c->ahead_fills && (*at)->pos == pos) {
            found = *at;
            *at = found->next;
            atomic_fetch_sub(&early.count, 1);
            break;
        }
    }
    pthread_mutex_unlock(&early.lock);
    return found;
}

/* Closes every descriptor c's reads left waiting here. */
static void early_drop(const mp_conn *c)
{
    if (!atomic_load(&early.count))
        return;
    pthread_mutex_lock(&early.lock);
    for (struct early_fds **at = &early.head; *at;) {
        struct early_fds *e = *at;
        if (e->c != c) {
            at = &e->next;
            continue;
        }
        *at = e->next;
        atomic_fetch_sub(&early.count, 1);
        close_fds(e->fds, e->n);
        free(e);
    }
    pthread_mutex_unlock(&early.lock);
}

/* The checks send_fd and recv_fd share: a live descriptor conn on a
 * connected unix stream socket, going the right way. */
static int fd_conn_check(const char *fn, mp_conn *c, bool receiving)
{
    if (conn_check(c) != 0)
        return fail_conn(fn, c);
    if (receiving ? !c->readable : !c->writable)
        return fail_direction(fn, receiving);
    if (c->shm)
        return mp_fail(MP_EINVAL, fn, "the ends of mp_pipe carry messages in shared memory, not "
                       "on a socket; pass descriptors over a unix-socket conn (mp_listener on "
                       "unix:, mp_client, or mp_conn_from_fd on a socketpair end)");
    int domain = 0;
    socklen_t len = sizeof domain;
    if (getsockopt(c->h.fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX)
        return mp_fail(MP_EINVAL, fn, "fd %d of this conn is %s; descriptors pass only over "
                       "unix sockets", c->h.fd, c->is_socket ? "not a unix socket" : "a pipe");
    return 0;
}

/* Inside a call: the byte and its descriptor, under the send lock. */
static int send_fd_byte(mp_conn *c, const struct msghdr *m)
{
    int rc = call_lock(&c->send_lock, &forever);
    if (rc != 0 && rc != MP_EOWNERDEAD)
        return rc;
    for (;;) {
        if (sendmsg(c->h.fd, m, MSG_NOSIGNAL | MSG_DONTWAIT) == 1) {
            rc = 0;
            break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if ((rc = call_poll(c->h.fd, POLLOUT, NULL)) < 0)
                break;
        } else if (errno != EINTR) {
            rc = errno == EBADF ? MP_ECLOSED : -errno;
            break;
        }
    }
    rmutex_unlock(&c->send_lock);
    return rc;
}

int mp_conn_send_fd(mp_conn *c, int fd)
{
    int rc = fd_conn_check(__func__, c, false);
    if (rc != 0)
        return rc;
    if (fd < 0 || fcntl(fd, F_GETFD) < 0)
        return mp_fail(-EBADF, __func__, "fd %d is not an open descriptor of this process", fd);
    union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int))]; } u;
    memset(&u, 0, sizeof u);
    uint8_t count = 1;
    struct iovec v = { &count, 1 };
    struct msghdr m = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = &u, .msg_controllen = sizeof u };
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof fd);
    if ((rc = call_enter(c)) != 0)
        return fail_enter(rc, __func__);
    rc = fail_io(send_fd_byte(c, &m), __func__, c);
    call_leave();
    return rc;
}

/* The MP_ESTATE for a recv_fd whose next item is a message; nothing is taken. */
static int fail_message_first(void)
{
    return mp_fail(MP_ESTATE, "mp_conn_recv_fd", "a message comes before any descriptor on this "
                   "conn (or another process read the descriptor's byte ahead); receive the "
                   "message first");
}

/* What one byte with descriptors means: exactly one descriptor, announced
 * as one; anything else is closed and refused. */
static int accept_fds(const char *fn, uint8_t count, const int *fds, int n, bool truncated, int *out)
{
    if (n == 1 && count == 1 && !truncated) {
        *out = fds[0];
        return 0;
    }
    close_fds(fds, n);
    if (n == 0)
        return mp_fail(MP_EPROTO, fn, "the next byte carried no descriptor: the peer sent a "
                       "message, not a descriptor (its first byte is now lost)");
    return mp_fail(MP_EPROTO, fn, "the peer sent %d descriptor(s)%s announced as %u; one is "
                   "expected (Python's send_handle): all closed", n,
                   truncated ? " or more" : "", count);
}

/* Under recv_lock: whether the next byte on the socket carries descriptors,
 * looked at without taking it (a peek hands over copies: closed at once).
 * 1 yes, 0 no (a message comes first), or an error. */
static int next_byte_has_fds(mp_conn *c, const mp_deadline *d)
{
    union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int) * FDS_PER_BYTE_MAX)]; } u;
    uint8_t byte;
    struct iovec v = { &byte, 1 };
    for (;;) {
        int ready = call_poll(c->h.fd, POLLIN, d);
        if (ready == 0)
            return MP_ETIMEDOUT;
        if (ready < 0 && ready != -EINTR)
            return ready == -EBADF ? MP_ECLOSED : ready;
        struct msghdr m = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = &u,
                            .msg_controllen = sizeof u };
        ssize_t r = recvmsg(c->h.fd, &m, MSG_PEEK | MSG_CMSG_CLOEXEC);
        if (r == 1) {
            int fds[FDS_PER_BYTE_MAX], n;
            bool truncated;
            collect_fds(&m, fds, &n, &truncated);
            close_fds(fds, n);
            return n > 0 || truncated;
        }
        if (r == 0 || errno == ECONNRESET)
            return MP_EEOF;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return errno == EBADF ? MP_ECLOSED : -errno;
    }
}

/* Under recv_lock, nothing read ahead: the byte and its descriptors, read
 * exactly, once a peek has shown that descriptors come next. */
static int recv_fd_fresh(mp_conn *c, int *out, const mp_deadline *d)
{
    int has = next_byte_has_fds(c, d);
    if (has < 0)
        return fail_io(has, "mp_conn_recv_fd", c);
    if (has == 0)
        return fail_message_first();
    union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int) * FDS_PER_BYTE_MAX)]; } u;
    uint8_t count;
    struct iovec v = { &count, 1 };
    for (;;) {
        struct msghdr m = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = &u,
                            .msg_controllen = sizeof u };
        ssize_t r = recvmsg(c->h.fd, &m, MSG_CMSG_CLOEXEC);
        if (r == 1) {
            int fds[FDS_PER_BYTE_MAX], n;
            bool truncated;
            collect_fds(&m, fds, &n, &truncated);
            return accept_fds("mp_conn_recv_fd", count, fds, n, truncated, out);
        }
        if (r == 0 || errno == ECONNRESET)
            return fail_io(MP_EEOF, "mp_conn_recv_fd", c);
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            call_poll(c->h.fd, POLLIN, NULL);
        else if (errno != EINTR)
            return fail_io(errno == EBADF ? MP_ECLOSED : -errno, "mp_conn_recv_fd", c);
    }
}

/* Under recv_lock, bytes read ahead: the next one must be a byte whose
 * descriptors this process kept. */
static int recv_fd_early(mp_conn *c, int *out)
{
    uint32_t pos = c->ahead_pos;
    struct early_fds *e = early_take(c, pos);
    if (!e)
        return fail_message_first();
    uint8_t count = c->ahead[pos];
    c->ahead_pos++;
    atomic_fetch_sub(&c->ahead_len, 1);
    int rc = accept_fds("mp_conn_recv_fd", count, e->fds, e->n, e->truncated, out);
    free(e);
    return rc;
}

/* Inside a call: the next descriptor, under the receive lock. */
static int recv_fd_locked(mp_conn *c, int *fd, const mp_deadline *d)
{
    static const char fn[] = "mp_conn_recv_fd";
    int rc = call_lock(&c->recv_lock, d);
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, fn, "another thread is receiving on this conn");
    if (rc != 0 && rc != MP_EOWNERDEAD)
        return fail_io(rc, fn, c);
    if (c->has_pending)
        rc = mp_fail(MP_ESTATE, fn, "a message of %" PRIu64 " bytes is next (its header "
                     "was read by a call that gave MP_ETOOBIG); receive it first", c->pending_len);
    else if ((rc = skip_rest(c, d)) != 0)       /* a dropped message's rest comes first */
        rc = fail_io(rc, fn, c);
    else if (atomic_load(&c->ahead_len) > 0)
        rc = recv_fd_early(c, fd);
    else
        rc = recv_fd_fresh(c, fd, d);
    rmutex_unlock(&c->recv_lock);
    return rc;
}

int mp_conn_recv_fd(mp_conn *c, int *fd, double timeout)
{
    int rc = fd_conn_check(__func__, c, true);
    if (rc != 0)
        return rc;
    if (!fd)
        return mp_fail(MP_EINVAL, __func__, "fd (where the descriptor goes) is NULL");
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    mp_deadline d = deadline_in(timeout);
    if ((rc = call_enter(c)) != 0)
        return fail_enter(rc, __func__);
    rc = recv_fd_locked(c, fd, &d);
    call_leave();
    return rc;
}

/* A pipe end is readable or writable as it was opened; a socket both. */
static int fd_directions(const char *fn, int fd, bool *readable, bool *writable)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return mp_fail(-EBADF, fn, "fd %d is not an open descriptor of this process", fd);
    if (S_ISFIFO(st.st_mode)) {
        int mode = fcntl(fd, F_GETFL) & O_ACCMODE;
        *readable = mode != O_WRONLY;
        *writable = mode != O_RDONLY;
        return 0;
    }
    if (!S_ISSOCK(st.st_mode))
        return mp_fail(MP_EINVAL, fn, "fd %d is %s, not a connected socket or a pipe", fd,
                       S_ISREG(st.st_mode) ? "a regular file" : S_ISCHR(st.st_mode)
                       ? "a character device" : "neither a socket nor a pipe");
    int type = 0, listening = 0;
    socklen_t len = sizeof type;
    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
    len = sizeof listening;
    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
    if (type != SOCK_STREAM)
        return mp_fail(MP_EINVAL, fn, "fd %d is not a stream socket; frames need a byte stream", fd);
    if (listening)
        return mp_fail(MP_EINVAL, fn, "fd %d is a listening socket; accept a connection and wrap "
                       "that", fd);
    struct sockaddr_storage peer;
    len = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &len) != 0)
        return mp_fail(MP_EINVAL, fn, "fd %d is a socket that is not connected", fd);
    *readable = *writable = true;
    return 0;
}

int mp_conn_from_fd(mp_conn **c, int fd)
{
    if (!c)
        return mp_fail(MP_EINVAL, __func__, "c (where the conn goes) is NULL");
    bool readable, writable;
    int rc = fd_directions(__func__, fd, &readable, &writable);
    if (rc != 0)
        return rc;
    int flags = fcntl(fd, F_GETFD);
    if (flags >= 0)
        fcntl(fd, F_SETFD, flags | FD_CLOEXEC);   /* as every conn: spawn keeps what it needs */
    return mp_fail_code(conn_from_fd(c, fd, readable, writable), __func__);
}

/* ------------------------------------------------------------------ wait */

/* Conns with bytes in their read-ahead are ready whatever poll says: their
 * entries are switched off (fd -1) and counted. */
static size_t take_buffered(struct pollfd *p, size_t n, bool *rings)
{
    size_t buffered = 0;
    for (size_t i = 0; i < n; i++) {
        if (fd_has_buffered(p[i].fd, rings)) {
            p[i].fd = -1;
            buffered++;
        }
    }
    return buffered;
}

/* A descriptor conn of this process that mp_wait waits on is one of its
 * calls, so that closing it wakes the wait (its close signal is polled
 * too) and waits for it to leave; one closed here already is ready. */
struct waited {
    struct conn_local *loc;      /* NULL: not such a conn, or no memory for its record */
    bool closed;
    size_t wake;                 /* its close signal's entry in the poll, 0: none */
};

static void wait_enter(const int *fds, size_t n, struct waited *w)
{
    for (size_t i = 0; i < n; i++) {
        mp_conn *c = conn_of_fd(fds[i]);
        int rc = 0;
        w[i].loc = c ? calls_enter(c, fds[i], &rc) : NULL;
        w[i].closed = rc == MP_ECLOSED;
    }
}

static void wait_leave(struct waited *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (w[i].loc)
            calls_leave(w[i].loc);
}

/* One poll of fds, and after them in p the close signals of the conns
 * among them (only those: poll refuses more entries than the descriptor
 * limit, even unused ones), at most RING_SLICE if a ring end is among
 * them: the count ready, 0, or -errno. Ready entries have revents set, or
 * fd -1 for conns with a message buffered or closed in this process. */
static int wait_once(struct pollfd *p, const int *fds, size_t n, struct waited *w,
                     const mp_deadline *d)
{
    size_t entries = n;
    for (size_t i = 0; i < n; i++) {
        p[i] = (struct pollfd){ .fd = w[i].closed ? -1 : fds[i], .events = POLLIN };
        int wake = calls_wake_fd(w[i].loc);
        w[i].wake = wake >= 0 ? entries : 0;
        if (wake >= 0)
            p[entries++] = (struct pollfd){ .fd = wake, .events = POLLIN };
    }
    bool rings = false;
    size_t ready = take_buffered(p, n, &rings);
    for (size_t i = 0; i < n; i++)
        ready += w[i].closed;
    double left = ready ? 0 : deadline_left(d);
    mp_deadline slice = deadline_in(rings && left > RING_SLICE ? RING_SLICE : left);
    int rc = fd_poll_all(p, entries, &slice);
    if (rc < 0)
        return rc;
    rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i].wake && p[w[i].wake].revents)
            p[i].fd = -1;                   /* closed by another thread meanwhile */
        else if (p[i].fd >= 0 && p[i].revents && !fd_really_ready(p[i].fd))
            p[i].revents = 0;
        rc += p[i].fd < 0 || p[i].revents;
    }
    return rc;
}

int mp_wait(const int *fds, size_t n, bool *ready, double timeout)
{
    if (!fds && n)
        return mp_fail(MP_EINVAL, __func__, "fds is NULL but n is %zu", n);
    if (n > INT_MAX / 2)
        return mp_fail(MP_EINVAL, __func__, "n %zu is more than poll() takes", n);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    for (size_t i = 0; i < n; i++)
        if (fds[i] < 0)
            return mp_fail(MP_EINVAL, __func__, "fds[%zu] is %d, not a descriptor; pass "
                           "mp_conn_fileno, mp_process_sentinel or any open fd", i, fds[i]);
    struct pollfd *p = n ? calloc(2 * n, sizeof *p) : NULL;
    struct waited *w = n ? calloc(n, sizeof *w) : NULL;
    if (n && (!p || !w)) {
        free(p);
        free(w);
        return mp_fail(MP_ENOMEM, __func__, "no memory for %zu pollfds", n);
    }
    wait_enter(fds, n, w);
    mp_deadline d = deadline_in(timeout);
    int rc;
    do {
        rc = wait_once(p, fds, n, w, &d);
    } while (rc == 0 && !deadline_passed(&d));
    wait_leave(w, n);
    for (size_t i = 0; ready && i < n; i++)
        ready[i] = rc > 0 && (p[i].revents != 0 || p[i].fd < 0);
    free(p);
    free(w);
    if (rc == -EINVAL)
        return mp_fail(MP_EINVAL, __func__, "poll() refused %zu descriptors (and the close "
                       "signals of the conns among them): more than the descriptor limit "
                       "(RLIMIT_NOFILE)", n);
    return mp_fail_code(rc, __func__);
}
