/* pyvalue.c - values and dict keys between Python's pickles and the store
 * (pyvalue.h).
 */
#include "manager/pyvalue.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ values */

/* A request's value as the store keeps it; bytes point into the request or
 * into buf (an opaque value's pickle, a queue or list number). In a queue
 * or list (seq), whose C calls carry bytes only, an int is its 8 bytes
 * (int64, little-endian) and a float its IEEE double's. */
int pv_value(struct pk_node *n, mp_buf *buf, bool seq, struct mval *v)
{
    memset(v, 0, sizeof *v);
    switch (n->kind) {
    case PK_INT:
    case PK_FLOAT:
        if (!seq) {
            v->type = n->kind == PK_INT ? MV_INT : MV_FLOAT;
            v->i = n->i;
            v->f = n->f;
            return 0;
        }
        uint64_t bits;
        if (n->kind == PK_INT)
            bits = (uint64_t)n->i;
        else
            memcpy(&bits, &n->f, 8);
        buf->len = 0;
        if (mp_buf_reserve(buf, 8) < 0)
            return MP_ENOMEM;
        for (int i = 0; i < 8; i++)
            ((uint8_t *)buf->data)[i] = (uint8_t)(bits >> (8 * i));
        *v = (struct mval){ .type = MV_BYTES, .tag = n->kind == PK_INT ? 'I' : 'F', .p = buf->data, .len = 8 };
        return 0;
    case PK_BYTES: v->type = MV_BYTES; v->p = n->p; v->len = n->len; break;
    case PK_STR: v->type = MV_BYTES; v->tag = 'S'; v->p = n->p; v->len = n->len; break;
    default: {
        struct pk_writer w;
        pk_begin(&w, buf);
        pk_node(&w, n);
        int rc = pk_end(&w);
        if (rc < 0)
            return rc;
        v->type = MV_BYTES;
        v->tag = 'P';
        v->p = buf->data;
        v->len = buf->len;
        break;
    }
    }
    return v->len > MSG_MAX_VALUE ? MP_ETOOBIG : 0;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void pv_write(struct pk_writer *w, const struct mval *v)
{
    switch (v->type) {
    case MV_INT: pk_int(w, v->i); break;
    case MV_FLOAT: pk_float(w, v->f); break;
    case MV_BYTES:
        if (v->tag == 'I' && v->len == 8) {
            pk_int(w, (int64_t)le64(v->p));
        } else if (v->tag == 'F' && v->len == 8) {
            uint64_t bits = le64(v->p);
            double f;
            memcpy(&f, &bits, 8);
            pk_float(w, f);
        } else if (v->tag == 'S')
            pk_str(w, v->p, v->len);
        else if (v->tag == 'P')
            pk_embedded(w, v->p, v->len);
        else
            pk_bytes(w, v->p, v->len);
        break;
    default: pk_none(w); break;
    }
}

/* A stored number (an int, a float, or their tagged 8 bytes in a queue or
 * list) as a node: false for anything else. */
static bool number_node(const struct mval *v, struct pk_node *n)
{
    memset(n, 0, sizeof *n);
    if (v->type == MV_INT || v->type == MV_FLOAT) {
        n->kind = v->type == MV_INT ? PK_INT : PK_FLOAT;
        n->i = v->i;
        n->f = v->f;
        return true;
    }
    if (v->type != MV_BYTES || v->len != 8 || (v->tag != 'I' && v->tag != 'F'))
        return false;
    uint64_t bits = le64(v->p);
    n->kind = v->tag == 'I' ? PK_INT : PK_FLOAT;
    n->i = (int64_t)bits;
    memcpy(&n->f, &bits, 8);
    return true;
}

static int key_put(mp_buf *b, const struct pk_node *n, int depth, bool lists);

/* Whether f is an int64 value: integral and in range (false for NaN and
 * the infinities). */
static bool float_is_int64(double f)
{
    return f >= -9223372036854775808.0 && f < 9223372036854775808.0 && f == floor(f);
}

/* Python's i == f, exact: 2**53 + 1 is not 2.0**53, which (double)i would say. */
static bool int_equals_float(int64_t i, double f)
{
    return float_is_int64(f) && (int64_t)f == i;
}

bool pv_number(const struct mval *v, bool *is_int, int64_t *i, double *f)
{
    struct pk_node n;
    bool ok = number_node(v, &n);
    if (!ok && v->type == MV_BYTES && v->tag == 'P' && v->len < 16) {     /* a bool's pickle is tiny */
        struct pk_arena a = { 0 };
        struct pk_node *root;
        const char *why;
        if (pk_read(&a, v->p, v->len, &root, &why) == 0 && root->kind == PK_BOOL) {
            n = (struct pk_node){ .kind = PK_INT, .i = root->i };
            ok = true;
        }
        pk_arena_free(&a);
    }
    if (ok) {
        *is_int = n.kind == PK_INT;
        *i = n.i;
        *f = n.f;
    }
    return ok;
}

/* v as a canonical form under Python's ==, in out: numbers, str, bytes,
 * None, bool and tuples and lists of these, as the dict key encoding
 * writes them (which already makes 1, 1.0 and True one). False for any
 * other value, whose pickle alone says what it is. */
static bool canonical(const struct mval *v, mp_buf *out)
{
    struct pk_node n;
    out->len = 0;
    if (number_node(v, &n))
        return key_put(out, &n, 1, true) == 0;
    if (v->type != MV_BYTES || (v->tag != 0 && v->tag != 'S' && v->tag != 'P'))
        return false;
    if (v->tag != 'P') {
        n.kind = v->tag == 'S' ? PK_STR : PK_BYTES;
        n.p = v->p;
        n.len = v->len;
        return key_put(out, &n, 1, true) == 0;
    }
    struct pk_arena a = { 0 };
    struct pk_node *root;
    const char *why;
    bool ok = pk_read(&a, v->p, v->len, &root, &why) == 0 && key_put(out, root, 1, true) == 0;
    pk_arena_free(&a);
    return ok;
}

/* Python's == (1 == 1.0 == True, (1, 2) == (1.0, 2)) for the values whose
 * equality the server can tell without running code; any other value
 * equals only a value with the same pickle. */
bool pv_equal(const struct mval *a, const struct mval *b)
{
    struct pk_node x, y;
    if (number_node(a, &x) && number_node(b, &y)) {
        if (x.kind == PK_INT && y.kind == PK_INT)
            return x.i == y.i;
        if (x.kind == PK_FLOAT && y.kind == PK_FLOAT)
            return x.f == y.f;
        return x.kind == PK_INT ? int_equals_float(x.i, y.f) : int_equals_float(y.i, x.f);
    }
    if (a->type == MV_BYTES && b->type == MV_BYTES && a->tag == b->tag && a->len == b->len &&
        (a->len == 0 || memcmp(a->p, b->p, a->len) == 0))
        return true;
    mp_buf ca = { 0 }, cb = { 0 };
    bool eq = canonical(a, &ca) && canonical(b, &cb) && ca.len == cb.len &&
              memcmp(ca.data, cb.data, ca.len) == 0;
    mp_buf_free(&ca);
    mp_buf_free(&cb);
    return eq;
}

int pv_sval_set(struct sval *s, const struct mval *v)
{
    s->type = v->type;
    s->tag = v->tag;
    s->i = v->i;
    s->f = v->f;
    s->b.len = 0;
    return v->type == MV_BYTES ? mp_buf_append(&s->b, v->p, v->len) : 0;
}

struct mval pv_sval_view(const struct sval *s)
{
    return (struct mval){ .type = s->type, .tag = s->tag, .i = s->i, .f = s->f, .p = s->b.data ? s->b.data : (const uint8_t *)"", .len = s->b.len };
}

/* ------------------------------------------------------------------ dict keys */

static int hex_put(mp_buf *b, const uint8_t *p, size_t n)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        char two[2] = { hx[p[i] >> 4], hx[p[i] & 15] };
        if (mp_buf_append(b, two, 2) < 0)
            return MP_ENOMEM;
    }
    return 0;
}

