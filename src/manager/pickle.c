/* pickle.c - read pickles into node trees without running them, and write
 * pickles back (pickle.h).
 *
 * The reader is CPython's unpickler loop (Modules/_pickle.c, load_*) with
 * every "call" replaced by a node that records it: the stack, the marks and
 * the memo hold node pointers, so sharing and cycles come out as they went
 * in. It reads only the opcodes of protocols 2-5 that CPython's pickler
 * emits for data (no text opcodes, persistent ids, extension codes or
 * out-of-band buffers). The writer memoizes every container it writes, so a
 * node tree goes out with its sharing and cycles intact.
 */
#include "manager/pickle.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum {
    OP_MARK = '(', OP_STOP = '.', OP_POP = '0', OP_POP_MARK = '1', OP_DUP = '2',
    OP_BININT = 'J', OP_BININT1 = 'K', OP_BININT2 = 'M', OP_NONE = 'N', OP_REDUCE = 'R',
    OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b', OP_GLOBAL = 'c', OP_DICT = 'd',
    OP_EMPTY_DICT = '}', OP_APPENDS = 'e', OP_BINGET = 'h', OP_LONG_BINGET = 'j', OP_LIST = 'l',
    OP_EMPTY_LIST = ']', OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_SETITEM = 's', OP_TUPLE = 't',
    OP_EMPTY_TUPLE = ')', OP_SETITEMS = 'u', OP_BINFLOAT = 'G', OP_BINBYTES = 'B',
    OP_SHORT_BINBYTES = 'C',
    OP_PROTO = 0x80, OP_NEWOBJ = 0x81, OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87,
    OP_NEWTRUE = 0x88, OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a, OP_LONG4 = 0x8b,
    OP_SHORT_BINUNICODE = 0x8c, OP_BINUNICODE8 = 0x8d, OP_BINBYTES8 = 0x8e, OP_EMPTY_SET = 0x8f,
    OP_ADDITEMS = 0x90, OP_FROZENSET = 0x91, OP_NEWOBJ_EX = 0x92, OP_STACK_GLOBAL = 0x93,
    OP_MEMOIZE = 0x94, OP_FRAME = 0x95, OP_BYTEARRAY8 = 0x96,
};

enum { PK_CHUNK = 64 * 1024, PK_MAX_GLOBAL_NAME = 1024, PK_BATCH = 1000 };

struct pk_chunk {
    struct pk_chunk *next;
    size_t size, used;
    _Alignas(max_align_t) uint8_t data[];
};

/* ------------------------------------------------------------------ arena */

static void *pk_alloc(struct pk_arena *a, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    struct pk_chunk *c = a->chunks;
    if (!c || c->size - c->used < size) {
        size_t n = size > PK_CHUNK ? size : PK_CHUNK;
        if (n > PK_MAX_ARENA - a->used)
            return NULL;
        c = malloc(sizeof *c + n);
        if (!c)
            return NULL;
        c->next = a->chunks;
        c->size = n;
        c->used = 0;
        a->chunks = c;
        a->used += n;
    }
    void *p = c->data + c->used;
    c->used += size;
    return p;
}

