/* pycall.c - what every Python method has to hand (pyobj.h): its
 * arguments as Python passes them, its reply, and the store.
 *
 * A reply is ('#RETURN', value), ('#ERROR', exception) or ('#TRACEBACK',
 * text), pickled into the connection's output buffer; an exception is
 * written as a REDUCE of the class Python's server would raise, so the
 * client raises it. Store calls run on the call's object by its name in
 * the store; the ones that may wait do so in slices while the client is
 * there.
 */
#include "manager/pyobj.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ arguments */

const struct pk_node *py_arg(const struct pycall *c, uint32_t i, const char *name)
{
    if (c->args && i < c->args->n)
        return c->args->kids[i];
    if (c->kwds && name)
        for (uint32_t k = 0; k + 1 < c->kwds->n; k += 2)
            if (str_is(c->kwds->kids[k], name))
                return c->kwds->kids[k + 1];
    return NULL;
}

bool py_truthy(const struct pk_node *n, bool dflt)
{
    if (!n)
        return dflt;
    switch (n->kind) {
    case PK_NONE: return false;
    case PK_BOOL:
    case PK_INT: return n->i != 0;
    case PK_FLOAT: return n->f != 0;
    case PK_STR:
    case PK_BYTES:
    case PK_TUPLE:
    case PK_LIST:
    case PK_DICT: return n->len || n->n;
    default: return true;
    }
}

bool py_timeout_of(struct pycall *c, const struct pk_node *t, const char *bad, bool *has, struct timespec *until)
{
    *has = false;
    if (!t || t->kind == PK_NONE)
        return true;
    if (!is_number(t)) {
        char msg[128];
        snprintf(msg, sizeof msg, bad, py_type_name(t));
        py_raise_msg(c->cx, "TypeError", msg);
        return false;
    }
    *has = py_deadline_of(t, until);
    return true;
}

bool py_acquire_args(struct pycall *c, bool sem, bool *blocking, bool *has_deadline, struct timespec *until)
{
    const struct pk_node *b = py_arg(c, 0, "blocking"), *t = py_arg(c, 1, "timeout");
    *blocking = py_truthy(b, true);
    *has_deadline = false;
    if (sem) {                          /* threading.Semaphore's Python code */
        if (!*blocking && t && t->kind != PK_NONE) {
            py_raise_msg(c->cx, "ValueError", "can't specify timeout for non-blocking acquire");
            return false;
        }
        return py_timeout_of(c, t, "unsupported operand type(s) for +: 'float' and '%s'", has_deadline, until);
    }
    if (!t || t->kind == PK_NONE)       /* _thread's lock: timeout=None is refused there, -1 means none */
        return true;
    if (!is_number(t))
        return py_timeout_of(c, t, "'%s' object cannot be interpreted as an integer", has_deadline, until);
    double secs = number(t);
    if (!*blocking && secs != -1) {
        py_raise_msg(c->cx, "ValueError", "can't specify a timeout for a non-blocking call");
        return false;
    }
    if (secs < 0 && secs != -1) {
        py_raise_msg(c->cx, "ValueError", "timeout value must be positive");
        return false;
    }
    if (secs >= 0) {
        *has_deadline = true;
        *until = py_mono_in(secs);
    }
    return true;
}

const char *py_type_name(const struct pk_node *n)
{
    static const char *const NAMES[] = { [PK_NONE] = "NoneType", [PK_BOOL] = "bool", [PK_INT] = "int",
        [PK_BIGINT] = "int", [PK_FLOAT] = "float", [PK_BYTES] = "bytes",
        [PK_STR] = "str", [PK_BYTEARRAY] = "bytearray", [PK_TUPLE] = "tuple", [PK_LIST] = "list",
        [PK_DICT] = "dict", [PK_SET] = "set", [PK_FROZENSET] = "frozenset" };
    size_t k = n ? (size_t)n->kind : PK_NONE;
    return k < sizeof NAMES / sizeof NAMES[0] && NAMES[k] ? NAMES[k] : "object";
}

