/* protocol.c - encoding and strict decoding of manager messages.
 *
 * Encoding writes CBOR heads with libcbor's cbor_encode_* straight into an
 * mp_buf. Decoding runs libcbor's streaming parser item by item; every
 * callback we do not expect (maps, tags, nesting, indefinite lengths) marks
 * the message bad, and each request is then checked against its op's shape.
 */
#include "manager/protocol.h"

#include <math.h>
#include <string.h>

#include <cbor.h>

/* ------------------------------------------------------------------ decoding */

struct dec {
    struct mmsg *m;
    bool bad;
    bool started;       /* the array head has been seen */
    size_t expect;      /* items the array head announced */
};

static struct mval *dec_next(struct dec *d)
{
    if (!d->started || d->m->n >= d->expect) {
        d->bad = true;
        return NULL;
    }
    struct mval *v = &d->m->v[d->m->n++];
    memset(v, 0, sizeof *v);
    return v;
}

static void dec_uint(struct dec *d, uint64_t x)
{
    struct mval *v = dec_next(d);
    if (!v)
        return;
    if (x > INT64_MAX) {
        d->bad = true;
        return;
    }
    v->type = MV_INT;
    v->i = (int64_t)x;
}

static void dec_negint(struct dec *d, uint64_t x)
{
    struct mval *v = dec_next(d);
    if (!v)
        return;
    if (x > INT64_MAX) {        /* value is -1 - x */
        d->bad = true;
        return;
    }
    v->type = MV_INT;
    v->i = -1 - (int64_t)x;
}

static void cb_u8(void *c, uint8_t x) { dec_uint(c, x); }
static void cb_u16(void *c, uint16_t x) { dec_uint(c, x); }
static void cb_u32(void *c, uint32_t x) { dec_uint(c, x); }
static void cb_u64(void *c, uint64_t x) { dec_uint(c, x); }
static void cb_n8(void *c, uint8_t x) { dec_negint(c, x); }
static void cb_n16(void *c, uint16_t x) { dec_negint(c, x); }
static void cb_n32(void *c, uint32_t x) { dec_negint(c, x); }
static void cb_n64(void *c, uint64_t x) { dec_negint(c, x); }

static void dec_string(struct dec *d, enum mtype t, cbor_data p, size_t len)
{
    struct mval *v = dec_next(d);
    if (!v)
        return;
    v->type = t;
    v->p = p;
    v->len = len;
}

static void cb_bytes(void *c, cbor_data p, size_t n) { dec_string(c, MV_BYTES, p, n); }
static void cb_text(void *c, cbor_data p, size_t n) { dec_string(c, MV_TEXT, p, n); }

static void dec_float(struct dec *d, double x)
{
    struct mval *v = dec_next(d);
    if (v) {
        v->type = MV_FLOAT;
        v->f = x;
    }
}

static void cb_f4(void *c, float x) { dec_float(c, x); }
static void cb_f8(void *c, double x) { dec_float(c, x); }

static void cb_null(void *c)
{
    struct mval *v = dec_next(c);
    if (v)
        v->type = MV_NULL;
}

static void cb_array(void *c, size_t n)
{
    struct dec *d = c;
    if (d->started || n == 0 || n > MSG_MAX_ITEMS)
        d->bad = true;
    d->started = true;
    d->expect = n;
}

static void cb_bad(void *c) { ((struct dec *)c)->bad = true; }
static void cb_bad_size(void *c, size_t n) { MP_UNUSED(n); cb_bad(c); }
static void cb_bad_u64(void *c, uint64_t n) { MP_UNUSED(n); cb_bad(c); }
static void cb_bad_bool(void *c, bool b) { MP_UNUSED(b); cb_bad(c); }

static const struct cbor_callbacks DEC_CALLBACKS = {
    .uint8 = cb_u8, .uint16 = cb_u16, .uint32 = cb_u32, .uint64 = cb_u64,
    .negint8 = cb_n8, .negint16 = cb_n16, .negint32 = cb_n32, .negint64 = cb_n64,
    .byte_string = cb_bytes, .byte_string_start = cb_bad,
    .string = cb_text, .string_start = cb_bad,
    .array_start = cb_array, .indef_array_start = cb_bad,
    .map_start = cb_bad_size, .indef_map_start = cb_bad,
    .tag = cb_bad_u64,
    .float2 = cb_f4, .float4 = cb_f4, .float8 = cb_f8,
    .undefined = cb_bad, .null = cb_null, .boolean = cb_bad_bool, .indef_break = cb_bad,
};

int msg_decode(const uint8_t *data, size_t len, struct mmsg *out)
{
    struct dec d = { .m = out };
    out->n = 0;
    size_t off = 0;
    while (off < len && !d.bad) {
        struct cbor_decoder_result r = cbor_stream_decode(data + off, len - off, &DEC_CALLBACKS, &d);
        if (r.status != CBOR_DECODER_FINISHED || r.read == 0)
            return MP_EPROTO;
        off += r.read;
    }
    if (d.bad || !d.started || out->n != d.expect)
        return MP_EPROTO;
    return 0;
}

/* ------------------------------------------------------------------ request shapes */

/* Per op, one letter per argument after the op:
 * n name (text), k key (text), v value (int|float|bytes), b bytes,
 * e expected value (bytes|null), i int, t timeout (int|float). */