/* An int's bytes as pickle's LONG1 and LONG4 carry them (two's complement,
 * little-endian) without the sign bytes Python's minimal encoding leaves
 * out, so that every writer's bytes for one number are one key. */
static size_t bigint_trim(const uint8_t *p, size_t n)
{
    while (n > 1 && ((p[n - 1] == 0 && !(p[n - 2] & 0x80)) || (p[n - 1] == 0xff && (p[n - 2] & 0x80))))
        n--;
    return n;
}

/* The bytes (as bigint_trim leaves them) of the int a finite, integral f
 * equals; out holds any double's (2**1024 takes 129 bytes). */
#define FLOAT_INT_BYTES 130
static size_t float_int_bytes(double f, uint8_t out[FLOAT_INT_BYTES])
{
    int e;
    uint64_t mant = (uint64_t)ldexp(frexp(fabs(f), &e), 53);   /* |f| = mant * 2**(e - 53) */
    memset(out, 0, FLOAT_INT_BYTES);
    for (int bit = 0; bit < 53; bit++) {
        int at = bit + e - 53;
        if (at >= 0 && (mant >> bit & 1))
            out[at / 8] |= (uint8_t)(1u << (at % 8));
    }
    size_t n = (size_t)e / 8 + 2;             /* the magnitude's bytes and a sign byte */
    if (f < 0) {
        unsigned carry = 1;
        for (size_t i = 0; i < n; i++) {
            unsigned v = (uint8_t)~out[i] + carry;
            out[i] = (uint8_t)v;
            carry = v >> 8;
        }
    }
    return bigint_trim(out, n);
}

