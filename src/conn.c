/* conn.c - pipes and connections: CPython's length-prefixed frames on a
 * socket or pipe, byte-compatible with multiprocessing.connection.
 *
 * An mp_conn lives in the arena and names its descriptor by number, so a
 * child started afterwards (fork, or spawn: conn_keep_across_exec keeps the
 * fds open across exec) uses the same handle. Each process keeps a registry
 * of the handles it holds; the fork hook counts one more holder for each.
 * Sends and receives each take a robust lock so frames never interleave.
 * The two ends of mp_pipe carry their frames through byte rings in the
 * arena instead: the descriptor then carries only doorbells and EOF
 * (docs/pipes.md). Unix-socket conns also carry descriptors (Python's
 * send_handle: one byte with SCM_RIGHTS); a read-ahead that takes such a
 * byte keeps its descriptors aside in this process until mp_conn_recv_fd.
 */
#include "conn_internal.h"
#include "platform/valgrind_check.h"

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
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#define RECV_FIRST_CHUNK ((size_t)64 << 10)   /* grow beyond this only as bytes arrive */
#define IO_CHUNK_MAX ((size_t)1 << 30)        /* Linux moves at most ~2 GiB per call */
#define READ_AHEAD 8192                       /* bytes one read may take beyond a small message */
#define READ_SPIN_NS 20000                    /* spin this long before a read sleeps */
#define RING_SIZE ((uint64_t)PIPE_RING_SIZE)
#define RING_CHUNK (RING_SIZE / 8)            /* a longer frame streams once this much is free */

static const mp_deadline forever = { { 0, 0 }, true };

/* One direction of a pipe made by mp_pipe: a byte ring holding exactly the
 * frames a socket would carry. Writers (serialised by send_lock) move tail,
 * readers (recv_lock) move head; each side's line also keeps its last look
 * at the other's counter, so a message costs no cache miss while the ring
 * is neither empty nor full. */
struct ring {
    _Atomic uint64_t tail;              /* bytes committed */
    _Atomic uint32_t reader_sleeps;     /* a reader may be asleep in poll(): ring the doorbell */
    _Atomic uint32_t torn;              /* a writer died mid-frame: the stream ends at tail */
    uint32_t streaming;                 /* a frame longer than the ring is being written */
    uint64_t head_seen;
    _Alignas(MP_CACHELINE) _Atomic uint64_t head;   /* bytes consumed */
    _Atomic uint32_t writer_sleeps;     /* futex word: bit 0 while a writer waits for room */
    uint64_t tail_seen;
    _Alignas(MP_CACHELINE) uint8_t data[RING_SIZE];
};

/* What both ends of an mp_pipe share: ring[0] is read by end 0 (a),
 * ring[1] by end 1 (b), absent for a one-way pipe. */
struct pipe_shm {
    _Atomic uint32_t ends;              /* ends not yet destroyed */
    _Atomic uint32_t closed[2];         /* every holder of that end closed it */
    struct ring *ring[2];
};

struct mp_conn {
    struct fdhandle h;
    bool readable, writable, is_socket;
    _Atomic bool has_pending;  /* a header was read, its body was not (MP_ETOOBIG) */
    uint64_t pending_len;
    rmutex send_lock, recv_lock;
    /* Read-ahead: one read() takes whatever the peer has queued, so a
     * stream of small messages costs one syscall for many. It lives here,
     * in the arena, so every process holding the conn sees the same stream;
     * mp_conn_poll and mp_wait count buffered bytes as ready. */
    _Atomic uint32_t ahead_len;
    uint32_t ahead_pos;
    uint32_t ahead_fills;      /* refills so far: tells a stale early descriptor */
    uint8_t ahead[READ_AHEAD];
    /* Ends of mp_pipe: frames go through rings, the fd carries doorbells. */
    struct pipe_shm *shm;               /* NULL: frames go on the descriptor */
    struct ring *in, *out;
    uint32_t side;
    /* The pending frame's body and end in the in ring (valid with
     * has_pending), and where the rest of a frame whose reader died ends. */
    uint64_t frame_body, frame_end, skip_to;
};

/* ------------------------------------------------------------------ registry */

static struct {
    pthread_mutex_t lock;
    pthread_once_t once;
    struct fdhandle **items;
    size_t n, cap;
} registry = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_ONCE_INIT, NULL, 0, 0 };

static void early_lock(bool take);