static const char *op_shape(int64_t op)
{
    switch (op) {
    case OP_PING: case OP_SHUTDOWN: return "";
    case OP_ATTACH: return "ii";
    case OP_DICT_OPEN: case OP_DICT_LEN: case OP_DICT_KEYS: case OP_DICT_CLEAR: return "n";
    case OP_DICT_SET: return "nkv";
    case OP_DICT_GET: case OP_DICT_DEL: return "nk";
    case OP_DICT_INCR: return "nki";
    case OP_DICT_CAS: return "nkeb";
    case OP_LIST_OPEN: case OP_LIST_LEN: return "n";
    case OP_LIST_APPEND: return "nv";
    case OP_LIST_GET: case OP_LIST_POP: return "ni";
    case OP_LIST_SET: return "niv";
    case OP_QUEUE_OPEN: return "ni";
    case OP_QUEUE_PUT: return "nvt";
    case OP_QUEUE_GET: return "nt";
    case OP_QUEUE_LEN: return "n";
    case OP_LOCK_OPEN: case OP_LOCK_RELEASE: return "n";
    case OP_LOCK_ACQUIRE: return "nt";
    default: return NULL;
    }
}

/* Well-formed UTF-8 (RFC 3629: no overlongs, surrogates or code points
 * above U+10FFFF). */
static bool utf8_valid(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len;) {
        uint8_t c = p[i];
        size_t n = c < 0x80 ? 0 : c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2
                 : c >= 0xf0 && c <= 0xf4 ? 3 : SIZE_MAX;
        if (n == SIZE_MAX || n >= len - i)      /* a bad lead byte, or cut short */
            return false;
        uint8_t lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
        uint8_t hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
        if (n && (p[i + 1] < lo || p[i + 1] > hi))
            return false;
        for (size_t k = 2; k <= n; k++)
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
        i += n + 1;
    }
    return true;
}

bool msg_name_ok(const uint8_t *p, size_t len)
{
    return len > 0 && len <= MSG_MAX_NAME && !memchr(p, 0, len) && utf8_valid(p, len);
}

static int check_arg(char want, const struct mval *v)
{
    switch (want) {
    case 'n':
        if (v->type != MV_TEXT)
            return MP_EPROTO;
        return msg_name_ok(v->p, v->len) ? 0 : MP_EINVAL;
    case 'k':
        if (v->type != MV_TEXT)
            return MP_EPROTO;
        return v->len > MSG_MAX_KEY ? MP_ETOOBIG : memchr(v->p, 0, v->len) ? MP_EINVAL : 0;
    case 'v':
        if (v->type == MV_INT || v->type == MV_FLOAT)
            return 0;
        /* fall through */
    case 'b':
        if (v->type != MV_BYTES)
            return MP_EPROTO;
        return v->len > MSG_MAX_VALUE ? MP_ETOOBIG : 0;
    case 'e':
        if (v->type == MV_NULL)
            return 0;
        return v->type != MV_BYTES ? MP_EPROTO : v->len > MSG_MAX_VALUE ? MP_ETOOBIG : 0;
    case 'i':
        return v->type == MV_INT ? 0 : MP_EPROTO;
    case 't':
        if (v->type == MV_INT)
            return 0;
        return v->type == MV_FLOAT && !isnan(v->f) ? 0 : MP_EPROTO;
    }
    return MP_EPROTO;
}

int msg_check_request(const struct mmsg *m)
{
    if (m->n < 1 || m->v[0].type != MV_INT)
        return MP_EPROTO;
    const char *shape = op_shape(m->v[0].i);
    if (!shape)
        return MP_EPROTO;
    size_t want = strlen(shape);
    if (m->n != want + 1)
        return MP_EPROTO;
    for (size_t i = 0; i < want; i++) {
        int rc = check_arg(shape[i], &m->v[i + 1]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------ encoding */

/* Appends one CBOR head; 9 bytes is the longest head there is. */
#define ENC_HEAD(e, call)                                                  \
    do {                                                                   \
        if ((e)->rc == 0 && ((e)->rc = mp_buf_reserve((e)->buf, (e)->buf->len + 9)) == 0) \
            (e)->buf->len += call;                                         \
    } while (0)

static unsigned char *enc_at(struct menc *e) { return (unsigned char *)e->buf->data + e->buf->len; }

void enc_begin(struct menc *e, mp_buf *buf, size_t items)
{
    e->buf = buf;
    e->rc = 0;
    buf->len = 0;
    ENC_HEAD(e, cbor_encode_array_start(items, enc_at(e), 9));
}

void enc_int(struct menc *e, int64_t v)
{
    if (v >= 0)
        ENC_HEAD(e, cbor_encode_uint((uint64_t)v, enc_at(e), 9));
    else
        ENC_HEAD(e, cbor_encode_negint((uint64_t)(-1 - v), enc_at(e), 9));
}

void enc_float(struct menc *e, double v)
{
    ENC_HEAD(e, cbor_encode_double(v, enc_at(e), 9));
}

void enc_null(struct menc *e)
{
    ENC_HEAD(e, cbor_encode_null(enc_at(e), 9));
}

static void enc_payload(struct menc *e, const void *p, size_t len)
{
    if (e->rc == 0 && len > 0)
        e->rc = mp_buf_append(e->buf, p, len);
}

void enc_bytes(struct menc *e, const void *p, size_t len)
{
    ENC_HEAD(e, cbor_encode_bytestring_start(len, enc_at(e), 9));
    enc_payload(e, p, len);
}

void enc_text(struct menc *e, const char *s, size_t len)
{
    ENC_HEAD(e, cbor_encode_string_start(len, enc_at(e), 9));
    enc_payload(e, s, len);
}

void enc_val(struct menc *e, const struct mval *v)
{
    switch (v->type) {
    case MV_INT: enc_int(e, v->i); break;
    case MV_FLOAT: enc_float(e, v->f); break;
    case MV_BYTES: enc_bytes(e, v->p, v->len); break;
    case MV_TEXT: enc_text(e, (const char *)v->p, v->len); break;
    default: enc_null(e); break;
    }
}
