/* pysync.c - RLock, Semaphore, BoundedSemaphore, Condition, Event and
 * Barrier for Python's clients (pyobj.h).
 *
 * These live in the object table, not the store (no C call names them),
 * and every method runs under the table's mutex. A waiter sleeps on its
 * object's condition variable in slices, checking between slices that its
 * client is still there, so a dead client's wait ends; the RLocks and
 * Conditions a connection held are freed when it goes (py_serve). An
 * owner is the connection, as a thread is in Python's server.
 */
#include "manager/pyobj.h"

#include <stdint.h>

/* RLock and Condition's lock: owner and depth; r->mu held. */
static int rlock_take(struct pyconn *cx, struct pyobj *o, bool blocking, const struct timespec *until, int64_t depth)
{
    if (o->owner == cx->owner) {
        o->count += depth;
        return 0;
    }
    int rc = 0;
    while (o->owner && blocking && rc == 0)
        rc = pyobj_wait(cx, o, until);
    if (o->owner)
        return rc ? rc : MP_ETIMEDOUT;
    o->owner = cx->owner;
    o->count = depth;
    return 0;
}

void pysync_release_all(struct pyobj *o)
{
    o->owner = NULL;
    o->count = 0;
    pthread_cond_broadcast(&o->cond);
}

static void rlock_acquire(struct pycall *c)
{
    bool blocking, has_deadline;
    struct timespec until;
    if (py_acquire_args(c, false, &blocking, &has_deadline, &until))
        py_ret_bool(c->cx, rlock_take(c->cx, c->o, blocking, has_deadline ? &until : NULL, 1) == 0);
}

static void rlock_release(struct pycall *c)
{
    if (c->o->owner != c->cx->owner) {
        py_raise_msg(c->cx, "RuntimeError", "cannot release un-acquired lock");
        return;
    }
    if (--c->o->count == 0)
        pysync_release_all(c->o);
    py_ret_none(c->cx);
}

static const struct pymethod RLOCK_METHODS[] = {
    { "acquire", HOLD_TABLE, rlock_acquire, "c blocking timeout" },
    { "release", HOLD_TABLE, rlock_release, NULL },
};
const struct pyclass py_rlock_class = { RLOCK_METHODS, 2, NULL, "AttributeError: method not supported",
                                        "RLock" };

/* ------------------------------------------------------------------ Semaphore, BoundedSemaphore */

static void sem_acquire(struct pycall *c)
{
    struct pyobj *o = c->o;
    bool blocking, has_deadline;
    struct timespec until;
    int rc = 0;
    if (!py_acquire_args(c, true, &blocking, &has_deadline, &until))
        return;
    while (o->count <= 0 && blocking && rc == 0)
        rc = pyobj_wait(c->cx, o, has_deadline ? &until : NULL);
    bool got = o->count > 0;
    if (got)
        o->count--;
    py_ret_bool(c->cx, got);
}

static void sem_release(struct pycall *c)
{
    struct pyobj *o = c->o;
    const struct pk_node *n = py_arg(c, 0, "n");
    int64_t k = is_int(n) ? n->i : 1;
    if (k < 1) {
        py_raise_msg(c->cx, "ValueError", "n must be one or more");
    } else if (o->ti->t == PT_BSEM && k > o->max - o->count) {
        py_raise_msg(c->cx, "ValueError", "Semaphore released too many times");
    } else if (k > INT64_MAX - o->count) {     /* the count is an int64 here, not Python's int */
        py_raise_msg(c->cx, "OverflowError", "mproc-manager: a semaphore's value is at most 2**63-1");
    } else {
        o->count += k;
        pthread_cond_broadcast(&o->cond);
        py_ret_none(c->cx);
    }
}

static const char *sem_init(struct pycall *c)
{
    const struct pk_node *v = py_arg(c, 0, "value");
    c->o->count = c->o->max = is_int(v) ? v->i : 1;
    return c->o->count < 0 ? "semaphore initial value must be >= 0" : NULL;
}