/* The early-descriptor list's lock is held across fork too, so a child
 * never inherits it taken. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&registry.lock);
    early_lock(true);
    for (size_t i = 0; i < registry.n; i++)
        atomic_fetch_add(&registry.items[i]->refs, 1);
}

static void fork_parent(void)
{
    early_lock(false);
    pthread_mutex_unlock(&registry.lock);
}

static void fork_child(void)
{
    early_lock(false);
    pthread_mutex_unlock(&registry.lock);
}

static void registry_init(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

int fdhandle_register(struct fdhandle *h)
{
    pthread_once(&registry.once, registry_init);
    struct stat st;
    if (!h->ino && fstat(h->fd, &st) == 0)
        h->ino = (uint64_t)st.st_ino;
    int rc = 0;
    pthread_mutex_lock(&registry.lock);
    if (registry.n == registry.cap) {
        size_t cap = registry.cap ? registry.cap * 2 : 16;
        void *p = realloc(registry.items, cap * sizeof *registry.items);
        if (p) {
            registry.items = p;
            registry.cap = cap;
        } else {
            rc = MP_ENOMEM;
        }
    }
    if (rc == 0)
        registry.items[registry.n++] = h;
    pthread_mutex_unlock(&registry.lock);
    return rc;
}

static bool registry_remove(struct fdhandle *h)
{
    bool found = false;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = registry.n; i-- > 0;) {
        if (registry.items[i] == h) {
            registry.items[i] = registry.items[--registry.n];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&registry.lock);
    return found;
}

/* h goes where our registry cannot follow (across an exec, to the fork
 * server's child): never freed, since its holders can no longer be counted,
 * and put on the family's list of such handles, where conn_of_fd finds it.
 * No lock and no allocation: this also runs between fork and exec. */
static void mark_shared_for_good(struct fdhandle *h)
{
    atomic_store(&h->immortal, 1);
    struct fdhandle *_Atomic *head = (struct fdhandle *_Atomic *)arena_slot(ARENA_SLOT_CROSSED);
    if (!head || atomic_exchange(&h->crossed, 1))
        return;
    struct fdhandle *first = atomic_load(head);
    do
        atomic_store(&h->next_crossed, first);
    while (!atomic_compare_exchange_weak(head, &first, h));
}

/* A handle on the family's crossed list whose descriptor fd is, in this
 * process, still the handle's file. Crossed handles are never freed, so
 * the walk needs no lock. */
static struct fdhandle *crossed_of_fd(int fd)
{
    struct fdhandle *_Atomic *head = (struct fdhandle *_Atomic *)arena_slot(ARENA_SLOT_CROSSED);
    struct stat st;
    if (!head || !atomic_load(head) || fstat(fd, &st) != 0)
        return NULL;
    for (struct fdhandle *h = atomic_load(head); h; h = atomic_load(&h->next_crossed))
        if (h->fd == fd && h->ino == (uint64_t)st.st_ino)
            return h;
    return NULL;
}

/* Runs in a forked child just before exec: no locks, no allocation. The
 * registry is this process's copy, so nobody changes it under us. */
void conn_keep_across_exec(void)
{
    for (size_t i = 0; i < registry.n; i++) {
        struct fdhandle *h = registry.items[i];
        int flags = fcntl(h->fd, F_GETFD);
        if (flags >= 0)
            fcntl(h->fd, F_SETFD, flags & ~FD_CLOEXEC);
        mark_shared_for_good(h);
    }
}

size_t conn_live_fds(int *fds, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.n && n < cap; i++) {
        fds[n++] = registry.items[i]->fd;
        mark_shared_for_good(registry.items[i]);
    }
    pthread_mutex_unlock(&registry.lock);
    return n;
}

/* First lift every received descriptor above all the wanted numbers, so
 * none sits where another must go, then drop each at its number. */
int conn_adopt_fds(const int *received, const int *numbers, size_t n)
{
    int lifted[CONN_PASS_MAX], top = 0, rc = 0;
    if (n > CONN_PASS_MAX)
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

bool fdhandle_release(struct fdhandle *h)
{
    if (registry_remove(h)) {
        close(h->fd);
        return !atomic_load(&h->immortal) && atomic_fetch_sub(&h->refs, 1) == 1;
    }
    /* Reached through a spawned child's argument: never registered here. */
    if (atomic_load(&h->immortal))
        close(h->fd);
    return false;
}

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
static int poll_all(struct pollfd *p, size_t n, const mp_deadline *d)
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
    struct pollfd p = { .fd = fd, .events = events };
    int r = poll_all(&p, 1, d);
    return r > 0 && (p.revents & POLLNVAL) ? -EBADF : r;
}

