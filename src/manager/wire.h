/* wire.h - the manager's transport: addresses, sockets, frames, handshake.
 *
 * Frames are CPython's (`!i` big-endian length, then the payload). A reader
 * keeps one growing input buffer per socket and busy-polls it with
 * non-blocking recv for a few tens of microseconds before sleeping in poll:
 * a blocking wake-up costs 70-300 us on a small VM, a spinning one ~1 us.
 * A reader with no spin budget and no deadline polls before its recv.
 */
#ifndef MPROC_MANAGER_WIRE_H
#define MPROC_MANAGER_WIRE_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>

enum {
    WIRE_MAX_FRAME = 16 * 1024 * 1024 + 4096,  /* biggest frame either side accepts */
    WIRE_MAX_ADDRESS = 108 + 16,               /* "unix:" + sun_path, "tcp:host:port" */
    WIRE_MAX_AUTHKEY = 1024,
    /* TCP only: an idle connection whose peer host vanished is noticed
     * after KEEPIDLE + KEEPCNT * KEEPINTVL = 16 s; one with unacknowledged
     * data after USER_TIMEOUT. */
    WIRE_KEEPIDLE_S = 10,
    WIRE_KEEPINTVL_S = 2,
    WIRE_KEEPCNT = 3,
    WIRE_USER_TIMEOUT_S = 16,
    /* A buffer above this is given back once what it held is consumed: a
     * connection keeps no request-sized buffer while idle. */
    WIRE_KEEP_BYTES = 64 * 1024,
};

struct wire {
    int fd;
    uint8_t *in;             /* received bytes not yet consumed */
    size_t start, len, cap;  /* live bytes are in[start .. start+len) */
    uint32_t spin_ns;        /* busy-poll budget before sleeping */
    uint32_t looks;          /* recvs that found nothing, while spinning */
    bool not_tcp;            /* sock_ack_now said so: not asked again */
    uint64_t skip;           /* bytes of a frame given up on, dropped as they come */
};

void wire_init(struct wire *w, int fd, uint32_t spin_ns);
/* Frees w's input buffer if it holds more than WIRE_KEEP_BYTES and nothing
 * unread (the frame wire_recv gave is then gone too); wire_recv does it
 * first. wire_buf_trim: frees b if it holds more (a big reply, once sent). */
void wire_trim(struct wire *w);
void wire_buf_trim(mp_buf *b);
void wire_close(struct wire *w);     /* closes fd, frees the buffer */

/* Sends one frame (header and payload in one sendmsg), waiting for room
 * until d (NULL: no limit). 0, MP_EBROKEN or MP_ETIMEDOUT (then part of the
 * frame may have gone: the connection is unusable). */
int wire_send(struct wire *w, const void *data, size_t len, const mp_deadline *d);
/* Receives one frame of at most maxlen bytes; *data stays valid until the
 * next wire_recv. 0, MP_EEOF (orderly close between frames), MP_EBROKEN,
 * MP_ETOOBIG (header announced more than maxlen), MP_ETIMEDOUT. After
 * MP_ETOOBIG, wire_drop_frame gives that frame up: the next wire_recv drops
 * its bytes as they come (never holding them) and reads the frame after. */
void wire_drop_frame(struct wire *w);
int wire_recv(struct wire *w, const uint8_t **data, size_t *len, size_t maxlen,
              const mp_deadline *d);

struct sockaddress;
/* "unix:/path", "unix:@abstract", "tcp:host:port", "tcp:[v6]:port" (port
 * 0: any), parsed and set up by listener.c's sock_* calls. The listener
 * writes its real address (chosen port) into actual; its socket is
 * non-blocking, the accepted and connected ones are blocking. */
int wire_listen(const char *address, int *fd, char *actual, size_t cap);
int wire_connect(const char *address, int *fd, const mp_deadline *d);
/* The two halves of wire_connect: the address resolved once (a host name
 * looked up: that may take the resolver's own time, which has no deadline),
 * then connected by d as often as needed. */
int wire_resolve(const char *address, struct sockaddress *a);
int wire_connect_to(const struct sockaddress *a, int *fd, const mp_deadline *d);
/* TCP keepalive and TCP_USER_TIMEOUT on a TCP socket (nothing on others). */
void wire_keepalive(int fd);

/* CPython's mutual HMAC challenge (auth.c): 0, MP_EAUTH (wrong key or the
 * peer left), MP_ETIMEDOUT. */
int wire_auth_server(struct wire *w, const void *key, size_t keylen, const mp_deadline *d);
int wire_auth_client(struct wire *w, const void *key, size_t keylen, const mp_deadline *d);

#endif
