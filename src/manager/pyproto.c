/* pyproto.c - CPython's manager protocol on the mproc manager (pyproto.h).
 *
 * A connection is what CPython's Server._handle_request makes of it: one
 * server call (create, incref, decref, get_methods, dummy, debug_info,
 * number_of_objects, shutdown) and hang up, or accept_connection and then
 * proxy method calls until the client goes. Requests are read with the
 * pickle subset of pickle.c, so the server never runs a pickle; replies are
 * ('#RETURN', value), ('#ERROR', exception), ('#TRACEBACK', text) or
 * ('#PROXY', (exposed, Token)), written by pickle.c's writer.
 *
 * The object table maps Python's idents to objects with reference counts,
 * as Server.id_to_obj and id_to_refcount do: an object made by create goes
 * when its last proxy does. dict, list, Queue, JoinableQueue, Lock and
 * Namespace live in the store (anonymous ones under a name no C client can
 * spell); get_dict/get_list/get_queue/get_lock('name') are the store's
 * objects of that name, the ones C clients open. The other types live here,
 * under the table's mutex, and wait on their own condition variable in
 * slices, checking between slices that the client is still there.
 *
 * Values and dict keys cross to the store by the table of pyvalue.c.
 */
#include "manager/pyproto.h"

#include "manager/channel.h"
#include "manager/pickle.h"
#include "manager/pyvalue.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    PY_BUCKETS = 1024,
    PY_MAX_IDENT = 8 + MSG_MAX_NAME,
    PY_SLICE_MS = 100,
    PY_MAX_ARRAY = 1 << 20,
    PY_SPIN_NS = 0,
};
/* What Value, Array and iterator objects may hold together (the store's
 * objects have the store's budget). */
#define PY_MAX_BYTES ((size_t)256 * 1024 * 1024)

enum pytype {
    PT_DICT, PT_LIST, PT_QUEUE, PT_LOCK, PT_NAMESPACE,          /* in the store */
    PT_RLOCK, PT_SEM, PT_BSEM, PT_EVENT, PT_COND, PT_BARRIER, PT_VALUE, PT_ARRAY, PT_ITER,
};

/* The methods of CPython's DictProxy and ListProxy (3.11-3.13, and the
 * ones newer versions add), as create and get_methods report them. */
static const char *const EXP_DICT[] = { "__contains__", "__delitem__", "__getitem__", "__ior__", "__iter__",
    "__len__", "__or__", "__ror__", "__setitem__", "clear", "copy", "fromkeys", "get", "items", "keys", "pop",
    "popitem", "setdefault", "update", "values", NULL };
static const char *const EXP_NAMED_DICT[] = { "__contains__", "__delitem__", "__getitem__", "__ior__", "__len__",
    "__or__", "__ror__", "__setitem__", "clear", "copy", "fromkeys", "get", "items", "keys", "pop", "popitem",
    "setdefault", "update", "values", NULL };
static const char *const EXP_LIST[] = { "__add__", "__contains__", "__delitem__", "__getitem__", "__len__",
    "__mul__", "__reversed__", "__rmul__", "__setitem__", "append", "clear", "copy", "count", "extend", "index",
    "insert", "pop", "remove", "reverse", "sort", "__imul__", NULL };
static const char *const EXP_QUEUE[] = { "empty", "full", "get", "get_nowait", "join", "put", "put_nowait",
    "qsize", "task_done", NULL };
static const char *const EXP_ACQ[] = { "acquire", "release", NULL };
static const char *const EXP_NAMED_LOCK[] = { "acquire", "release", "__enter__", "__exit__", NULL };
static const char *const EXP_COND[] = { "acquire", "release", "wait", "notify", "notify_all", NULL };
static const char *const EXP_EVENT[] = { "is_set", "set", "clear", "wait", NULL };
static const char *const EXP_BARRIER[] = { "__getattribute__", "wait", "abort", "reset", NULL };
static const char *const EXP_VALUE[] = { "get", "set", NULL };
static const char *const EXP_ARRAY[] = { "__len__", "__getitem__", "__setitem__", NULL };
static const char *const EXP_NAMESPACE[] = { "__getattribute__", "__setattr__", "__delattr__", NULL };
static const char *const EXP_NONE[] = { NULL };
static const char *const EXP_ITER[] = { "__next__", "send", "throw", "close", NULL };

struct pytypeinfo {
    const char *typeid;
    enum pytype t;
    const char *const *exposed;
    char named;                  /* get_*: ident prefix of the named object, else 0 */
};

static const struct pytypeinfo TYPES[] = {
    { "dict", PT_DICT, EXP_DICT, 0 }, { "list", PT_LIST, EXP_LIST, 0 },
    { "Queue", PT_QUEUE, EXP_QUEUE, 0 }, { "JoinableQueue", PT_QUEUE, EXP_QUEUE, 0 },
    { "Lock", PT_LOCK, EXP_ACQ, 0 }, { "RLock", PT_RLOCK, EXP_ACQ, 0 },
    { "Semaphore", PT_SEM, EXP_ACQ, 0 }, { "BoundedSemaphore", PT_BSEM, EXP_ACQ, 0 },
    { "Event", PT_EVENT, EXP_EVENT, 0 }, { "Condition", PT_COND, EXP_COND, 0 },
    { "Barrier", PT_BARRIER, EXP_BARRIER, 0 }, { "Value", PT_VALUE, EXP_VALUE, 0 },
    { "Array", PT_ARRAY, EXP_ARRAY, 0 }, { "Namespace", PT_NAMESPACE, EXP_NAMESPACE, 0 },
    { "get_dict", PT_DICT, EXP_NAMED_DICT, 'd' }, { "get_list", PT_LIST, EXP_LIST, 'l' },
    { "get_queue", PT_QUEUE, EXP_QUEUE, 'q' }, { "get_lock", PT_LOCK, EXP_NAMED_LOCK, 'k' },
    { "get_namespace", PT_NAMESPACE, EXP_NONE, 'n' },
};
static const struct pytypeinfo ITERATOR = { "Iterator", PT_ITER, EXP_ITER, 0 };
static const struct pk_node GETVALUE = { .kind = PK_STR, .p = (const uint8_t *)"#GETVALUE", .len = 9 };

struct cwaiter {                 /* a Condition.wait in progress */
    struct cwaiter *next;
    bool notified;
};

struct pyobj {
    struct pyobj *next;          /* hash chain */
    char ident[PY_MAX_IDENT + 1];
    size_t idlen;
    const struct pytypeinfo *ti;
    long refs;
    int holds;                   /* requests using it now */
    bool gone;                   /* out of the table: freed at holds == 0 */
    uint8_t sname[MSG_MAX_NAME]; /* its name in the store */
    size_t snlen;
    pthread_cond_t cond;
    struct store_owner *owner;   /* RLock, Condition */
    int64_t count, max;          /* RLock depth; semaphore value, bound; barrier parties */
    int64_t unfinished;          /* queue: puts not yet task_done */
    int64_t maxsize;             /* queue */
    bool flag;                   /* Event; Barrier: broken */
    uint64_t gen, broken_upto;   /* Barrier */
    int64_t waiting;             /* Barrier */
    struct cwaiter *cwaiters;    /* Condition */
    struct sval val;             /* Value */
    char typecode;               /* Value, Array */
    struct sval *items;          /* Array */
    size_t nitems;
    mp_buf keys;                 /* Iterator: encoded keys, each followed by NUL */
    size_t at;
    size_t charged;              /* bytes counted against PY_MAX_BYTES */
};

struct pyreg {
    struct store *store;
    pthread_mutex_t mu;
    struct pyobj *buckets[PY_BUCKETS];
    uint64_t next_id;
    long nobjects;
    size_t bytes;                /* charged by all objects, at most PY_MAX_BYTES */
};

struct pyconn {
    struct pyreg *reg;
    struct store_owner *owner;
    struct wire *w;
    mp_buf out, tmp, tmp2;
    mp_buf item;                 /* the queue item this reply carries, to put back if it is not sent */
    struct mval item_v, item_queue;
    bool has_item;
    bool want_repr, wrapped;     /* a __repr__/__str__ call, answered as repr(#GETVALUE) */
    struct pk_arena arena;
    struct pk_writer pw;
    bool *shutdown;
};

/* One method call: the object, the method's name and its arguments. */
struct pycall {
    struct pyconn *cx;
    struct pyobj *o;
    const struct pk_node *m, *args, *kwds;
};

/* ------------------------------------------------------------------ small helpers */

static bool str_is(const struct pk_node *n, const char *s) { return pk_is_str(n, s); }

static uint64_t hash_ident(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h;
}

static struct timespec mono_in(double s)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (s > 1e9)
        s = 1e9;
    int64_t ns = t.tv_nsec + (int64_t)(s * 1e9);
    t.tv_sec += ns / 1000000000;
    t.tv_nsec = ns % 1000000000;
    return t;
}

static double mono_left(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(t->tv_sec - now.tv_sec) + (t->tv_nsec - now.tv_nsec) / 1e9;
}

/* Argument i (positional) or name (keyword), or NULL. */
static const struct pk_node *arg(const struct pycall *c, uint32_t i, const char *name)
{
    if (c->args && i < c->args->n)
        return c->args->kids[i];
    if (c->kwds && name)
        for (uint32_t k = 0; k + 1 < c->kwds->n; k += 2)
            if (str_is(c->kwds->kids[k], name))
                return c->kwds->kids[k + 1];
    return NULL;
}

static bool truthy(const struct pk_node *n, bool dflt)
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

static bool is_number(const struct pk_node *n) { return n && (n->kind == PK_INT || n->kind == PK_BOOL || n->kind == PK_FLOAT); }
static double number(const struct pk_node *n) { return n->kind == PK_FLOAT ? n->f : (double)n->i; }
static bool is_int(const struct pk_node *n) { return n && (n->kind == PK_INT || n->kind == PK_BOOL); }

/* ------------------------------------------------------------------ replies */

/* A reply's kind; for a __repr__ call, a #RETURN value goes out as
 * builtins.repr(value), which the client works out on its own copy. */
static void reply_begin(struct pyconn *cx, const char *kind)
{
    pk_begin(&cx->pw, &cx->out);
    pk_cstr(&cx->pw, kind);
    cx->wrapped = cx->want_repr && strcmp(kind, "#RETURN") == 0;
    if (cx->wrapped)
        pk_global(&cx->pw, "builtins", "repr");
}

static void reply_end(struct pyconn *cx)
{
    if (cx->wrapped) {
        pk_tuple(&cx->pw, 1);
        pk_reduce(&cx->pw);
    }
    pk_tuple(&cx->pw, 2);
    pk_end(&cx->pw);
}

static void traceback(struct pyconn *cx, const char *fmt, const char *detail)
{
    char text[512];
    snprintf(text, sizeof text, "mproc-manager: %s%s%s\n", fmt, detail ? ": " : "", detail ? detail : "");
    reply_begin(cx, "#TRACEBACK");
    pk_cstr(&cx->pw, text);
    reply_end(cx);
}