int fd_read_full(int fd, void *buf, size_t n, const mp_deadline *d)
{
    bool timed = d && !d->forever;
    size_t done = 0;
    while (done < n) {
        if (timed) {
            int r = fd_poll(fd, POLLIN, d);
            if (r <= 0)
                return r == 0 ? MP_ETIMEDOUT : r;
        }
        size_t want = n - done < IO_CHUNK_MAX ? n - done : IO_CHUNK_MAX;
        ssize_t got = read(fd, (char *)buf + done, want);
        if (got > 0) {
            done += (size_t)got;
        } else if (got == 0) {
            return MP_EEOF;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int r = fd_poll(fd, POLLIN, d);
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

static ssize_t writev_nosignal(int fd, const struct iovec *iov, int n, bool is_socket)
{
    if (!is_socket)
        return pipe_writev(fd, iov, n);
    struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n };
    ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL);
    if (r < 0 && errno == ENOTSOCK)
        return pipe_writev(fd, iov, n);
    return r;
}

static int write_all(int fd, bool is_socket, const void *head, size_t head_len,
                     const void *body, size_t body_len)
{
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
        ssize_t w = writev_nosignal(fd, chunk, n, is_socket);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                int r = fd_poll(fd, POLLOUT, NULL);
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

static bool fd_is_socket(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* Tries the socket call first: a pipe answers ENOTSOCK and takes the pipe path. */
int fd_write_full(int fd, const void *head, size_t head_len, const void *body, size_t body_len)
{
    return write_all(fd, true, head, head_len, body, body_len);
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

/* Where frames are read from: a raw descriptor (with a deadline) or a
 * conn, whose read-ahead buffer comes first. */
struct source {
    int fd;
    mp_conn *c;
    const mp_deadline *d;
};

static int conn_read(mp_conn *c, void *dst, size_t n);

static int source_read(const struct source *s, void *buf, size_t n)
{
    return s->c ? conn_read(s->c, buf, n) : fd_read_full(s->fd, buf, n, s->d);
}

/* The first 4 bytes of a header: 0 and the length, 1 when -1 announces a
 * 64-bit length in the next 8 (then header_long), MP_EPROTO for other
 * negatives. */
static int header_short(const uint8_t b[4], uint64_t *len)
{
    int32_t small = (int32_t)(uint32_t)get_be(b, 4);
    *len = small >= 0 ? (uint64_t)small : 0;
    return small >= 0 ? 0 : small == -1 ? 1 : MP_EPROTO;
}

static int header_long(const uint8_t b[8], uint64_t *len)
{
    *len = get_be(b, 8);
    return *len > (uint64_t)PTRDIFF_MAX ? MP_ETOOBIG : 0;
}

/* Reads a header. A stream that ends inside it is MP_EEOF. */
static int read_header(const struct source *src, uint64_t *len)
{
    uint8_t b[8];
    int rc = source_read(src, b, 4);
    if (rc == 0 && (rc = header_short(b, len)) == 1 && (rc = source_read(src, b, 8)) == 0)
        rc = header_long(b, len);
    return rc;
}

/* Reads a body of len bytes into out, growing it only as bytes arrive. */
static int read_body(const struct source *src, mp_buf *out, size_t len)
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
        done += want;
    }
    if (rc == 0)
        out->len = len;
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
    struct source src = { fd, NULL, d };
    uint64_t len;
    int rc = read_header(&src, &len);
    if (rc != 0)
        return rc;
    if (maxlen && len > maxlen)
        return MP_ETOOBIG;
    return read_body(&src, out, (size_t)len);
}

/* ------------------------------------------------------------------ rings */

/* A spinning ring waiter's budget (spin_adaptive), per thread. It yields
 * every other look: on a loaded machine the peer may need this very CPU. */
static __thread uint64_t ring_spin_budget;

static bool spin_until(bool (*ready)(void *), void *arg)
{
    return spin_adaptive(ready, arg, &ring_spin_budget, 0);
}

static struct ring *ring_new(void)
{
    struct ring *r = arena_alloc_nozero(sizeof *r);
    if (r)
        memset(r, 0, offsetof(struct ring, data));
    return r;
}

static struct pipe_shm *pipe_shm_new(bool duplex)
{
    struct pipe_shm *s = arena_alloc(sizeof *s);
    if (!s)
        return NULL;
    atomic_init(&s->ends, 2);
    s->ring[0] = ring_new();
    s->ring[1] = duplex ? ring_new() : NULL;
    if (!s->ring[0] || (duplex && !s->ring[1])) {
        arena_free(s->ring[0]);
        arena_free(s->ring[1]);
        arena_free(s);
        return NULL;
    }
    return s;
}

/* Something new for a reader that has seen the ring up to since: bytes,
 * or the end of a torn stream. */
static bool ring_moved(struct ring *r, uint64_t since)
{
    return atomic_load(&r->tail) != since || atomic_load(&r->torn);
}

static bool ring_has_data(struct ring *r)
{
    return ring_moved(r, atomic_load(&r->head));
}

struct ring_since { struct ring *r; uint64_t since; };

static bool ring_moved_arg(void *arg)
{
    struct ring_since *w = arg;
    return ring_moved(w->r, w->since);
}

/* Wakes the writers of r waiting for room (the futex word's bit 0). */
static void ring_wake_writers(struct ring *r)
{
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t v = atomic_load_explicit(&r->writer_sleeps, memory_order_relaxed);
    if ((v & 1) && atomic_compare_exchange_strong(&r->writer_sleeps, &v, (v + 2) & ~1u))
        futex_wake(&r->writer_sleeps, INT_MAX);
}

/* The last holder of one end is gone: writers toward it fail with -EPIPE,
 * writers waiting for room learn it now; the last end frees the rings. */
static void pipe_shm_leave(struct pipe_shm *s, uint32_t side)
{
    atomic_store(&s->closed[side], 1);
    for (int i = 0; i < 2; i++)
        if (s->ring[i])
            ring_wake_writers(s->ring[i]);
    if (atomic_fetch_sub(&s->ends, 1) == 1) {
        arena_free(s->ring[0]);
        arena_free(s->ring[1]);
        arena_free(s);
    }
}

/* One doorbell byte to the other end; a full socket already holds one. */
static int doorbell_ring(mp_conn *c)
{
    uint8_t one = 1;
    struct iovec v = { &one, 1 };
    for (;;) {
        if (writev_nosignal(c->h.fd, &v, 1, c->is_socket) >= 0 || errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno != EINTR)
            return errno == EBADF ? MP_ECLOSED : -errno;
    }
}

/* Takes every doorbell byte queued: 0, MP_EEOF when every holder of the
 * other end is gone, or an error. */
static int doorbell_drain(mp_conn *c)
{
    uint8_t sink[256];
    for (;;) {
        ssize_t got = read(c->h.fd, sink, sizeof sink);
        if (got > 0 && (size_t)got < sizeof sink)
            return 0;
        if (got == 0 || (got < 0 && errno == ECONNRESET))
            return MP_EEOF;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (got < 0 && errno != EINTR)
            return errno == EBADF ? MP_ECLOSED : -errno;
    }
}

/* One sleep of a reader on c's descriptor until the ring moves past since,
 * at most RING_SLICE (so a doorbell another waiter drained costs a delay,
 * never a hang): 0 (recheck the ring), MP_EEOF, MP_ETIMEDOUT once d passed
 * (NULL: forever), or an error. The flag is raised before the last look
 * at the ring and writers look at it after their commit (Dekker,
 * seq_cst), so no message is slept through. */
static int doorbell_wait(mp_conn *c, const mp_deadline *d, uint64_t since)
{
    atomic_store(&c->in->reader_sleeps, 1);
    if (ring_moved(c->in, since))
        return 0;
    double left = d ? deadline_left(d) : RING_SLICE;
    mp_deadline slice = deadline_in(left < RING_SLICE ? left : RING_SLICE);
    int r = fd_poll(c->h.fd, POLLIN, &slice);
    if (r < 0)
        return r == -EBADF ? MP_ECLOSED : r;
    if (r > 0)
        return doorbell_drain(c);
    return d && deadline_passed(d) ? MP_ETIMEDOUT : 0;
}

/* Under recv_lock: waits until at least need bytes follow head, and says
 * how many; MP_EEOF when the writers are all gone (or the stream is torn)
 * with fewer left. */
static int ring_wait_bytes(mp_conn *c, uint64_t need, uint64_t *avail)
{
    struct ring *r = c->in;
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    for (;;) {
        if (r->tail_seen - head < need)
            r->tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (r->tail_seen - head >= need) {
            *avail = r->tail_seen - head;
            return 0;
        }
        if (atomic_load(&r->torn) && atomic_load(&r->tail) == r->tail_seen)
            return MP_EEOF;
        struct ring_since w = { r, r->tail_seen };
        if (spin_until(ring_moved_arg, &w))
            continue;
        int rc = doorbell_wait(c, NULL, w.since);
        if (rc != 0 && !(rc == MP_EEOF && ring_moved(r, w.since)))
            return rc;
    }
}

static void ring_copy_out(struct ring *r, uint64_t at, void *dst, size_t n)
{
    size_t off = (size_t)(at & (RING_SIZE - 1)), first = RING_SIZE - off;
    first = n < first ? n : first;
    memcpy(dst, r->data + off, first);
    memcpy((char *)dst + first, r->data, n - first);
}

/* Under recv_lock: n bytes from the ring into dst (NULL: dropped), waiting
 * for them. */
static int ring_read(mp_conn *c, void *dst, uint64_t n)
{
    struct ring *r = c->in;
    while (n > 0) {
        uint64_t avail;
        int rc = ring_wait_bytes(c, 1, &avail);
        if (rc != 0)
            return rc;
        uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        size_t take = (size_t)(n < avail ? n : avail);
        if (dst) {
            ring_copy_out(r, head, dst, take);
            dst = (char *)dst + take;
        }
        atomic_store_explicit(&r->head, head + take, memory_order_release);
        ring_wake_writers(r);
        n -= take;
    }
    return 0;
}

/* Under recv_lock: n bytes at head, left in the ring. */
static int ring_peek(mp_conn *c, void *dst, size_t n)
{
    uint64_t avail;
    int rc = ring_wait_bytes(c, n, &avail);
    if (rc == 0)
        ring_copy_out(c->in, atomic_load_explicit(&c->in->head, memory_order_relaxed), dst, n);
    return rc;
}

/* The room left in r as a writer sees it (under send_lock): head is looked
 * at again only when the last look shows less than want. */
static uint64_t ring_room(struct ring *r, uint64_t want)
{
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    if (RING_SIZE - (tail - r->head_seen) < want)
        r->head_seen = atomic_load_explicit(&r->head, memory_order_acquire);
    return RING_SIZE - (tail - r->head_seen);
}

struct room_want { struct ring *r; uint64_t n; };

static bool room_ready(void *arg)
{
    struct room_want *w = arg;
    return ring_room(w->r, w->n) >= w->n;
}

/* Every holder of the reading end gone: closed by all (the flag), or died
 * (the descriptor hangs up). */
static int ring_peer_gone(mp_conn *c)
{
    if (atomic_load(&c->shm->closed[c->side ^ 1]))
        return -EPIPE;
    struct pollfd p = { .fd = c->h.fd, .events = 0 };
    if (poll(&p, 1, 0) < 0)
        return 0;
    if (p.revents & POLLNVAL)
        return MP_ECLOSED;
    return p.revents & (POLLHUP | POLLERR) ? -EPIPE : 0;
}

/* Under send_lock: waits until n bytes fit in c's out ring. */
static int ring_wait_room(mp_conn *c, uint64_t n)
{
    struct ring *r = c->out;
    struct room_want w = { r, n };
    if (room_ready(&w) || spin_until(room_ready, &w))
        return 0;
    for (;;) {
        uint32_t v = atomic_load(&r->writer_sleeps);
        while (!(v & 1) && !atomic_compare_exchange_weak(&r->writer_sleeps, &v, v | 1))
            ;
        if (room_ready(&w))
            return 0;
        if (atomic_load(&c->shm->closed[c->side ^ 1]))
            return -EPIPE;
        mp_deadline slice = deadline_in(RING_SLICE);
        if (futex_wait(&r->writer_sleeps, v | 1, &slice) == MP_ETIMEDOUT) {
            int rc = ring_peer_gone(c);
            if (rc != 0)
                return rc;
        }
    }
}

/* Copies n bytes of the message (head then body) from offset at on into
 * the ring at tail, and commits them. */
static void ring_put(struct ring *r, const uint8_t *head, size_t head_len, const char *body,
                     uint64_t at, uint64_t n)
{
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    for (uint64_t done = 0; done < n;) {
        const char *src = at < head_len ? (const char *)head + at : body + (at - head_len);
        uint64_t span = at < head_len ? head_len - at : n - done;
        size_t off = (size_t)((tail + done) & (RING_SIZE - 1));
        size_t take = (size_t)(span < n - done ? span : n - done);
        take = take < RING_SIZE - off ? take : RING_SIZE - off;
        memcpy(r->data + off, src, take);
        done += take;
        at += take;
    }
    atomic_store_explicit(&r->tail, tail + n, memory_order_release);
}

/* After a commit: the doorbell, only if a reader said it sleeps. */
static int ring_notify(mp_conn *c, struct ring *r)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&r->reader_sleeps, memory_order_relaxed) &&
        atomic_exchange(&r->reader_sleeps, 0))
        return doorbell_ring(c);
    return 0;
}

