/* channel.h - the same-family fast path: request and reply through shared
 * memory instead of the socket.
 *
 * A client whose process shares the server's arena (a manager started with
 * mp_manager_start, and every process of its family) allocates a channel
 * there and offers it over the socket (OP_ATTACH with the address and a
 * random nonce; the server accepts only if it sees the same nonce at that
 * address, i.e. the memory really is shared). Then each call is: client
 * writes the request into the channel and bumps req_seq; the server
 * answers the same way and bumps resp_seq (channel_put, below). Both sides spin briefly, then sleep on
 * the futex word in slices, polling the socket between slices: the socket
 * stays the liveness signal (EOF = the peer died) and carries any message
 * too big for buf (len == CHANNEL_VIA_SOCKET). A client hanging up posts
 * CHANNEL_BYE first, so the server thread leaves at once. Both sides hold a
 * reference and the last to let go frees it; a server that finds the
 * client's socket dead frees it outright (no one else can touch it).
 */
#ifndef MPROC_MANAGER_CHANNEL_H
#define MPROC_MANAGER_CHANNEL_H

#include "internal.h"

#include <stddef.h>
#include <string.h>

enum {
    CHANNEL_MAGIC = 0x4d434843,            /* MCHC */
    CHANNEL_ATTACHED = 0x4d434841,         /* MCHA: a server thread owns it */
    CHANNEL_BUF = 32 * 1024,
    CHANNEL_INLINE = MP_CACHELINE - 3 * sizeof(uint32_t),  /* 52: in the sequence's line */
    CHANNEL_PAUSE_MIN_NS = 250,            /* a waiter first spins with pause (a round trip */
    CHANNEL_PAUSE_STEP_NS = 500,           /* is ~1 us), adaptively, then yields (channel.c) */
    CHANNEL_PAUSE_MAX_NS = 3000,
    CHANNEL_PAUSE_PROBE = 64,
    CHANNEL_PAUSE_PROBE_NS = 1500,
};
#define CHANNEL_VIA_SOCKET UINT32_MAX        /* req_len/resp_len: the frame is on the socket */
#define CHANNEL_BYE (UINT32_MAX - 1)         /* req_len: the client hangs up */

/* Three cache lines, then the buffer. A small message (at most
 * CHANNEL_INLINE bytes: nearly every call) travels inside the line that
 * carries its sequence word, so a hand-off moves one line each way instead
 * of two; a bigger one goes through buf, and one bigger than buf through
 * the socket. The length word alone says where a message is. */
struct channel {
    _Atomic uint32_t magic;                /* CHANNEL_MAGIC, then _ATTACHED once served */
    _Atomic uint32_t refs;                 /* client + server; the last one frees */
    uint64_t nonce;
    /* The server process that took it (written before its ATTACH reply),
     * and when it started: a client whose server died holding its
     * reference frees the channel itself (mconn_leave_channel). */
    pid_t server_pid;
    uint64_t server_start;
    _Alignas(MP_CACHELINE) _Atomic uint32_t req_seq;   /* client: a request is in */
    _Atomic uint32_t server_sleeping;
    uint32_t req_len;
    uint8_t req_inline[CHANNEL_INLINE];
    _Alignas(MP_CACHELINE) _Atomic uint32_t resp_seq;  /* server: the reply is in */
    _Atomic uint32_t client_sleeping;
    uint32_t resp_len;
    uint8_t resp_inline[CHANNEL_INLINE];
    _Alignas(MP_CACHELINE) uint8_t buf[CHANNEL_BUF];
};
_Static_assert(offsetof(struct channel, resp_seq) == 2 * MP_CACHELINE &&
               offsetof(struct channel, buf) == 3 * MP_CACHELINE,
               "a sequence word shares its line with its inline message only");

/* Places a message of len bytes for the other side (in the line at
 * inline_, in buf, or nowhere) and returns the length word to publish with
 * it: CHANNEL_VIA_SOCKET when the caller must send it on the socket. */
static inline uint32_t channel_put(struct channel *ch, uint8_t *inline_, const void *data,
                                   size_t len)
{
    if (len > CHANNEL_BUF)
        return CHANNEL_VIA_SOCKET;
    memcpy(len <= CHANNEL_INLINE ? inline_ : ch->buf, data, len);
    return (uint32_t)len;
}

/* Where the message with length word len lies, or NULL for a word that
 * names no message in the channel (on the socket, or out of range). */
static inline const uint8_t *channel_msg(const struct channel *ch, const uint8_t *inline_,
                                         uint32_t len)
{
    if (len > CHANNEL_BUF)
        return NULL;
    return len <= CHANNEL_INLINE ? inline_ : ch->buf;
}

/* Waits until *seq != old: spins for spin_ns (pausing for an adaptive
 * 0-3 us first, yielding the CPU after that), then sleeps on the
 * futex in slices of slice_s seconds (platform/slices.h), checking the peer's socket fd between slices.
 * 0, MP_EBROKEN once the peer is gone, MP_ETIMEDOUT once until (NULL: no
 * limit) has passed. sleeping is this side's "wake me" flag. */
int channel_wait(_Atomic uint32_t *seq, uint32_t old, _Atomic uint32_t *sleeping,
                 uint32_t spin_ns, double slice_s, int fd, const mp_deadline *until);
/* The peer is alive while its socket has neither hung up nor hit EOF. */
bool channel_peer_alive(int fd);
/* Publishes seq = val and wakes the other side if it sleeps. */
void channel_post(_Atomic uint32_t *seq, uint32_t val, _Atomic uint32_t *sleeping);

#endif