/* An int's bytes as a key: "i" and its digits if it fits in an int64, else
 * "L" and the hex of its trimmed bytes. */
static int int_key_put(mp_buf *b, const uint8_t *p, size_t n)
{
    n = bigint_trim(p, n);
    if (n > 8) {
        int rc = mp_buf_append(b, "\xffL", 2);
        return rc < 0 ? rc : hex_put(b, p, n);
    }
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;)
        v = v << 8 | p[i];
    if (n < 8 && (p[n - 1] & 0x80))
        v |= ~(uint64_t)0 << (8 * n);          /* sign-extend */
    char num[32];
    snprintf(num, sizeof num, "\xffi%" PRId64, (int64_t)v);
    return mp_buf_append(b, num, strlen(num));
}

/* A NaN key is a key of its own: Python's dict finds a key by identity or
 * ==, and each NaN the server unpickles is a new object equal to nothing,
 * so d[nan] = 1 twice makes two keys and d[nan] finds neither. */
static _Atomic uint64_t nan_keys;

static int key_put(mp_buf *b, const struct pk_node *n, int depth, bool lists)
{
    char num[64];
    int rc;
    if (depth > PK_MAX_DEPTH)
        return MP_ETYPE;
    if (b->len > MSG_MAX_KEY)      /* a tuple the memo repeats could expand without end */
        return MP_ETOOBIG;
    switch (n->kind) {
    case PK_STR:
        if (n->len && n->p[0] != 0xff && !memchr(n->p, 0, n->len) && depth == 0)
            return mp_buf_append(b, n->p, n->len);
        return (rc = mp_buf_append(b, "\xffs", 2)) < 0 ? rc : hex_put(b, n->p, n->len);
    case PK_BOOL:
    case PK_INT:
        snprintf(num, sizeof num, "\xffi%" PRId64, n->i);
        return mp_buf_append(b, num, strlen(num));
    case PK_FLOAT:
        if (float_is_int64(n->f)) {
            snprintf(num, sizeof num, "\xffi%" PRId64, (int64_t)n->f);
        } else if (isfinite(n->f) && n->f == floor(n->f)) {
            uint8_t bytes[FLOAT_INT_BYTES];       /* the int it equals, as that int's key */
            return int_key_put(b, bytes, float_int_bytes(n->f, bytes));
        } else if (isnan(n->f)) {
            snprintf(num, sizeof num, "\xffn%" PRIu64, atomic_fetch_add(&nan_keys, 1));
        } else {
            snprintf(num, sizeof num, "\xff" "f%a", n->f);
        }
        return mp_buf_append(b, num, strlen(num));
    case PK_BIGINT:
        return n->len ? int_key_put(b, n->p, n->len) : mp_buf_append(b, "\xffi0", 3);
    case PK_BYTES:
        return (rc = mp_buf_append(b, "\xff" "b", 2)) < 0 ? rc : hex_put(b, n->p, n->len);
    case PK_NONE:
        return mp_buf_append(b, "\xffN", 2);
    case PK_LIST:
    case PK_TUPLE:
        if (n->kind == PK_LIST && !lists)
            return MP_ETYPE;
        snprintf(num, sizeof num, n->kind == PK_LIST ? "\xffl%" PRIu32 ":" : "\xfft%" PRIu32 ":", n->n);
        if ((rc = mp_buf_append(b, num, strlen(num))) < 0)
            return rc;
        for (uint32_t i = 0; i < n->n; i++) {
            size_t at = b->len;
            if ((rc = mp_buf_append(b, "00000000:", 9)) < 0 || (rc = key_put(b, n->kids[i], depth + 1, lists)) < 0)
                return rc;
            snprintf(num, sizeof num, "%08zx", b->len - at - 9);
            memcpy((char *)b->data + at, num, 8);
        }
        return 0;
    default:
        return MP_ETYPE;
    }
}