/* Under send_lock: the frame into c's out ring. A frame that fits is
 * committed whole, so a writer killed while copying leaves nothing; a
 * longer one streams through in eighths of the ring, as through a pipe,
 * and a failure halfway ends the stream (torn). */
static int ring_send(mp_conn *c, const uint8_t *head, size_t head_len, const void *body, size_t len)
{
    struct ring *r = c->out;
    uint64_t total = head_len + (uint64_t)len;
    if (atomic_load_explicit(&c->shm->closed[c->side ^ 1], memory_order_relaxed) ||
        atomic_load_explicit(&r->torn, memory_order_relaxed))
        return -EPIPE;
    for (uint64_t at = 0; at < total;) {
        uint64_t left = total - at, chunk = left < RING_CHUNK ? left : RING_CHUNK;
        int rc = ring_wait_room(c, total <= RING_SIZE ? total : chunk);
        if (rc == 0) {
            uint64_t room = ring_room(r, left), n = left < room ? left : room;
            r->streaming = at > 0 || n < left;      /* before a commit that leaves a frame partial */
            ring_put(r, head, head_len, body, at, n);
            at += n;
            rc = ring_notify(c, r);
        }
        if (rc != 0) {
            if (at > 0 && at < total)
                atomic_store(&r->torn, 1);
            return rc;
        }
    }
    r->streaming = 0;
    return 0;
}

