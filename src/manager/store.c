/* store.c - the manager server's objects and the operations on them.
 *
 * Dicts live in the family arena (shdict.c), where same-family clients
 * work on them directly; a dict request takes their robust lock after the
 * store mutex and keeps it until the mutex is let go. Lists, queues and
 * locks live here, their names in a chained hash table. A request is
 * executed under the store mutex; queue put/get and lock acquire wait on the
 * object's condition variable for at most one wait slice, and the client
 * re-asks until its own deadline, so no server thread waits on a dead peer
 * for long.
 */
#include "manager/store.h"
#include "manager/shdict.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------ values and tables */

struct value {
    enum mtype type;     /* MV_INT, MV_FLOAT or MV_BYTES */
    uint8_t tag;         /* MV_BYTES written by a Python client: what they were (protocol.h) */
    int64_t i;
    double f;
    uint8_t *p;
    size_t len;
};

struct entry {
    struct entry *next;
    struct entry *older, *newer;   /* insertion order (a dict's keys come out in it, as in Python) */
    uint64_t hash;
    char *key;
    size_t klen;
    void *obj;
};

struct table {
    struct entry **slots;
    size_t nslots, count;
    struct entry *oldest, *newest;
};

enum kind { KIND_DICT = 'd', KIND_LIST = 'l', KIND_QUEUE = 'q', KIND_LOCK = 'k' };

struct object {
    enum kind kind;
    pthread_cond_t changed;       /* queue items / lock owner changed */
    struct value *items;          /* list items, or the queue's ring */
    size_t head, count, cap;
    size_t maxsize;               /* queue bound, 0 = none */
    bool bound_fixed;             /* a queue op has run: maxsize is final */
    struct store_owner *owner;    /* lock holder */
    int waiters;                  /* requests inside wait_changed: store_drop keeps it */
    bool owner_died;
    struct object *next_lock;
};

struct store {
    pthread_mutex_t mu;
    store_wants_fn wants;
    struct table names;           /* lists, queues, locks */
    size_t bytes, max_bytes;      /* every allocation the store holds, as malloc spends it */
    struct object *locks;
    struct shstore *dicts;        /* the dicts, in the arena (shdict.h) */
    bool own_dicts;               /* made by store_new: freed with the store */
    bool dicts_locked;            /* its lock is held, under mu, until the next unlock */
};

/* What malloc spends on a block of n bytes (glibc: an 8-byte header,
 * 16-byte granules, 32 bytes at least): the unit the budget counts in, so
 * a million tiny entries cost what they really cost. */
static size_t alloc_cost(size_t n)
{
    size_t c = (n + 8 + 15) & ~(size_t)15;
    return c < 32 ? 32 : c;
}

/* Reserves n bytes of the budget: false (nothing taken) past it. */
static bool budget_room(struct store *s, size_t n)
{
    size_t dicts = shstore_bytes(s->dicts);     /* the dicts share the budget */
    return dicts <= s->max_bytes - s->bytes && n <= s->max_bytes - s->bytes - dicts;
}

size_t store_room_locked(struct store *s)
{
    size_t dicts = shstore_bytes(s->dicts);
    return dicts <= s->max_bytes - s->bytes ? s->max_bytes - s->bytes - dicts : 0;
}

bool store_items_fit_locked(struct store *s, uint64_t n)
{
    return n <= store_room_locked(s) / sizeof(struct value);
}

static bool budget_take(struct store *s, size_t n)
{
    if (!budget_room(s, n))
        return false;
    s->bytes += n;
    return true;
}

static size_t slots_cost(size_t nslots) { return nslots ? alloc_cost(nslots * sizeof(struct entry *)) : 0; }
static size_t entry_cost(size_t klen) { return alloc_cost(sizeof(struct entry)) + alloc_cost(klen + 1); }

static uint64_t hash_bytes(const void *p, size_t len)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static struct entry **table_find(struct table *t, const void *key, size_t klen, uint64_t h)
{
    if (t->nslots == 0)
        return NULL;
    struct entry **e = &t->slots[h & (t->nslots - 1)];
    for (; *e; e = &(*e)->next)
        if ((*e)->hash == h && (*e)->klen == klen && memcmp((*e)->key, key, klen) == 0)
            return e;
    return NULL;
}

