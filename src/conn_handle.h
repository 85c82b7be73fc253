/* conn_handle.h - the mp_conn handle, for the files that make it work:
 * conn.c (the handles, descriptor passing, mp_wait), conn_calls.c (the
 * calls inside a conn, and the close that wakes them) and pipe_ring.c (the
 * shared-memory rings that carry the frames of mp_pipe's ends).
 */
#ifndef MPROC_CONN_HANDLE_H
#define MPROC_CONN_HANDLE_H

#include "conn_internal.h"

#define READ_AHEAD 8192            /* reads up to half this go through the buffer, spinning first */

struct ring;                       /* one direction of a pipe (pipe_ring.c) */
struct pipe_shm;                   /* what both ends of a pipe share (pipe_ring.c) */

/* Rules: magic, fd, readable, writable, is_socket, is_tcp, shm, in, out and side
 * are written once, before the conn is handed out (mp_pipe sets the pipe
 * fields before it returns), and only read afterwards.
 * Under send_lock (a robust mutex in the conn, so every process holding it
 * takes the same lock): every write to the descriptor or the out ring.
 * Under recv_lock: has_pending, pending_len, the read-ahead (ahead_pos,
 * ahead_fills, ahead[], and ahead_len's decrements and refills),
 * frame_body, frame_end, skip_to, skip_len, and every read of the
 * descriptor or the in ring. has_pending, ahead_len and skip_len are atomic
 * because mp_conn_poll and mp_wait look at them without the lock (a hint:
 * ready, look again). */
struct mp_conn {
    struct fdhandle h;
    bool readable, writable, is_socket, is_tcp;
    _Atomic bool has_pending;  /* a header was read, its body was not (MP_ETOOBIG) */
    uint64_t pending_len;
    rmutex send_lock, recv_lock;
    /* The buffer short reads go through (conn_read): they take exactly
     * the bytes asked for, never the next frame's, so the stream past a
     * frame stays in the descriptor for whoever reads it next. It holds
     * bytes only for a frame given up on (skip_start). It lives here, in
     * the arena, so every process holding the conn sees the same stream;
     * mp_conn_poll and mp_wait count buffered bytes as ready. */
    _Atomic uint32_t ahead_len;
    uint32_t ahead_pos;
    uint32_t ahead_fills;      /* refills so far: tells a stale early descriptor */
    uint8_t ahead[READ_AHEAD];
    /* Bytes of a frame whose body found no memory (MP_ENOMEM) still on
     * the descriptor, dropped before the next header is read. The
     * read-ahead is empty while any are left: what it holds is always the
     * next messages' bytes, so mp_wait and mp_conn_poll count it as ready. */
    _Atomic uint64_t skip_len;
    /* Ends of mp_pipe: frames go through rings, the fd carries doorbells. */
    struct pipe_shm *shm;               /* NULL: frames go on the descriptor */
    struct ring *in, *out;
    uint32_t side;
    /* The pending frame's body and end in the in ring (valid with
     * has_pending), and where the rest of a frame whose reader died ends. */
    uint64_t frame_body, frame_end, skip_to;
};
_Static_assert(offsetof(mp_conn, h) == 0, "the registry and mp_fail_handle see a conn as its fdhandle");
_Static_assert(READ_AHEAD <= UINT32_MAX, "ahead_len and ahead_pos are 32-bit");

/* ------------------------------------------------------------------ conn_calls.c */

/* This process's calls inside its conns (the ends of mp_pipe too: their
 * eventfd is made when one of their calls first sleeps). A
 * public call brackets its work with call_enter (0, MP_ECLOSED once c is
 * closed in this process, MP_ENOMEM) and call_leave, whatever happened in
 * between; its waits go through call_poll and call_lock (or watch
 * call_wake_fd), which return
 * MP_ECLOSED as soon as another thread closes c (call_closed then says
 * so). calls_close is mp_conn_close for a descriptor conn: it wakes the
 * calls inside, waits for them to leave (the last ends the close should
 * one be held up), then conn_release lets go of c in this process.
 * calls_claim: a new conn of this process owns descriptor number fd now.
 * mp_wait enters the conns it waits on by hand: calls_enter (NULL with
 * *rc as call_enter's), calls_wake_fd to poll beside them, calls_leave. */
int call_enter(mp_conn *c);
void call_leave(void);
bool call_closed(void);
int call_poll(int fd, short events, const mp_deadline *d);   /* as fd_poll, or MP_ECLOSED */
int call_wake_fd(void);             /* the close signal to watch in other waits; -1: none */
int call_lock(rmutex *m, const mp_deadline *d);   /* as rmutex_lock, or MP_ECLOSED */
void calls_close(mp_conn *c);
void calls_claim(const mp_conn *c, int fd);
struct conn_local;
struct conn_local *calls_enter(const mp_conn *c, int fd, int *rc);
int calls_wake_fd(struct conn_local *loc);
void calls_leave(struct conn_local *loc);
void conn_release(mp_conn *c);      /* conn.c: this process's hold on c goes */

/* ------------------------------------------------------------------ pipe_ring.c */

/* The rings of a new pipe (one for a one-way pipe), NULL without arena
 * room; pipe_attach then makes end side (0 reads ring 0, 1 reads ring 1)
 * of it. Until then its blocks are held in hand (internal.h), in held, so
 * a process killed while it makes the pipe leaves them to its reaper:
 * pipe_shm_hand_over releases them just before the ends are attached.
 * pipe_shm_leave: the last holder of end side is gone (writers toward it
 * fail with -EPIPE from now); the last end frees the rings. */
#define PIPE_HELD 3
struct pipe_shm *pipe_shm_new(bool duplex, void *_Atomic *held[PIPE_HELD]);
void pipe_shm_hand_over(void *_Atomic *held[PIPE_HELD]);
void pipe_attach(mp_conn *c, struct pipe_shm *s, uint32_t side);
void pipe_shm_leave(struct pipe_shm *s, uint32_t side);
void pipe_shm_discard(struct pipe_shm *s, void *_Atomic *held[PIPE_HELD]);  /* never attached */

/* Under send_lock: one frame (head then body) into c's out ring; 0,
 * -EPIPE when nobody reads any more, or an error. pipe_take_over: the send
 * lock came from a writer that died; a frame it was streaming ends the
 * stream (torn). */
int pipe_send(mp_conn *c, const uint8_t *head, size_t head_len, const void *body, size_t len);
void pipe_take_over(mp_conn *c);
/* Wakes the writers of this process (and, spuriously, of others) asleep
 * for room in c's out ring, so they look whether c was closed. */
void pipe_wake_writers(const mp_conn *c);

/* Under recv_lock: n bytes of the in ring into dst (NULL: dropped), waiting
 * for them; MP_EEOF when the writers are gone first. pipe_begin_frame makes
 * the next frame pending (has_pending, pending_len); pipe_repair: the recv
 * lock came from a reader that died, put the pending frame right. */
int pipe_read(mp_conn *c, void *dst, uint64_t n);
int pipe_begin_frame(mp_conn *c);
void pipe_repair(mp_conn *c);

/* Without the lock: 1 when a message (or EOF) is there, 0 once d passed,
 * or an error. */
int pipe_poll(mp_conn *c, const mp_deadline *d);
/* mp_wait over ring ends: before its poll, raise the reader flag (so a send
 * rings the doorbell) and say whether a message is there already; after
 * poll said readable, whether it really is (data or EOF, not a stale
 * doorbell, which this drains). */
bool pipe_wait_prepare(mp_conn *c);
bool pipe_ready_after_poll(mp_conn *c);

#endif
