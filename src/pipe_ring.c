/* pipe_ring.c - the ends of mp_pipe: frames through byte rings in the arena.
 *
 * Each direction of a pipe is one ring holding exactly the bytes a socket
 * would carry (CPython's frames), so a message is two memcpys and no system
 * call while the reader is awake. The pipe's descriptor (a socketpair or a
 * pipe, non-blocking) carries only doorbells, rung when a reader said it
 * sleeps (reader_sleeps), and EOF, which tells a reader that every writer
 * is gone. Writers waiting for room sleep on a futex word (writer_sleeps,
 * platform/waitflag.h). Every sleep is at most RING_SLICE
 * (docs/sleeping.md). A frame longer than the ring streams through it in
 * eighths; a writer or reader killed anywhere leaves the stream either
 * whole or cleanly ended (docs/pipes.md has the kill table).
 */
#include "conn_handle.h"
#include "platform/ringcopy.h"
#include "platform/waitflag.h"

#include <limits.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define RING_SIZE ((uint64_t)PIPE_RING_SIZE)
#define RING_CHUNK (RING_SIZE / 8)            /* a longer frame streams once this much is free */
_Static_assert((RING_SIZE & (RING_SIZE - 1)) == 0, "ringcopy needs a power of two");

/* One direction of a pipe made by mp_pipe: a byte ring holding exactly the
 * frames a socket would carry. Writers (serialised by send_lock) move tail,
 * readers (recv_lock) move head; each side's line also keeps its last look
 * at the other's counter, so a message costs no cache miss while the ring
 * is neither empty nor full.
 *
 * Rules. Under the writing end's send_lock: tail (release store after the
 * bytes), streaming, head_seen, and data[] between tail and head + size.
 * Under the reading end's recv_lock: head (release store after the copy
 * out), tail_seen. reader_sleeps: raised by a reader, taken (exchange) by
 * the writer that rings the doorbell. writer_sleeps: the waitflag a writer
 * sleeps on (platform/waitflag.h), lowered by a reader's wake. torn: set
 * once (a writer died mid-frame, or a send failed halfway), never cleared;
 * sleeper flags and commits are ordered by seq_cst fences on both sides. */
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
 * ring[1] by end 1 (b), absent for a one-way pipe. ring[] is written once
 * by mp_pipe; closed[i] goes to 1 once, when the last holder of end i
 * destroys it; ends counts down, and whoever takes it to 0 frees all. */
struct pipe_shm {
    _Atomic uint32_t ends;              /* ends not yet destroyed */
    _Atomic uint32_t closed[2];         /* every holder of that end closed it */
    struct ring *ring[2];
};

_Static_assert((RING_SIZE & (RING_SIZE - 1)) == 0, "ring positions wrap with a mask");
_Static_assert(offsetof(struct ring, head) == MP_CACHELINE, "readers' words on their own line");
_Static_assert(offsetof(struct ring, data) == 2 * MP_CACHELINE, "data starts on its own line");

/* A spinning ring waiter's budget (spin_adaptive), per thread. It yields
 * every other look: on a loaded machine the peer may need this very CPU. */
static __thread uint64_t ring_spin_budget;

static bool spin_until(bool (*ready)(void *), void *arg)
{
    return spin_adaptive(ready, arg, &ring_spin_budget, 0);
}

static struct ring *ring_new(void *_Atomic **held)
{
    struct ring *r = hand_alloc(sizeof *r, false, NULL, held);
    if (r)
        memset(r, 0, offsetof(struct ring, data));
    return r;
}

struct pipe_shm *pipe_shm_new(bool duplex, void *_Atomic *held[PIPE_HELD])
{
    for (int i = 0; i < PIPE_HELD; i++)
        held[i] = NULL;
    struct pipe_shm *s = hand_alloc(sizeof *s, true, NULL, &held[0]);
    if (!s)
        return NULL;
    atomic_init(&s->ends, 2);
    s->ring[0] = ring_new(&held[1]);
    s->ring[1] = duplex ? ring_new(&held[2]) : NULL;
    if (!s->ring[0] || (duplex && !s->ring[1])) {
        pipe_shm_discard(s, held);
        return NULL;
    }
    return s;
}

void pipe_shm_hand_over(void *_Atomic *held[PIPE_HELD])
{
    for (int i = 0; i < PIPE_HELD; i++)
        hand_release(held[i]);
}

void pipe_attach(mp_conn *c, struct pipe_shm *s, uint32_t side)
{
    c->shm = s;
    c->side = side;
    c->in = c->readable ? s->ring[side] : NULL;
    c->out = c->writable ? s->ring[side ^ 1] : NULL;
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
    waitflag_wake(&r->writer_sleeps);
}

/* The last holder of one end is gone: writers toward it fail with -EPIPE,
 * writers waiting for room learn it now; the last end frees the rings. */
void pipe_shm_leave(struct pipe_shm *s, uint32_t side)
{
    atomic_store(&s->closed[side], 1);
    for (int i = 0; i < 2; i++)
        if (s->ring[i])
            ring_wake_writers(s->ring[i]);
    if (atomic_fetch_sub(&s->ends, 1) == 1) {     /* ours alone now: in hand until freed */
        void *_Atomic *held[PIPE_HELD] = { hand_hold(s), hand_hold(s->ring[0]),
                                           s->ring[1] ? hand_hold(s->ring[1]) : NULL };
        hand_free(held[2], s->ring[1]);
        hand_free(held[1], s->ring[0]);
        hand_free(held[0], s);
    }
}

