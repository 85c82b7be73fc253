/* pyqueue.c - Queue, JoinableQueue and Lock for Python's clients (pyobj.h).
 *
 * Both are the store's, shared with C clients by name, and both wait:
 * their methods take the store mutex themselves and wait in slices
 * (py_sx_wait), checking that the client is still there. An item a get
 * reply carries is kept until the reply is sent, so a getter that died
 * meanwhile loses nothing: py_serve puts it back. JoinableQueue's count of
 * unfinished tasks lives in the object table, beside the store's queue.
 */
#include "manager/pyobj.h"

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

/* put/get(block, timeout) with their argument positions; nowait: the
 * _nowait forms. */
static void queue_move(struct pycall *c, bool put, bool nowait)
{
    struct pyconn *cx = c->cx;
    struct pyreg *reg = cx->reg;
    struct pyobj *o = c->o;
    struct sreply r;
    struct timespec until;
    struct pk_node *item = put ? (struct pk_node *)py_arg(c, 0, "item") : NULL;
    const struct pk_node *block = py_arg(c, put ? 1 : 0, "block"), *timeout = py_arg(c, put ? 2 : 1, "timeout");
    bool blocking = !nowait && py_truthy(block, true);
    bool has_deadline;
    struct mval v;
    int rc;
    if (!py_timeout_of(c, timeout, "'<' not supported between instances of '%s' and 'int'", &has_deadline, &until))
        return;
    if (put && !item) {
        py_raise_msg(cx, "TypeError", "put() missing 1 required positional argument: 'item'");
        return;
    }
    if (blocking && has_deadline && number(timeout) < 0) {
        py_raise_msg(cx, "ValueError", "'timeout' must be a non-negative number");
        return;
    }
    if (put && (rc = pv_value(item, &cx->tmp2, true, &v)) < 0) {
        py_raise_status(cx, rc);
        return;
    }
    rc = py_sx_wait(c, put ? OP_QUEUE_PUT : OP_QUEUE_GET, put ? &v : NULL, blocking, has_deadline ? &until : NULL, &r);
    if (rc == 0) {
        if (put)
            py_ret_none(cx);
        else
            py_ret_value(cx, &r.v);
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
        py_raise(cx, "queue", rc == MP_EEMPTY ? "Empty" : "Full", NULL, NULL);
    } else if (rc < 0) {
        py_raise_status(cx, rc);
    }
}

static void queue_put(struct pycall *c) { queue_move(c, true, false); }
static void queue_put_nowait(struct pycall *c) { queue_move(c, true, true); }
static void queue_get(struct pycall *c) { queue_move(c, false, false); }
static void queue_get_nowait(struct pycall *c) { queue_move(c, false, true); }

static int64_t queue_len(struct pycall *c)
{
    struct sreply r;
    struct mmsg q = { .n = 2 };
    q.v[0] = mint(OP_QUEUE_LEN);
    q.v[1] = obj_name(c->o);
    store_exec(c->cx->reg->store, c->cx->owner, &q, &r);
    int64_t n = r.v.i;
    store_done(c->cx->reg->store, &r);
    return n;
}

static void queue_qsize(struct pycall *c) { py_ret_int(c->cx, queue_len(c)); }
static void queue_empty(struct pycall *c) { py_ret_bool(c->cx, queue_len(c) == 0); }

static void queue_full(struct pycall *c)
{
    int64_t n = queue_len(c);
    py_ret_bool(c->cx, c->o->maxsize > 0 && n >= c->o->maxsize);
}

static void queue_task_done(struct pycall *c)
{
    struct pyobj *o = c->o;
    if (o->unfinished <= 0) {
        py_raise_msg(c->cx, "ValueError", "task_done() called too many times");
        return;
    }
    if (--o->unfinished == 0)
        pthread_cond_broadcast(&o->cond);
    py_ret_none(c->cx);
}

static void queue_join(struct pycall *c)
{
    int rc = 0;
    while (c->o->unfinished > 0 && rc == 0)
        rc = pyobj_wait(c->cx, c->o, NULL);
    py_ret_none(c->cx);
}

static const char *queue_init(struct pycall *c)
{
    struct store *s = c->cx->reg->store;
    const struct pk_node *ms = py_arg(c, 0, "maxsize");
    struct sreply r;
    c->o->maxsize = is_int(ms) && ms->i > 0 ? ms->i : 0;
    struct mval bound = mint(c->o->maxsize);
    store_lock(s);
    int rc = py_sx(c, OP_QUEUE_OPEN, &bound, NULL, &r);
    store_unlock(s);
    return rc < 0 ? "mproc-manager: Queue(maxsize) takes an int" : NULL;
}

static const struct pymethod QUEUE_METHODS[] = {
    { "empty", HOLD_NONE, queue_empty, "py" },
    { "full", HOLD_NONE, queue_full, "py" },
    { "get", HOLD_NONE, queue_get, "py block timeout" },
    { "get_nowait", HOLD_NONE, queue_get_nowait, "py" },
    { "join", HOLD_TABLE, queue_join, "py" },
    { "put", HOLD_NONE, queue_put, "py item block timeout" },
    { "put_nowait", HOLD_NONE, queue_put_nowait, "py item" },
    { "qsize", HOLD_NONE, queue_qsize, "py" },
    { "task_done", HOLD_TABLE, queue_task_done, "py" },
};
const struct pyclass py_queue_class = { QUEUE_METHODS, sizeof QUEUE_METHODS / sizeof QUEUE_METHODS[0], queue_init,
                                        "AttributeError: method not supported", "Queue" };

/* ------------------------------------------------------------------ Lock */

static void lock_acquire(struct pycall *c)
{
    struct sreply r;
    bool blocking, has_deadline;
    struct timespec until;
    if (!py_acquire_args(c, false, &blocking, &has_deadline, &until))
        return;
    int rc = py_sx_wait(c, OP_LOCK_ACQUIRE, NULL, blocking, has_deadline ? &until : NULL, &r);
    store_unlock(c->cx->reg->store);
    if (rc == 0 || rc == MP_EOWNERDEAD)
        py_ret_bool(c->cx, true);
    else if (rc == MP_ETIMEDOUT)
        py_ret_bool(c->cx, false);
    else
        py_raise_status(c->cx, rc);
}

static void lock_release(struct pycall *c)
{
    struct sreply r;
    if (py_sx(c, OP_LOCK_RELEASE, NULL, NULL, &r) < 0)
        py_raise_msg(c->cx, "RuntimeError", "release unlocked lock (mproc-manager: or one this connection does not hold)");
    else
        py_ret_none(c->cx);
}

static const char *lock_init(struct pycall *c)
{
    struct store *s = c->cx->reg->store;
    struct sreply r;
    store_lock(s);
    int rc = py_sx(c, OP_LOCK_OPEN, NULL, NULL, &r);
    store_unlock(s);
    return rc < 0 ? "mproc-manager: cannot make the lock" : NULL;
}

static const struct pymethod LOCK_METHODS[] = {
    { "__enter__", HOLD_NONE, lock_acquire, NULL },
    { "__exit__", HOLD_STORE, lock_release, NULL },
    { "acquire", HOLD_NONE, lock_acquire, "c blocking timeout" },
    { "release", HOLD_STORE, lock_release, NULL },
};
const struct pyclass py_lock_class = { LOCK_METHODS, sizeof LOCK_METHODS / sizeof LOCK_METHODS[0], lock_init,
                                       "AttributeError: method not supported", "lock" };