bool py_int_clamped(const struct pk_node *n, int64_t *v)
{
    if (is_int(n))
        *v = n->i;
    else if (n && n->kind == PK_BIGINT && n->len)  /* the reader left it past int64 */
        *v = n->p[n->len - 1] & 0x80 ? INT64_MIN : INT64_MAX;
    else
        return false;
    return true;
}

bool py_slice_of(const struct pk_node *n, int64_t len, int64_t *start, int64_t *stop, int64_t *step)
{
    if (!n || n->kind != PK_OBJECT || n->op != 'R' || n->kids[0]->kind != PK_GLOBAL || n->kids[1]->n != 3)
        return false;
    const struct pk_node *g = n->kids[0], *a = n->kids[1];
    if (g->len != 8 || memcmp(g->p, "builtins", 8) || g->len2 != 5 || memcmp(g->p2, "slice", 5))
        return false;
    *step = 1;
    if (a->kids[2]->kind != PK_NONE && !py_int_clamped(a->kids[2], step))
        return false;
    if (*step == 0)
        return false;
    if (*step < -INT64_MAX)
        *step = -INT64_MAX;                   /* as Python's slice.indices, so -step fits */
    int64_t v[2];
    for (int k = 0; k < 2; k++) {
        const struct pk_node *x = a->kids[k];
        if (x->kind == PK_NONE) {
            v[k] = k == 0 ? (*step > 0 ? 0 : len - 1) : (*step > 0 ? len : -1);
            continue;
        }
        if (!py_int_clamped(x, &v[k]))
            return false;
        v[k] = v[k] < 0 ? v[k] + len : v[k];
        int64_t lo = *step > 0 ? 0 : -1, hi = *step > 0 ? len : len - 1;
        v[k] = v[k] < lo ? lo : v[k] > hi ? hi : v[k];
    }
    *start = v[0];
    *stop = v[1];
    return true;
}

/* Whether the word w (n bytes) is one of the space-separated words of list. */
static bool word_in(const char *list, const void *w, size_t n)
{
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, " ");
        if (len == n && memcmp(p, w, n) == 0)
            return true;
        p += len + (p[len] == ' ');
    }
    return false;
}

bool py_kwds_ok(struct pycall *c, const struct pyclass *cls, const struct pymethod *pm)
{
    if (!c->kwds || c->kwds->n == 0 || (pm->kw && strcmp(pm->kw, "*") == 0))
        return true;
    char msg[256];
    if (!pm->kw) {
        snprintf(msg, sizeof msg, "%s.%s() takes no keyword arguments", cls->pyname, pm->name);
        py_raise_msg(c->cx, "TypeError", msg);
        return false;
    }
    bool py = strncmp(pm->kw, "py", 2) == 0;
    const char *names = pm->kw + (py ? 2 : 1);
    names += *names == ' ';
    for (uint32_t k = 0; k + 1 < c->kwds->n; k += 2) {
        const struct pk_node *key = c->kwds->kids[k];
        if (key->kind != PK_STR) {
            py_raise_msg(c->cx, "TypeError", "keywords must be strings");
            return false;
        }
        if (word_in(names, key->p, key->len))
            continue;
        int n = key->len > 64 ? 64 : (int)key->len;
        if (py)
            snprintf(msg, sizeof msg, "%s.%s() got an unexpected keyword argument '%.*s'",
                     cls->pyname, pm->name, n, (const char *)key->p);
        else
            snprintf(msg, sizeof msg, "'%.*s' is an invalid keyword argument for %s()", n,
                     (const char *)key->p, pm->name);
        py_raise_msg(c->cx, "TypeError", msg);
        return false;
    }
    return true;
}