/* A dict key node as the store's key: 0, MP_ETYPE (not hashable here) or MP_ETOOBIG. */
int pv_key(struct pk_node *n, mp_buf *b, struct mval *k)
{
    b->len = 0;
    int rc = key_put(b, n, 0, false);
    if (rc < 0)
        return rc;
    if (b->len > MSG_MAX_KEY)
        return MP_ETOOBIG;
    if (mp_buf_reserve(b, 1) < 0)
        return MP_ENOMEM;
    *k = (struct mval){ .type = MV_TEXT, .p = b->data, .len = b->len };
    return 0;
}

static int unhex(const uint8_t *p, size_t n, mp_buf *out)
{
    out->len = 0;
    if (n % 2 || mp_buf_reserve(out, n / 2 + 1) < 0)
        return MP_EPROTO;
    uint8_t *o = out->data;
    for (size_t i = 0; i < n; i += 2) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            uint8_t c = p[i + k];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (d < 0)
                return MP_EPROTO;
            v = v * 16 + d;
        }
        o[i / 2] = (uint8_t)v;
    }
    out->len = n / 2;
    return 0;
}

/* Writes the Python key a store key stands for. */
int pv_key_write(struct pk_writer *w, const uint8_t *p, size_t n, int depth)
{
    if (n == 0 || p[0] != 0xff) {
        pk_str(w, p, n);
        return 0;
    }
    if (n < 2 || depth > PK_MAX_DEPTH)
        return MP_EPROTO;
    char buf[80];
    mp_buf tmp = { 0 };
    int rc = 0;
    switch (p[1]) {
    case 'i':
    case 'f':
        if (n - 2 >= sizeof buf)
            return MP_EPROTO;
        memcpy(buf, p + 2, n - 2);
        buf[n - 2] = 0;
        if (p[1] == 'i')
            pk_int(w, strtoll(buf, NULL, 10));
        else
            pk_float(w, strtod(buf, NULL));
        return 0;
    case 'N':
        pk_none(w);
        return 0;
    case 'n':
        pk_float(w, NAN);
        return 0;
    case 's':
    case 'b':
    case 'L':
        if ((rc = unhex(p + 2, n - 2, &tmp)) == 0) {
            if (p[1] == 's')
                pk_str(w, tmp.data, tmp.len);
            else if (p[1] == 'b')
                pk_bytes(w, tmp.data, tmp.len);
            else
                pk_bigint(w, tmp.data, tmp.len);
        }
        mp_buf_free(&tmp);
        return rc;
    case 't': {
        const uint8_t *colon = memchr(p + 2, ':', n - 2);
        if (!colon)
            return MP_EPROTO;
        const uint8_t *q = colon + 1, *end = p + n;
        pk_mark(w);
        while (q < end) {
            if (end - q < 9 || q[8] != ':')
                return MP_EPROTO;
            memcpy(buf, q, 8);
            buf[8] = 0;
            size_t len = strtoul(buf, NULL, 16);
            q += 9;
            if (len > (size_t)(end - q) || (rc = pv_key_write(w, q, len, depth + 1)) < 0)
                return MP_EPROTO;
            q += len;
        }
        pk_tuple_mark(w);
        return 0;
    }
    }
    pk_bytes(w, p, n);    /* a C key that happens to start with 0xff */
    return 0;
}