void pipe_shm_discard(struct pipe_shm *s, void *_Atomic *held[PIPE_HELD])
{
    pipe_shm_hand_over(held);
    atomic_store(&s->ends, 1);
    pipe_shm_leave(s, 0);
}

/* One doorbell byte to the other end; a full socket already holds one. */
static int doorbell_ring(mp_conn *c)
{
    uint8_t one = 1;
    struct iovec v = { &one, 1 };
    for (;;) {
        if (fd_writev_nosignal(c->h.fd, &v, 1, c->is_socket) >= 0 || errno == EAGAIN || errno == EWOULDBLOCK)
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
    int r = call_poll(c->h.fd, POLLIN, &slice);    /* or a close in this process */
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
    ringcopy_out(r->data, RING_SIZE, at, dst, n);
}

/* Under recv_lock: n bytes from the ring into dst (NULL: dropped), waiting
 * for them. */
int pipe_read(mp_conn *c, void *dst, uint64_t n)
{
    ASSERT_RHELD(&c->recv_lock);
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
        uint32_t v = waitflag_raise(&r->writer_sleeps);
        if (room_ready(&w))
            return 0;
        if (atomic_load(&c->shm->closed[c->side ^ 1]))
            return -EPIPE;
        if (call_closed())
            return MP_ECLOSED;
        mp_deadline slice = deadline_in(RING_SLICE);
        int slept = futex_wait(&r->writer_sleeps, v, &slice);
        if (call_closed())                 /* closed in this process: pipe_wake_writers */
            return MP_ECLOSED;
        if (slept == MP_ETIMEDOUT) {
            int rc = ring_peer_gone(c);
            if (rc != 0)
                return rc;
        }
    }
}

void pipe_wake_writers(const mp_conn *c)
{
    if (c->out)
        futex_wake(&c->out->writer_sleeps, INT_MAX);
}

/* Copies n bytes of the message (head then body) from offset at on into
 * the ring at tail, and commits them; n fits (ring_room). */
static void ring_put(struct ring *r, const uint8_t *head, size_t head_len, const char *body,
                     uint64_t at, uint64_t n)
{
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed), done = 0;
    if (at < head_len) {
        done = head_len - at < n ? head_len - at : n;
        ringcopy_in(r->data, RING_SIZE, tail, head + at, (size_t)done);
        at += done;
    }
    if (done < n)
        ringcopy_in(r->data, RING_SIZE, tail + done, body + (at - head_len), (size_t)(n - done));
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
int pipe_send(mp_conn *c, const uint8_t *head, size_t head_len, const void *body, size_t len)
{
    ASSERT_RHELD(&c->send_lock);
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
void pipe_take_over(mp_conn *c)
{
    ASSERT_RHELD(&c->send_lock);
    if (!c->out->streaming)
        return;
    atomic_store(&c->out->torn, 1);
    doorbell_ring(c);
}



/* Under recv_lock, a ring end: makes the next frame pending. Its body and
 * end are recorded before head moves past its header, so wherever a reader
 * dies in the frame, the next one can repair (pipe_repair). First drops
 * what is left of a frame whose reader died. */
int pipe_begin_frame(mp_conn *c)
{
    ASSERT_RHELD(&c->recv_lock);
    uint64_t head = atomic_load_explicit(&c->in->head, memory_order_relaxed), len;
    int rc = head < c->skip_to ? pipe_read(c, NULL, c->skip_to - head) : 0;
    uint8_t b[FRAME_HEADER_MAX];
    size_t header = 4;
    if (rc == 0 && (rc = ring_peek(c, b, 4)) == 0 && (rc = frame_header_short(b, &len)) == 1) {
        header = 12;
        if ((rc = ring_peek(c, b, 12)) == 0)
            rc = frame_header_long(b + 4, &len);
    }
    if (rc != 0)
        return rc;
    head = atomic_load_explicit(&c->in->head, memory_order_relaxed);
    c->pending_len = len;
    c->frame_body = head + header;
    c->frame_end = c->frame_body + len;
    atomic_store(&c->has_pending, true);
    return pipe_read(c, NULL, header);
}

/* The recv lock came from a reader that died inside a pending frame: if it
 * had not passed the header, the frame stays pending, whole; if it had
 * begun the body, that frame is its (lost) and the rest of it is dropped
 * as it arrives. Every other frame is delivered once, in order. */
void pipe_repair(mp_conn *c)
{
    ASSERT_RHELD(&c->recv_lock);
    uint64_t head = atomic_load_explicit(&c->in->head, memory_order_relaxed);
    if (!c->has_pending || head == c->frame_body)
        return;
    if (head < c->frame_body) {
        pipe_read(c, NULL, c->frame_body - head);   /* peeked: already in the ring */
        return;
    }
    c->skip_to = c->frame_end;
    c->has_pending = false;
}

/* A ring end is ready with data in the ring or at EOF; doorbells alone are not. */
int pipe_poll(mp_conn *c, const mp_deadline *d)
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

bool pipe_wait_prepare(mp_conn *c)
{
    atomic_store(&c->in->reader_sleeps, 1);
    return c->has_pending || ring_has_data(c->in);
}

bool pipe_ready_after_poll(mp_conn *c)
{
    return doorbell_drain(c) != 0 || ring_has_data(c->in);
}