static const struct pymethod SEM_METHODS[] = {
    { "acquire", HOLD_TABLE, sem_acquire, "py blocking timeout" },
    { "release", HOLD_TABLE, sem_release, "py n" },
};
const struct pyclass py_sem_class = { SEM_METHODS, 2, sem_init, "AttributeError: method not supported",
                                      "Semaphore" };

/* ------------------------------------------------------------------ Condition */

static void cond_wait(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct pyobj *o = c->o;
    struct timespec until;
    int rc = 0;
    if (o->owner != cx->owner) {
        py_raise_msg(cx, "RuntimeError", "cannot wait on un-acquired lock");
        return;
    }
    bool has_deadline;
    if (!py_timeout_of(c, py_arg(c, 0, "timeout"), "'>' not supported between instances of '%s' and 'int'",
                       &has_deadline, &until))
        return;
    struct cwaiter me = { .next = NULL };
    struct cwaiter **tail = &o->cwaiters;
    while (*tail)
        tail = &(*tail)->next;
    *tail = &me;
    int64_t depth = o->count;
    pysync_release_all(o);
    while (!me.notified && rc == 0)
        rc = pyobj_wait(cx, o, has_deadline ? &until : NULL);
    if (!me.notified) {
        for (struct cwaiter **w = &o->cwaiters; *w; w = &(*w)->next)
            if (*w == &me) {
                *w = me.next;
                break;
            }
    }
    int got = 0;
    do
        got = rlock_take(cx, o, true, NULL, depth);
    while (got == MP_ETIMEDOUT);
    if (got < 0)
        py_raise_status(cx, MP_EBROKEN);
    else
        py_ret_bool(cx, me.notified);
}

static void cond_notify_n(struct pycall *c, int64_t k)
{
    struct pyobj *o = c->o;
    if (o->owner != c->cx->owner) {
        py_raise_msg(c->cx, "RuntimeError", "cannot notify on un-acquired lock");
        return;
    }
    for (; k > 0 && o->cwaiters; k--) {          /* notify(n <= 0) wakes nobody */
        o->cwaiters->notified = true;
        o->cwaiters = o->cwaiters->next;
    }
    pthread_cond_broadcast(&o->cond);
    py_ret_none(c->cx);
}

static void cond_notify(struct pycall *c)
{
    const struct pk_node *n = py_arg(c, 0, "n");
    cond_notify_n(c, is_int(n) ? n->i : 1);
}

static void cond_notify_all(struct pycall *c) { cond_notify_n(c, INT64_MAX); }

static const char *cond_init(struct pycall *c)
{
    const struct pk_node *a0 = py_arg(c, 0, NULL);
    return a0 && a0->kind != PK_NONE ? "mproc-manager: Condition() takes no lock of its own" : NULL;
}

static const struct pymethod COND_METHODS[] = {
    { "acquire", HOLD_TABLE, rlock_acquire, "c blocking timeout" },
    { "notify", HOLD_TABLE, cond_notify, "py n" },
    { "notify_all", HOLD_TABLE, cond_notify_all, "py" },
    { "release", HOLD_TABLE, rlock_release, NULL },
    { "wait", HOLD_TABLE, cond_wait, "py timeout" },
};
const struct pyclass py_cond_class = { COND_METHODS, sizeof COND_METHODS / sizeof COND_METHODS[0], cond_init,
                                       "AttributeError: method not supported", "Condition" };

/* ------------------------------------------------------------------ Event */

static void event_is_set(struct pycall *c) { py_ret_bool(c->cx, c->o->flag); }

static void event_set(struct pycall *c)
{
    c->o->flag = true;
    pthread_cond_broadcast(&c->o->cond);
    py_ret_none(c->cx);
}

static void event_clear(struct pycall *c)
{
    c->o->flag = false;
    py_ret_none(c->cx);
}

static void event_wait(struct pycall *c)
{
    struct timespec until;
    bool has_deadline;
    int rc = 0;
    if (!py_timeout_of(c, py_arg(c, 0, "timeout"), "'>' not supported between instances of '%s' and 'int'",
                       &has_deadline, &until))
        return;
    while (!c->o->flag && rc == 0)
        rc = pyobj_wait(c->cx, c->o, has_deadline ? &until : NULL);
    py_ret_bool(c->cx, c->o->flag);
}

