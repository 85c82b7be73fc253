/* pyproto.c - CPython's manager protocol on the mproc manager (pyproto.h):
 * a Python connection, its server calls and the dispatch of its methods.
 *
 * A connection is what CPython's Server._handle_request makes of it: one
 * server call (create, incref, decref, get_methods, dummy, debug_info,
 * number_of_objects, shutdown) and hang up, or accept_connection and then
 * proxy method calls until the client goes. Requests are read with the
 * pickle subset of pickle.c, so the server never runs a pickle; replies
 * are written by pycall.c. A method call looks its name up in the table
 * of the object's type (pyobj.h) and runs under the mutex the table names.
 *
 * dict, list, Queue, JoinableQueue, Lock and Namespace live in the store
 * (anonymous ones under a name no C client can spell); get_dict, get_list,
 * get_queue, get_lock('name') are the store's objects of that name, the
 * ones C clients open. The other types live in the object table (pyobj.c).
 * An object a proxy in a request refers to is pinned there for good, as
 * Python's server keeps the referent of every proxy it unpickles.
 */
#include "manager/pyproto.h"

#include "manager/pyobj.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* While fewer clients are being served than there are CPUs, a connection's
 * thread polls this long for the next request before it sleeps: a CPU no
 * client needs saves a wake-up on every round trip. With more clients it
 * sleeps at once, leaving every CPU to them. */
enum { PY_SPIN_NS = 50000 };

static const struct pk_node GETVALUE = { .kind = PK_STR, .p = (const uint8_t *)"#GETVALUE", .len = 9 };

/* ------------------------------------------------------------------ create */

/* Sets up a new object from create's arguments: NULL, or a message for TypeError. */
static const char *obj_init(struct pycall *c)
{
    const struct pyclass *cls = py_class(c->o->ti->t);
    return cls->init ? cls->init(c) : NULL;
}

/* get_*('name'): the named object, made on first use; NULL when the
 * table is full, or (with a traceback written) for a bad name. */
static struct pyobj *named_object(struct pyconn *cx, const struct pytypeinfo *ti, const struct pk_node *name,
                                  char *id, size_t *idlen, bool *replied)
{
    struct pyreg *reg = cx->reg;
    const uint8_t *np = (const uint8_t *)"default";
    size_t nl = 7;
    if (name && name->kind == PK_STR) {
        np = name->p;
        nl = name->len;
    } else if (name) {
        py_traceback(cx, "TypeError: the name of a shared object is a str", NULL);
        *replied = true;
        return NULL;
    }
    size_t prefix = ti->t == PT_NAMESPACE ? 4 : 0;
    if (!msg_name_ok(np, nl) || nl + prefix > MSG_MAX_NAME) {
        py_traceback(cx, "ValueError: names are 1 to 255 bytes of UTF-8 without NUL", NULL);
        *replied = true;
        return NULL;
    }
    id[0] = ti->named;
    id[1] = ':';
    memcpy(id + 2, np, nl);
    *idlen = nl + 2;
    pthread_mutex_lock(&reg->mu);
    struct pyobj *o = *pyobj_slot(reg, id, *idlen);
    if (o) {
        o->refs++;
        pthread_mutex_unlock(&reg->mu);
        return o;
    }
    if (!(o = pyobj_add(reg, ti, id, *idlen))) {
        pthread_mutex_unlock(&reg->mu);
        return NULL;
    }
    memcpy(o->sname, "\xffns:", prefix);
    memcpy(o->sname + prefix, np, nl);
    o->snlen = prefix + nl;
    o->holds++;
    pthread_mutex_unlock(&reg->mu);
    struct pycall c = { .cx = cx, .o = o };
    obj_init(&c);
    pyobj_release(reg, o);
    return o;
}

/* A new anonymous object, set up from args and kwds; NULL when the table
 * is full, or (with a traceback written) when the arguments are refused. */