bool py_nargs(struct pycall *c, const char *name, uint32_t min, uint32_t max)
{
    uint32_t n = c->args ? c->args->n : 0;
    char msg[128];
    if (n >= min && n <= max)
        return true;
    snprintf(msg, sizeof msg, "%s expected at %s %" PRIu32 " argument%s, got %" PRIu32, name,
             n < min ? "least" : "most", n < min ? min : max, (n < min ? min : max) == 1 ? "" : "s", n);
    py_raise_msg(c->cx, "TypeError", msg);
    return false;
}

/* ------------------------------------------------------------------ replies */

void py_reply_begin(struct pyconn *cx, const char *kind)
{
    pk_begin(&cx->pw, &cx->out);
    pk_cstr(&cx->pw, kind);
    cx->wrapped = cx->want_repr && strcmp(kind, "#RETURN") == 0;
    if (cx->wrapped && cx->repr_typecode) {     /* Value.__repr__: "Value(%r, %r)" % (typecode, value) */
        pk_global(&cx->pw, "operator", "mod");
        pk_cstr(&cx->pw, "Value(%r, %r)");
        pk_str(&cx->pw, &cx->repr_typecode, 1);
    } else if (cx->wrapped) {
        pk_global(&cx->pw, "builtins", "repr");
    }
}

void py_reply_end(struct pyconn *cx)
{
    if (cx->wrapped && cx->repr_typecode) {
        pk_tuple(&cx->pw, 2);
        pk_tuple(&cx->pw, 2);
        pk_reduce(&cx->pw);
    } else if (cx->wrapped) {
        pk_tuple(&cx->pw, 1);
        pk_reduce(&cx->pw);
    }
    pk_tuple(&cx->pw, 2);
    pk_end(&cx->pw);
}

void py_traceback(struct pyconn *cx, const char *fmt, const char *detail)
{
    char text[512];
    snprintf(text, sizeof text, "mproc-manager: %s%s%s\n", fmt, detail ? ": " : "", detail ? detail : "");
    py_reply_begin(cx, "#TRACEBACK");
    pk_cstr(&cx->pw, text);
    py_reply_end(cx);
}

void py_ret_none(struct pyconn *cx)
{
    py_reply_begin(cx, "#RETURN");
    pk_none(&cx->pw);
    py_reply_end(cx);
}

void py_ret_bool(struct pyconn *cx, bool v)
{
    py_reply_begin(cx, "#RETURN");
    pk_bool(&cx->pw, v);
    py_reply_end(cx);
}

void py_ret_int(struct pyconn *cx, int64_t v)
{
    py_reply_begin(cx, "#RETURN");
    pk_int(&cx->pw, v);
    py_reply_end(cx);
}

void py_ret_value(struct pyconn *cx, const struct mval *v)
{
    py_reply_begin(cx, "#RETURN");
    pv_write(&cx->pw, v);
    py_reply_end(cx);
}

void py_ret_node(struct pyconn *cx, struct pk_node *n)
{
    py_reply_begin(cx, "#RETURN");
    if (n)
        pk_node(&cx->pw, n);
    else
        pk_none(&cx->pw);
    py_reply_end(cx);
}

void py_raise(struct pyconn *cx, const char *module, const char *name, const char *msg, struct pk_node *n)
{
    py_reply_begin(cx, "#ERROR");
    pk_global(&cx->pw, module, name);
    if (msg)
        pk_cstr(&cx->pw, msg);
    else if (n)
        pk_node(&cx->pw, n);
    pk_tuple(&cx->pw, msg || n ? 1 : 0);
    pk_reduce(&cx->pw);
    py_reply_end(cx);
}

/* Python's repr of a small int, bool, None or printable-ASCII str, in buf:
 * false for anything else (its repr would need Python). */