/* The send lock came from a writer that died: if it was streaming a frame,
 * part of it may be read already and nothing can follow it. The stream
 * ends there: readers get MP_EEOF after the last byte, writers -EPIPE. */
static void ring_take_over(mp_conn *c)
{
    if (!c->out->streaming)
        return;
    atomic_store(&c->out->torn, 1);
    doorbell_ring(c);
}

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
    if (rc == MP_ECLOSED)
        return mp_fail(rc, fn, "fd %d of this conn was closed under it (close() on "
                       "mp_conn_fileno?); use mp_conn_close", c->h.fd);
    if (rc == MP_EPROTO || rc == MP_ETOOBIG)
        return mp_fail(rc, fn, "the peer sent a malformed frame header (fd %d): it does not "
                       "speak multiprocessing.connection's framing; close the conn", c->h.fd);
    return mp_fail_code(rc, fn);
}

/* Lengths from SEND_CHECK_MIN bytes on are checked against the process's
 * mappings before a copy would fault on them (one msync, which fails with
 * ENOMEM on an unmapped page); shorter ones are the caller's to get right. */
#define SEND_CHECK_MIN ((size_t)64 << 10)

static int check_send_range(const char *fn, const void *data, size_t len)
{
    if (len > (size_t)PTRDIFF_MAX || (uintptr_t)data + len < (uintptr_t)data)
        return mp_fail(MP_ETOOBIG, fn, "len %zu is more than any buffer can hold (at most "
                       "PTRDIFF_MAX bytes); pass the buffer's real length", len);
    /* Under valgrind the probe is its own error (msync's range must be
     * defined memory there), and valgrind reports a bad range itself. */
    if (len < SEND_CHECK_MIN || RUNNING_ON_VALGRIND)
        return 0;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), start = (uintptr_t)data & ~(page - 1);
    if (msync((void *)start, (uintptr_t)data + len - start, MS_ASYNC) != 0 && errno == ENOMEM)
        return mp_fail(MP_EINVAL, fn, "data..data+%zu runs past this process's memory; pass the "
                       "buffer's real length", len);
    return 0;
}