static struct pyobj *new_object(struct pyconn *cx, const struct pytypeinfo *ti, const struct pk_node *args,
                                const struct pk_node *kwds, char *id, size_t *idlen, bool *replied)
{
    struct pyreg *reg = cx->reg;
    pthread_mutex_lock(&reg->mu);
    snprintf(id, PY_MAX_IDENT + 1, "%" PRIx64, ++reg->next_id);
    *idlen = strlen(id);
    struct pyobj *o = pyobj_add(reg, ti, id, *idlen);
    if (o) {
        o->sname[0] = 0xff;
        memcpy(o->sname + 1, id, *idlen);
        o->snlen = *idlen + 1;
        o->holds++;
    }
    pthread_mutex_unlock(&reg->mu);
    if (!o)
        return NULL;
    struct pycall c = { .cx = cx, .o = o, .args = args, .kwds = kwds };
    const char *why = obj_init(&c);
    pyobj_release(reg, o);
    if (why) {
        struct pk_node idn = { .kind = PK_STR, .p = (const uint8_t *)id, .len = *idlen };
        pyobj_decref(reg, &idn);
        py_traceback(cx, "TypeError", why);
        *replied = true;
        return NULL;
    }
    return o;
}

static void srv_create(struct pyconn *cx, const struct pk_node *args, const struct pk_node *kwds)
{
    const struct pytypeinfo *ti = py_typeinfo(args->n ? args->kids[0] : NULL);
    if (!ti) {
        py_traceback(cx, "KeyError: typeid not served by mproc-manager", NULL);
        return;
    }
    struct pk_node rest = { .kind = PK_TUPLE, .kids = args->kids + 1, .n = args->n - 1 };
    char id[PY_MAX_IDENT + 1];
    size_t idlen = 0;
    bool replied = false;
    struct pyobj *o = ti->named ? named_object(cx, ti, rest.n ? rest.kids[0] : NULL, id, &idlen, &replied)
                                : new_object(cx, ti, &rest, kwds, id, &idlen, &replied);
    if (replied)
        return;
    if (!o) {
        py_traceback(cx, "MemoryError: mproc-manager holds too many objects", NULL);
        return;
    }
    py_reply_begin(cx, "#RETURN");
    pk_str(&cx->pw, id, idlen);
    py_write_exposed(&cx->pw, ti->exposed);
    pk_tuple(&cx->pw, 2);
    py_reply_end(cx);
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

/* Whether method m may be called on o: Python's server refuses what the
 * typeid does not expose. */
static bool exposed(const struct pyobj *o, const struct pk_node *m)
{
    bool listed = str_is(m, "#GETVALUE");
    for (const char *const *e = o->ti->exposed; *e && !listed; e++)
        listed = str_is(m, *e);
    if (o->ti->named == 'n')
        listed = str_is(m, "__getattribute__") || str_is(m, "__setattr__") || str_is(m, "__delattr__") || listed;
    return listed;
}

static void method_run(struct pycall *c, const struct pymethod *pm)
{
    struct pyreg *reg = c->cx->reg;
    if (pm->hold == HOLD_STORE)
        store_lock(reg->store);
    else if (pm->hold == HOLD_TABLE)
        pthread_mutex_lock(&reg->mu);
    pm->run(c);
    if (pm->hold == HOLD_STORE)
        store_unlock(reg->store);
    else if (pm->hold == HOLD_TABLE)
        pthread_mutex_unlock(&reg->mu);
}

static void obj_call(struct pyconn *cx, const struct pk_node *req)
{
    struct pycall c = { .cx = cx, .m = req->kids[1], .args = req->kids[2], .kwds = req->kids[3] };
    if (!(c.o = pyobj_hold(cx->reg, req->kids[0]))) {
        py_traceback(cx, "KeyError: no object with this ident (mproc-manager)", NULL);
        return;
    }
    enum pytype t = c.o->ti->t;
    cx->want_repr = (str_is(c.m, "__repr__") || str_is(c.m, "__str__")) &&
                    (t == PT_DICT || t == PT_LIST || t == PT_NAMESPACE || t == PT_ARRAY || t == PT_VALUE);
    if (cx->want_repr)                  /* Python's server: fallback_repr, repr(obj) */
        c.m = &GETVALUE;
    cx->repr_typecode = cx->want_repr && t == PT_VALUE ? c.o->typecode : 0;
    const struct pyclass *cls = py_class(t);
    const struct pymethod *pm = py_method(cls, c.m);
    if (!exposed(c.o, c.m))
        py_traceback(cx, "AttributeError: method is not exposed", NULL);
    else if (!pm)
        py_traceback(cx, cls->missing, NULL);
    else if (py_kwds_ok(&c, cls, pm))
        method_run(&c, pm);
    pyobj_release(cx->reg, c.o);
    cx->want_repr = false;
}

/* ------------------------------------------------------------------ server calls */

static void srv_incref(struct pyconn *cx, const struct pk_node *id)
{
    int rc = MP_ENOTFOUND;
    if (id && id->kind == PK_STR && id->len <= PY_MAX_IDENT) {
        pthread_mutex_lock(&cx->reg->mu);
        struct pyobj *o = *pyobj_slot(cx->reg, (const char *)id->p, id->len);
        if (o && !o->gone) {
            o->refs++;
            rc = 0;
        }
        pthread_mutex_unlock(&cx->reg->mu);
    }
    if (rc < 0)
        py_raise(cx, "builtins", "KeyError", NULL, (struct pk_node *)id);
    else
        py_ret_none(cx);
}

static void srv_decref(struct pyconn *cx, const struct pk_node *id)
{
    if (pyobj_decref(cx->reg, id) < 0)
        py_raise(cx, "builtins", "KeyError", NULL, (struct pk_node *)id);
    else
        py_ret_none(cx);
}

static void srv_get_methods(struct pyconn *cx, const struct pk_node *token)
{
    struct pyobj *o = pyobj_hold(cx->reg, token_id(token));
    if (!o) {
        py_traceback(cx, "KeyError: no object with this token (mproc-manager)", NULL);
        return;
    }
    py_reply_begin(cx, "#RETURN");
    py_write_exposed(&cx->pw, o->ti->exposed);
    py_reply_end(cx);
    pyobj_release(cx->reg, o);
}

static void srv_debug_info(struct pyconn *cx)
{
    mp_buf info = { 0 };
    pyobj_count(cx->reg, &info);
    py_reply_begin(cx, "#RETURN");
    pk_str(&cx->pw, info.data ? info.data : "", info.len);
    py_reply_end(cx);
    mp_buf_free(&info);
}

/* A server call (the first request of a connection). Returns true when the
 * connection goes on serving proxies (accept_connection). */
static bool srv_call(struct pyconn *cx, const struct pk_node *req)
{
    const struct pk_node *m = req->kids[1], *args = req->kids[2], *kwds = req->kids[3];
    const struct pk_node *a0 = args->n ? args->kids[0] : NULL;
    if (str_is(m, "accept_connection")) {
        py_ret_none(cx);
        return true;
    }
    if (str_is(m, "create")) {
        srv_create(cx, args, kwds);
    } else if (str_is(m, "incref")) {
        srv_incref(cx, a0);
    } else if (str_is(m, "decref")) {
        srv_decref(cx, a0);
    } else if (str_is(m, "get_methods")) {
        srv_get_methods(cx, a0);
    } else if (str_is(m, "dummy")) {
        py_ret_none(cx);
    } else if (str_is(m, "number_of_objects")) {
        py_ret_int(cx, pyobj_count(cx->reg, NULL));
    } else if (str_is(m, "debug_info")) {
        srv_debug_info(cx);
    } else if (str_is(m, "shutdown")) {
        py_ret_none(cx);
        *cx->shutdown = true;
    } else {
        py_traceback(cx, "AssertionError: unrecognized server call", NULL);
    }
    return false;
}

/* ------------------------------------------------------------------ requests */

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
                pysync_release_all(o);
    pthread_mutex_unlock(&r->mu);
}