static bool repr_simple(const struct pk_node *n, char *buf, size_t cap)
{
    if (!n)
        return false;
    if (n->kind == PK_INT)
        return (size_t)snprintf(buf, cap, "%" PRId64, n->i) < cap;
    if (n->kind == PK_BOOL || n->kind == PK_NONE)
        return (size_t)snprintf(buf, cap, "%s", n->kind == PK_NONE ? "None" : n->i ? "True" : "False") < cap;
    if (n->kind != PK_STR || n->len + 3 > cap)
        return false;
    bool single = false, dbl = false;
    for (size_t i = 0; i < n->len; i++) {
        if (n->p[i] < 0x20 || n->p[i] > 0x7e || n->p[i] == '\\')
            return false;
        single |= n->p[i] == '\'';
        dbl |= n->p[i] == '"';
    }
    if (single && dbl)
        return false;
    char q = single ? '"' : '\'';
    snprintf(buf, cap, "%c%.*s%c", q, (int)n->len, (const char *)n->p, q);
    return true;
}

void py_raise_about(struct pyconn *cx, const char *name, const char *fmt, const struct pk_node *n, const char *other)
{
    char r[256], msg[400];
    if (repr_simple(n, r, sizeof r)) {
        snprintf(msg, sizeof msg, fmt, r);
        py_raise_msg(cx, name, msg);
    } else {
        py_raise_msg(cx, name, other);
    }
}

void py_raise_msg(struct pyconn *cx, const char *name, const char *msg) { py_raise(cx, "builtins", name, msg, NULL); }

void py_raise_status(struct pyconn *cx, int status)
{
    switch (status) {
    case MP_ENOMEM: py_raise_msg(cx, "MemoryError", "mproc-manager: the server's memory budget is spent"); break;
    case MP_ETOOBIG: py_raise_msg(cx, "ValueError", "mproc-manager: value or key too large"); break;
    case MP_ERANGE: py_raise_msg(cx, "IndexError", "list index out of range"); break;
    case MP_ETYPE: py_raise_msg(cx, "TypeError", "mproc-manager: stored value has another type"); break;
    default: py_raise_msg(cx, "RuntimeError", mp_strerror(status)); break;
    }
}

void py_write_exposed(struct pk_writer *w, const char *const *e)
{
    pk_mark(w);
    for (; *e; e++)
        pk_cstr(w, *e);
    pk_tuple_mark(w);
}

/* ------------------------------------------------------------------ store calls */

int py_sx(struct pycall *c, int64_t op, const struct mval *a, const struct mval *b, struct sreply *r)
{
    struct mmsg m = { .n = 2 + (a != NULL) + (b != NULL) };
    m.v[0] = mint(op);
    m.v[1] = obj_name(c->o);
    if (a)
        m.v[2] = *a;
    if (b)
        m.v[3] = *b;
    store_exec_locked(c->cx->reg->store, c->cx->owner, &m, r);
    return r->status;
}

int py_sx_wait(struct pycall *c, int64_t op, const struct mval *item, bool block, const struct timespec *until,
               struct sreply *r)
{
    struct store *s = c->cx->reg->store;
    for (;;) {
        double t = !block ? 0 : until ? py_mono_left(until) : -1;
        if (block && until && t <= 0)
            t = 0;
        struct mval tm = mfloat(t), name = obj_name(c->o);
        struct mmsg m = { .n = item ? 4 : 3 };
        m.v[0] = mint(op);
        m.v[1] = name;
        m.v[2] = item ? *item : tm;
        m.v[3] = tm;
        store_lock(s);
        store_exec_locked(s, c->cx->owner, &m, r);
        bool again = (r->status == MP_EEMPTY || r->status == MP_EFULL || r->status == MP_ETIMEDOUT) &&
                     block && t != 0;
        if (!again)
            return r->status;
        store_unlock(s);
        store_release(r);
        if (!py_peer_alive(c->cx)) {
            store_lock(s);
            memset(r, 0, sizeof *r);
            r->status = MP_EBROKEN;
            return MP_EBROKEN;
        }
    }
}