void pk_arena_free(struct pk_arena *a)
{
    for (struct pk_chunk *c = a->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    memset(a, 0, sizeof *a);
}

void pk_arena_reset(struct pk_arena *a)
{
    struct pk_chunk *keep = NULL;
    for (struct pk_chunk *c = a->chunks, *next; c; c = next) {
        next = c->next;
        if (!keep && c->size == PK_CHUNK)
            keep = c;
        else
            free(c);
    }
    a->chunks = keep;
    a->used = keep ? keep->size : 0;
    a->nodes = 0;
    if (keep) {
        keep->used = 0;
        keep->next = NULL;
    }
}

/* Grows an array of elem-sized items to hold need; false past max or memory. */
static bool pk_grow(struct pk_arena *a, void **arr, uint32_t *cap, size_t need, size_t elem, size_t max)
{
    if (need <= *cap)
        return true;
    if (need > max)
        return false;
    size_t n = *cap ? (size_t)*cap * 2 : 4;
    while (n < need)
        n *= 2;
    if (n > max)
        n = max;
    void *p = pk_alloc(a, n * elem);
    if (!p)
        return false;
    if (*cap)
        memcpy(p, *arr, (size_t)*cap * elem);
    *arr = p;
    *cap = (uint32_t)n;
    return true;
}

/* ------------------------------------------------------------------ reader */

struct pk_reader {
    struct pk_arena *a;
    const uint8_t *p, *end;
    struct pk_node **stack;
    uint32_t sp, stack_cap;
    uint32_t *marks;
    uint32_t nmarks, marks_cap;
    struct pk_node **memo;
    uint32_t memo_len, memo_cap;
    const char *why;
};

static int fail(struct pk_reader *r, const char *why)
{
    r->why = why;
    return MP_EPROTO;
}

static struct pk_node *node_new(struct pk_reader *r, enum pk_kind kind)
{
    if (r->a->nodes >= PK_MAX_NODES) {
        r->why = "pickle has too many items";
        return NULL;
    }
    struct pk_node *n = pk_alloc(r->a, sizeof *n);
    if (!n) {
        r->why = "pickle needs too much memory";
        return NULL;
    }
    memset(n, 0, sizeof *n);
    n->kind = kind;
    r->a->nodes++;
    return n;
}

static bool need(struct pk_reader *r, size_t n) { return (size_t)(r->end - r->p) >= n; }

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int push(struct pk_reader *r, struct pk_node *n)
{
    if (!n)
        return MP_EPROTO;
    if (!pk_grow(r->a, (void **)&r->stack, &r->stack_cap, (size_t)r->sp + 1, sizeof *r->stack, PK_MAX_STACK))
        return fail(r, "pickle stack too deep");
    r->stack[r->sp++] = n;
    return 0;
}

static uint32_t mark_base(const struct pk_reader *r) { return r->nmarks ? r->marks[r->nmarks - 1] : 0; }

static struct pk_node *pop(struct pk_reader *r)
{
    if (r->sp <= mark_base(r)) {
        r->why = "pickle stack underflow";
        return NULL;
    }
    return r->stack[--r->sp];
}

static struct pk_node *top(struct pk_reader *r)
{
    if (r->sp <= mark_base(r)) {
        r->why = "pickle stack underflow";
        return NULL;
    }
    return r->stack[r->sp - 1];
}

/* Pops to the last mark: the items are stack[*first .. sp). */
static int pop_mark(struct pk_reader *r, uint32_t *first)
{
    if (!r->nmarks)
        return fail(r, "pickle has no mark");
    *first = r->marks[--r->nmarks];
    return 0;
}

static int add_kid(struct pk_reader *r, struct pk_node *n, struct pk_node *kid)
{
    if (!pk_grow(r->a, (void **)&n->kids, &n->cap, (size_t)n->n + 1, sizeof *n->kids, PK_MAX_NODES))
        return fail(r, "pickle needs too much memory");
    n->kids[n->n++] = kid;
    if (kid->depth + 1 > n->depth) {
        if (kid->depth + 1 > PK_MAX_DEPTH)
            return fail(r, "pickle nested too deeply");
        n->depth = (uint16_t)(kid->depth + 1);
    }
    return 0;
}

static int add_step(struct pk_reader *r, struct pk_node *n, uint8_t op, struct pk_node *a, struct pk_node *b)
{
    if (!pk_grow(r->a, (void **)&n->steps, &n->capsteps, (size_t)n->nsteps + 1, sizeof *n->steps, PK_MAX_NODES))
        return fail(r, "pickle needs too much memory");
    n->steps[n->nsteps++] = (struct pk_step){ op, a, b };
    uint16_t d = a->depth;
    if (b && b->depth > d)
        d = b->depth;
    if (d + 1 > PK_MAX_DEPTH)
        return fail(r, "pickle nested too deeply");
    if (d + 1 > n->depth)
        n->depth = (uint16_t)(d + 1);
    return 0;
}

/* A node of kind with stack[first .. sp) as its items, replacing them. */
static int collect(struct pk_reader *r, enum pk_kind kind, uint32_t first)
{
    struct pk_node *n = node_new(r, kind);
    if (!n)
        return MP_EPROTO;
    for (uint32_t i = first; i < r->sp; i++)
        if (add_kid(r, n, r->stack[i]) < 0)
            return MP_EPROTO;
    r->sp = first;
    return push(r, n);
}

static int read_string(struct pk_reader *r, enum pk_kind kind, int lenbytes)
{
    if (!need(r, (size_t)lenbytes))
        return fail(r, "truncated pickle");
    uint64_t len = le(r->p, lenbytes);
    r->p += lenbytes;
    if (!need(r, len))
        return fail(r, "truncated pickle");
    struct pk_node *n = node_new(r, kind);
    if (!n)
        return MP_EPROTO;
    n->p = r->p;
    n->len = (size_t)len;
    r->p += len;
    return push(r, n);
}

static int read_long(struct pk_reader *r, int lenbytes)
{
    if (!need(r, (size_t)lenbytes))
        return fail(r, "truncated pickle");
    uint64_t len = le(r->p, lenbytes);
    r->p += lenbytes;
    if (lenbytes == 4 && (int32_t)len < 0)
        return fail(r, "negative length in pickle");
    if (!need(r, len))
        return fail(r, "truncated pickle");
    const uint8_t *b = r->p;
    r->p += len;
    /* Sign bytes Python's minimal encoding leaves out (another writer's
     * pickle may carry them): one number, one node, whoever wrote it. */
    while (len > 1 && ((b[len - 1] == 0 && !(b[len - 2] & 0x80)) || (b[len - 1] == 0xff && (b[len - 2] & 0x80))))
        len--;
    struct pk_node *n = node_new(r, PK_INT);
    if (!n)
        return MP_EPROTO;
    if (len <= 8) {
        uint64_t v = len ? le(b, (int)len) : 0;
        if (len && len < 8 && (b[len - 1] & 0x80))
            v |= ~(uint64_t)0 << (8 * len);           /* sign-extend */
        n->i = (int64_t)v;
    } else {
        n->kind = PK_BIGINT;
        n->p = b;
        n->len = (size_t)len;
    }
    return push(r, n);
}

static int read_global_line(struct pk_reader *r, const uint8_t **s, size_t *len)
{
    const uint8_t *nl = memchr(r->p, '\n', (size_t)(r->end - r->p));
    if (!nl || nl == r->p || (size_t)(nl - r->p) > PK_MAX_GLOBAL_NAME)
        return fail(r, "bad global name in pickle");
    *s = r->p;
    *len = (size_t)(nl - r->p);
    r->p = nl + 1;
    return 0;
}

static int make_global(struct pk_reader *r, const uint8_t *m, size_t mlen, const uint8_t *nm, size_t nlen)
{
    if (!mlen || !nlen || mlen > PK_MAX_GLOBAL_NAME || nlen > PK_MAX_GLOBAL_NAME ||
        memchr(m, '\n', mlen) || memchr(nm, '\n', nlen))
        return fail(r, "bad global name in pickle");
    struct pk_node *n = node_new(r, PK_GLOBAL);
    if (!n)
        return MP_EPROTO;
    n->p = m;
    n->len = mlen;
    n->p2 = nm;
    n->len2 = nlen;
    return push(r, n);
}

/* REDUCE, NEWOBJ, NEWOBJ_EX: an object node over its callable and arguments. */
static int make_object(struct pk_reader *r, uint8_t op)
{
    struct pk_node *kw = op == OP_NEWOBJ_EX ? pop(r) : NULL;
    struct pk_node *args = pop(r);
    struct pk_node *fn = args ? pop(r) : NULL;
    if (!fn || (op == OP_NEWOBJ_EX && !kw))
        return MP_EPROTO;
    if (args->kind != PK_TUPLE || (kw && kw->kind != PK_DICT))
        return fail(r, "bad arguments in pickle");
    struct pk_node *n = node_new(r, PK_OBJECT);
    if (!n)
        return MP_EPROTO;
    n->op = op;
    if (add_kid(r, n, fn) < 0 || add_kid(r, n, args) < 0 || (kw && add_kid(r, n, kw) < 0))
        return MP_EPROTO;
    return push(r, n);
}

static int memo_put(struct pk_reader *r, uint64_t idx)
{
    struct pk_node *t = top(r);
    if (!t)
        return MP_EPROTO;
    if (idx >= PK_MAX_MEMO)
        return fail(r, "pickle memo too large");
    if (!pk_grow(r->a, (void **)&r->memo, &r->memo_cap, (size_t)idx + 1, sizeof *r->memo, PK_MAX_MEMO))
        return fail(r, "pickle memo too large");
    while (r->memo_len <= idx)
        r->memo[r->memo_len++] = NULL;
    r->memo[idx] = t;
    return 0;
}

static int memo_get(struct pk_reader *r, uint64_t idx)
{
    if (idx >= r->memo_len || !r->memo[idx])
        return fail(r, "pickle memo key missing");
    return push(r, r->memo[idx]);
}

/* APPEND(S) and SETITEM(S) onto stack[first - 1]. */
static int fill(struct pk_reader *r, uint32_t first, bool pairs)
{
    if (first == 0 || first <= mark_base(r))
        return fail(r, "pickle stack underflow");
    struct pk_node *target = r->stack[first - 1];
    uint32_t n = r->sp - first;
    if (pairs && n % 2)
        return fail(r, "odd number of dict items in pickle");
    for (uint32_t i = first; i < r->sp; i += pairs ? 2 : 1) {
        int rc;
        if (!pairs && target->kind == PK_LIST)
            rc = add_kid(r, target, r->stack[i]);
        else if (pairs && target->kind == PK_DICT)
            rc = add_kid(r, target, r->stack[i]) < 0 ? MP_EPROTO : add_kid(r, target, r->stack[i + 1]);
        else if (target->kind == PK_OBJECT)
            rc = add_step(r, target, pairs ? OP_SETITEM : OP_APPEND, r->stack[i], pairs ? r->stack[i + 1] : NULL);
        else
            rc = fail(r, pairs ? "pickle sets items on a non-dict" : "pickle appends to a non-list");
        if (rc < 0)
            return rc;
    }
    r->sp = first;
    return 0;
}

static int read_op(struct pk_reader *r, uint8_t op, struct pk_node **out)
{
    uint32_t first;
    int rc;
    struct pk_node *n, *a, *b;
    switch (op) {
    case OP_PROTO:
        if (!need(r, 1) || r->p[0] < 2 || r->p[0] > 5)
            return fail(r, "unsupported pickle protocol");
        r->p++;
        return 0;
    case OP_FRAME:
        if (!need(r, 8) || le(r->p, 8) > (uint64_t)(r->end - r->p - 8))
            return fail(r, "truncated pickle");
        r->p += 8;
        return 0;
    case OP_STOP:
        if (!(*out = top(r)))
            return MP_EPROTO;
        return r->p == r->end ? 1 : fail(r, "bytes after the end of the pickle");
    case OP_MARK:
        if (!pk_grow(r->a, (void **)&r->marks, &r->marks_cap, (size_t)r->nmarks + 1, sizeof *r->marks, PK_MAX_STACK))
            return fail(r, "pickle has too many marks");
        r->marks[r->nmarks++] = r->sp;
        return 0;
    case OP_POP:
        if (r->sp > mark_base(r))
            r->sp--;
        else if (r->nmarks)
            r->nmarks--;
        else
            return fail(r, "pickle stack underflow");
        return 0;
    case OP_POP_MARK:
        if ((rc = pop_mark(r, &first)) < 0)
            return rc;
        r->sp = first;
        return 0;
    case OP_DUP:
        return (n = top(r)) ? push(r, n) : MP_EPROTO;
    case OP_NONE:
        return push(r, node_new(r, PK_NONE));
    case OP_NEWTRUE:
    case OP_NEWFALSE:
        if ((n = node_new(r, PK_BOOL)))
            n->i = op == OP_NEWTRUE;
        return push(r, n);
    case OP_BININT1:
    case OP_BININT2:
    case OP_BININT: {
        int nb = op == OP_BININT1 ? 1 : op == OP_BININT2 ? 2 : 4;
        if (!need(r, (size_t)nb))
            return fail(r, "truncated pickle");
        uint64_t v = le(r->p, nb);
        r->p += nb;
        if ((n = node_new(r, PK_INT)))
            n->i = nb == 4 ? (int64_t)(int32_t)(uint32_t)v : (int64_t)v;
        return push(r, n);
    }
    case OP_LONG1:
        return read_long(r, 1);
    case OP_LONG4:
        return read_long(r, 4);
    case OP_BINFLOAT: {
        if (!need(r, 8))
            return fail(r, "truncated pickle");
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++)
            bits = bits << 8 | r->p[i];
        r->p += 8;
        if ((n = node_new(r, PK_FLOAT)))
            memcpy(&n->f, &bits, 8);
        return push(r, n);
    }
    case OP_SHORT_BINBYTES: return read_string(r, PK_BYTES, 1);
    case OP_BINBYTES: return read_string(r, PK_BYTES, 4);
    case OP_BINBYTES8: return read_string(r, PK_BYTES, 8);
    case OP_SHORT_BINUNICODE: return read_string(r, PK_STR, 1);
    case OP_BINUNICODE: return read_string(r, PK_STR, 4);
    case OP_BINUNICODE8: return read_string(r, PK_STR, 8);
    case OP_BYTEARRAY8: return read_string(r, PK_BYTEARRAY, 8);
    case OP_EMPTY_TUPLE: return push(r, node_new(r, PK_TUPLE));
    case OP_EMPTY_LIST: return push(r, node_new(r, PK_LIST));
    case OP_EMPTY_DICT: return push(r, node_new(r, PK_DICT));
    case OP_EMPTY_SET: return push(r, node_new(r, PK_SET));
    case OP_TUPLE1:
    case OP_TUPLE2:
    case OP_TUPLE3: {
        uint32_t k = (uint32_t)(op - OP_TUPLE1 + 1);
        if (r->sp < mark_base(r) + k)
            return fail(r, "pickle stack underflow");
        return collect(r, PK_TUPLE, r->sp - k);
    }
    case OP_TUPLE:
    case OP_LIST:
    case OP_FROZENSET:
        if ((rc = pop_mark(r, &first)) < 0)
            return rc;
        return collect(r, op == OP_TUPLE ? PK_TUPLE : op == OP_LIST ? PK_LIST : PK_FROZENSET, first);
    case OP_DICT:
        if ((rc = pop_mark(r, &first)) < 0)
            return rc;
        if ((r->sp - first) % 2)
            return fail(r, "odd number of dict items in pickle");
        return collect(r, PK_DICT, first);
    case OP_APPEND:
    case OP_SETITEM:
        first = r->sp - (op == OP_APPEND ? 1 : 2);
        if (r->sp < (op == OP_APPEND ? 1u : 2u) || first < mark_base(r))
            return fail(r, "pickle stack underflow");
        return fill(r, first, op == OP_SETITEM);
    case OP_APPENDS:
    case OP_SETITEMS:
        if ((rc = pop_mark(r, &first)) < 0)
            return rc;
        return fill(r, first, op == OP_SETITEMS);
    case OP_ADDITEMS:
        if ((rc = pop_mark(r, &first)) < 0)
            return rc;
        if (first == 0 || first <= mark_base(r) || r->stack[first - 1]->kind != PK_SET)
            return fail(r, "pickle adds items to a non-set");
        for (uint32_t i = first; i < r->sp; i++)
            if (add_kid(r, r->stack[first - 1], r->stack[i]) < 0)
                return MP_EPROTO;
        r->sp = first;
        return 0;
    case OP_GLOBAL: {
        const uint8_t *m, *nm;
        size_t ml, nl;
        if ((rc = read_global_line(r, &m, &ml)) < 0 || (rc = read_global_line(r, &nm, &nl)) < 0)
            return rc;
        return make_global(r, m, ml, nm, nl);
    }
    case OP_STACK_GLOBAL:
        b = pop(r);
        a = b ? pop(r) : NULL;
        if (!a)
            return MP_EPROTO;
        if (a->kind != PK_STR || b->kind != PK_STR)
            return fail(r, "bad global name in pickle");
        return make_global(r, a->p, a->len, b->p, b->len);
    case OP_REDUCE:
    case OP_NEWOBJ:
    case OP_NEWOBJ_EX:
        return make_object(r, op);
    case OP_BUILD:
        a = pop(r);
        n = a ? top(r) : NULL;
        if (!n)
            return MP_EPROTO;
        if (n->kind != PK_OBJECT)
            return fail(r, "pickle builds a non-object");
        return add_step(r, n, OP_BUILD, a, NULL);
    case OP_MEMOIZE:
        return memo_put(r, r->memo_len);
    case OP_BINPUT:
    case OP_LONG_BINPUT:
    case OP_BINGET:
    case OP_LONG_BINGET: {
        int nb = op == OP_BINPUT || op == OP_BINGET ? 1 : 4;
        if (!need(r, (size_t)nb))
            return fail(r, "truncated pickle");
        uint64_t idx = le(r->p, nb);
        r->p += nb;
        return op == OP_BINPUT || op == OP_LONG_BINPUT ? memo_put(r, idx) : memo_get(r, idx);
    }
    }
    return fail(r, "pickle opcode not allowed");
}