/* The token id of a proxy pickled inside a request: REDUCE(RebuildProxy,
 * (func, token, serializer, kwds)). */
static const struct pk_node *proxy_id(const struct pk_node *n)
{
    if (n->kind != PK_OBJECT || n->kids[0]->kind != PK_GLOBAL || n->n < 2 || n->kids[1]->kind != PK_TUPLE ||
        n->kids[1]->n < 2)
        return NULL;
    const struct pk_node *g = n->kids[0];
    if (g->len2 != 12 || memcmp(g->p2, "RebuildProxy", 12) != 0)
        return NULL;
    return token_id(n->kids[1]->kids[1]);
}

struct pyobj *py_proxy_hold(struct pyreg *r, const struct pk_node *n)
{
    const struct pk_node *id = n ? proxy_id(n) : NULL;
    return id ? pyobj_hold(r, id) : NULL;
}

/* Pins every object of this table that a proxy inside n refers to: a
 * proxy a client stores in a dict, list, queue or new object here.
 * Python's server unpickles such a proxy and keeps its referent for as
 * long as it runs, so whoever reads the proxy back can use it after its
 * first owner dropped it. */
static void pin_proxies(struct pyreg *r, const struct pk_node *n, uint32_t *budget)
{
    if (!n || *budget == 0)        /* the memo can make a DAG: each visit counts */
        return;
    --*budget;
    const struct pk_node *id = proxy_id(n);
    if (id && id->kind == PK_STR && id->len <= PY_MAX_IDENT) {
        pthread_mutex_lock(&r->mu);
        struct pyobj *o = *pyobj_slot(r, (const char *)id->p, id->len);
        if (o && !o->gone)
            o->pinned = true;
        pthread_mutex_unlock(&r->mu);
        return;
    }
    for (uint32_t i = 0; i < n->n; i++)
        pin_proxies(r, n->kids[i], budget);
    for (uint32_t i = 0; n->kind == PK_OBJECT && i < n->nsteps; i++) {
        pin_proxies(r, n->steps[i].a, budget);
        pin_proxies(r, n->steps[i].b, budget);
    }
}

