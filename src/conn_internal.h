/* conn_internal.h - raw I/O and framing (frame.c), socket addresses
 * (listener.c) and the authkey handshake (auth.c), for the files that speak
 * CPython's multiprocessing.connection wire format (conn.c, auth.c,
 * listener.c, the manager, the fuzz targets). The handles' descriptors are
 * in the registry (fdreg.h); the mp_conn handle itself is in conn_handle.h.
 *
 * Wire: a frame is a 4-byte big-endian signed length and the body; a body
 * longer than 0x7fffffff is announced by -1 and an 8-byte big-endian length.
 */
#ifndef MPROC_CONN_INTERNAL_H
#define MPROC_CONN_INTERNAL_H

#include "internal.h"
#include "fdreg.h"

#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#define FRAME_HEADER_MAX 12
#define FRAME_SMALL_MAX 0x7fffffffu

/* The header for a body of len bytes: writes 4 or 12 bytes, returns how many. */
size_t frame_header_encode(uint64_t len, uint8_t out[FRAME_HEADER_MAX]);

/* Blocking I/O on a raw descriptor, EINTR-safe, whole buffers. d NULL or
 * forever: no timeout. Reads return MP_EEOF when the peer closes first;
 * writes never raise SIGPIPE. */
int fd_read_full(int fd, void *buf, size_t n, const mp_deadline *d);
int fd_write_full(int fd, const void *head, size_t head_len, const void *body, size_t body_len);
/* Waits for events (POLLIN, POLLOUT) on fd, or a hang-up: 1, 0 on timeout,
 * <0 error. EINTR-safe against the deadline. */
int fd_poll(int fd, short events, const mp_deadline *d);
/* The same, also ending with MP_ECLOSED once wake_fd (an eventfd that a
 * close writes; -1: none) is readable: a conn's waits (conn_calls.c).
 * fd_read_woken is fd_read_full whose every wait does so. */
int fd_poll_woken(int fd, short events, int wake_fd, const mp_deadline *d);
int fd_read_woken(int fd, void *buf, size_t n, int wake_fd, const mp_deadline *d);
/* ppoll over n entries until something is ready or d passes (NULL:
 * forever): the count, 0, or -errno. */
int fd_poll_all(struct pollfd *p, size_t n, const mp_deadline *d);
/* One writev that never raises SIGPIPE (sendmsg MSG_NOSIGNAL on a socket,
 * SIGPIPE blocked and taken back on a pipe): what writev returns. */
ssize_t fd_writev_nosignal(int fd, const struct iovec *iov, int n, bool is_socket);
/* head then body, whole, waiting out EAGAIN (and, with wake_fd >= 0, never
 * asleep in a socket's sendmsg: MP_ECLOSED once wake_fd is readable, as
 * fd_poll_woken): 0 or -errno. */
int fd_write_all(int fd, bool is_socket, int wake_fd, const void *head, size_t head_len,
                 const void *body, size_t body_len);
bool fd_is_socket(int fd);
/* Acks what the TCP socket fd has received at once. A peer with Nagle's
 * algorithm on (CPython's Connection is one) holds a small send back until
 * its previous one is acked; a delayed ACK makes that 40 ms. So a reader
 * calls this where such a peer is about to wait: after the peer's last
 * handshake frame, and before waiting for the body of a frame whose
 * header came alone. false on other sockets (nothing done). */
bool sock_ack_now(int fd);
bool sock_is_tcp(int fd);          /* an AF_INET or AF_INET6 socket */

/* One frame on a raw descriptor. conn_recv_frame checks the claimed length
 * against maxlen (0: no limit) before allocating anything: MP_ETOOBIG then,
 * with the header consumed, so the stream is unusable: close it (as after
 * MP_ENOMEM, which leaves it inside the body). Memory
 * grows with the bytes that actually arrive, so a peer lying about a huge
 * length costs at most 64 KiB or twice what it sent. */
int conn_send_frame(int fd, const void *data, size_t len);
int conn_recv_frame(int fd, mp_buf *out, size_t maxlen, const mp_deadline *d);

/* Where frames are read from: read(ctx, ...) when set (a conn, whose
 * read-ahead comes first), else fd with the deadline d. */
struct frame_source {
    int (*read)(void *ctx, void *buf, size_t n);
    void *ctx;
    int fd;
    const mp_deadline *d;
};
/* Reads a header: 0 and *len; a stream that ends inside it is MP_EEOF,
 * a negative length other than -1 MP_EPROTO, one past PTRDIFF_MAX MP_ETOOBIG. */
