/* channel.h - the same-family fast path: request and reply through shared
 * memory instead of the socket.
 *
 * A client whose process shares the server's arena (a manager started with
 * mp_manager_start, and every process of its family) allocates a channel
 * there and offers it over the socket (OP_ATTACH with the address and a
 * random nonce; the server accepts only if it sees the same nonce at that
 * address, i.e. the memory really is shared). Then each call is: client
 * writes the request into buf and bumps req_seq; the server answers into
 * the same buf and bumps resp_seq. Both sides spin briefly, then sleep on
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

enum {
    CHANNEL_MAGIC = 0x4d434843,            /* MCHC */
    CHANNEL_ATTACHED = 0x4d434841,         /* MCHA: a server thread owns it */
    CHANNEL_BUF = 32 * 1024,
    CHANNEL_CLIENT_SLICE_MS = 100,         /* a caller notices a dead server this fast */
    CHANNEL_SERVER_SLICE_MS = 500,         /* an idle client costs the server 2 wake-ups/s */
    CHANNEL_PAUSE_MIN_NS = 250,            /* a waiter first spins with pause (a round trip */
    CHANNEL_PAUSE_STEP_NS = 500,           /* is ~1 us), adaptively, then yields (channel.c) */
    CHANNEL_PAUSE_MAX_NS = 3000,
    CHANNEL_PAUSE_PROBE = 64,
    CHANNEL_PAUSE_PROBE_NS = 1500,
};
#define CHANNEL_VIA_SOCKET UINT32_MAX        /* req_len/resp_len: the frame is on the socket */
#define CHANNEL_BYE (UINT32_MAX - 1)         /* req_len: the client hangs up */

struct channel {
    _Atomic uint32_t magic;                /* CHANNEL_MAGIC, then _ATTACHED once served */
    uint64_t nonce;
    _Atomic uint32_t req_seq;              /* client: a request is in buf */
    _Atomic uint32_t server_sleeping;
    uint32_t req_len;
    _Atomic uint32_t refs;                 /* client + server; the last one frees */
    char pad1[MP_CACHELINE - 6 * sizeof(uint32_t) - sizeof(uint64_t)];
    _Atomic uint32_t resp_seq;             /* server: the reply is in buf */
    _Atomic uint32_t client_sleeping;
    uint32_t resp_len;
    char pad2[MP_CACHELINE - 3 * sizeof(uint32_t)];
    uint8_t buf[CHANNEL_BUF];
};
_Static_assert(offsetof(struct channel, resp_seq) == MP_CACHELINE,
               "the server's words start the second cache line (pad1)");
_Static_assert(offsetof(struct channel, buf) == 2 * MP_CACHELINE,
               "the buffer starts the third cache line (pad2)");

/* Waits until *seq != old: spins for spin_ns (pausing for an adaptive
 * 0-3 us first, yielding the CPU after that), then sleeps on the
 * futex in slices of slice_ms, checking the peer's socket fd between slices.
 * 0, MP_EBROKEN once the peer is gone, MP_ETIMEDOUT once until (NULL: no
 * limit) has passed. sleeping is this side's "wake me" flag. */
int channel_wait(_Atomic uint32_t *seq, uint32_t old, _Atomic uint32_t *sleeping,
                 uint32_t spin_ns, int slice_ms, int fd, const mp_deadline *until);
/* The peer is alive while its socket has neither hung up nor hit EOF. */
bool channel_peer_alive(int fd);
/* Publishes seq = val and wakes the other side if it sleeps. */
void channel_post(_Atomic uint32_t *seq, uint32_t val, _Atomic uint32_t *sleeping);

#endif