static int table_grow(struct store *s, struct table *t)
{
    if (t->count < t->nslots)
        return 0;
    size_t n = t->nslots ? t->nslots * 2 : 16;
    if (!budget_take(s, slots_cost(n)))     /* old and new both live for a moment */
        return MP_ENOMEM;
    struct entry **slots = calloc(n, sizeof *slots);
    if (!slots) {
        s->bytes -= slots_cost(n);
        return MP_ENOMEM;
    }
    s->bytes -= slots_cost(t->nslots);
    for (size_t i = 0; i < t->nslots; i++) {
        for (struct entry *e = t->slots[i], *next; e; e = next) {
            next = e->next;
            e->next = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
        }
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = n;
    return 0;
}

/* Adds an entry for a key known to be absent, within the budget. */
static struct entry *table_add(struct store *s, struct table *t, const void *key, size_t klen, uint64_t h)
{
    if (table_grow(s, t) < 0 || !budget_take(s, entry_cost(klen)))
        return NULL;
    struct entry *e = calloc(1, sizeof *e);
    char *k = e ? malloc(klen + 1) : NULL;
    if (!k) {
        free(e);
        s->bytes -= entry_cost(klen);
        return NULL;
    }
    memcpy(k, key, klen);
    k[klen] = '\0';
    e->key = k;
    e->klen = klen;
    e->hash = h;
    e->next = t->slots[h & (t->nslots - 1)];
    t->slots[h & (t->nslots - 1)] = e;
    t->count++;
    e->older = t->newest;
    if (t->newest)
        t->newest->newer = e;
    else
        t->oldest = e;
    t->newest = e;
    return e;
}

/* Takes e out of t's insertion order (its slot chain is the caller's). */
static void table_unorder(struct table *t, struct entry *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        t->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        t->newest = e->older;
}

static size_t value_cost(const struct value *v)
{
    return v->type == MV_BYTES ? alloc_cost(v->len ? v->len : 1) : 0;   /* numbers live inline */
}

static void value_clear(struct store *s, struct value *v)
{
    s->bytes -= value_cost(v);
    free(v->p);
    memset(v, 0, sizeof *v);
}

/* Copies a request value into owned storage, within the byte budget. */
static int value_set(struct store *s, struct value *dst, const struct mval *src)
{
    struct value v = { .type = src->type, .tag = src->type == MV_BYTES ? src->tag : 0, .i = src->i, .f = src->f };
    if (src->type == MV_BYTES && dst->type == MV_BYTES && dst->len == src->len && src->len) {
        memcpy(dst->p, src->p, src->len);      /* same size: same block, same cost */
        dst->tag = v.tag;
        dst->i = src->i;
        dst->f = src->f;
        return 0;
    }
    if (src->type == MV_BYTES) {
        if (!budget_room(s, alloc_cost(src->len ? src->len : 1)))
            return MP_ENOMEM;
        v.p = malloc(src->len ? src->len : 1);
        if (!v.p)
            return MP_ENOMEM;
        memcpy(v.p, src->p, src->len);
        v.len = src->len;
    }
    value_clear(s, dst);
    *dst = v;
    s->bytes += value_cost(&v);
    return 0;
}

static struct mval value_view(const struct value *v)
{
    return (struct mval){ .type = v->type, .tag = v->tag, .i = v->i, .f = v->f, .p = v->p, .len = v->len };
}


/* ------------------------------------------------------------------ objects */

static int object_new(struct object **out, enum kind kind)
{
    struct object *o = calloc(1, sizeof *o);
    if (!o)
        return MP_ENOMEM;
    cond_init_monotonic(&o->changed);
    o->kind = kind;
    *out = o;
    return 0;
}

static void object_free(struct store *s, struct object *o)
{
    s->bytes -= (o->cap ? alloc_cost(o->cap * sizeof *o->items) : 0) + alloc_cost(sizeof *o);
    for (size_t i = 0; i < o->count; i++)
        value_clear(s, &o->items[(o->head + i) % (o->cap ? o->cap : 1)]);
    free(o->items);
    pthread_cond_destroy(&o->changed);
    free(o);
}

/* Finds the object kind:name, creating it when missing. */
static int object_get(struct store *s, enum kind kind, const struct mval *name, struct object **out)
{
    char key[1 + MSG_MAX_NAME];
    key[0] = (char)kind;
    memcpy(key + 1, name->p, name->len);
    size_t klen = 1 + name->len;
    uint64_t h = hash_bytes(key, klen);
    struct entry **found = table_find(&s->names, key, klen, h);
    if (found) {
        *out = (*found)->obj;
        return 0;
    }
    if (s->names.count + shstore_objects(s->dicts) >= STORE_MAX_OBJECTS ||
        !budget_take(s, alloc_cost(sizeof(struct object))))
        return MP_ENOMEM;
    struct object *o;
    int rc = object_new(&o, kind);
    if (rc < 0) {
        s->bytes -= alloc_cost(sizeof(struct object));
        return rc;
    }
    struct entry *e = table_add(s, &s->names, key, klen, h);
    if (!e) {
        object_free(s, o);
        return MP_ENOMEM;
    }
    e->obj = o;
    if (kind == KIND_LOCK) {
        o->next_lock = s->locks;
        s->locks = o;
    }
    *out = o;
    return 0;
}

int store_new_shared(struct store **out, struct shstore *dicts, size_t max_bytes, store_wants_fn wants)
{
    bool own = !dicts;
    if (own && !(dicts = shstore_new()))
        return MP_ENOMEM;
    struct store *s = calloc(1, sizeof *s);
    if (!s || shstore_serve(dicts, max_bytes) < 0) {
        free(s);
        if (own)
            shstore_destroy(dicts);
        return MP_ENOMEM;
    }
    s->wants = wants;
    s->dicts = dicts;
    s->own_dicts = own;
    pthread_mutex_init(&s->mu, NULL);
    s->max_bytes = max_bytes ? max_bytes : STORE_MAX_BYTES_DEFAULT;
    *out = s;
    return 0;
}

int store_new(struct store **out, size_t max_bytes, store_wants_fn wants)
{
    return store_new_shared(out, NULL, max_bytes, wants);
}

void store_free(struct store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->names.nslots; i++) {
        for (struct entry *e = s->names.slots[i], *next; e; e = next) {
            next = e->next;
            object_free(s, e->obj);
            free(e->key);
            free(e);
        }
    }
    free(s->names.slots);
    if (s->own_dicts)
        shstore_destroy(s->dicts);
    else
        shstore_close(s->dicts);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* The dicts' lock, taken by the first dict request after store_lock and
 * held until the store mutex is let go (so a run of requests is one, as
 * for the other objects). False: not to be had (a holder that hangs). */
static bool dicts_lock(struct store *s)
{
    if (!s->dicts_locked && shstore_lock(s->dicts) == 0)
        s->dicts_locked = true;
    return s->dicts_locked;
}

/* Before the store mutex is let go: the dicts' lock too, and the budget
 * the server's objects spend made known to direct dict callers. */
static void store_leave(struct store *s)
{
    shstore_publish(s->dicts, s->bytes, s->names.count);
    if (s->dicts_locked)
        shstore_unlock(s->dicts);
    s->dicts_locked = false;
}

/* ------------------------------------------------------------------ waiting */

/* The absolute time a blocking request may wait until: its timeout, capped
 * at one slice. Returns false for timeout 0 (do not wait). */
/* A request's timeout argument in seconds (negative: none). */
static double timeout_of(const struct mval *timeout)
{
    return timeout->type == MV_INT ? (double)timeout->i : timeout->f;
}

static bool wait_until(const struct mval *timeout, struct timespec *at)
{
    double t = timeout_of(timeout);
    if (t == 0)
        return false;
    double slice = MANAGER_REQUEST_SLICE;
    if (t < 0 || t > slice)
        t = slice;
    clock_gettime(CLOCK_MONOTONIC, at);
    long ns = at->tv_nsec + (long)(t * 1e9);
    at->tv_sec += ns / 1000000000L;
    at->tv_nsec = ns % 1000000000L;
    return true;
}

/* One wait on o->changed: false once the time is up. */
static bool wait_changed(struct store *s, struct object *o, const struct timespec *at)
{
    store_leave(s);           /* no waiting with the dicts locked */
    o->waiters++;
    bool changed = pthread_cond_timedwait(&o->changed, &s->mu, at) != ETIMEDOUT;
    o->waiters--;
    return changed;
}

/* ------------------------------------------------------------------ lists and queues */

/* Items live in a ring (head, count, cap); a list is a ring with head 0. */
static struct value *ring_at(struct object *o, size_t i) { return &o->items[(o->head + i) % o->cap]; }

/* Doubles the ring. One that does not wrap grows in place (realloc:
 * mremap for big ones, so no old copy lingers); the budget counts old and
 * new together, as both may be live for a moment (force: counted anyway). */
static int ring_grow(struct store *s, struct object *o, bool force)
{
    size_t cap = o->cap ? o->cap * 2 : 8;
    size_t cost = alloc_cost(cap * sizeof *o->items), old = o->cap ? alloc_cost(o->cap * sizeof *o->items) : 0;
    if (force)
        s->bytes += cost;
    else if (!budget_take(s, cost))
        return MP_ENOMEM;
    struct value *items = o->head == 0 ? realloc(o->items, cap * sizeof *items) : calloc(cap, sizeof *items);
    if (!items) {
        s->bytes -= cost;
        return MP_ENOMEM;
    }
    if (o->head == 0) {
        memset(items + o->cap, 0, (cap - o->cap) * sizeof *items);
    } else {
        for (size_t i = 0; i < o->count; i++)
            items[i] = *ring_at(o, i);
        free(o->items);
    }
    s->bytes -= old;
    o->items = items;
    o->cap = cap;
    o->head = 0;
    return 0;
}

/* Adds v at the tail, or at the head (front: an item put back, which the
 * budget does not refuse: it was counted before). */
static int ring_push(struct store *s, struct object *o, const struct mval *v, bool front)
{
    int rc = o->count == o->cap ? ring_grow(s, o, front) : 0;
    if (rc < 0)
        return rc;
    size_t at = front ? (o->head + o->cap - 1) % o->cap : (o->head + o->count) % o->cap;
    struct value *slot = &o->items[at];
    memset(slot, 0, sizeof *slot);
    size_t max = s->max_bytes;
    if (front)
        s->max_bytes = SIZE_MAX;
    rc = value_set(s, slot, v);
    s->max_bytes = max;
    if (rc < 0)
        return rc;
    if (front)
        o->head = at;
    o->count++;
    return 0;
}

/* Removes item i, handing its storage to the reply. */
static void ring_take(struct store *s, struct object *o, size_t i, struct sreply *r)
{
    struct value v = *ring_at(o, i);
    if (i == 0) {
        o->head = (o->head + 1) % o->cap;
    } else {
        for (size_t j = i; j + 1 < o->count; j++)
            *ring_at(o, j) = *ring_at(o, j + 1);
    }
    o->count--;
    s->bytes -= value_cost(&v);
    r->v = value_view(&v);
    r->owned = v.p;
}

/* Python's index rules: negative counts from the end. */
static int list_index(const struct object *o, int64_t i, size_t *at)
{
    if (i < 0)
        i += (int64_t)o->count;
    if (i < 0 || (uint64_t)i >= o->count)
        return MP_ERANGE;
    *at = (size_t)i;
    return 0;
}

static int list_exec(struct store *s, struct object *o, const struct mmsg *m, struct sreply *r)
{
    size_t at;
    int rc;
    switch (m->v[0].i) {
    case OP_LIST_OPEN:
        return 0;
    case OP_LIST_APPEND:
        return ring_push(s, o, &m->v[2], false);
    case OP_LIST_LEN:
        r->v = (struct mval){ .type = MV_INT, .i = (int64_t)o->count };
        return 0;
    }
    if ((rc = list_index(o, m->v[2].i, &at)) < 0)
        return rc;
    switch (m->v[0].i) {
    case OP_LIST_GET:
        r->v = value_view(ring_at(o, at));
        return 0;
    case OP_LIST_SET:
        return value_set(s, ring_at(o, at), &m->v[3]);
    case OP_LIST_POP:
        ring_take(s, o, at, r);
        return 0;
    }
    return MP_EPROTO;
}

static int queue_put(struct store *s, struct object *o, struct store_owner *me,
                     const struct mmsg *m)
{
    struct timespec at;
    bool may_wait = wait_until(&m->v[3], &at);
    while (o->maxsize && o->count >= o->maxsize) {
        if (!may_wait || !wait_changed(s, o, &at))
            if (o->count >= o->maxsize)
                return MP_EFULL;
    }
    /* A put with a deadline goes in only while its client still waits for
     * the answer. One that gave up has told its caller MP_ETIMEDOUT (as
     * Python's Full: not put): a server stopped past the deadline found the
     * request on resuming and put the item all the same, so a producer that
     * retried put it twice. */
    if (timeout_of(&m->v[3]) >= 0 && s->wants && !s->wants(me, true))
        return MP_EBROKEN;
    int rc = ring_push(s, o, &m->v[2], false);
    if (rc == 0)
        pthread_cond_broadcast(&o->changed);
    return rc;
}

static int queue_get(struct store *s, struct object *o, struct store_owner *me,
                     const struct mmsg *m, struct sreply *r)
{
    struct timespec at;
    bool may_wait = wait_until(&m->v[2], &at), waited = false;
    while (o->count == 0) {
        waited = may_wait;
        if (!may_wait || !wait_changed(s, o, &at))
            if (o->count == 0)
                return MP_EEMPTY;
    }
    if (s->wants && !s->wants(me, waited))
        return MP_EBROKEN;           /* nobody to give it to: the next getter has it */
    ring_take(s, o, 0, r);
    pthread_cond_broadcast(&o->changed);
    return 0;
}

static int queue_exec(struct store *s, struct object *o, struct store_owner *me,
                      const struct mmsg *m, struct sreply *r)
{
    bool first = !o->bound_fixed;
    o->bound_fixed = true;             /* the first queue op, whatever it is, fixes it */
    switch (m->v[0].i) {
    case OP_QUEUE_OPEN:
        if (m->v[2].i < 0)
            return MP_EINVAL;
        if (first)
            o->maxsize = (size_t)m->v[2].i;
        return 0;
    case OP_QUEUE_PUT:
        return queue_put(s, o, me, m);
    case OP_QUEUE_GET:
        return queue_get(s, o, me, m, r);
    case OP_QUEUE_LEN:
        r->v = (struct mval){ .type = MV_INT, .i = (int64_t)o->count };
        return 0;
    }
    return MP_EPROTO;
}

/* ------------------------------------------------------------------ locks */

static int lock_acquire(struct store *s, struct object *o, struct store_owner *me, const struct mval *timeout)
{
    struct timespec at;
    bool may_wait = wait_until(timeout, &at);
    while (o->owner) {
        if (!may_wait || !wait_changed(s, o, &at))
            if (o->owner)
                return MP_ETIMEDOUT;
    }
    o->owner = me;
    if (o->owner_died) {
        o->owner_died = false;
        return MP_EOWNERDEAD;
    }
    return 0;
}

static int lock_exec(struct store *s, struct object *o, struct store_owner *me, const struct mmsg *m)
{
    switch (m->v[0].i) {
    case OP_LOCK_OPEN:
        return 0;
    case OP_LOCK_ACQUIRE:
        return lock_acquire(s, o, me, &m->v[2]);
    case OP_LOCK_RELEASE:
        if (o->owner != me)
            return MP_EINVAL;
        o->owner = NULL;
        pthread_cond_broadcast(&o->changed);
        return 0;
    }
    return MP_EPROTO;
}

void store_unget_locked(struct store *s, const struct mval *name, const struct mval *item)
{
    struct object *o;
    if (object_get(s, KIND_QUEUE, name, &o) < 0 || ring_push(s, o, item, true) < 0)
        return;
    pthread_cond_broadcast(&o->changed);
}

void store_unget(struct store *s, const struct mval *name, const struct mval *item)
{
    pthread_mutex_lock(&s->mu);
    store_unget_locked(s, name, item);
    store_leave(s);
    pthread_mutex_unlock(&s->mu);
}

void store_owner_gone(struct store *s, struct store_owner *owner)
{
    pthread_mutex_lock(&s->mu);
    for (struct object *o = s->locks; o; o = o->next_lock) {
        if (o->owner == owner) {
            o->owner = NULL;
            o->owner_died = true;
            pthread_cond_broadcast(&o->changed);
        }
    }
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------ dispatch */

static enum kind op_kind(int64_t op)
{
    return op < OP_LIST_OPEN ? KIND_DICT : op < OP_QUEUE_OPEN ? KIND_LIST
         : op < OP_LOCK_OPEN ? KIND_QUEUE : KIND_LOCK;
}

void store_exec(struct store *s, struct store_owner *owner, const struct mmsg *req, struct sreply *r)
{
    int64_t op = req->v[0].i;
    if (op >= OP_DICT_OPEN && op_kind(op) == KIND_DICT) {
        /* the dicts' lock alone: a request waiting for it (direct callers
         * busy) does not hold up the other objects' requests */
        memset(r, 0, sizeof *r);
        r->dicts_only = true;
        r->dicts_locked = shstore_lock(s->dicts) == 0;
        r->status = r->dicts_locked ? shdict_exec(s->dicts, req, &r->v, &r->owned) : MP_EBROKEN;
        return;
    }
    pthread_mutex_lock(&s->mu);
    store_exec_locked(s, owner, req, r);
}

void store_exec_locked(struct store *s, struct store_owner *owner, const struct mmsg *req, struct sreply *r)
{
    memset(r, 0, sizeof *r);
    int64_t op = req->v[0].i;
    if (op == OP_PING || op == OP_SHUTDOWN)
        return;
    enum kind kind = op_kind(op);
    if (kind == KIND_DICT) {
        r->status = dicts_lock(s) ? shdict_exec(s->dicts, req, &r->v, &r->owned) : MP_EBROKEN;
        return;
    }
    struct object *o;
    r->status = object_get(s, kind, &req->v[1], &o);
    if (r->status < 0)
        return;
    switch (kind) {
    case KIND_DICT: break;
    case KIND_LIST: r->status = list_exec(s, o, req, r); break;
    case KIND_QUEUE: r->status = queue_exec(s, o, owner, req, r); break;
    case KIND_LOCK: r->status = lock_exec(s, o, owner, req); break;
    }
}

void store_done(struct store *s, struct sreply *r)
{
    if (r->dicts_only) {
        if (r->dicts_locked)
            shstore_unlock(s->dicts);
        store_release(r);
        return;
    }
    store_leave(s);
    pthread_mutex_unlock(&s->mu);
    store_release(r);
}

void store_release(struct sreply *r)
{
    free(r->owned);
    r->owned = NULL;
}

void store_lock(struct store *s) { pthread_mutex_lock(&s->mu); }
void store_unlock(struct store *s)
{
    store_leave(s);
    pthread_mutex_unlock(&s->mu);
}

bool store_drop_locked(struct store *s, int64_t op, const struct mval *name)
{
    char key[1 + MSG_MAX_NAME];
    if (name->len > MSG_MAX_NAME)
        return false;
    if (op_kind(op) == KIND_DICT) {
        if (dicts_lock(s))
            shdict_drop(s->dicts, name->p, name->len);
        return true;
    }
    key[0] = (char)op_kind(op);
    memcpy(key + 1, name->p, name->len);
    size_t klen = 1 + name->len;
    struct entry **found = table_find(&s->names, key, klen, hash_bytes(key, klen));
    if (!found)
        return true;
    struct object *o = (*found)->obj;
    if (o->waiters > 0)
        return false;
    if (o->kind == KIND_LOCK) {
        struct object **l = &s->locks;
        while (*l != o)
            l = &(*l)->next_lock;
        *l = o->next_lock;
    }
    struct entry *e = *found;
    *found = e->next;
    s->names.count--;
    table_unorder(&s->names, e);
    s->bytes -= entry_cost(e->klen);
    free(e->key);
    free(e);
    object_free(s, o);
    return true;
}