int frame_read_header(const struct frame_source *src, uint64_t *len);
/* Reads a body of len bytes into out, growing it only as bytes arrive.
 * *got: the bytes of it taken from src, all of them on success. After
 * MP_ENOMEM (out could not grow) the other len - *got are still in the
 * stream, which is otherwise intact: a reader that goes on must drop them. */
int frame_read_body(const struct frame_source *src, mp_buf *out, size_t len, size_t *got);
/* A header taken apart by hand (the pipe ring peeks at it): the first 4
 * bytes give 0 and the length, 1 when -1 announces a 64-bit length in the
 * next 8 (then frame_header_long), or MP_EPROTO. */
int frame_header_short(const uint8_t b[4], uint64_t *len);
int frame_header_long(const uint8_t b[8], uint64_t *len);

/* The ends of mp_pipe keep their frames in the arena, one byte ring of
 * this many bytes (a power of two) per direction (docs/pipes.md). */
#define PIPE_RING_SIZE ((size_t)256 << 10)

/* Wraps a connected descriptor (socket or pipe end) in an mp_conn (conn.c);
 * on success the conn owns fd, on failure fd is left open. */
int conn_from_fd(mp_conn **c, int fd, bool readable, bool writable);
/* As conn_from_fd, for a call with deadline d: MP_ETIMEDOUT when another
 * process held the arena's lock until then (see arena_alloc_until). */
int conn_from_fd_until(mp_conn **c, int fd, bool readable, bool writable, const mp_deadline *d);

/* Socket addresses as strings (listener.c; the manager uses them too):
 * "unix:/path", "unix:@abstract", "tcp:HOST:PORT", "tcp:[v6]:PORT".
 * sock_parse_address: 0 or MP_EINVAL (passive: an address to bind).
 * sock_listen_on: a bound, listening, non-blocking, close-on-exec socket,
 * or an error. sock_connect_by: a connected, blocking, close-on-exec socket
 * (TCP_NODELAY), bounded by d; MP_ETIMEDOUT, or the errno's error.
 * sock_format_address: fd's bound address into out (tcp with the port the
 * kernel picked), asked if it has none. */
struct sockaddress {
    struct sockaddr_storage ss;
    socklen_t len;
};
int sock_parse_address(const char *address, bool passive, struct sockaddress *out);
int sock_listen_on(const struct sockaddress *a);
int sock_connect_by(const struct sockaddress *a, const mp_deadline *d);
void sock_format_address(int fd, const char *asked, char *out, size_t cap);

/* A unix socket's file, as bound: removed later only while the path still
 * names that file, not one someone bound there since (as after our own
 * remove). sock_file_of: the path fd is bound to, false if none (tcp, an
 * abstract name): then f's path is empty, and sock_file_remove of it does
 * nothing. */
struct sock_file {
    char path[108];
    dev_t dev;
    ino_t ino;
};
bool sock_file_of(int fd, struct sock_file *f);
void sock_file_remove(const struct sock_file *f);

/* The authkey handshake of multiprocessing.connection. The listener calls
 * deliver then answer, the client answer then deliver. digest NULL sends
 * the legacy (<= 3.11) 20-byte challenge; otherwise "{digest}" + 40 bytes
 * (3.12+, default "sha256"). Either returns 0, MP_EAUTH (wrong key, a
 * malformed or oversized message, the peer leaving) or MP_ETIMEDOUT. */
#define AUTH_DEFAULT_DIGEST "sha256"
int auth_deliver_challenge(int fd, const void *key, size_t keylen, const char *digest,
                           const mp_deadline *d);
int auth_answer_challenge(int fd, const void *key, size_t keylen, const mp_deadline *d);
/* Why this thread's last handshake ended in MP_EAUTH, as a phrase about
 * the peer ("it refused our answer (#FAILURE#): the authkeys differ"). */
const char *auth_why(void);

/* The listener's side (deliver, then answer) one step at a time on a
 * socket it never waits on, so that one process runs many handshakes at
 * once and a peer that says nothing holds up no one else. start sends the
 * challenge; step reads what has come and acts on it: 0 once the peer is
 * welcome, 1 while it waits for more, or MP_EAUTH, MP_EEOF (the peer left
 * before its verdict), -errno. */
#define AUTH_CHALLENGE_MAX 64
#define AUTH_FRAME_MAX (12 + 256)
struct auth_server {
    uint8_t phase;                          /* the frame it waits for */
    uint8_t challenge_len;
    uint16_t have, want, head;              /* bytes read, needed, and the header's */
    uint8_t challenge[AUTH_CHALLENGE_MAX];  /* what it sent */
    uint8_t frame[AUTH_FRAME_MAX];          /* the frame being read */
};
int auth_server_start(struct auth_server *a, int fd);
int auth_server_step(struct auth_server *a, int fd, const void *key, size_t keylen);

#endif