static void conn_destroy(mp_conn *c)
{
    c->h.magic = MAGIC_FREED;
    if (c->shm)
        pipe_shm_leave(c->shm, c->side);
    rmutex_destroy(&c->send_lock);
    rmutex_destroy(&c->recv_lock);
    arena_free(c);
}

int conn_from_fd(mp_conn **out, int fd, bool readable, bool writable)
{
    if (!out || fd < 0)
        return MP_EINVAL;
    mp_conn *c = arena_alloc(sizeof *c);
    if (!c)
        return MP_ENOMEM;
    c->h.fd = fd;
    atomic_init(&c->h.refs, 1);
    atomic_init(&c->h.immortal, 0);
    c->readable = readable;
    c->writable = writable;
    c->is_socket = fd_is_socket(fd);
    int rc = rmutex_init(&c->send_lock);
    if (rc == 0 && (rc = rmutex_init(&c->recv_lock)) != 0)
        rmutex_destroy(&c->send_lock);
    if (rc != 0) {
        arena_free(c);
        return rc;
    }
    c->h.magic = MAGIC_CONN;
    if ((rc = fdhandle_register(&c->h)) != 0) {
        conn_destroy(c);
        return rc;
    }
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
    struct pipe_shm *s = pipe_shm_new(duplex);
    if (!s)
        return mp_fail(MP_ENOMEM, __func__, "the shared arena has no room for the pipe's "
                       "buffers (%zu KiB each way)", PIPE_RING_SIZE >> 10);
    int fds[2];
    int r = duplex ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds)
                   : pipe2(fds, O_CLOEXEC | O_NONBLOCK);
    int rc = r == 0 ? conn_pair(a, b, fds, duplex) : errno_to_mp(errno);
    if (rc != 0) {
        atomic_store(&s->ends, 1);
        pipe_shm_leave(s, 0);
        return mp_fail_code(rc, __func__);
    }
    mp_conn *end[2] = { *a, *b };
    for (uint32_t i = 0; i < 2; i++) {
        end[i]->shm = s;
        end[i]->side = i;
        end[i]->in = end[i]->readable ? s->ring[i] : NULL;
        end[i]->out = end[i]->writable ? s->ring[i ^ 1] : NULL;
    }
    return 0;
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
    uint8_t head[FRAME_HEADER_MAX];
    size_t n = frame_header_encode(len, head);
    rc = rmutex_lock(&c->send_lock, &forever);
    if (rc != 0 && rc != MP_EOWNERDEAD)
        return mp_fail_code(rc, __func__);
    if (rc == MP_EOWNERDEAD && c->out)
        ring_take_over(c);
    rc = c->out ? ring_send(c, head, n, data, len) : write_all(c->h.fd, c->is_socket, head, n, data, len);
    rmutex_unlock(&c->send_lock);
    return fail_io(rc == -EBADF ? MP_ECLOSED : rc, __func__, c);
}

static ssize_t sock_read_ahead(mp_conn *c, uint8_t *buf, size_t cap, int flags);
static void early_drop(const mp_conn *c);

/* One read. On a socket with nothing queued yet, spin a few microseconds
 * on non-blocking reads before sleeping in the kernel: a sleeping reader
 * makes every send pay for a wake-up, and that dominates small messages. */
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
        return sock_read_ahead(c, buf, cap, 0);
    }
    return read(c->h.fd, buf, cap);
}

/* Under recv_lock: n bytes of the stream, buffered ones first. A short
 * remainder refills the buffer with one read of whatever is queued; a long
 * one is read straight into dst. A handle that crossed an exec reads
 * exactly, because a process that has it but not our registry could not
 * see buffered bytes in mp_wait. */
static int conn_read(mp_conn *c, void *dst, size_t n)
{
    if (c->in)
        return ring_read(c, dst, n);
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
    if (n > READ_AHEAD / 2 || atomic_load(&c->h.immortal))
        return fd_read_full(c->h.fd, dst, n, NULL);
    early_drop(c);                      /* what was read ahead before is gone, */
    c->ahead_fills++;                   /* and so are descriptors kept for it */
    size_t got = 0;
    while (got < n) {
        ssize_t r = read_spin(c, c->ahead + got, READ_AHEAD - got);
        if (r > 0)
            got += (size_t)r;
        else if (r == 0 || errno == ECONNRESET)
            return MP_EEOF;
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            fd_poll(c->h.fd, POLLIN, NULL);
        else if (errno != EINTR)
            return errno == EBADF ? MP_ECLOSED : -errno;
    }
    memcpy(dst, c->ahead, n);
    c->ahead_pos = (uint32_t)n;
    atomic_store(&c->ahead_len, (uint32_t)(got - n));
    return 0;
}

static bool is_reading_conn(const struct fdhandle *h, int fd)
{
    return h->fd == fd && h->magic == MAGIC_CONN && ((const mp_conn *)h)->readable;
}

/* The readable conn of this process on fd, or NULL: one it registered, or
 * one that reached it across an exec or from the fork server. */
