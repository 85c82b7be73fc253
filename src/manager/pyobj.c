/* pyobj.c - the Python protocol's typeids and object table (pyobj.h).
 *
 * The typeid table says what create makes for each name a client may ask
 * for, and which methods it reports; the object table maps Python's idents
 * to objects with reference counts, as Server.id_to_obj and id_to_refcount
 * do: an object made by create goes when its last proxy does, after the
 * requests still using it are done. Waits on an object go in slices, so a
 * waiter notices its client leaving.
 */
#include "manager/pyobj.h"

#include "manager/channel.h"
#include "manager/pyproto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The methods of CPython's DictProxy and ListProxy (3.11-3.13, and the
 * ones newer versions add), as create and get_methods report them. */
static const char *const EXP_DICT[] = { "__contains__", "__delitem__", "__getitem__", "__ior__", "__iter__",
    "__len__", "__or__", "__ror__", "__setitem__", "clear", "copy", "fromkeys", "get", "items", "keys", "pop",
    "popitem", "setdefault", "update", "values", NULL };
static const char *const EXP_NAMED_DICT[] = { "__contains__", "__delitem__", "__getitem__", "__ior__", "__iter__", "__len__",
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
const struct pytypeinfo PY_ITERATOR = { "Iterator", PT_ITER, EXP_ITER, 0 };

static const struct pyclass *const CLASSES[PT_COUNT] = {
    [PT_DICT] = &py_dict_class, [PT_LIST] = &py_list_class, [PT_QUEUE] = &py_queue_class,
    [PT_LOCK] = &py_lock_class, [PT_NAMESPACE] = &py_namespace_class, [PT_RLOCK] = &py_rlock_class,
    [PT_SEM] = &py_sem_class, [PT_BSEM] = &py_sem_class, [PT_EVENT] = &py_event_class,
    [PT_COND] = &py_cond_class, [PT_BARRIER] = &py_barrier_class, [PT_VALUE] = &py_value_class,
    [PT_ARRAY] = &py_array_class, [PT_ITER] = &py_iter_class,
};

const struct pytypeinfo *py_typeinfo(const struct pk_node *typeid)
{
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0] && typeid; i++)
        if (str_is(typeid, TYPES[i].typeid))
            return &TYPES[i];
    return NULL;
}

const struct pyclass *py_class(enum pytype t) { return CLASSES[t]; }

/* strcmp of a pickled str (not NUL-terminated) against a C string. */
static int name_cmp(const struct pk_node *m, const char *s)
{
    size_t n = strlen(s), k = m->len < n ? m->len : n;
    int c = k ? memcmp(m->p, s, k) : 0;
    return c ? c : (m->len > n) - (m->len < n);
}