int pk_read(struct pk_arena *a, const uint8_t *data, size_t len, struct pk_node **out, const char **why)
{
    struct pk_reader r = { .a = a, .p = data, .end = data + len };
    *out = NULL;
    for (;;) {
        if (r.p >= r.end) {
            *why = "truncated pickle";
            return MP_EPROTO;
        }
        int rc = read_op(&r, *r.p++, out);
        if (rc == 1)
            return 0;
        if (rc < 0) {
            *why = r.why ? r.why : "bad pickle";
            return a->used >= PK_MAX_ARENA - PK_CHUNK || a->nodes >= PK_MAX_NODES ? MP_ETOOBIG : MP_EPROTO;
        }
    }
}

bool pk_is_str(const struct pk_node *n, const char *s)
{
    return n && n->kind == PK_STR && n->len == strlen(s) && memcmp(n->p, s, n->len) == 0;
}

/* ------------------------------------------------------------------ writer */

static _Atomic uint32_t pk_generation;

static void put(struct pk_writer *w, const void *p, size_t n)
{
    if (w->rc == 0)
        w->rc = mp_buf_append(w->buf, p, n);
}

static void put1(struct pk_writer *w, uint8_t b) { put(w, &b, 1); }

static void put_le(struct pk_writer *w, uint64_t v, int n)
{
    uint8_t b[8];
    for (int i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    put(w, b, (size_t)n);
}

void pk_begin(struct pk_writer *w, mp_buf *buf)
{
    memset(w, 0, sizeof *w);
    w->buf = buf;
    buf->len = 0;
    w->gen = atomic_fetch_add(&pk_generation, 1) + 1;
    put1(w, OP_PROTO);
    put1(w, 4);
}

int pk_end(struct pk_writer *w)
{
    put1(w, OP_STOP);
    return w->rc;
}

static void memoize(struct pk_writer *w, struct pk_node *n)
{
    put1(w, OP_MEMOIZE);
    if (n) {
        n->memo = ++w->next_memo;
        n->memo_gen = w->gen;
    } else {
        w->next_memo++;
    }
}

void pk_none(struct pk_writer *w) { put1(w, OP_NONE); }
void pk_bool(struct pk_writer *w, bool v) { put1(w, v ? OP_NEWTRUE : OP_NEWFALSE); }

void pk_int(struct pk_writer *w, int64_t v)
{
    if (v >= 0 && v < 256) {
        put1(w, OP_BININT1);
        put1(w, (uint8_t)v);
    } else if (v >= 0 && v < 65536) {
        put1(w, OP_BININT2);
        put_le(w, (uint64_t)v, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        put1(w, OP_BININT);
        put_le(w, (uint64_t)v, 4);
    } else {
        int n = 8;   /* the fewest two's-complement bytes, as CPython's encode_long */
        while (n > 1 && ((v >> (8 * (n - 1) - 1)) == 0 || (v >> (8 * (n - 1) - 1)) == -1))
            n--;
        put1(w, OP_LONG1);
        put1(w, (uint8_t)n);
        put_le(w, (uint64_t)v, n);
    }
}

void pk_float(struct pk_writer *w, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, 8);
    uint8_t b[9] = { OP_BINFLOAT };
    for (int i = 0; i < 8; i++)
        b[1 + i] = (uint8_t)(bits >> (56 - 8 * i));
    put(w, b, sizeof b);
}

static void put_sized(struct pk_writer *w, uint8_t op1, uint8_t op4, uint8_t op8, const void *p, size_t len)
{
    if (len < 256 && op1) {
        put1(w, op1);
        put1(w, (uint8_t)len);
    } else if (len <= UINT32_MAX && op4) {
        put1(w, op4);
        put_le(w, len, 4);
    } else {
        put1(w, op8);
        put_le(w, len, 8);
    }
    put(w, p, len);
}

void pk_bytes(struct pk_writer *w, const void *p, size_t len)
{
    put_sized(w, OP_SHORT_BINBYTES, OP_BINBYTES, OP_BINBYTES8, p, len);
}

void pk_str(struct pk_writer *w, const void *p, size_t len)
{
    put_sized(w, OP_SHORT_BINUNICODE, OP_BINUNICODE, OP_BINUNICODE8, p, len);
}

void pk_cstr(struct pk_writer *w, const char *s) { pk_str(w, s, strlen(s)); }
void pk_mark(struct pk_writer *w) { put1(w, OP_MARK); }

void pk_tuple(struct pk_writer *w, size_t n)
{
    static const uint8_t ops[] = { OP_EMPTY_TUPLE, OP_TUPLE1, OP_TUPLE2, OP_TUPLE3 };
    if (n > 3)
        w->rc = w->rc ? w->rc : MP_EINVAL;
    else
        put1(w, ops[n]);
}

void pk_tuple_mark(struct pk_writer *w) { put1(w, OP_TUPLE); }
void pk_empty_list(struct pk_writer *w) { put1(w, OP_EMPTY_LIST); }
void pk_appends(struct pk_writer *w) { put1(w, OP_APPENDS); }
void pk_empty_dict(struct pk_writer *w) { put1(w, OP_EMPTY_DICT); }
void pk_setitems(struct pk_writer *w) { put1(w, OP_SETITEMS); }
void pk_reduce(struct pk_writer *w) { put1(w, OP_REDUCE); }
void pk_build(struct pk_writer *w) { put1(w, OP_BUILD); }
void pk_bigint(struct pk_writer *w, const void *p, size_t len) { put_sized(w, OP_LONG1, OP_LONG4, 0, p, len); }

static void put_global(struct pk_writer *w, const void *m, size_t ml, const void *n, size_t nl)
{
    pk_str(w, m, ml);
    pk_str(w, n, nl);
    put1(w, OP_STACK_GLOBAL);
}

void pk_global(struct pk_writer *w, const char *module, const char *name)
{
    put_global(w, module, strlen(module), name, strlen(name));
}

void pk_embedded(struct pk_writer *w, const void *p, size_t len)
{
    pk_global(w, "pickle", "loads");
    pk_bytes(w, p, len);
    pk_tuple(w, 1);
    pk_reduce(w);
}

/* Writes items in batches of PK_BATCH between MARK and op. */
static void put_batched(struct pk_writer *w, struct pk_node **items, uint32_t n, uint8_t op)
{
    for (uint32_t i = 0; i < n && w->rc == 0; i += PK_BATCH) {
        put1(w, OP_MARK);
        for (uint32_t j = i; j < n && j < i + PK_BATCH; j++)
            pk_node(w, items[j]);
        put1(w, op);
    }
}

static bool memo_hit(struct pk_writer *w, struct pk_node *n)
{
    if (n->memo_gen != w->gen || !n->memo)
        return false;
    uint32_t idx = n->memo - 1;
    if (idx < 256) {
        put1(w, OP_BINGET);
        put1(w, (uint8_t)idx);
    } else {
        put1(w, OP_LONG_BINGET);
        put_le(w, idx, 4);
    }
    return true;
}

void pk_node(struct pk_writer *w, struct pk_node *n)
{
    if (w->rc)
        return;
    if (++w->depth > PK_MAX_DEPTH + 2) {
        w->rc = MP_ETOOBIG;
        return;
    }
    switch (n->kind) {
    case PK_NONE: pk_none(w); break;
    case PK_BOOL: pk_bool(w, n->i != 0); break;
    case PK_INT: pk_int(w, n->i); break;
    case PK_FLOAT: pk_float(w, n->f); break;
    case PK_BIGINT:
        if (!memo_hit(w, n)) {
            put_sized(w, OP_LONG1, OP_LONG4, 0, n->p, n->len);
            memoize(w, n);
        }
        break;
    case PK_BYTES:
    case PK_STR:
    case PK_BYTEARRAY:
        if (!memo_hit(w, n)) {
            if (n->kind == PK_BYTEARRAY)
                put_sized(w, 0, 0, OP_BYTEARRAY8, n->p, n->len);
            else if (n->kind == PK_BYTES)
                pk_bytes(w, n->p, n->len);
            else
                pk_str(w, n->p, n->len);
            memoize(w, n);
        }
        break;
    case PK_TUPLE:
        if (memo_hit(w, n))
            break;
        if (n->busy) {               /* a tuple inside itself (through a list): CPython can, we do not */
            w->rc = MP_EPROTO;
            break;
        }
        n->busy = true;
        if (n->n > 3)
            put1(w, OP_MARK);
        for (uint32_t i = 0; i < n->n; i++)
            pk_node(w, n->kids[i]);
        if (n->n > 3)
            pk_tuple_mark(w);
        else
            pk_tuple(w, n->n);
        n->busy = false;
        memoize(w, n);
        break;
    case PK_LIST:
    case PK_DICT:
    case PK_SET:
        if (memo_hit(w, n))
            break;
        put1(w, n->kind == PK_LIST ? OP_EMPTY_LIST : n->kind == PK_DICT ? OP_EMPTY_DICT : OP_EMPTY_SET);
        memoize(w, n);
        put_batched(w, n->kids, n->n, n->kind == PK_LIST ? OP_APPENDS : n->kind == PK_DICT ? OP_SETITEMS : OP_ADDITEMS);
        break;
    case PK_FROZENSET:
        if (memo_hit(w, n))
            break;
        put1(w, OP_MARK);
        for (uint32_t i = 0; i < n->n; i++)
            pk_node(w, n->kids[i]);
        put1(w, OP_FROZENSET);
        memoize(w, n);
        break;
    case PK_GLOBAL:
        if (!memo_hit(w, n)) {
            put_global(w, n->p, n->len, n->p2, n->len2);
            memoize(w, n);
        }
        break;
    case PK_OBJECT:
        if (memo_hit(w, n))
            break;
        if (n->busy) {
            w->rc = MP_EPROTO;
            break;
        }
        n->busy = true;
        for (uint32_t i = 0; i < n->n; i++)
            pk_node(w, n->kids[i]);
        put1(w, n->op);
        n->busy = false;
        memoize(w, n);
        for (uint32_t i = 0; i < n->nsteps; i++) {
            pk_node(w, n->steps[i].a);
            if (n->steps[i].op == OP_SETITEM)
                pk_node(w, n->steps[i].b);
            put1(w, n->steps[i].op);
        }
        break;
    }
    w->depth--;
}