static mp_conn *conn_of_fd(int fd)
{
    struct fdhandle *found = NULL;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.n && !found; i++)
        if (is_reading_conn(registry.items[i], fd))
            found = registry.items[i];
    pthread_mutex_unlock(&registry.lock);
    if (!found && (found = crossed_of_fd(fd)) && !is_reading_conn(found, fd))
        found = NULL;
    return (mp_conn *)found;
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
    atomic_store(&c->in->reader_sleeps, 1);
    return c->has_pending || ring_has_data(c->in);
}

/* After poll() said fd is readable: a ring end is ready only with data or
 * at EOF, not for a stale doorbell (which this drains). */
static bool fd_really_ready(int fd)
{
    mp_conn *c = conn_of_fd(fd);
    if (!c || !c->in)
        return true;
    return doorbell_drain(c) != 0 || ring_has_data(c->in);
}

/* Under recv_lock, a ring end: makes the next frame pending. Its body and
 * end are recorded before head moves past its header, so wherever a reader
 * dies in the frame, the next one can repair (ring_repair). First drops
 * what is left of a frame whose reader died. */
static int ring_begin_frame(mp_conn *c)
{
    uint64_t head = atomic_load_explicit(&c->in->head, memory_order_relaxed), len;
    int rc = head < c->skip_to ? ring_read(c, NULL, c->skip_to - head) : 0;
    uint8_t b[FRAME_HEADER_MAX];
    size_t header = 4;
    if (rc == 0 && (rc = ring_peek(c, b, 4)) == 0 && (rc = header_short(b, &len)) == 1) {
        header = 12;
        if ((rc = ring_peek(c, b, 12)) == 0)
            rc = header_long(b + 4, &len);
    }
    if (rc != 0)
        return rc;
    head = atomic_load_explicit(&c->in->head, memory_order_relaxed);
    c->pending_len = len;
    c->frame_body = head + header;
    c->frame_end = c->frame_body + len;
    atomic_store(&c->has_pending, true);
    return ring_read(c, NULL, header);
}

/* The recv lock came from a reader that died inside a pending frame: if it
 * had not passed the header, the frame stays pending, whole; if it had
 * begun the body, that frame is its (lost) and the rest of it is dropped
 * as it arrives. Every other frame is delivered once, in order. */
static void ring_repair(mp_conn *c)
{
    uint64_t head = atomic_load_explicit(&c->in->head, memory_order_relaxed);
    if (!c->has_pending || head == c->frame_body)
        return;
    if (head < c->frame_body) {
        ring_read(c, NULL, c->frame_body - head);   /* peeked: already in the ring */
        return;
    }
    c->skip_to = c->frame_end;
    c->has_pending = false;
}

/* Takes recv_lock and learns the length of the next message, reading its
 * header unless an earlier call left it pending. On success the lock is
 * held; the caller ends with recv_end. */