static const struct pymethod EVENT_METHODS[] = {
    { "clear", HOLD_TABLE, event_clear, "py" },
    { "is_set", HOLD_TABLE, event_is_set, "py" },
    { "set", HOLD_TABLE, event_set, "py" },
    { "wait", HOLD_TABLE, event_wait, "py timeout" },
};
const struct pyclass py_event_class = { EVENT_METHODS, sizeof EVENT_METHODS / sizeof EVENT_METHODS[0], NULL,
                                        "AttributeError: method not supported", "Event" };

/* ------------------------------------------------------------------ Barrier */

/* o->flag: broken; o->gen counts the rounds, and the ones up to
 * o->broken_upto ended broken (reset); o->val: the default timeout. */
static void barrier_wait(struct pycall *c)
{
    struct pyconn *cx = c->cx;
    struct pyobj *o = c->o;
    struct timespec until;
    bool has_deadline;
    int rc = 0;
    if (!py_timeout_of(c, py_arg(c, 0, "timeout"), "unsupported operand type(s) for +: 'float' and '%s'",
                       &has_deadline, &until))
        return;
    if (!has_deadline && o->val.type == MV_FLOAT)
        has_deadline = (until = py_mono_in(o->val.f), true);
    uint64_t gen = o->gen;
    int64_t index = o->waiting++;
    if (o->flag) {
        o->waiting--;
        py_raise(cx, "threading", "BrokenBarrierError", NULL, NULL);
        return;
    }
    if (o->waiting == o->max) {
        o->waiting = 0;
        o->gen++;
        pthread_cond_broadcast(&o->cond);
        py_ret_int(cx, index);
        return;
    }
    while (o->gen == gen && !o->flag && rc == 0)
        rc = pyobj_wait(cx, o, has_deadline ? &until : NULL);
    if (o->gen != gen && gen > o->broken_upto) {
        py_ret_int(cx, index);
        return;
    }
    if (o->gen == gen) {     /* timed out, left, or aborted: the barrier breaks */
        o->flag = true;
        o->waiting--;
        pthread_cond_broadcast(&o->cond);
    }
    py_raise(cx, "threading", "BrokenBarrierError", NULL, NULL);
}

static void barrier_abort(struct pycall *c)
{
    c->o->flag = true;
    pthread_cond_broadcast(&c->o->cond);
    py_ret_none(c->cx);
}

static void barrier_reset(struct pycall *c)
{
    struct pyobj *o = c->o;
    if (o->waiting > 0 || o->flag) {
        o->broken_upto = o->gen;
        o->gen++;
    }
    o->waiting = 0;
    o->flag = false;
    pthread_cond_broadcast(&o->cond);
    py_ret_none(c->cx);
}

static void barrier_getattribute(struct pycall *c)
{
    const struct pk_node *a = py_arg(c, 0, NULL);
    struct pyobj *o = c->o;
    if (str_is(a, "parties"))
        py_ret_int(c->cx, o->max);
    else if (str_is(a, "n_waiting"))
        py_ret_int(c->cx, o->flag ? 0 : o->waiting);
    else if (str_is(a, "broken"))
        py_ret_bool(c->cx, o->flag);
    else
        py_raise(c->cx, "builtins", "AttributeError", NULL, (struct pk_node *)a);
}

static const char *barrier_init(struct pycall *c)
{
    struct pyobj *o = c->o;
    const struct pk_node *p = py_arg(c, 0, "parties"), *act = py_arg(c, 1, "action"), *t = py_arg(c, 2, "timeout");
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

static const struct pymethod BARRIER_METHODS[] = {
    { "__getattribute__", HOLD_TABLE, barrier_getattribute, NULL },
    { "abort", HOLD_TABLE, barrier_abort, "py" },
    { "reset", HOLD_TABLE, barrier_reset, "py" },
    { "wait", HOLD_TABLE, barrier_wait, "py timeout" },
};
const struct pyclass py_barrier_class = { BARRIER_METHODS, sizeof BARRIER_METHODS / sizeof BARRIER_METHODS[0],
                                          barrier_init, "AttributeError: method not supported",
                                          "Barrier" };