static void ret_none(struct pyconn *cx)
{
    reply_begin(cx, "#RETURN");
    pk_none(&cx->pw);
    reply_end(cx);
}

static void ret_bool(struct pyconn *cx, bool v)
{
    reply_begin(cx, "#RETURN");
    pk_bool(&cx->pw, v);
    reply_end(cx);
}

static void ret_int(struct pyconn *cx, int64_t v)
{
    reply_begin(cx, "#RETURN");
    pk_int(&cx->pw, v);
    reply_end(cx);
}

/* ('#ERROR', module.name(*args)) with args a message, a node, or nothing. */
static void raise_(struct pyconn *cx, const char *module, const char *name, const char *msg, struct pk_node *n)
{
    reply_begin(cx, "#ERROR");
    pk_global(&cx->pw, module, name);
    if (msg)
        pk_cstr(&cx->pw, msg);
    else if (n)
        pk_node(&cx->pw, n);
    pk_tuple(&cx->pw, msg || n ? 1 : 0);
    pk_reduce(&cx->pw);
    reply_end(cx);
}

static void raise_msg(struct pyconn *cx, const char *name, const char *msg) { raise_(cx, "builtins", name, msg, NULL); }

/* A store status as the exception Python's server would raise. */
static void raise_status(struct pyconn *cx, int status)
{
    switch (status) {
    case MP_ENOMEM: raise_msg(cx, "MemoryError", "mproc-manager: the server's memory budget is spent"); break;
    case MP_ETOOBIG: raise_msg(cx, "ValueError", "mproc-manager: value or key too large"); break;
    case MP_ERANGE: raise_msg(cx, "IndexError", "list index out of range"); break;
    case MP_ETYPE: raise_msg(cx, "TypeError", "mproc-manager: stored value has another type"); break;
    default: raise_msg(cx, "RuntimeError", mp_strerror(status)); break;
    }
}

/* ------------------------------------------------------------------ the object table */

int pyreg_new(struct pyreg **out, struct store *s)
{
    struct pyreg *r = calloc(1, sizeof *r);
    if (!r)
        return MP_ENOMEM;
    r->store = s;
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return 0;
}

static void obj_free(struct pyobj *o)
{
    pthread_cond_destroy(&o->cond);
    mp_buf_free(&o->val.b);
    for (size_t i = 0; i < o->nitems; i++)
        mp_buf_free(&o->items[i].b);
    free(o->items);
    mp_buf_free(&o->keys);
    free(o);
}

static void obj_destroy(struct pyreg *r, struct pyobj *o)
{
    pthread_mutex_lock(&r->mu);
    r->bytes -= o->charged;
    pthread_mutex_unlock(&r->mu);
    if (o->ti->t <= PT_NAMESPACE && !o->ti->named) {
        static const int64_t op_of[] = { OP_DICT_OPEN, OP_LIST_OPEN, OP_QUEUE_OPEN, OP_LOCK_OPEN, OP_DICT_OPEN };
        struct mval name = { .type = MV_TEXT, .p = o->sname, .len = o->snlen };
        store_lock(r->store);
        store_drop_locked(r->store, op_of[o->ti->t], &name);
        store_unlock(r->store);
    }
    obj_free(o);
}