static int recv_begin(mp_conn *c, uint64_t *len)
{
    int rc = rmutex_lock(&c->recv_lock, &forever);
    if (rc != 0 && rc != MP_EOWNERDEAD)
        return rc;
    if (rc == MP_EOWNERDEAD && c->in)
        ring_repair(c);
    rc = 0;
    if (!c->has_pending && c->in) {
        rc = ring_begin_frame(c);
    } else if (!c->has_pending) {
        struct source src = { c->h.fd, c, NULL };
        rc = read_header(&src, &c->pending_len);
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

/* The pending frame's body was read, or failed halfway (a ring end then
 * drops the rest as it arrives). Pending until here, so a reader that dies
 * halfway leaves the frame for ring_repair. */
static int recv_done(mp_conn *c, int rc)
{
    if (rc != 0 && c->in)
        c->skip_to = c->frame_end;
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

int mp_conn_recv_bytes(mp_conn *c, void *buf, size_t cap, size_t *len)
{
    uint64_t n;
    int rc = recv_check(__func__, c);
    if (rc != 0)
        return rc;
    if (!len)
        return mp_fail(MP_EINVAL, __func__, "len (where the size goes) is NULL");
    if (!buf && cap)
        return mp_fail(MP_EINVAL, __func__, "buf is NULL but cap is %zu", cap);
    if ((rc = recv_begin(c, &n)) != 0)
        return fail_io(rc, __func__, c);
    *len = (size_t)n;
    if (n > cap)                            /* the message stays pending for a bigger buffer */
        return mp_fail(recv_end(c, MP_ETOOBIG), __func__, "the message is %" PRIu64 " bytes, "
                       "buf has %zu; it stays next: receive it with a buffer of *len bytes "
                       "or mp_conn_recv_buf", n, cap);
    return fail_io(recv_done(c, conn_read(c, buf, (size_t)n)), __func__, c);
}

int mp_conn_recv_buf(mp_conn *c, mp_buf *out, size_t maxlen)
{
    uint64_t n;
    int rc = recv_check(__func__, c);
    if (rc != 0)
        return rc;
    if (!out)
        return mp_fail(MP_EINVAL, __func__, "out is NULL");
    if ((rc = recv_begin(c, &n)) != 0)
        return fail_io(rc, __func__, c);
    if (maxlen && n > maxlen)               /* pending, and nothing allocated */
        return mp_fail(recv_end(c, MP_ETOOBIG), __func__, "the message is %" PRIu64 " bytes, "
                       "over maxlen %zu; it stays next", n, maxlen);
    struct source src = { c->h.fd, c, NULL };
    return fail_io(recv_done(c, read_body(&src, out, (size_t)n)), __func__, c);
}

/* A ring end is ready with data in the ring or at EOF; doorbells alone are not. */
static int ring_poll(mp_conn *c, const mp_deadline *d)
{
    for (;;) {
        uint64_t head = atomic_load(&c->in->head);
        if (ring_moved(c->in, head))
            return 1;
        int rc = doorbell_wait(c, d, head);
        if (rc == MP_EEOF || ring_has_data(c->in))
            return 1;
        if (rc != 0)
            return rc == MP_ETIMEDOUT ? 0 : rc;
    }
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
    if (c->in)
        return fail_io(ring_poll(c, &d), __func__, c);
    int r = fd_poll(c->h.fd, POLLIN, &d);
    return fail_io(r == -EBADF ? MP_ECLOSED : r, __func__, c);
}

int mp_conn_fileno(const mp_conn *c)
{
    return c && c->h.magic == MAGIC_CONN ? c->h.fd : fail_conn(__func__, c);
}

void mp_conn_close(mp_conn *c)
{
    if (conn_check(c) != 0)
        return;
    early_drop(c);
    if (fdhandle_release(&c->h))
        conn_destroy(c);
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

static void early_lock(bool take)
{
    if (take)
        pthread_mutex_lock(&early.lock);
    else
        pthread_mutex_unlock(&early.lock);
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
    rc = rmutex_lock(&c->send_lock, &forever);
    if (rc != 0 && rc != MP_EOWNERDEAD)
        return mp_fail_code(rc, __func__);
    for (;;) {
        if (sendmsg(c->h.fd, &m, MSG_NOSIGNAL) == 1) {
            rc = 0;
            break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            fd_poll(c->h.fd, POLLOUT, NULL);
        } else if (errno != EINTR) {
            rc = errno == EBADF ? MP_ECLOSED : -errno;
            break;
        }
    }
    rmutex_unlock(&c->send_lock);
    return fail_io(rc, __func__, c);
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
        int ready = fd_poll(c->h.fd, POLLIN, d);
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
            fd_poll(c->h.fd, POLLIN, NULL);
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
    rc = rmutex_lock(&c->recv_lock, &d);
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, __func__, "another thread is receiving on this conn");
    if (rc != 0 && rc != MP_EOWNERDEAD)
        return mp_fail_code(rc, __func__);
    if (c->has_pending)
        rc = mp_fail(MP_ESTATE, __func__, "a message of %" PRIu64 " bytes is next (its header "
                     "was read by a call that gave MP_ETOOBIG); receive it first", c->pending_len);
    else if (atomic_load(&c->ahead_len) > 0)
        rc = recv_fd_early(c, fd);
    else
        rc = recv_fd_fresh(c, fd, &d);
    rmutex_unlock(&c->recv_lock);
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

/* One poll of fds, at most RING_SLICE if a ring end is among them:
 * the count ready, 0, or -errno. Ready entries have revents set, or fd -1
 * for conns with a message buffered. */
static int wait_once(struct pollfd *p, const int *fds, size_t n, const mp_deadline *d)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
    bool rings = false;
    size_t buffered = take_buffered(p, n, &rings);
    double left = buffered ? 0 : deadline_left(d);
    mp_deadline slice = deadline_in(rings && left > RING_SLICE ? RING_SLICE : left);
    int rc = poll_all(p, n, &slice);
    if (rc < 0)
        return rc;
    rc = (int)buffered;
    for (size_t i = 0; i < n; i++) {
        if (p[i].fd >= 0 && p[i].revents && !fd_really_ready(p[i].fd))
            p[i].revents = 0;
        rc += p[i].fd >= 0 && p[i].revents;
    }
    return rc;
}

int mp_wait(const int *fds, size_t n, bool *ready, double timeout)
{
    if (!fds && n)
        return mp_fail(MP_EINVAL, __func__, "fds is NULL but n is %zu", n);
    if (n > INT_MAX)
        return mp_fail(MP_EINVAL, __func__, "n %zu is more than poll() takes", n);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    for (size_t i = 0; i < n; i++)
        if (fds[i] < 0)
            return mp_fail(MP_EINVAL, __func__, "fds[%zu] is %d, not a descriptor; pass "
                           "mp_conn_fileno, mp_process_sentinel or any open fd", i, fds[i]);
    struct pollfd *p = n ? calloc(n, sizeof *p) : NULL;
    if (n && !p)
        return mp_fail(MP_ENOMEM, __func__, "no memory for %zu pollfds", n);
    mp_deadline d = deadline_in(timeout);
    int rc;
    do {
        rc = wait_once(p, fds, n, &d);
    } while (rc == 0 && !deadline_passed(&d));
    for (size_t i = 0; ready && i < n; i++)
        ready[i] = rc > 0 && (p[i].revents != 0 || p[i].fd < 0);
    free(p);
    return mp_fail_code(rc, __func__);
}