/* Runs one request frame; its reply is left in cx->out. */
static void conn_request(struct pyconn *cx, const uint8_t *data, size_t len, bool *serving)
{
    const char *why = NULL;
    int rc;
    cx->has_item = false;
    const struct pk_node *req = request_of(&cx->arena, data, len, &why, &rc);
    if (!req) {                      /* the client raises ValueError(text) */
        char text[256];
        snprintf(text, sizeof text, "mproc-manager: %s: %s", rc == MP_ETOOBIG ? "request too large" : "malformed request", why);
        py_raise_msg(cx, "ValueError", text);
    } else {
        uint32_t budget = PK_MAX_NODES;
        if (memmem(data, len, "RebuildProxy", 12)) {    /* a proxy among the arguments */
            pin_proxies(cx->reg, req->kids[2], &budget);
            pin_proxies(cx->reg, req->kids[3], &budget);
        }
        if (*serving)
            obj_call(cx, req);
        else
            *serving = srv_call(cx, req);
    }
    if (cx->pw.rc < 0)
        py_traceback(cx, "the reply could not be pickled", mp_strerror(cx->pw.rc));
}

void py_serve(struct pyreg *reg, struct store_owner *owner, struct wire *w, const uint8_t *data, size_t len,
              bool *shutdown)
{
    struct pyconn cx = { .reg = reg, .owner = owner, .w = w, .shutdown = shutdown };
    bool serving = false, counted = false;
    int got = 0;
    for (;;) {
        if (got == MP_ETOOBIG) {         /* its bytes are dropped as they come */
            cx.has_item = false;
            py_raise_msg(&cx, "MemoryError", "mproc-manager: a request over 16 MiB (a value "
                         "is at most 16 MiB); nothing was stored");
        } else {
            conn_request(&cx, data, len, &serving);
        }
        if (serving && !counted) {
            atomic_fetch_add(&reg->serving, 1);
            counted = true;
        }
        mp_deadline d = deadline_in(10);
        if (wire_send(w, cx.out.data, cx.out.len, &d) < 0) {
            if (cx.has_item)             /* the getter is gone: the item stays for the next one */
                store_unget(reg->store, &cx.item_queue, &cx.item_v);
            break;
        }
        wire_buf_trim(&cx.out);
        wire_buf_trim(&cx.tmp);
        if (!serving || *shutdown)
            break;
        bool few = atomic_load_explicit(&reg->serving, memory_order_relaxed) < reg->ncpu;
        w->spin_ns = few ? PY_SPIN_NS : 0;     /* 0: wire_recv sleeps in recv */
        got = wire_recv(w, &data, &len, WIRE_MAX_FRAME, NULL);
        if (got == MP_ETOOBIG)
            wire_drop_frame(w);
        else if (got < 0)
            break;
    }
    if (counted)
        atomic_fetch_sub(&reg->serving, 1);
    conn_gone(&cx);
    pk_arena_free(&cx.arena);
    mp_buf_free(&cx.out);
    mp_buf_free(&cx.tmp);
    mp_buf_free(&cx.tmp2);
    mp_buf_free(&cx.item);
}