void pyreg_free(struct pyreg *r)
{
    if (!r)
        return;
    for (int i = 0; i < PY_BUCKETS; i++)
        for (struct pyobj *o = r->buckets[i], *next; o; o = next) {
            next = o->next;
            obj_free(o);
        }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Counts n more bytes (or fewer, when negative) for o: false, and nothing
 * counted, past PY_MAX_BYTES. r->mu held. */
static bool obj_charge(struct pyreg *r, struct pyobj *o, int64_t n)
{
    if (n > 0 && (size_t)n > PY_MAX_BYTES - r->bytes)
        return false;
    r->bytes += (size_t)n;
    o->charged += (size_t)n;
    return true;
}

static struct pyobj **obj_slot(struct pyreg *r, const char *id, size_t n)
{
    struct pyobj **o = &r->buckets[hash_ident(id, n) % PY_BUCKETS];
    while (*o && !((*o)->idlen == n && memcmp((*o)->ident, id, n) == 0))
        o = &(*o)->next;
    return o;
}

/* A new object in the table with one reference; r->mu held. */
static struct pyobj *obj_add(struct pyreg *r, const struct pytypeinfo *ti, const char *id, size_t idlen)
{
    if (r->nobjects >= STORE_MAX_OBJECTS || idlen > PY_MAX_IDENT)
        return NULL;
    struct pyobj *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    cond_init_monotonic(&o->cond);
    o->ti = ti;
    o->refs = 1;
    memcpy(o->ident, id, idlen);
    o->idlen = idlen;
    struct pyobj **slot = obj_slot(r, id, idlen);
    o->next = *slot;
    *slot = o;
    r->nobjects++;
    return o;
}

static struct pyobj *obj_hold(struct pyreg *r, const struct pk_node *id)
{
    if (!id || id->kind != PK_STR || id->len > PY_MAX_IDENT)
        return NULL;
    pthread_mutex_lock(&r->mu);
    struct pyobj *o = *obj_slot(r, (const char *)id->p, id->len);
    if (o && !o->gone)
        o->holds++;
    else
        o = NULL;
    pthread_mutex_unlock(&r->mu);
    return o;
}

static void obj_release(struct pyreg *r, struct pyobj *o)
{
    pthread_mutex_lock(&r->mu);
    bool last = --o->holds == 0 && o->gone;
    pthread_mutex_unlock(&r->mu);
    if (last)
        obj_destroy(r, o);
}

/* Drops one reference; the last one of an unnamed object takes it out. */
static int obj_decref(struct pyreg *r, const struct pk_node *id)
{
    if (!id || id->kind != PK_STR || id->len > PY_MAX_IDENT)
        return MP_ENOTFOUND;
    pthread_mutex_lock(&r->mu);
    struct pyobj **slot = obj_slot(r, (const char *)id->p, id->len), *o = *slot;
    bool destroy = false;
    if (!o || o->refs <= 0) {
        pthread_mutex_unlock(&r->mu);
        return MP_ENOTFOUND;
    }
    if (--o->refs == 0 && !o->ti->named) {
        *slot = o->next;
        r->nobjects--;
        o->gone = true;
        destroy = o->holds == 0;
    }
    pthread_mutex_unlock(&r->mu);
    if (destroy)
        obj_destroy(r, o);
    return 0;
}

/* ------------------------------------------------------------------ waiting */

static bool peer_alive(struct pyconn *cx) { return channel_peer_alive(cx->w->fd); }

/* The deadline a timeout argument asks for: false when there is none. */
static bool deadline_of(const struct pk_node *timeout, struct timespec *at)
{
    if (!is_number(timeout))
        return false;
    double t = number(timeout);
    *at = mono_in(t > 0 ? t : 0);
    return true;
}

/* One slice of waiting on o->cond (r->mu held): MP_ETIMEDOUT once the
 * deadline has passed, MP_EBROKEN once the client has gone, else 0. */
static int obj_wait(struct pyconn *cx, struct pyobj *o, const struct timespec *until)
{
    struct timespec slice = mono_in(PY_SLICE_MS / 1000.0);
    bool last = until && mono_left(until) < PY_SLICE_MS / 1000.0;
    if (until && mono_left(until) <= 0)
        return MP_ETIMEDOUT;
    pthread_cond_timedwait(&o->cond, &cx->reg->mu, last ? until : &slice);
    if (!peer_alive(cx))
        return MP_EBROKEN;
    return until && mono_left(until) <= 0 ? MP_ETIMEDOUT : 0;
}

/* ------------------------------------------------------------------ store calls */

static struct mval obj_name(const struct pyobj *o) { return (struct mval){ .type = MV_TEXT, .p = o->sname, .len = o->snlen }; }

/* Runs op on the call's object with up to two arguments, store mutex held. */
static int sx(struct pycall *c, int64_t op, const struct mval *a, const struct mval *b, struct sreply *r)
{
    struct mmsg m = { .n = 2 + (a != NULL) + (b != NULL) };
    m.v[0] = (struct mval){ .type = MV_INT, .i = op };
    m.v[1] = obj_name(c->o);
    if (a)
        m.v[2] = *a;
    if (b)
        m.v[3] = *b;
    store_exec_locked(c->cx->reg->store, c->cx->owner, &m, r);
    return r->status;
}

static struct mval mint(int64_t i) { return (struct mval){ .type = MV_INT, .i = i }; }
static struct mval mfloat(double f) { return (struct mval){ .type = MV_FLOAT, .f = f }; }

/* A store op that may wait (queue put/get, lock acquire), repeated in
 * slices until the deadline (none: forever, block false: once) while the
 * client is there. Returns with the store mutex held, like store_exec. */
static int sx_wait(struct pycall *c, int64_t op, const struct mval *item, bool block,
                   const struct timespec *until, struct sreply *r)
{
    struct store *s = c->cx->reg->store;
    for (;;) {
        double t = !block ? 0 : until ? mono_left(until) : -1;
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
        if (!peer_alive(c->cx)) {
            store_lock(s);
            memset(r, 0, sizeof *r);
            r->status = MP_EBROKEN;
            return MP_EBROKEN;
        }
    }
}

/* ------------------------------------------------------------------ dict (and Namespace) */

static void dict_write_all(struct pycall *c, bool keys, bool values, bool as_dict);
static int dict_body(struct pycall *c, bool keys, bool values, bool as_dict, bool fresh);

/* SETITEMS of a dict node's pairs onto the dict being written. */
static void pk_node_items(struct pk_writer *w, struct pk_node *d)
{
    if (!d->n)
        return;
    pk_mark(w);
    for (uint32_t i = 0; i < d->n; i++)
        pk_node(w, d->kids[i]);
    pk_setitems(w);
}

/* Stores every pair of a dict node or list of pairs into the call's dict. */
static int dict_update_from(struct pycall *c, struct pk_node *src)
{
    struct pyconn *cx = c->cx;
    if (src->kind == PK_DICT) {
        for (uint32_t i = 0; i + 1 < src->n; i += 2) {
            struct mval k, v;
            struct sreply r;
            int rc = pv_key(src->kids[i], &cx->tmp, &k);
            if (rc == 0)
                rc = pv_value(src->kids[i + 1], &cx->tmp2, false, &v);
            if (rc == 0)
                rc = sx(c, OP_DICT_SET, &k, &v, &r);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    if (src->kind == PK_LIST || src->kind == PK_TUPLE) {
        for (uint32_t i = 0; i < src->n; i++) {
            struct pk_node *p = src->kids[i];
            if ((p->kind != PK_TUPLE && p->kind != PK_LIST) || p->n != 2)
                return MP_EINVAL;
            struct mval k, v;
            struct sreply r;
            int rc = pv_key(p->kids[0], &cx->tmp, &k);
            if (rc == 0)
                rc = pv_value(p->kids[1], &cx->tmp2, false, &v);
            if (rc == 0)
                rc = sx(c, OP_DICT_SET, &k, &v, &r);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    return MP_ETYPE;
}

static void raise_key(struct pyconn *cx, int rc, struct pk_node *key)
{
    if (rc == MP_ETYPE)
        raise_msg(cx, "TypeError", "mproc-manager: dict keys are str, bytes, int, float, bool, None or tuples of these");
    else if (rc == MP_ENOTFOUND)
        raise_(cx, "builtins", "KeyError", NULL, key);
    else
        raise_status(cx, rc);
}

static void dict_call(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct store *s = cx->reg->store;
    struct sreply r;
    struct mval k, v;
    struct pk_node *a0 = (struct pk_node *)arg(c, 0, NULL), *a1 = (struct pk_node *)arg(c, 1, NULL);
    const struct pk_node *m = c->m;
    int rc;
    store_lock(s);
    if (str_is(m, "__len__")) {
        sx(c, OP_DICT_LEN, NULL, NULL, &r);
        ret_int(cx, r.v.i);
    } else if (str_is(m, "__getitem__") || str_is(m, "get") || str_is(m, "__contains__") || str_is(m, "pop") ||
               str_is(m, "setdefault")) {
        bool get = str_is(m, "get"), has = str_is(m, "__contains__"), pop = str_is(m, "pop");
        bool setdef = str_is(m, "setdefault");
        if (!a0) {
            raise_msg(cx, "TypeError", "missing argument");
        } else if ((rc = pv_key(a0, &cx->tmp, &k)) < 0) {
            if (has && rc == MP_ETYPE)
                ret_bool(cx, false);
            else
                raise_key(cx, rc, a0);
        } else if ((rc = sx(c, OP_DICT_GET, &k, NULL, &r)) == MP_ENOTFOUND) {
            if (has)
                ret_bool(cx, false);
            else if (get || (pop && a1)) {
                reply_begin(cx, "#RETURN");
                if (a1)
                    pk_node(&cx->pw, a1);
                else
                    pk_none(&cx->pw);
                reply_end(cx);
            } else if (setdef) {
                struct pk_node none = { .kind = PK_NONE };
                struct pk_node *d = a1 ? a1 : &none;
                if ((rc = pv_value(d, &cx->tmp2, false, &v)) == 0)
                    rc = sx(c, OP_DICT_SET, &k, &v, &r);
                if (rc < 0) {
                    raise_status(cx, rc);
                } else {
                    reply_begin(cx, "#RETURN");
                    pk_node(&cx->pw, d);
                    reply_end(cx);
                }
            } else {
                raise_(cx, "builtins", "KeyError", NULL, a0);
            }
        } else if (rc < 0) {
            raise_status(cx, rc);
        } else if (has) {
            ret_bool(cx, true);
        } else {
            reply_begin(cx, "#RETURN");
            pv_write(&cx->pw, &r.v);
            reply_end(cx);
            if (pop)
                sx(c, OP_DICT_DEL, &k, NULL, &r);
        }
    } else if (str_is(m, "__setitem__")) {
        if (!a0 || !a1)
            raise_msg(cx, "TypeError", "__setitem__ takes a key and a value");
        else if ((rc = pv_key(a0, &cx->tmp, &k)) < 0 || (rc = pv_value(a1, &cx->tmp2, false, &v)) < 0 ||
                 (rc = sx(c, OP_DICT_SET, &k, &v, &r)) < 0)
            raise_key(cx, rc, a0);
        else
            ret_none(cx);
    } else if (str_is(m, "__delitem__")) {
        if (!a0)
            raise_msg(cx, "TypeError", "__delitem__ takes a key");
        else if ((rc = pv_key(a0, &cx->tmp, &k)) < 0 || (rc = sx(c, OP_DICT_DEL, &k, NULL, &r)) < 0)
            raise_key(cx, rc, a0);
        else
            ret_none(cx);
    } else if (str_is(m, "clear")) {
        sx(c, OP_DICT_CLEAR, NULL, NULL, &r);
        ret_none(cx);
    } else if (str_is(m, "__or__") || str_is(m, "__ror__")) {     /* a new plain dict */
        bool ror = str_is(m, "__ror__");
        if (!a0 || a0->kind != PK_DICT) {
            traceback(cx, "TypeError: unsupported operand type for |", NULL);
        } else {
            reply_begin(cx, "#RETURN");
            if (ror) {
                pk_empty_dict(&cx->pw);
                pk_node_items(&cx->pw, a0);
            }
            if ((rc = dict_body(c, true, true, true, !ror)) < 0) {
                raise_status(cx, rc);
            } else {
                if (!ror)
                    pk_node_items(&cx->pw, a0);
                reply_end(cx);
            }
        }
    } else if (str_is(m, "fromkeys")) {                        /* dict.fromkeys: touches nothing */
        if (!a0 || (a0->kind != PK_LIST && a0->kind != PK_TUPLE)) {
            traceback(cx, "TypeError: mproc-manager: fromkeys takes a list or a tuple", NULL);
        } else {
            reply_begin(cx, "#RETURN");
            pk_empty_dict(&cx->pw);
            for (uint32_t i = 0; i < a0->n; i++) {
                pk_mark(&cx->pw);
                pk_node(&cx->pw, a0->kids[i]);
                if (a1)
                    pk_node(&cx->pw, a1);
                else
                    pk_none(&cx->pw);
                pk_setitems(&cx->pw);
            }
            reply_end(cx);
        }
    } else if (str_is(m, "update") || str_is(m, "__ior__")) {
        rc = a0 ? dict_update_from(c, a0) : 0;
        if (rc == 0 && c->kwds)
            rc = dict_update_from(c, (struct pk_node *)c->kwds);
        if (rc < 0)
            raise_key(cx, rc, a0);
        else
            ret_none(cx);
    } else if (str_is(m, "keys") || str_is(m, "values") || str_is(m, "items") || str_is(m, "copy") ||
               str_is(m, "#GETVALUE")) {
        bool whole = str_is(m, "copy") || str_is(m, "#GETVALUE");
        dict_write_all(c, !str_is(m, "values"), !str_is(m, "keys"), whole);
    } else if (str_is(m, "popitem")) {
        rc = sx(c, OP_DICT_KEYS, NULL, NULL, &r);
        if (rc < 0 || r.v.len == 0) {
            store_release(&r);
            if (rc < 0)
                raise_status(cx, rc);
            else
                raise_msg(cx, "KeyError", "popitem(): dictionary is empty");
        } else {
            const uint8_t *key = r.v.p;   /* the last key inserted: Python's LIFO order */
            for (const uint8_t *q = r.v.p; q < r.v.p + r.v.len; q += strlen((const char *)q) + 1)
                key = q;
            size_t kl = strlen((const char *)key);
            mp_buf_reserve(&cx->tmp, kl + 1);
            memcpy(cx->tmp.data, key, kl);
            store_release(&r);
            k = (struct mval){ .type = MV_TEXT, .p = cx->tmp.data, .len = kl };
            sx(c, OP_DICT_GET, &k, NULL, &r);
            reply_begin(cx, "#RETURN");
            pv_key_write(&cx->pw, k.p, k.len, 0);
            pv_write(&cx->pw, &r.v);
            pk_tuple(&cx->pw, 2);
            reply_end(cx);
            sx(c, OP_DICT_DEL, &k, NULL, &r);
        }
    } else if (str_is(m, "__iter__")) {
        rc = sx(c, OP_DICT_KEYS, NULL, NULL, &r);
        store_unlock(s);
        if (rc < 0) {
            raise_status(cx, rc);
            store_release(&r);
            return;
        }
        char id[32];
        pthread_mutex_lock(&cx->reg->mu);
        snprintf(id, sizeof id, "%" PRIx64, ++cx->reg->next_id);
        bool room = r.v.len <= PY_MAX_BYTES - cx->reg->bytes;
        struct pyobj *it = room ? obj_add(cx->reg, &ITERATOR, id, strlen(id)) : NULL;
        if (it && (!obj_charge(cx->reg, it, (int64_t)r.v.len) || mp_buf_append(&it->keys, r.v.p, r.v.len) < 0))
            it->keys.len = 0;
        pthread_mutex_unlock(&cx->reg->mu);
        store_release(&r);
        if (!it) {
            raise_msg(cx, "MemoryError", "mproc-manager: too many objects, or the server's memory budget is spent");
            return;
        }
        reply_begin(cx, "#PROXY");
        pk_mark(&cx->pw);
        for (const char *const *e = EXP_ITER; *e; e++)
            pk_cstr(&cx->pw, *e);
        pk_tuple_mark(&cx->pw);
        pk_global(&cx->pw, "multiprocessing.managers", "Token");
        pk_cstr(&cx->pw, "Iterator");
        pk_none(&cx->pw);
        pk_cstr(&cx->pw, id);
        pk_tuple(&cx->pw, 3);
        pk_reduce(&cx->pw);
        pk_tuple(&cx->pw, 2);
        reply_end(cx);
        return;
    } else {
        store_unlock(s);
        traceback(cx, "AttributeError: method not supported", NULL);
        return;
    }
    store_unlock(s);
}

/* Writes keys(), values() or items() as a list, or the whole dict. */
static int dict_body(struct pycall *c, bool keys, bool values, bool as_dict, bool fresh)
{
    struct pyconn *cx = c->cx;
    struct sreply kr, r;
    int rc = sx(c, OP_DICT_KEYS, NULL, NULL, &kr);
    if (rc < 0)
        return rc;
    if (as_dict && fresh)
        pk_empty_dict(&cx->pw);
    else if (fresh)
        pk_empty_list(&cx->pw);
    const uint8_t *p = kr.v.p, *end = kr.v.p + kr.v.len;
    size_t batch = 0;
    while (p < end) {
        if (batch == 0)
            pk_mark(&cx->pw);
        size_t kl = strlen((const char *)p);
        struct mval k = { .type = MV_TEXT, .p = p, .len = kl };
        if (keys)
            pv_key_write(&cx->pw, p, kl, 0);
        if (values) {
            sx(c, OP_DICT_GET, &k, NULL, &r);
            pv_write(&cx->pw, &r.v);
        }
        if (keys && values && !as_dict)
            pk_tuple(&cx->pw, 2);
        p += kl + 1;
        if (++batch == 1000 || p >= end) {
            if (as_dict)
                pk_setitems(&cx->pw);
            else
                pk_appends(&cx->pw);
            batch = 0;
        }
    }
    store_release(&kr);
    return 0;
}

static void dict_write_all(struct pycall *c, bool keys, bool values, bool as_dict)
{
    reply_begin(c->cx, "#RETURN");
    int rc = dict_body(c, keys, values, as_dict, true);
    if (rc < 0)
        raise_status(c->cx, rc);
    else
        reply_end(c->cx);
}

static void iter_call(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct pyobj *o = c->o;
    if (!str_is(c->m, "__next__")) {
        traceback(cx, "AttributeError: method not supported", NULL);
        return;
    }
    pthread_mutex_lock(&cx->reg->mu);
    if (o->at >= o->keys.len) {
        pthread_mutex_unlock(&cx->reg->mu);
        raise_(cx, "builtins", "StopIteration", NULL, NULL);
        return;
    }
    const uint8_t *p = (const uint8_t *)o->keys.data + o->at;
    size_t kl = strnlen((const char *)p, o->keys.len - o->at);
    reply_begin(cx, "#RETURN");
    pv_key_write(&cx->pw, p, kl, 0);
    reply_end(cx);
    o->at += kl + 1;
    pthread_mutex_unlock(&cx->reg->mu);
}

static void namespace_call(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct store *s = cx->reg->store;
    struct pk_node *a0 = (struct pk_node *)arg(c, 0, NULL), *a1 = (struct pk_node *)arg(c, 1, NULL);
    struct sreply r;
    struct mval k, v;
    int rc;
    if (str_is(c->m, "#GETVALUE")) {      /* Namespace() with its __dict__ set by BUILD */
        store_lock(s);
        reply_begin(cx, "#RETURN");
        pk_global(&cx->pw, "multiprocessing.managers", "Namespace");
        pk_tuple(&cx->pw, 0);
        pk_reduce(&cx->pw);
        if ((rc = dict_body(c, true, true, true, true)) < 0) {
            raise_status(cx, rc);
        } else {
            pk_build(&cx->pw);
            reply_end(cx);
        }
        store_unlock(s);
        return;
    }
    if (!a0 || a0->kind != PK_STR) {
        traceback(cx, "TypeError: attribute name must be a string", NULL);
        return;
    }
    store_lock(s);
    if ((rc = pv_key(a0, &cx->tmp, &k)) < 0) {
        raise_status(cx, rc);
    } else if (str_is(c->m, "__getattribute__")) {
        if ((rc = sx(c, OP_DICT_GET, &k, NULL, &r)) < 0) {
            raise_(cx, "builtins", "AttributeError", NULL, a0);
        } else {
            reply_begin(cx, "#RETURN");
            pv_write(&cx->pw, &r.v);
            reply_end(cx);
        }
    } else if (str_is(c->m, "__setattr__") && a1) {
        if ((rc = pv_value(a1, &cx->tmp2, false, &v)) < 0 || (rc = sx(c, OP_DICT_SET, &k, &v, &r)) < 0)
            raise_status(cx, rc);
        else
            ret_none(cx);
    } else if (str_is(c->m, "__delattr__")) {
        if (sx(c, OP_DICT_DEL, &k, NULL, &r) < 0)
            raise_(cx, "builtins", "AttributeError", NULL, a0);
        else
            ret_none(cx);
    } else {
        traceback(cx, "AttributeError: method not supported", NULL);
    }
    store_unlock(s);
}

/* ------------------------------------------------------------------ list */

static int list_len(struct pycall *c, int64_t *n)
{
    struct sreply r;
    int rc = sx(c, OP_LIST_LEN, NULL, NULL, &r);
    *n = r.v.i;
    return rc;
}

/* Moves item from to index to (shifting the ones between), store mutex held. */
static int list_move(struct pycall *c, int64_t from, int64_t to)
{
    struct sreply r;
    struct mval i = mint(from);
    int rc = sx(c, OP_LIST_GET, &i, NULL, &r);
    if (rc < 0)
        return rc;
    struct mval item = r.v;
    mp_buf keep = { 0 };
    if (item.type == MV_BYTES) {
        if (mp_buf_append(&keep, item.p, item.len) < 0)
            return MP_ENOMEM;
        item.p = keep.data ? keep.data : (const uint8_t *)"";
    }
    int step = from < to ? 1 : -1;
    for (int64_t k = from; k != to && rc == 0; k += step) {
        struct mval src = mint(k + step), dst = mint(k);
        if ((rc = sx(c, OP_LIST_GET, &src, NULL, &r)) == 0) {
            struct mval moved = r.v;
            rc = sx(c, OP_LIST_SET, &dst, &moved, &r);
        }
    }
    struct mval at = mint(to);
    if (rc == 0)
        rc = sx(c, OP_LIST_SET, &at, &item, &r);
    mp_buf_free(&keep);
    return rc;
}

/* Exchanges items i and j, store mutex held. */
static int list_swap(struct pycall *c, int64_t i, int64_t j)
{
    struct sreply r;
    struct mval ai = mint(i), aj = mint(j);
    mp_buf keep = { 0 };
    int rc = sx(c, OP_LIST_GET, &ai, NULL, &r);
    if (rc < 0)
        return rc;
    struct mval first = r.v;
    if (first.type == MV_BYTES) {
        if (mp_buf_append(&keep, first.p, first.len) < 0)
            return MP_ENOMEM;
        first.p = keep.data ? keep.data : (const uint8_t *)"";
    }
    if ((rc = sx(c, OP_LIST_GET, &aj, NULL, &r)) == 0) {
        struct mval second = r.v;
        if ((rc = sx(c, OP_LIST_SET, &ai, &second, &r)) == 0)
            rc = sx(c, OP_LIST_SET, &aj, &first, &r);
    }
    mp_buf_free(&keep);
    return rc;
}

static int list_append_node(struct pycall *c, struct pk_node *n)
{
    struct mval v;
    struct sreply r;
    int rc = pv_value(n, &c->cx->tmp2, true, &v);
    return rc < 0 ? rc : sx(c, OP_LIST_APPEND, &v, NULL, &r);
}

/* Index of the first item equal to n at or after start, or -1. */
static int64_t list_find(struct pycall *c, struct pk_node *n, int64_t start, int64_t *count)
{
    struct mval v;
    struct sreply r;
    int64_t len, found = -1;
    if (pv_value(n, &c->cx->tmp2, true, &v) < 0 || list_len(c, &len) < 0)
        return -1;
    if (count)
        *count = 0;
    for (int64_t i = start < 0 ? 0 : start; i < len; i++) {
        struct mval at = mint(i);
        if (sx(c, OP_LIST_GET, &at, NULL, &r) == 0 && pv_equal(&r.v, &v)) {
            if (found < 0)
                found = i;
            if (!count)
                break;
            (*count)++;
        }
    }
    return found;
}

/* Writes the whole list, times times, as a list. */
static void list_write(struct pycall *c, int64_t times, struct pk_node *extra)
{
    struct pyconn *cx = c->cx;
    struct sreply r;
    int64_t len;
    list_len(c, &len);
    reply_begin(cx, "#RETURN");
    pk_empty_list(&cx->pw);
    for (int64_t t = 0; t < times; t++) {
        for (int64_t i = 0; i < len; i += 1000) {
            pk_mark(&cx->pw);
            for (int64_t k = i; k < len && k < i + 1000; k++) {
                struct mval at = mint(k);
                sx(c, OP_LIST_GET, &at, NULL, &r);
                pv_write(&cx->pw, &r.v);
            }
            pk_appends(&cx->pw);
        }
    }
    if (extra && extra->n) {
        pk_mark(&cx->pw);
        for (uint32_t i = 0; i < extra->n; i++)
            pk_node(&cx->pw, extra->kids[i]);
        pk_appends(&cx->pw);
    }
    reply_end(cx);
}

static bool slice_of(const struct pk_node *n, int64_t len, int64_t *start, int64_t *stop, int64_t *step)
{
    if (!n || n->kind != PK_OBJECT || n->op != 'R' || n->kids[0]->kind != PK_GLOBAL || n->kids[1]->n != 3)
        return false;
    const struct pk_node *g = n->kids[0], *a = n->kids[1];
    if (g->len != 8 || memcmp(g->p, "builtins", 8) || g->len2 != 5 || memcmp(g->p2, "slice", 5))
        return false;
    *step = a->kids[2]->kind == PK_NONE ? 1 : a->kids[2]->i;
    if (*step == 0 || (a->kids[2]->kind != PK_NONE && !is_int(a->kids[2])))
        return false;
    int64_t v[2];
    for (int k = 0; k < 2; k++) {
        const struct pk_node *x = a->kids[k];
        if (x->kind == PK_NONE) {
            v[k] = k == 0 ? (*step > 0 ? 0 : len - 1) : (*step > 0 ? len : -1);
            continue;
        }
        if (!is_int(x))
            return false;
        v[k] = x->i < 0 ? x->i + len : x->i;
        int64_t lo = *step > 0 ? 0 : -1, hi = *step > 0 ? len : len - 1;
        v[k] = v[k] < lo ? lo : v[k] > hi ? hi : v[k];
    }
    *start = v[0];
    *stop = v[1];
    return true;
}

/* One item of a list being sorted: a number, or bytes (str or bytes). */
struct sort_item {
    size_t index;                /* its place before: the sort is stable, as Python's */
    bool is_int;
    int64_t i;
    double f;
    struct sval v;
};

static int sort_cmp(const void *pa, const void *pb, void *reverse)
{
    const struct sort_item *a = pa, *b = pb;
    int c;
    if (a->v.type == MV_BYTES && (a->v.tag == 0 || a->v.tag == 'S')) {
        size_t n = a->v.b.len < b->v.b.len ? a->v.b.len : b->v.b.len;
        c = n ? memcmp(a->v.b.data, b->v.b.data, n) : 0;   /* UTF-8 byte order is code point order */
        if (c == 0)
            c = (a->v.b.len > b->v.b.len) - (a->v.b.len < b->v.b.len);
    } else if (a->is_int && b->is_int) {
        c = (a->i > b->i) - (a->i < b->i);
    } else {
        double x = a->is_int ? (double)a->i : a->f, y = b->is_int ? (double)b->i : b->f;
        c = (x > y) - (x < y);
    }
    if (*(const bool *)reverse)
        c = -c;
    return c ? c : (a->index > b->index) - (a->index < b->index);
}

/* list.sort(reverse=...) of numbers, of str or of bytes (no key function:
 * the server runs no client code), store mutex held. */
static void list_sort(struct pycall *c, int64_t len)
{
    struct pyconn *cx = c->cx;
    const struct pk_node *key = arg(c, 99, "key"), *rev = arg(c, 99, "reverse");
    bool reverse = truthy(rev, false);
    if ((key && key->kind != PK_NONE) || (c->args && c->args->n)) {
        traceback(cx, "NotImplementedError: mproc-manager sorts without a key function", NULL);
        return;
    }
    struct sort_item *it = calloc(len ? (size_t)len : 1, sizeof *it);
    int kind = -1, rc = it ? 0 : MP_ENOMEM;    /* 0 numbers, 'S' str, 'B' bytes */
    struct sreply r;
    for (int64_t i = 0; i < len && rc == 0; i++) {
        struct mval at = mint(i);
        if ((rc = sx(c, OP_LIST_GET, &at, NULL, &r)) < 0 || (rc = pv_sval_set(&it[i].v, &r.v)) < 0)
            break;
        it[i].index = (size_t)i;
        const struct mval *v = &r.v;
        int k = v->type == MV_INT || v->type == MV_FLOAT || v->tag == 'I' || v->tag == 'F' ? 0
              : v->tag == 'S' ? 'S' : v->tag == 0 ? 'B' : -2;
        if (k == -2 || (kind != -1 && k != kind))
            rc = MP_ETYPE;
        kind = k;
        uint64_t bits = 0;
        if (v->type == MV_BYTES && v->len == 8 && (v->tag == 'I' || v->tag == 'F'))
            for (int b = 7; b >= 0; b--)
                bits = bits << 8 | v->p[b];
        it[i].is_int = v->type == MV_INT || v->tag == 'I';
        it[i].i = v->type == MV_INT ? v->i : (int64_t)bits;
        if (v->type == MV_FLOAT)
            it[i].f = v->f;
        else if (v->tag == 'F')
            memcpy(&it[i].f, &bits, 8);
    }
    if (rc == 0) {
        qsort_r(it, (size_t)len, sizeof *it, sort_cmp, &reverse);
        for (int64_t i = 0; i < len && rc == 0; i++) {
            struct mval at = mint(i), v = pv_sval_view(&it[i].v);
            rc = sx(c, OP_LIST_SET, &at, &v, &r);
        }
    }
    for (int64_t i = 0; it && i < len; i++)
        mp_buf_free(&it[i].v.b);
    free(it);
    if (rc == MP_ETYPE)
        raise_msg(cx, "TypeError", "mproc-manager: sort() orders lists of numbers, of str or of bytes");
    else if (rc < 0)
        raise_status(cx, rc);
    else
        ret_none(cx);
}

static void list_call(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct store *s = cx->reg->store;
    struct pk_node *a0 = (struct pk_node *)arg(c, 0, NULL), *a1 = (struct pk_node *)arg(c, 1, NULL);
    const struct pk_node *m = c->m;
    struct sreply r;
    struct mval v;
    int64_t len, start, stop, step;
    int rc = 0;
    store_lock(s);
    list_len(c, &len);
    if (str_is(m, "__len__")) {
        ret_int(cx, len);
    } else if (str_is(m, "append")) {
        if (!a0 || (rc = list_append_node(c, a0)) < 0)
            raise_status(cx, a0 ? rc : MP_EINVAL);
        else
            ret_none(cx);
    } else if (str_is(m, "extend") || str_is(m, "__imul__")) {
        if (str_is(m, "__imul__")) {
            int64_t times = is_int(a0) ? a0->i : 1;
            for (int64_t t = 1; t < times && rc == 0; t++)
                for (int64_t i = 0; i < len && rc == 0; i++) {
                    struct mval at = mint(i);
                    if ((rc = sx(c, OP_LIST_GET, &at, NULL, &r)) == 0) {
                        struct mval item = r.v;
                        rc = sx(c, OP_LIST_APPEND, &item, NULL, &r);
                    }
                }
            for (int64_t i = times <= 0 ? len : 0; i > 0 && rc == 0; i--) {
                struct mval last = mint(-1);
                rc = sx(c, OP_LIST_POP, &last, NULL, &r);
                store_release(&r);
            }
        } else if (!a0 || (a0->kind != PK_LIST && a0->kind != PK_TUPLE)) {
            rc = MP_ETYPE;
        } else {
            for (uint32_t i = 0; i < a0->n && rc == 0; i++)
                rc = list_append_node(c, a0->kids[i]);
        }
        if (rc < 0)
            raise_status(cx, rc);
        else
            ret_none(cx);
    } else if (str_is(m, "__getitem__") && slice_of(a0, len, &start, &stop, &step)) {
        reply_begin(cx, "#RETURN");
        pk_empty_list(&cx->pw);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
            struct mval at = mint(i);
            sx(c, OP_LIST_GET, &at, NULL, &r);
            pk_mark(&cx->pw);
            pv_write(&cx->pw, &r.v);
            pk_appends(&cx->pw);
        }
        reply_end(cx);
    } else if (str_is(m, "__getitem__") || str_is(m, "__setitem__") || str_is(m, "__delitem__") ||
               str_is(m, "pop")) {
        bool pop = str_is(m, "pop");
        struct mval at = mint(pop && !a0 ? -1 : is_int(a0) ? a0->i : 0);
        if (!pop && !is_int(a0))
            raise_msg(cx, "TypeError", "list indices must be integers (mproc-manager: or slices, to read)");
        else if (pop && a0 && !is_int(a0))
            raise_msg(cx, "TypeError", "'pop' index must be an integer");
        else if (pop && len == 0)
            raise_msg(cx, "IndexError", "pop from empty list");
        else if (str_is(m, "__getitem__") || pop) {
            if ((rc = sx(c, pop ? OP_LIST_POP : OP_LIST_GET, &at, NULL, &r)) < 0) {
                raise_msg(cx, "IndexError", pop ? "pop index out of range" : "list index out of range");
            } else {
                reply_begin(cx, "#RETURN");
                pv_write(&cx->pw, &r.v);
                reply_end(cx);
                store_release(&r);
            }
        } else if (str_is(m, "__setitem__")) {
            if (!a1 || (rc = pv_value(a1, &cx->tmp2, true, &v)) < 0 || (rc = sx(c, OP_LIST_SET, &at, &v, &r)) < 0)
                raise_msg(cx, "IndexError", "list assignment index out of range");
            else
                ret_none(cx);
        } else {
            if ((rc = sx(c, OP_LIST_POP, &at, NULL, &r)) < 0)
                raise_msg(cx, "IndexError", "list assignment index out of range");
            else
                ret_none(cx);
            store_release(&r);
        }
    } else if (str_is(m, "insert")) {
        if (!is_int(a0) || !a1) {
            raise_msg(cx, "TypeError", "insert takes an index and an item");
        } else {
            int64_t at = a0->i < 0 ? a0->i + len : a0->i;
            at = at < 0 ? 0 : at > len ? len : at;
            if ((rc = list_append_node(c, a1)) == 0 && at < len)
                rc = list_move(c, len, at);
            if (rc < 0)
                raise_status(cx, rc);
            else
                ret_none(cx);
        }
    } else if (str_is(m, "__contains__") || str_is(m, "index") || str_is(m, "count") || str_is(m, "remove")) {
        int64_t count = 0;
        int64_t from = str_is(m, "index") && is_int(a1) ? (a1->i < 0 ? a1->i + len : a1->i) : 0;
        int64_t found = a0 ? list_find(c, a0, from, str_is(m, "count") ? &count : NULL) : -1;
        if (str_is(m, "__contains__")) {
            ret_bool(cx, found >= 0);
        } else if (str_is(m, "count")) {
            ret_int(cx, count);
        } else if (found < 0) {
            raise_msg(cx, "ValueError", str_is(m, "index") ? "item is not in list" : "list.remove(x): x not in list");
        } else if (str_is(m, "index")) {
            ret_int(cx, found);
        } else {
            struct mval at = mint(found);
            sx(c, OP_LIST_POP, &at, NULL, &r);
            store_release(&r);
            ret_none(cx);
        }
    } else if (str_is(m, "reverse")) {
        for (int64_t i = 0; i < len / 2 && rc == 0; i++)
            rc = list_swap(c, i, len - 1 - i);
        if (rc < 0)
            raise_status(cx, rc);
        else
            ret_none(cx);
    } else if (str_is(m, "#GETVALUE") || str_is(m, "copy")) {
        list_write(c, 1, NULL);
    } else if (str_is(m, "clear")) {
        for (int64_t i = 0; i < len; i++) {
            struct mval last = mint(-1);
            sx(c, OP_LIST_POP, &last, NULL, &r);
            store_release(&r);
        }
        ret_none(cx);
    } else if (str_is(m, "__add__")) {
        if (!a0 || a0->kind != PK_LIST)
            raise_msg(cx, "TypeError", "can only concatenate list to list");
        else
            list_write(c, 1, a0);
    } else if (str_is(m, "__mul__") || str_is(m, "__rmul__")) {
        if (!is_int(a0))
            raise_msg(cx, "TypeError", "can't multiply sequence by non-int");
        else
            list_write(c, a0->i, NULL);
    } else {
        if (str_is(m, "sort"))
            list_sort(c, len);
        else
            traceback(cx, "NotImplementedError: mproc-manager does not run this list method", NULL);
    }
    store_unlock(s);
}

/* ------------------------------------------------------------------ queue */

/* Keeps a copy of the item a get reply carries and of its queue's name. */
static int keep_item(struct pyconn *cx, struct pyobj *o, const struct mval *v)
{
    cx->item.len = 0;
    if (mp_buf_append(&cx->item, o->sname, o->snlen) < 0 ||
        (v->type == MV_BYTES && mp_buf_append(&cx->item, v->p, v->len) < 0))
        return MP_ENOMEM;
    const uint8_t *base = cx->item.data;
    cx->item_queue = (struct mval){ .type = MV_TEXT, .p = base, .len = o->snlen };
    cx->item_v = *v;
    if (v->type == MV_BYTES)
        cx->item_v.p = base + o->snlen;
    cx->has_item = true;
    return 0;
}

static void queue_call(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct pyreg *reg = cx->reg;
    struct pyobj *o = c->o;
    const struct pk_node *m = c->m;
    struct sreply r;
    struct timespec until;
    if (str_is(m, "put") || str_is(m, "put_nowait") || str_is(m, "get") || str_is(m, "get_nowait")) {
        bool put = str_is(m, "put") || str_is(m, "put_nowait"), nowait = str_is(m, "put_nowait") || str_is(m, "get_nowait");
        struct pk_node *item = put ? (struct pk_node *)arg(c, 0, "item") : NULL;
        const struct pk_node *block = arg(c, put ? 1 : 0, "block"), *timeout = arg(c, put ? 2 : 1, "timeout");
        bool blocking = !nowait && truthy(block, true);
        bool has_deadline = deadline_of(timeout, &until);
        struct mval v;
        int rc;
        if (put && !item) {
            raise_msg(cx, "TypeError", "put() missing 1 required positional argument: 'item'");
            return;
        }
        if (blocking && has_deadline && number(timeout) < 0) {
            raise_msg(cx, "ValueError", "'timeout' must be a non-negative number");
            return;
        }
        if (put && (rc = pv_value(item, &cx->tmp2, true, &v)) < 0) {
            raise_status(cx, rc);
            return;
        }
        rc = sx_wait(c, put ? OP_QUEUE_PUT : OP_QUEUE_GET, put ? &v : NULL, blocking, has_deadline ? &until : NULL, &r);
        if (rc == 0) {
            reply_begin(cx, "#RETURN");
            if (put)
                pk_none(&cx->pw);
            else
                pv_write(&cx->pw, &r.v);
            reply_end(cx);
            if (!put && keep_item(cx, o, &r.v) < 0) {
                struct mval qn = obj_name(o);
                store_unget_locked(reg->store, &qn, &r.v);   /* never lost for want of memory */
                cx->has_item = false;
                rc = MP_ENOMEM;
            }
        }
        store_unlock(reg->store);
        store_release(&r);
        if (rc == 0 && put) {
            pthread_mutex_lock(&reg->mu);
            o->unfinished++;
            pthread_mutex_unlock(&reg->mu);
        } else if (rc == MP_EEMPTY || rc == MP_EFULL) {
            raise_(cx, "queue", rc == MP_EEMPTY ? "Empty" : "Full", NULL, NULL);
        } else if (rc < 0) {
            raise_status(cx, rc);
        }
        return;
    }
    if (str_is(m, "qsize") || str_is(m, "empty") || str_is(m, "full")) {
        struct mmsg q = { .n = 2 };
        q.v[0] = mint(OP_QUEUE_LEN);
        q.v[1] = obj_name(o);
        store_exec(reg->store, cx->owner, &q, &r);
        int64_t n = r.v.i;
        store_done(reg->store, &r);
        if (str_is(m, "qsize"))
            ret_int(cx, n);
        else if (str_is(m, "empty"))
            ret_bool(cx, n == 0);
        else
            ret_bool(cx, o->maxsize > 0 && n >= o->maxsize);
        return;
    }
    pthread_mutex_lock(&reg->mu);
    if (str_is(m, "task_done")) {
        if (o->unfinished <= 0) {
            raise_msg(cx, "ValueError", "task_done() called too many times");
        } else {
            if (--o->unfinished == 0)
                pthread_cond_broadcast(&o->cond);
            ret_none(cx);
        }
    } else if (str_is(m, "join")) {
        int rc = 0;
        while (o->unfinished > 0 && rc == 0)
            rc = obj_wait(cx, o, NULL);
        ret_none(cx);
    } else {
        traceback(cx, "AttributeError: method not supported", NULL);
    }
    pthread_mutex_unlock(&reg->mu);
}

/* ------------------------------------------------------------------ Lock (in the store) */

/* acquire(blocking=True, timeout=-1) as threading.Lock reads it. */
static bool acquire_args(struct pycall *c, bool *blocking, bool *has_deadline, struct timespec *until)
{
    const struct pk_node *b = arg(c, 0, "blocking"), *t = arg(c, 1, "timeout");
    *blocking = truthy(b, true);
    *has_deadline = false;
    if (t && t->kind != PK_NONE) {
        if (!is_number(t)) {
            raise_msg(c->cx, "TypeError", "timeout must be a number");
            return false;
        }
        double secs = number(t);
        if (!*blocking && secs != -1) {
            raise_msg(c->cx, "ValueError", "can't specify a timeout for a non-blocking call");
            return false;
        }
        if (secs < 0 && secs != -1) {
            raise_msg(c->cx, "ValueError", "timeout value must be a non-negative number");
            return false;
        }
        if (secs >= 0) {
            *has_deadline = true;
            *until = mono_in(secs);
        }
    }
    return true;
}

static void lock_call(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct store *s = cx->reg->store;
    struct sreply r;
    if (str_is(c->m, "acquire") || str_is(c->m, "__enter__")) {
        bool blocking, has_deadline;
        struct timespec until;
        if (!acquire_args(c, &blocking, &has_deadline, &until))
            return;
        int rc = sx_wait(c, OP_LOCK_ACQUIRE, NULL, blocking, has_deadline ? &until : NULL, &r);
        store_unlock(s);
        if (rc == 0 || rc == MP_EOWNERDEAD)
            ret_bool(cx, true);
        else if (rc == MP_ETIMEDOUT)
            ret_bool(cx, false);
        else
            raise_status(cx, rc);
    } else if (str_is(c->m, "release") || str_is(c->m, "__exit__")) {
        store_lock(s);
        int rc = sx(c, OP_LOCK_RELEASE, NULL, NULL, &r);
        store_unlock(s);
        if (rc < 0)
            raise_msg(cx, "RuntimeError", "release unlocked lock (mproc-manager: or one this connection does not hold)");
        else
            ret_none(cx);
    } else {
        traceback(cx, "AttributeError: method not supported", NULL);
    }
}

/* ------------------------------------------------------------------ primitives kept here */

/* RLock and Condition's lock: owner and depth; r->mu held. */
static int rlock_acquire(struct pyconn *cx, struct pyobj *o, bool blocking, const struct timespec *until, int64_t depth)
{
    if (o->owner == cx->owner) {
        o->count += depth;
        return 0;
    }
    int rc = 0;
    while (o->owner && blocking && rc == 0)
        rc = obj_wait(cx, o, until);
    if (o->owner)
        return rc ? rc : MP_ETIMEDOUT;
    o->owner = cx->owner;
    o->count = depth;
    return 0;
}

static void rlock_release_all(struct pyobj *o)
{
    o->owner = NULL;
    o->count = 0;
    pthread_cond_broadcast(&o->cond);
}

static void prim_call(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct pyobj *o = c->o;
    const struct pk_node *m = c->m;
    enum pytype t = o->ti->t;
    bool blocking, has_deadline;
    struct timespec until;
    int rc = 0;
    pthread_mutex_lock(&cx->reg->mu);
    if ((t == PT_RLOCK || t == PT_COND || t == PT_SEM || t == PT_BSEM) && str_is(m, "acquire")) {
        if (acquire_args(c, &blocking, &has_deadline, &until)) {
            if (t == PT_RLOCK || t == PT_COND) {
                rc = rlock_acquire(cx, o, blocking, has_deadline ? &until : NULL, 1);
            } else {
                while (o->count <= 0 && blocking && rc == 0)
                    rc = obj_wait(cx, o, has_deadline ? &until : NULL);
                if (o->count > 0) {
                    o->count--;
                    rc = 0;
                } else {
                    rc = MP_ETIMEDOUT;
                }
            }
            ret_bool(cx, rc == 0);
        }
    } else if ((t == PT_RLOCK || t == PT_COND) && str_is(m, "release")) {
        if (o->owner != cx->owner) {
            raise_msg(cx, "RuntimeError", "cannot release un-acquired lock");
        } else {
            if (--o->count == 0)
                rlock_release_all(o);
            ret_none(cx);
        }
    } else if ((t == PT_SEM || t == PT_BSEM) && str_is(m, "release")) {
        const struct pk_node *n = arg(c, 0, "n");
        int64_t k = is_int(n) ? n->i : 1;
        if (k < 1) {
            raise_msg(cx, "ValueError", "n must be one or more");
        } else if (t == PT_BSEM && o->count + k > o->max) {
            raise_msg(cx, "ValueError", "Semaphore released too many times");
        } else {
            o->count += k;
            pthread_cond_broadcast(&o->cond);
            ret_none(cx);
        }
    } else if (t == PT_COND && str_is(m, "wait")) {
        if (o->owner != cx->owner) {
            raise_msg(cx, "RuntimeError", "cannot wait on un-acquired lock");
        } else {
            has_deadline = deadline_of(arg(c, 0, "timeout"), &until);
            struct cwaiter me = { .next = NULL };
            struct cwaiter **tail = &o->cwaiters;
            while (*tail)
                tail = &(*tail)->next;
            *tail = &me;
            int64_t depth = o->count;
            rlock_release_all(o);
            while (!me.notified && rc == 0)
                rc = obj_wait(cx, o, has_deadline ? &until : NULL);
            if (!me.notified) {
                for (struct cwaiter **w = &o->cwaiters; *w; w = &(*w)->next)
                    if (*w == &me) {
                        *w = me.next;
                        break;
                    }
            }
            int got = 0;
            do
                got = rlock_acquire(cx, o, true, NULL, depth);
            while (got == MP_ETIMEDOUT);
            if (got < 0)
                raise_status(cx, MP_EBROKEN);
            else
                ret_bool(cx, me.notified);
        }
    } else if (t == PT_COND && (str_is(m, "notify") || str_is(m, "notify_all"))) {
        const struct pk_node *n = arg(c, 0, "n");
        int64_t k = str_is(m, "notify_all") ? INT64_MAX : is_int(n) ? n->i : 1;
        if (o->owner != cx->owner) {
            raise_msg(cx, "RuntimeError", "cannot notify on un-acquired lock");
        } else {
            while (k-- > 0 && o->cwaiters) {
                o->cwaiters->notified = true;
                o->cwaiters = o->cwaiters->next;
            }
            pthread_cond_broadcast(&o->cond);
            ret_none(cx);
        }
    } else if (t == PT_EVENT) {
        if (str_is(m, "is_set")) {
            ret_bool(cx, o->flag);
        } else if (str_is(m, "set")) {
            o->flag = true;
            pthread_cond_broadcast(&o->cond);
            ret_none(cx);
        } else if (str_is(m, "clear")) {
            o->flag = false;
            ret_none(cx);
        } else if (str_is(m, "wait")) {
            has_deadline = deadline_of(arg(c, 0, "timeout"), &until);
            while (!o->flag && rc == 0)
                rc = obj_wait(cx, o, has_deadline ? &until : NULL);
            ret_bool(cx, o->flag);
        } else {
            traceback(cx, "AttributeError: method not supported", NULL);
        }
    } else if (t == PT_BARRIER) {
        if (str_is(m, "wait")) {
            has_deadline = deadline_of(arg(c, 0, "timeout"), &until);
            if (!has_deadline && o->val.type == MV_FLOAT)
                has_deadline = (until = mono_in(o->val.f), true);
            uint64_t gen = o->gen;
            int64_t index = o->waiting++;
            if (o->flag) {
                o->waiting--;
                raise_(cx, "threading", "BrokenBarrierError", NULL, NULL);
            } else if (o->waiting == o->max) {
                o->waiting = 0;
                o->gen++;
                pthread_cond_broadcast(&o->cond);
                ret_int(cx, index);
            } else {
                while (o->gen == gen && !o->flag && rc == 0)
                    rc = obj_wait(cx, o, has_deadline ? &until : NULL);
                if (o->gen != gen && gen > o->broken_upto) {
                    ret_int(cx, index);
                } else {
                    if (o->gen == gen) {     /* timed out, left, or aborted: the barrier breaks */
                        o->flag = true;
                        o->waiting--;
                        pthread_cond_broadcast(&o->cond);
                    }
                    raise_(cx, "threading", "BrokenBarrierError", NULL, NULL);
                }
            }
        } else if (str_is(m, "abort")) {
            o->flag = true;
            pthread_cond_broadcast(&o->cond);
            ret_none(cx);
        } else if (str_is(m, "reset")) {
            if (o->waiting > 0 || o->flag) {
                o->broken_upto = o->gen;
                o->gen++;
            }
            o->waiting = 0;
            o->flag = false;
            pthread_cond_broadcast(&o->cond);
            ret_none(cx);
        } else if (str_is(m, "__getattribute__")) {
            const struct pk_node *a = arg(c, 0, NULL);
            if (str_is(a, "parties"))
                ret_int(cx, o->max);
            else if (str_is(a, "n_waiting"))
                ret_int(cx, o->flag ? 0 : o->waiting);
            else if (str_is(a, "broken"))
                ret_bool(cx, o->flag);
            else
                raise_(cx, "builtins", "AttributeError", NULL, (struct pk_node *)a);
        } else {
            traceback(cx, "AttributeError: method not supported", NULL);
        }
    } else if (t == PT_VALUE) {
        if (str_is(m, "get") || str_is(m, "#GETVALUE")) {
            struct mval v = pv_sval_view(&o->val);
            reply_begin(cx, "#RETURN");
            pv_write(&cx->pw, &v);
            reply_end(cx);
        } else if (str_is(m, "set") && arg(c, 0, "value")) {
            struct mval v;
            if ((rc = pv_value((struct pk_node *)arg(c, 0, "value"), &cx->tmp2, false, &v)) == 0 &&
                !obj_charge(cx->reg, o, (int64_t)v.len - (int64_t)o->val.b.len))
                rc = MP_ENOMEM;
            if (rc < 0 || (rc = pv_sval_set(&o->val, &v)) < 0)
                raise_status(cx, rc);
            else
                ret_none(cx);
        } else {
            traceback(cx, "AttributeError: method not supported", NULL);
        }
    } else if (t == PT_ARRAY) {
        const struct pk_node *a0 = arg(c, 0, NULL);
        int64_t i = is_int(a0) ? (a0->i < 0 ? a0->i + (int64_t)o->nitems : a0->i) : -1;
        if (str_is(m, "__len__")) {
            ret_int(cx, (int64_t)o->nitems);
        } else if (str_is(m, "#GETVALUE")) {
            char tc[2] = { o->typecode, 0 };
            reply_begin(cx, "#RETURN");
            pk_global(&cx->pw, "array", "array");
            pk_cstr(&cx->pw, tc);
            pk_empty_list(&cx->pw);
            for (size_t k = 0; k < o->nitems; k++) {
                struct mval v = pv_sval_view(&o->items[k]);
                pk_mark(&cx->pw);
                pv_write(&cx->pw, &v);
                pk_appends(&cx->pw);
            }
            pk_tuple(&cx->pw, 2);
            pk_reduce(&cx->pw);
            reply_end(cx);
        } else if (!is_int(a0)) {
            raise_msg(cx, "TypeError", "array indices must be integers");
        } else if (i < 0 || (size_t)i >= o->nitems) {
            raise_msg(cx, "IndexError", "array index out of range");
        } else if (str_is(m, "__getitem__")) {
            struct mval v = pv_sval_view(&o->items[i]);
            reply_begin(cx, "#RETURN");
            pv_write(&cx->pw, &v);
            reply_end(cx);
        } else if (str_is(m, "__setitem__")) {
            const struct pk_node *a1 = arg(c, 1, NULL);
            bool fl = o->typecode == 'f' || o->typecode == 'd';
            if (!a1 || !(fl ? is_number(a1) : is_int(a1))) {
                raise_msg(cx, "TypeError", fl ? "must be real number" : "an integer is required");
            } else {
                struct mval v = fl ? mfloat(number(a1)) : mint(a1->i);
                pv_sval_set(&o->items[i], &v);
                ret_none(cx);
            }
        } else {
            traceback(cx, "AttributeError: method not supported", NULL);
        }
    } else {
        traceback(cx, "AttributeError: method not supported", NULL);
    }
    pthread_mutex_unlock(&cx->reg->mu);
}

/* ------------------------------------------------------------------ create */

/* Sets up a new object from create's arguments: 0, or a message for TypeError. */
static const char *obj_init(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct pyobj *o = c->o;
    struct store *s = cx->reg->store;
    struct sreply r;
    const struct pk_node *a0 = arg(c, 0, NULL), *a1 = arg(c, 1, NULL);
    int rc = 0;
    switch (o->ti->t) {
    case PT_DICT:
    case PT_NAMESPACE:
        store_lock(s);
        rc = sx(c, OP_DICT_OPEN, NULL, NULL, &r);
        if (rc == 0 && o->ti->t == PT_DICT && a0)
            rc = dict_update_from(c, (struct pk_node *)a0);
        if (rc == 0 && c->kwds)
            rc = dict_update_from(c, (struct pk_node *)c->kwds);
        store_unlock(s);
        return rc < 0 ? "mproc-manager: dict() takes a dict or pairs, with str, bytes, number or tuple keys" : NULL;
    case PT_LIST:
        store_lock(s);
        rc = sx(c, OP_LIST_OPEN, NULL, NULL, &r);
        if (rc == 0 && a0 && a0->kind != PK_LIST && a0->kind != PK_TUPLE)
            rc = MP_ETYPE;
        for (uint32_t i = 0; a0 && rc == 0 && i < a0->n; i++)
            rc = list_append_node(c, a0->kids[i]);
        store_unlock(s);
        return rc < 0 ? "mproc-manager: list() takes a list or a tuple" : NULL;
    case PT_QUEUE: {
        const struct pk_node *ms = arg(c, 0, "maxsize");
        o->maxsize = is_int(ms) && ms->i > 0 ? ms->i : 0;
        struct mval bound = mint(o->maxsize);
        store_lock(s);
        rc = sx(c, OP_QUEUE_OPEN, &bound, NULL, &r);
        store_unlock(s);
        return rc < 0 ? "mproc-manager: Queue(maxsize) takes an int" : NULL;
    }
    case PT_LOCK:
        store_lock(s);
        rc = sx(c, OP_LOCK_OPEN, NULL, NULL, &r);
        store_unlock(s);
        return rc < 0 ? "mproc-manager: cannot make the lock" : NULL;
    case PT_SEM:
    case PT_BSEM: {
        const struct pk_node *v = arg(c, 0, "value");
        o->count = o->max = is_int(v) ? v->i : 1;
        return o->count < 0 ? "semaphore initial value must be >= 0" : NULL;
    }
    case PT_COND:
        return a0 && a0->kind != PK_NONE ? "mproc-manager: Condition() takes no lock of its own" : NULL;
    case PT_BARRIER: {
        const struct pk_node *p = arg(c, 0, "parties"), *act = arg(c, 1, "action"), *t = arg(c, 2, "timeout");
        if (!is_int(p) || p->i < 1)
            return "parties must be >= 1";
        if (act && act->kind != PK_NONE)
            return "mproc-manager: a Barrier action would run code in the server; pass none";
        o->max = p->i;
        o->gen = 1;                  /* generations up to broken_upto (0) broke */
        if (is_number(t))
            o->val = (struct sval){ .type = MV_FLOAT, .f = number(t) };
        return NULL;
    }
    case PT_VALUE: {
        const struct pk_node *tc = arg(c, 0, "typecode"), *v = arg(c, 1, "value");
        struct mval sv;
        if (!v || pv_value((struct pk_node *)v, &cx->tmp2, false, &sv) < 0)
            return "Value() takes a typecode and a value";
        pthread_mutex_lock(&cx->reg->mu);
        bool room = obj_charge(cx->reg, o, (int64_t)sv.len);
        pthread_mutex_unlock(&cx->reg->mu);
        if (!room || pv_sval_set(&o->val, &sv) < 0)
            return "mproc-manager: the server's memory budget is spent";
        o->typecode = tc && tc->kind == PK_STR && tc->len == 1 ? (char)tc->p[0] : 'O';
        return NULL;
    }
    case PT_ARRAY: {
        if (!a0 || a0->kind != PK_STR || a0->len != 1 || !strchr("bBhHiIlLqQfd", a0->p[0]))
            return "mproc-manager: Array() takes a numeric typecode";
        o->typecode = (char)a0->p[0];
        bool fl = o->typecode == 'f' || o->typecode == 'd';
        if (is_int(a1) && a1->i >= 0 && a1->i <= PY_MAX_ARRAY) {
            o->nitems = (size_t)a1->i;
        } else if (a1 && (a1->kind == PK_LIST || a1->kind == PK_TUPLE) && a1->n <= PY_MAX_ARRAY) {
            o->nitems = a1->n;
        } else {
            return "Array() takes a size or a sequence of numbers";
        }
        pthread_mutex_lock(&cx->reg->mu);
        bool room = obj_charge(cx->reg, o, (int64_t)(o->nitems * sizeof *o->items));
        pthread_mutex_unlock(&cx->reg->mu);
        o->items = room ? calloc(o->nitems ? o->nitems : 1, sizeof *o->items) : NULL;
        if (!o->items) {
            o->nitems = 0;
            return "mproc-manager: the server's memory budget is spent";
        }
        for (size_t i = 0; i < o->nitems; i++) {
            const struct pk_node *x = is_int(a1) ? NULL : a1->kids[i];
            if (x && !(fl ? is_number(x) : is_int(x)))
                return fl ? "must be real number" : "an integer is required";
            o->items[i] = (struct sval){ .type = fl ? MV_FLOAT : MV_INT, .i = x && !fl ? x->i : 0,
                                         .f = x && fl ? number(x) : 0 };
        }
        return NULL;
    }
    case PT_RLOCK:
    case PT_EVENT:
    case PT_ITER:
        return NULL;
    }
    return NULL;
}

static void write_exposed(struct pk_writer *w, const char *const *e)
{
    pk_mark(w);
    for (; *e; e++)
        pk_cstr(w, *e);
    pk_tuple_mark(w);
}

static void srv_create(struct pyconn *cx, const struct pk_node *args, const struct pk_node *kwds)
{
    struct pyreg *reg = cx->reg;
    const struct pk_node *typeid = args->n ? args->kids[0] : NULL;
    const struct pytypeinfo *ti = NULL;
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0] && typeid; i++)
        if (str_is(typeid, TYPES[i].typeid))
            ti = &TYPES[i];
    if (!ti) {
        traceback(cx, "KeyError: typeid not served by mproc-manager", NULL);
        return;
    }
    struct pk_node rest = { .kind = PK_TUPLE, .kids = args->kids + 1, .n = args->n - 1 };
    char id[PY_MAX_IDENT + 1];
    size_t idlen;
    struct pyobj *o;
    if (ti->named) {
        const struct pk_node *name = rest.n ? rest.kids[0] : NULL;
        const uint8_t *np = (const uint8_t *)"default";
        size_t nl = 7;
        if (name && name->kind == PK_STR) {
            np = name->p;
            nl = name->len;
        } else if (name) {
            traceback(cx, "TypeError: the name of a shared object is a str", NULL);
            return;
        }
        size_t prefix = ti->t == PT_NAMESPACE ? 4 : 0;
        if (!msg_name_ok(np, nl) || nl + prefix > MSG_MAX_NAME) {
            traceback(cx, "ValueError: names are 1 to 255 bytes of UTF-8 without NUL", NULL);
            return;
        }
        id[0] = ti->named;
        id[1] = ':';
        memcpy(id + 2, np, nl);
        idlen = nl + 2;
        pthread_mutex_lock(&reg->mu);
        struct pyobj **slot = obj_slot(reg, id, idlen);
        o = *slot;
        if (o) {
            o->refs++;
            pthread_mutex_unlock(&reg->mu);
        } else if ((o = obj_add(reg, ti, id, idlen))) {
            memcpy(o->sname, "\xffns:", prefix);
            memcpy(o->sname + prefix, np, nl);
            o->snlen = prefix + nl;
            o->holds++;
            pthread_mutex_unlock(&reg->mu);
            struct pycall c = { .cx = cx, .o = o };
            obj_init(&c);
            obj_release(reg, o);
        } else {
            pthread_mutex_unlock(&reg->mu);
        }
    } else {
        pthread_mutex_lock(&reg->mu);
        snprintf(id, sizeof id, "%" PRIx64, ++reg->next_id);
        idlen = strlen(id);
        o = obj_add(reg, ti, id, idlen);
        if (o) {
            o->sname[0] = 0xff;
            memcpy(o->sname + 1, id, idlen);
            o->snlen = idlen + 1;
            o->holds++;
        }
        pthread_mutex_unlock(&reg->mu);
        if (o) {
            struct pycall c = { .cx = cx, .o = o, .args = &rest, .kwds = kwds };
            const char *why = obj_init(&c);
            if (why) {
                struct pk_node idn = { .kind = PK_STR, .p = (const uint8_t *)id, .len = idlen };
                obj_release(reg, o);
                obj_decref(reg, &idn);
                traceback(cx, "TypeError", why);
                return;
            }
            obj_release(reg, o);
        }
    }
    if (!o) {
        traceback(cx, "MemoryError: mproc-manager holds too many objects", NULL);
        return;
    }
    reply_begin(cx, "#RETURN");
    pk_str(&cx->pw, id, idlen);
    write_exposed(&cx->pw, ti->exposed);
    pk_tuple(&cx->pw, 2);
    reply_end(cx);
}

/* The id inside a pickled Token: NEWOBJ(Token) with BUILD(state tuple), or REDUCE(Token, args). */
static const struct pk_node *token_id(const struct pk_node *t)
{
    if (!t || t->kind != PK_OBJECT || t->kids[0]->kind != PK_GLOBAL)
        return NULL;
    const struct pk_node *g = t->kids[0];
    if (g->len2 != 5 || memcmp(g->p2, "Token", 5) != 0)
        return NULL;
    const struct pk_node *state = t->nsteps && t->steps[0].op == 'b' ? t->steps[0].a : t->kids[1];
    return state->kind == PK_TUPLE && state->n == 3 ? state->kids[2] : NULL;
}

/* ------------------------------------------------------------------ dispatch */

static void obj_call(struct pyconn *cx, const struct pk_node *req)
{
    struct pycall c = { .cx = cx, .m = req->kids[1], .args = req->kids[2], .kwds = req->kids[3] };
    if (!(c.o = obj_hold(cx->reg, req->kids[0]))) {
        traceback(cx, "KeyError: no object with this ident (mproc-manager)", NULL);
        return;
    }
    enum pytype t = c.o->ti->t;
    cx->want_repr = (str_is(c.m, "__repr__") || str_is(c.m, "__str__")) &&
                    (t == PT_DICT || t == PT_LIST || t == PT_NAMESPACE || t == PT_ARRAY || t == PT_VALUE);
    if (cx->want_repr)                  /* Python's server: fallback_repr, repr(obj) */
        c.m = &GETVALUE;
    bool listed = str_is(c.m, "#GETVALUE");
    for (const char *const *e = c.o->ti->exposed; *e && !listed; e++)
        listed = str_is(c.m, *e);
    if (c.o->ti->named == 'd' && str_is(c.m, "__iter__"))
        listed = false;
    if (c.o->ti->named == 'n')
        listed = str_is(c.m, "__getattribute__") || str_is(c.m, "__setattr__") || str_is(c.m, "__delattr__") || listed;
    if (!listed) {
        traceback(cx, "AttributeError: method is not exposed", NULL);
    } else {
        switch (c.o->ti->t) {
        case PT_DICT: dict_call(&c); break;
        case PT_LIST: list_call(&c); break;
        case PT_QUEUE: queue_call(&c); break;
        case PT_LOCK: lock_call(&c); break;
        case PT_NAMESPACE: namespace_call(&c); break;
        case PT_ITER: iter_call(&c); break;
        default: prim_call(&c); break;
        }
    }
    obj_release(cx->reg, c.o);
    cx->want_repr = false;
}

static long count_objects(struct pyreg *r, mp_buf *info)
{
    long n = 0;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < PY_BUCKETS; i++)
        for (struct pyobj *o = r->buckets[i]; o; o = o->next)
            if (o->refs > 0) {
                n++;
                if (info) {
                    char line[PY_MAX_IDENT + 64];
                    snprintf(line, sizeof line, "%s  %.*s:       refcount=%ld\n    <%s>", info->len ? "\n" : "",
                             (int)o->idlen, o->ident, o->refs, o->ti->typeid);
                    mp_buf_append(info, line, strlen(line));
                }
            }
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* A server call (the first request of a connection). Returns true when the
 * connection goes on serving proxies (accept_connection). */
static bool srv_call(struct pyconn *cx, const struct pk_node *req)
{
    const struct pk_node *m = req->kids[1], *args = req->kids[2], *kwds = req->kids[3];
    const struct pk_node *a0 = args->n ? args->kids[0] : NULL;
    if (str_is(m, "accept_connection")) {
        ret_none(cx);
        return true;
    }
    if (str_is(m, "create")) {
        srv_create(cx, args, kwds);
    } else if (str_is(m, "incref") || str_is(m, "decref")) {
        int rc = MP_ENOTFOUND;
        if (str_is(m, "decref")) {
            rc = obj_decref(cx->reg, a0);
        } else if (a0 && a0->kind == PK_STR && a0->len <= PY_MAX_IDENT) {
            pthread_mutex_lock(&cx->reg->mu);
            struct pyobj *o = *obj_slot(cx->reg, (const char *)a0->p, a0->len);
            if (o && !o->gone) {
                o->refs++;
                rc = 0;
            }
            pthread_mutex_unlock(&cx->reg->mu);
        }
        if (rc < 0)
            raise_(cx, "builtins", "KeyError", NULL, (struct pk_node *)a0);
        else
            ret_none(cx);
    } else if (str_is(m, "get_methods")) {
        struct pyobj *o = obj_hold(cx->reg, token_id(a0));
        if (!o) {
            traceback(cx, "KeyError: no object with this token (mproc-manager)", NULL);
        } else {
            reply_begin(cx, "#RETURN");
            write_exposed(&cx->pw, o->ti->exposed);
            reply_end(cx);
            obj_release(cx->reg, o);
        }
    } else if (str_is(m, "dummy")) {
        ret_none(cx);
    } else if (str_is(m, "number_of_objects")) {
        ret_int(cx, count_objects(cx->reg, NULL));
    } else if (str_is(m, "debug_info")) {
        mp_buf info = { 0 };
        count_objects(cx->reg, &info);
        reply_begin(cx, "#RETURN");
        pk_str(&cx->pw, info.data ? info.data : "", info.len);
        reply_end(cx);
        mp_buf_free(&info);
    } else if (str_is(m, "shutdown")) {
        ret_none(cx);
        *cx->shutdown = true;
    } else {
        traceback(cx, "AssertionError: unrecognized server call", NULL);
    }
    return false;
}

/* The request tuple (ident, method, args, kwds), or NULL with *why set. */
static const struct pk_node *request_of(struct pk_arena *a, const uint8_t *data, size_t len, const char **why, int *rc)
{
    struct pk_node *req;
    pk_arena_reset(a);
    if ((*rc = pk_read(a, data, len, &req, why)) < 0)
        return NULL;
    if (req->kind != PK_TUPLE || req->n != 4 || req->kids[1]->kind != PK_STR ||
        req->kids[2]->kind != PK_TUPLE || req->kids[3]->kind != PK_DICT ||
        (req->kids[0]->kind != PK_STR && req->kids[0]->kind != PK_NONE)) {
        *why = "a request is (ident, method, args, kwds)";
        *rc = MP_EPROTO;
        return NULL;
    }
    return req;
}

int py_decode_request(const uint8_t *data, size_t len)
{
    struct pk_arena a = { 0 };
    const char *why;
    int rc;
    const struct pk_node *req = request_of(&a, data, len, &why, &rc);
    if (req) {   /* write it back as an opaque value would be; each argument as value and key */
        mp_buf b = { 0 }, k = { 0 };
        struct pk_writer w;
        pk_begin(&w, &b);
        pk_node(&w, (struct pk_node *)req);
        pk_end(&w);
        const struct pk_node *args = req->kids[2];
        for (uint32_t i = 0; i < args->n; i++) {
            struct mval v, key;
            for (int seq = 0; seq < 2; seq++) {
                if (pv_value(args->kids[i], &k, seq, &v) == 0) {
                    pk_begin(&w, &b);
                    pv_write(&w, &v);
                    pk_end(&w);
                }
            }
            if (pv_key(args->kids[i], &k, &key) == 0) {
                pk_begin(&w, &b);
                pv_key_write(&w, key.p, key.len, 0);
                pk_end(&w);
            }
        }
        mp_buf_free(&b);
        mp_buf_free(&k);
    }
    pk_arena_free(&a);
    return rc;
}

bool py_is_request(const uint8_t *data, size_t len) { return len >= 2 && data[0] == 0x80; }

/* Releases the RLocks and Conditions this connection held (its client
 * died or hung up holding them). */
static void conn_gone(struct pyconn *cx)
{
    struct pyreg *r = cx->reg;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < PY_BUCKETS; i++)
        for (struct pyobj *o = r->buckets[i]; o; o = o->next)
            if ((o->ti->t == PT_RLOCK || o->ti->t == PT_COND) && o->owner == cx->owner)
                rlock_release_all(o);
    pthread_mutex_unlock(&r->mu);
}

void py_serve(struct pyreg *reg, struct store_owner *owner, struct wire *w, const uint8_t *data, size_t len,
              bool *shutdown)
{
    struct pyconn cx = { .reg = reg, .owner = owner, .w = w, .shutdown = shutdown };
    bool serving = false;
    /* A Python client spends tens of microseconds between requests: the
     * C clients' busy-poll would only take its CPU away. */
    w->spin_ns = PY_SPIN_NS;
    for (;;) {
        const char *why = NULL;
        int rc;
        cx.has_item = false;
        const struct pk_node *req = request_of(&cx.arena, data, len, &why, &rc);
        if (!req) {                      /* the client raises ValueError(text) */
            char text[256];
            snprintf(text, sizeof text, "mproc-manager: %s: %s", rc == MP_ETOOBIG ? "request too large" : "malformed request", why);
            raise_msg(&cx, "ValueError", text);
        }
        else if (serving)
            obj_call(&cx, req);
        else
            serving = srv_call(&cx, req);
        if (cx.pw.rc < 0)
            traceback(&cx, "the reply could not be pickled", mp_strerror(cx.pw.rc));
        mp_deadline d = deadline_in(10);
        if (wire_send(w, cx.out.data, cx.out.len, &d) < 0) {
            if (cx.has_item)             /* the getter is gone: the item stays for the next one */
                store_unget(reg->store, &cx.item_queue, &cx.item_v);
            break;
        }
        if (!serving || *shutdown)
            break;
        if (wire_recv(w, &data, &len, WIRE_MAX_FRAME, NULL) < 0)
            break;
    }
    conn_gone(&cx);
    pk_arena_free(&cx.arena);
    mp_buf_free(&cx.out);
    mp_buf_free(&cx.tmp);
    mp_buf_free(&cx.tmp2);
    mp_buf_free(&cx.item);
}