const struct pymethod *py_method(const struct pyclass *cls, const struct pk_node *m)
{
    if (!m || m->kind != PK_STR)
        return NULL;
    size_t lo = 0, hi = cls->nmethods;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(m, cls->methods[mid].name);
        if (c == 0)
            return &cls->methods[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

bool py_classes_sorted(void)
{
    for (int t = 0; t < PT_COUNT; t++)
        for (size_t i = 1; i < CLASSES[t]->nmethods; i++)
            if (strcmp(CLASSES[t]->methods[i - 1].name, CLASSES[t]->methods[i].name) >= 0)
                return false;
    return true;
}

/* ------------------------------------------------------------------ the object table */

static uint64_t hash_ident(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h;
}

int pyreg_new(struct pyreg **out, struct store *s)
{
    if (!py_classes_sorted())
        return MP_EINVAL;
    struct pyreg *r = calloc(1, sizeof *r);
    if (!r)
        return MP_ENOMEM;
    r->store = s;
    pthread_mutex_init(&r->mu, NULL);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    r->ncpu = ncpu > 0 && ncpu < 65536 ? (int)ncpu : 1;
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
        struct mval name = obj_name(o);
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

bool pyobj_charge(struct pyreg *r, struct pyobj *o, int64_t n)
{
    if (n > 0 && (size_t)n > PY_MAX_BYTES - r->bytes)
        return false;
    r->bytes += (size_t)n;
    o->charged += (size_t)n;
    return true;
}

struct pyobj **pyobj_slot(struct pyreg *r, const char *id, size_t n)
{
    struct pyobj **o = &r->buckets[hash_ident(id, n) % PY_BUCKETS];
    while (*o && !((*o)->idlen == n && memcmp((*o)->ident, id, n) == 0))
        o = &(*o)->next;
    return o;
}

struct pyobj *pyobj_add(struct pyreg *r, const struct pytypeinfo *ti, const char *id, size_t idlen)
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
    struct pyobj **slot = pyobj_slot(r, id, idlen);
    o->next = *slot;
    *slot = o;
    r->nobjects++;
    return o;
}

struct pyobj *pyobj_hold(struct pyreg *r, const struct pk_node *id)
{
    if (!id || id->kind != PK_STR || id->len > PY_MAX_IDENT)
        return NULL;
    pthread_mutex_lock(&r->mu);
    struct pyobj *o = *pyobj_slot(r, (const char *)id->p, id->len);
    if (o && !o->gone)
        o->holds++;
    else
        o = NULL;
    pthread_mutex_unlock(&r->mu);
    return o;
}

void pyobj_release(struct pyreg *r, struct pyobj *o)
{
    pthread_mutex_lock(&r->mu);
    bool last = --o->holds == 0 && o->gone;
    pthread_mutex_unlock(&r->mu);
    if (last)
        obj_destroy(r, o);
}

int pyobj_decref(struct pyreg *r, const struct pk_node *id)
{
    if (!id || id->kind != PK_STR || id->len > PY_MAX_IDENT)
        return MP_ENOTFOUND;
    pthread_mutex_lock(&r->mu);
    struct pyobj **slot = pyobj_slot(r, (const char *)id->p, id->len), *o = *slot;
    bool destroy = false;
    if (!o || o->refs <= 0) {
        pthread_mutex_unlock(&r->mu);
        return MP_ENOTFOUND;
    }
    if (--o->refs == 0 && !o->ti->named && !o->pinned) {
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

long pyobj_count(struct pyreg *r, mp_buf *info)
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

/* ------------------------------------------------------------------ waiting */

struct timespec py_mono_in(double s)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (!(s > 0))                 /* NaN, negative, -inf (a Barrier's own timeout): now */
        s = 0;
    else if (s > 1e9)
        s = 1e9;
    int64_t ns = t.tv_nsec + (int64_t)(s * 1e9);
    t.tv_sec += ns / 1000000000;
    t.tv_nsec = ns % 1000000000;
    return t;
}

double py_mono_left(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(t->tv_sec - now.tv_sec) + (t->tv_nsec - now.tv_nsec) / 1e9;
}

bool py_peer_alive(struct pyconn *cx) { return channel_peer_alive(cx->w->fd); }

bool py_deadline_of(const struct pk_node *timeout, struct timespec *at)
{
    if (!is_number(timeout))
        return false;
    double t = number(timeout);
    *at = py_mono_in(t > 0 ? t : 0);
    return true;
}

int pyobj_wait(struct pyconn *cx, struct pyobj *o, const struct timespec *until)
{
    struct timespec slice = py_mono_in(PY_SLICE_MS / 1000.0);
    bool last = until && py_mono_left(until) < PY_SLICE_MS / 1000.0;
    if (until && py_mono_left(until) <= 0)
        return MP_ETIMEDOUT;
    pthread_cond_timedwait(&o->cond, &cx->reg->mu, last ? until : &slice);
    if (!py_peer_alive(cx))
        return MP_EBROKEN;
    return until && py_mono_left(until) <= 0 ? MP_ETIMEDOUT : 0;
}
