/* protocol.h - the manager's requests and replies (docs/manager-protocol.md).
 *
 * Every message is one CBOR definite-length array of scalars: a request is
 * [op, name, args...], a reply [status, value?]. The decoder walks the bytes
 * with libcbor's streaming parser into a fixed array of views, so decoding
 * allocates nothing and anything nested, indefinite or trailing is refused.
 */
#ifndef MPROC_MANAGER_PROTOCOL_H
#define MPROC_MANAGER_PROTOCOL_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>

enum mop {
    OP_PING = 0, OP_SHUTDOWN = 1, OP_ATTACH = 2,
    OP_DICT_OPEN = 10, OP_DICT_SET, OP_DICT_GET, OP_DICT_DEL, OP_DICT_LEN,
    OP_DICT_KEYS, OP_DICT_CLEAR, OP_DICT_INCR, OP_DICT_CAS,
    OP_LIST_OPEN = 20, OP_LIST_APPEND, OP_LIST_GET, OP_LIST_SET, OP_LIST_POP, OP_LIST_LEN,
    OP_QUEUE_OPEN = 30, OP_QUEUE_PUT, OP_QUEUE_GET, OP_QUEUE_LEN,
    OP_LOCK_OPEN = 40, OP_LOCK_ACQUIRE, OP_LOCK_RELEASE,
};

enum {
    MSG_MAX_ITEMS = 6,
    MSG_MAX_NAME = 255,               /* object names, bytes */
    MSG_MAX_KEY = 64 * 1024,          /* dict keys, bytes */
    MSG_MAX_VALUE = 16 * 1024 * 1024, /* one stored value, bytes */
};

enum mtype { MV_NONE, MV_INT, MV_FLOAT, MV_BYTES, MV_TEXT, MV_NULL };

/* A view of one decoded item: bytes/text point into the received frame. */
struct mval {
    enum mtype type;
    uint8_t tag;         /* bytes from Python: 0 bytes, 'S' str (UTF-8), 'P' a pickle (pyproto.c) */
    int64_t i;
    double f;
    const uint8_t *p;
    size_t len;
};

struct mmsg {
    size_t n;
    struct mval v[MSG_MAX_ITEMS];
};

/* Decodes a message: 0, or MP_EPROTO for anything but a definite array of
 * 1..MSG_MAX_ITEMS scalars that fills the buffer exactly. */
int msg_decode(const uint8_t *data, size_t len, struct mmsg *out);

/* Checks a decoded request's shape for its op: 0 or MP_EPROTO / MP_EINVAL /
 * MP_ETOOBIG (oversized name, key or value). */
int msg_check_request(const struct mmsg *m);
/* An object name: 1..MSG_MAX_NAME bytes of valid UTF-8 without NUL. */
bool msg_name_ok(const uint8_t *p, size_t len);

/* An encoder writing into a growable buffer; errors stick until the end. */
struct menc {
    mp_buf *buf;
    int rc;
};
void enc_begin(struct menc *e, mp_buf *buf, size_t items);
void enc_int(struct menc *e, int64_t v);
void enc_float(struct menc *e, double v);
void enc_bytes(struct menc *e, const void *p, size_t len);
void enc_text(struct menc *e, const char *s, size_t len);
void enc_null(struct menc *e);
void enc_val(struct menc *e, const struct mval *v);

#endif
