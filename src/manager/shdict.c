/* shdict.c - the manager's dicts in the family arena (shdict.h).
 *
 * A dict is an open-addressing table of entry pointers (linear probing;
 * a deleted slot holds TOMB so later keys stay findable). An entry is one
 * arena block: hash, insertion sequence number, the key, and the value (an
 * 8-byte number, or bytes). The store's directory of dicts is a table of
 * the same kind whose entries carry a struct shdict as their value, so a
 * dict and its name are one block.
 *
 * Commits are single word stores, made under the store lock:
 *   new key   build the entry, then store it in a free slot;
 *   replace   build the new entry (same sequence number: the key keeps its
 *             place), store it over the old, then free the old;
 *   number    an int over an int, a float over a float: the 8 bytes in place;
 *   delete    store TOMB, then free the entry;
 *   resize    build the new table, store its pointer, then free the old one;
 *   clear     retired = tab, then tab = NULL (the commit), then free the
 *             entries (each slot emptied before its entry is freed), then
 *             retired = NULL and free the table.
 * Counters (count, used, next_seq, bytes) are written after the commit and
 * recomputed by repair() when the lock comes back EOWNERDEAD; repair also
 * finishes a clear whose commit was made (retired != tab) or forgets one
 * whose commit was not (retired == tab). A kill between an allocation and
 * its commit, or between a commit and the free it makes garbage, leaks that
 * one block. Keys are listed in insertion order by sorting on the sequence
 * numbers.
 */
#include "manager/shdict.h"
#include "manager/manager_internal.h"
#include "manager/store.h"

#include <stdlib.h>
#include <string.h>

enum { SHSTORE_MAGIC = 0x53484454 /* SHDT */, TAB_MIN = 8 };

struct shentry {
    uint64_t hash;
    uint64_t seq;        /* insertion order: kept by a replace */
    uint64_t num;        /* MV_INT / MV_FLOAT bits, changed in place */
    uint32_t klen, vlen;
    uint8_t type, tag;
    char key[];          /* klen bytes and a NUL, then the value (entry_value) */
};

struct shtab {
    uint64_t nslots;     /* a power of two */
    struct shentry *slots[];
};

#define TOMB ((struct shentry *)1)

struct shdict {
    struct shtab *tab;       /* NULL: empty */
    struct shtab *retired;   /* a clear in progress */
    uint64_t next_seq;
    uint64_t count;          /* live entries */
    uint64_t used;           /* live entries and TOMBs */
};

struct shstore {
    uint32_t magic;
    uint32_t closed;         /* under mu */
    rmutex mu;               /* every dict and the directory */
    rmutex life;             /* held by the serving server's main thread */
    uint64_t max_bytes;
    _Atomic uint64_t bytes;  /* the dicts' blocks, as the arena spends them */
    _Atomic uint64_t server_bytes, server_objects;
    _Atomic uint64_t ndicts;  /* dir.count, for readers without the lock */
    struct shdict dir;       /* name -> dict */
};

MP_TEST_HOOK void (*mp__shdict_test_hook)(const char *point);

static void hook(const char *point)
{
    if (mp__shdict_test_hook)
        mp__shdict_test_hook(point);
}

/* The commit: one word, one store. */
static void commit(void *where, void *what)
{
    __atomic_store_n((void **)where, what, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ sizes and budget */

/* What the arena spends on a block of n bytes: its header, rounded to 64. */
static uint64_t acost(size_t n)
{
    uint64_t c = ((uint64_t)n + ARENA_BLOCK_HEADER + 63) & ~(uint64_t)63;
    return c < 128 ? 128 : c;
}

static size_t value_at(uint32_t klen) { return (offsetof(struct shentry, key) + klen + 1 + 7) & ~(size_t)7; }
static size_t entry_size(uint32_t klen, size_t vbytes) { return value_at(klen) + vbytes; }
static uint8_t *entry_value(struct shentry *e) { return (uint8_t *)e + value_at(e->klen); }
static struct shdict *entry_dict(struct shentry *e) { return (struct shdict *)entry_value(e); }
static bool has_bytes(int type) { return type == MV_BYTES || type == MV_TEXT; }

static uint64_t entry_cost(const struct shentry *e, bool is_dir)
{
    return acost(entry_size(e->klen, is_dir ? sizeof(struct shdict) : has_bytes(e->type) ? e->vlen : 0));
}

static size_t tab_size(uint64_t n) { return sizeof(struct shtab) + n * sizeof(struct shentry *); }
static uint64_t tab_cost(const struct shtab *t) { return t ? acost(tab_size(t->nslots)) : 0; }

/* The budget has room for add more bytes once sub are given back. */
static bool budget_ok(struct shstore *s, uint64_t add, uint64_t sub)
{
    uint64_t used = atomic_load_explicit(&s->bytes, memory_order_relaxed) +
                    atomic_load_explicit(&s->server_bytes, memory_order_relaxed);
    return used + add <= s->max_bytes + sub;
}

static void dicts_counted(struct shstore *s)
{
    atomic_store_explicit(&s->ndicts, s->dir.count, memory_order_relaxed);
}

static void bytes_add(struct shstore *s, int64_t n)
{
    atomic_fetch_add_explicit(&s->bytes, (uint64_t)n, memory_order_relaxed);
}

static uint64_t hash_key(const void *p, size_t len)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

/* ------------------------------------------------------------------ tables */

static bool is_entry(const struct shentry *e) { return e && e != TOMB; }

/* The slot holding key, or NULL; *free_slot (if asked) gets the first
 * TOMB or empty slot of the probe, where the key would go. */
static struct shentry **tab_find(struct shtab *t, const void *key, size_t klen, uint64_t h,
                                 struct shentry ***free_slot)
{
    if (free_slot)
        *free_slot = NULL;
    if (!t)
        return NULL;
    uint64_t mask = t->nslots - 1;
    for (uint64_t i = h & mask, n = 0; n < t->nslots; i = (i + 1) & mask, n++) {
        struct shentry *e = t->slots[i];
        if (!e) {
            if (free_slot && !*free_slot)
                *free_slot = &t->slots[i];
            return NULL;
        }
        if (e == TOMB) {
            if (free_slot && !*free_slot)
                *free_slot = &t->slots[i];
            continue;
        }
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return &t->slots[i];
    }
    return NULL;
}

/* Makes room in d for one more key whose entry costs ecost: a bigger (and
 * TOMB-free) table when the load would pass 3/4. MP_ENOMEM past the budget
 * (nothing changed but perhaps the table). */
static int ensure_room(struct shstore *s, struct shdict *d, uint64_t ecost)
{
    struct shtab *old = d->tab;
    if (old && (d->used + 1) * 4 <= old->nslots * 3)
        return budget_ok(s, ecost, 0) ? 0 : MP_ENOMEM;
    uint64_t n = TAB_MIN;
    while (n * 3 < (d->count + 1) * 6)
        n *= 2;
    uint64_t tcost = acost(tab_size(n));
    if (!budget_ok(s, tcost + ecost, 0))       /* old and new both live for a moment */
        return MP_ENOMEM;
    struct shtab *t = arena_alloc(tab_size(n));
    if (!t)
        return MP_ENOMEM;
    t->nslots = n;
    for (uint64_t i = 0; old && i < old->nslots; i++) {
        struct shentry *e = old->slots[i];
        if (!is_entry(e))
            continue;
        uint64_t j = e->hash & (n - 1);
        while (t->slots[j])
            j = (j + 1) & (n - 1);
        t->slots[j] = e;
    }
    hook("resize-built");
    commit(&d->tab, t);
    hook("resize-committed");
    d->used = d->count;
    bytes_add(s, (int64_t)tcost - (int64_t)tab_cost(old));
    arena_free(old);
    return 0;
}

/* A new entry for key holding v (is_dir: a zeroed struct shdict). */
static struct shentry *entry_new(const void *key, uint32_t klen, uint64_t h, const struct mval *v,
                                 bool is_dir)
{
    size_t vb = is_dir ? sizeof(struct shdict) : has_bytes(v->type) ? v->len : 0;
    struct shentry *e = arena_alloc_nozero(entry_size(klen, vb));
    if (!e)
        return NULL;
    e->hash = h;
    e->seq = 0;
    e->klen = klen;
    memcpy(e->key, key, klen);
    e->key[klen] = '\0';
    if (is_dir) {
        e->type = MV_NONE;
        e->tag = 0;
        e->vlen = 0;
        e->num = 0;
        memset(entry_dict(e), 0, sizeof(struct shdict));
        return e;
    }
    e->type = (uint8_t)v->type;
    e->tag = has_bytes(v->type) ? v->tag : 0;
    e->vlen = has_bytes(v->type) ? (uint32_t)v->len : 0;
    if (v->type == MV_FLOAT)
        memcpy(&e->num, &v->f, sizeof e->num);
    else
        e->num = (uint64_t)v->i;
    if (e->vlen)
        memcpy(entry_value(e), v->p, e->vlen);
    return e;
}

/* Adds a key known to be absent. */
static int insert_new(struct shstore *s, struct shdict *d, const void *key, uint32_t klen,
                      uint64_t h, const struct mval *v, bool is_dir, struct shentry **out)
{
    size_t vb = is_dir ? sizeof(struct shdict) : has_bytes(v->type) ? v->len : 0;
    uint64_t cost = acost(entry_size(klen, vb));
    int rc = ensure_room(s, d, cost);
    if (rc < 0)
        return rc;
    struct shentry *e = entry_new(key, klen, h, v, is_dir);
    if (!e)
        return MP_ENOMEM;
    e->seq = d->next_seq;
    struct shentry **slot;
    tab_find(d->tab, key, klen, h, &slot);
    bool was_empty = *slot == NULL;
    hook("insert-built");
    commit(slot, e);
    hook("insert-committed");
    d->used += was_empty;
    d->count++;
    d->next_seq++;
    bytes_add(s, (int64_t)cost);
    if (out)
        *out = e;
    return 0;
}

/* Empties the slots of the retired table, freeing their entries (is_dir:
 * the dicts inside them first), then the table itself. */
static void dict_clear_retired(struct shstore *s, struct shdict *d, bool is_dir);
static void dict_settle(struct shstore *s, struct shdict *d, bool is_dir);

static void dict_clear(struct shstore *s, struct shdict *d, bool is_dir)
{
    if (!d->tab)
        return;
    d->retired = d->tab;
    hook("clear-retired");
    commit(&d->tab, NULL);
    hook("clear-committed");
    dict_clear_retired(s, d, is_dir);
}

static void dict_clear_retired(struct shstore *s, struct shdict *d, bool is_dir)
{
    struct shtab *t = d->retired;
    for (uint64_t i = 0; i < t->nslots; i++) {
        struct shentry *e = t->slots[i];
        if (!is_entry(e))
            continue;
        if (is_dir) {
            dict_settle(s, entry_dict(e), false);
            dict_clear(s, entry_dict(e), false);
        }
        commit(&t->slots[i], NULL);
        hook("clear-entry");
        bytes_add(s, -(int64_t)entry_cost(e, is_dir));
        arena_free(e);
    }
    d->count = d->used = 0;
    commit(&d->retired, NULL);
    hook("clear-table");
    bytes_add(s, -(int64_t)tab_cost(t));
    arena_free(t);
}

/* ------------------------------------------------------------------ repair and checks */

/* Walks every entry of d. */
#define FOR_ENTRIES(t, e)                                                          \
    for (uint64_t i_ = 0; (t) && i_ < (t)->nslots; i_++)                           \
        for (struct shentry *e = (t)->slots[i_]; is_entry(e); e = NULL)

static uint64_t dict_recount(struct shdict *d, bool is_dir)
{
    uint64_t bytes = tab_cost(d->tab), max_seq = 0;
    d->count = d->used = 0;
    for (uint64_t i = 0; d->tab && i < d->tab->nslots; i++)
        d->used += d->tab->slots[i] != NULL;
    FOR_ENTRIES(d->tab, e) {
        d->count++;
        bytes += entry_cost(e, is_dir);
        max_seq = e->seq + 1 > max_seq ? e->seq + 1 : max_seq;
    }
    if (d->next_seq < max_seq)
        d->next_seq = max_seq;
    return bytes;
}

/* Finishes or forgets a clear a dead holder left. */
static void dict_settle(struct shstore *s, struct shdict *d, bool is_dir)
{
    if (d->retired == d->tab)
        d->retired = NULL;          /* not committed: it did not happen */
    else if (d->retired)
        dict_clear_retired(s, d, is_dir);
}

/* After a holder died: every dict as its last commit left it, counters
 * recomputed. */
static void repair(struct shstore *s)
{
    dict_settle(s, &s->dir, true);
    FOR_ENTRIES(s->dir.tab, e)
        dict_settle(s, entry_dict(e), false);
    uint64_t bytes = dict_recount(&s->dir, true);
    FOR_ENTRIES(s->dir.tab, e)
        bytes += dict_recount(entry_dict(e), false);
    atomic_store_explicit(&s->bytes, bytes, memory_order_relaxed);
    dicts_counted(s);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* One table's shape; adds its bytes, entries and blocks to st. */
static bool dict_valid(struct shdict *d, bool is_dir, struct shstore_stats *st)
{
    struct shtab *t = d->tab;
    if (d->retired)
        return false;
    if (!t)
        return d->count == 0;
    if (!arena_is_block(t) || t->nslots < TAB_MIN || (t->nslots & (t->nslots - 1)) ||
        arena_block_size(t) < tab_size(t->nslots))
        return false;
    st->blocks++;
    st->bytes += tab_cost(t);
    uint64_t count = 0, used = 0, *seqs = malloc((d->count + 1) * sizeof *seqs);
    bool ok = seqs != NULL;
    for (uint64_t i = 0; ok && i < t->nslots; i++) {
        struct shentry *e = t->slots[i];
        used += e != NULL;
        if (!is_entry(e))
            continue;
        ok = arena_is_block(e) && arena_block_size(e) >= entry_size(e->klen, 0) && e->key[e->klen] == '\0' &&
             e->hash == hash_key(e->key, e->klen) && e->seq < d->next_seq && count < d->count &&
             tab_find(t, e->key, e->klen, e->hash, NULL) == &t->slots[i] &&
             (is_dir || e->type == MV_INT || e->type == MV_FLOAT || has_bytes(e->type));
        if (!ok)
            break;
        seqs[count++] = e->seq;
        st->blocks++;
        st->bytes += entry_cost(e, is_dir);
        if (!is_dir)
            st->entries++;
    }
    ok = ok && count == d->count && used == d->used && used * 4 <= t->nslots * 3;
    if (ok) {
        qsort(seqs, count, sizeof *seqs, cmp_u64);
        for (uint64_t i = 1; ok && i < count; i++)
            ok = seqs[i] != seqs[i - 1];
    }
    free(seqs);
    return ok;
}

bool shstore_check(struct shstore *s, struct shstore_stats *st)
{
    struct shstore_stats none;
    st = st ? st : &none;
    memset(st, 0, sizeof *st);
    if (!s || s->magic != SHSTORE_MAGIC || shstore_lock(s) < 0)
        return false;
    bool ok = dict_valid(&s->dir, true, st);
    FOR_ENTRIES(s->dir.tab, e) {
        ok = ok && dict_valid(entry_dict(e), false, st);
        st->dicts++;
    }
    ok = ok && st->bytes == atomic_load(&s->bytes);
    shstore_unlock(s);
    return ok;
}

/* ------------------------------------------------------------------ the store */

struct shstore *shstore_new(void)
{
    struct shstore *s = arena_alloc(sizeof *s);
    if (!s)
        return NULL;
    if (rmutex_init(&s->mu) < 0 || rmutex_init(&s->life) < 0) {
        arena_free(s);
        return NULL;
    }
    s->max_bytes = STORE_MAX_BYTES_DEFAULT;
    s->magic = SHSTORE_MAGIC;
    return s;
}

int shstore_serve(struct shstore *s, size_t max_bytes)
{
    mp_deadline forever = deadline_in(-1);
    int rc = rmutex_lock(&s->life, &forever);
    if (rc < 0 && rc != MP_EOWNERDEAD)
        return MP_ENOMEM;
    s->max_bytes = max_bytes ? max_bytes : STORE_MAX_BYTES_DEFAULT;
    return 0;
}

int shstore_lock(struct shstore *s)
{
    int rc = rmutex_trylock(&s->mu);
    if (rc == MP_ETIMEDOUT) {
        mp_deadline d = deadline_in(MANAGER_REPLY_TIMEOUT_S);
        rc = rmutex_wait(&s->mu, &d);
    }
    if (rc == MP_EOWNERDEAD) {
        repair(s);
        rc = 0;
    }
    return rc == 0 ? 0 : MP_EBROKEN;
}

void shstore_unlock(struct shstore *s)
{
    rmutex_unlock(&s->mu);
}

bool shstore_live(struct shstore *s)
{
    return !s->closed && rmutex_owner(&s->life) != 0;
}

void shstore_close(struct shstore *s)
{
    if (!s || s->magic != SHSTORE_MAGIC)
        return;
    if (shstore_lock(s) == 0) {
        s->closed = 1;
        dict_clear(s, &s->dir, true);
        dicts_counted(s);
        shstore_unlock(s);
    }
    if (rmutex_owner(&s->life) == mp_gettid())
        rmutex_unlock(&s->life);
}

void shstore_destroy(struct shstore *s)
{
    if (!s || s->magic != SHSTORE_MAGIC)
        return;
    shstore_close(s);
    s->magic = MAGIC_FREED;
    arena_free(s);
}

void shstore_publish(struct shstore *s, size_t server_bytes, size_t server_objects)
{
    atomic_store_explicit(&s->server_bytes, server_bytes, memory_order_relaxed);
    atomic_store_explicit(&s->server_objects, server_objects, memory_order_relaxed);
}

size_t shstore_bytes(struct shstore *s) { return atomic_load_explicit(&s->bytes, memory_order_relaxed); }
size_t shstore_objects(struct shstore *s) { return atomic_load_explicit(&s->ndicts, memory_order_relaxed); }

/* ------------------------------------------------------------------ dict operations */

static int dict_of(struct shstore *s, const struct mval *name, struct shdict **out)
{
    uint64_t h = hash_key(name->p, name->len);
    struct shentry **found = tab_find(s->dir.tab, name->p, name->len, h, NULL);
    if (found) {
        *out = entry_dict(*found);
        return 0;
    }
    if (s->dir.count + atomic_load_explicit(&s->server_objects, memory_order_relaxed) >= STORE_MAX_OBJECTS)
        return MP_ENOMEM;
    struct shentry *e;
    int rc = insert_new(s, &s->dir, name->p, (uint32_t)name->len, h, NULL, true, &e);
    if (rc == 0)
        *out = entry_dict(e);
    dicts_counted(s);
    return rc;
}

static struct mval entry_view(struct shentry *e)
{
    struct mval v = { .type = (enum mtype)e->type, .tag = e->tag };
    if (e->type == MV_FLOAT)
        memcpy(&v.f, &e->num, sizeof v.f);
    else
        v.i = (int64_t)e->num;
    if (has_bytes(e->type)) {
        v.p = entry_value(e);
        v.len = e->vlen;
    }
    return v;
}

static int dict_set(struct shstore *s, struct shdict *d, const struct mval *key, const struct mval *v)
{
    uint64_t h = hash_key(key->p, key->len);
    struct shentry **slot = tab_find(d->tab, key->p, key->len, h, NULL);
    if (!slot)
        return insert_new(s, d, key->p, (uint32_t)key->len, h, v, false, NULL);
    struct shentry *old = *slot;
    if ((v->type == MV_INT || v->type == MV_FLOAT) && old->type == v->type) {
        uint64_t bits = (uint64_t)v->i;
        if (v->type == MV_FLOAT)
            memcpy(&bits, &v->f, sizeof bits);
        hook("number-before");
        __atomic_store_n(&old->num, bits, __ATOMIC_RELAXED);   /* the commit */
        hook("number-committed");
        return 0;
    }
    uint64_t cost = acost(entry_size((uint32_t)key->len, has_bytes(v->type) ? v->len : 0));
    uint64_t was = entry_cost(old, false);
    if (!budget_ok(s, cost, was))
        return MP_ENOMEM;
    struct shentry *e = entry_new(key->p, (uint32_t)key->len, h, v, false);
    if (!e)
        return MP_ENOMEM;
    e->seq = old->seq;
    hook("replace-built");
    commit(slot, e);
    hook("replace-committed");
    bytes_add(s, (int64_t)cost - (int64_t)was);
    arena_free(old);
    return 0;
}

static int dict_del(struct shstore *s, struct shdict *d, const struct mval *key)
{
    struct shentry **slot = tab_find(d->tab, key->p, key->len, hash_key(key->p, key->len), NULL);
    if (!slot)
        return MP_ENOTFOUND;
    struct shentry *e = *slot;
    commit(slot, TOMB);
    hook("del-committed");
    d->count--;
    bytes_add(s, -(int64_t)entry_cost(e, false));
    arena_free(e);
    return 0;
}

static int dict_incr(struct shstore *s, struct shdict *d, const struct mmsg *m, struct mval *out)
{
    const struct mval *key = &m->v[2];
    uint64_t h = hash_key(key->p, key->len);
    struct shentry **slot = tab_find(d->tab, key->p, key->len, h, NULL);
    int64_t now = 0;
    if (slot && (*slot)->type != MV_INT)
        return MP_ETYPE;
    if (slot)
        now = (int64_t)(*slot)->num;
    if (__builtin_add_overflow(now, m->v[3].i, &now))
        return MP_ERANGE;
    *out = (struct mval){ .type = MV_INT, .i = now };
    if (slot) {
        hook("incr-before");
        __atomic_store_n(&(*slot)->num, (uint64_t)now, __ATOMIC_RELAXED);   /* the commit */
        hook("incr-committed");
        return 0;
    }
    return insert_new(s, d, key->p, (uint32_t)key->len, h, out, false, NULL);
}

static int dict_cas(struct shstore *s, struct shdict *d, const struct mmsg *m)
{
    const struct mval *key = &m->v[2], *expect = &m->v[3];
    struct shentry **slot = tab_find(d->tab, key->p, key->len, hash_key(key->p, key->len), NULL);
    if (expect->type == MV_NULL) {
        if (slot)
            return MP_ECONFLICT;
    } else {
        if (!slot)
            return MP_ECONFLICT;
        struct shentry *e = *slot;
        if (e->type != MV_BYTES)
            return MP_ETYPE;
        if (e->vlen != expect->len || memcmp(entry_value(e), expect->p, e->vlen) != 0)
            return MP_ECONFLICT;
    }
    return dict_set(s, d, key, &m->v[4]);
}

struct keyed { uint64_t seq; struct shentry *e; };

static int cmp_seq(const void *a, const void *b)
{
    return cmp_u64(&((const struct keyed *)a)->seq, &((const struct keyed *)b)->seq);
}

/* Keys in insertion order, each followed by a NUL, as one byte string;
 * MP_ETOOBIG when that would not fit one value. */
static int dict_keys(struct shdict *d, struct mval *out, void **owned)
{
    size_t total = 0, n = 0;
    FOR_ENTRIES(d->tab, e)
        total += e->klen + 1;
    if (total > MSG_MAX_VALUE)
        return MP_ETOOBIG;
    struct keyed *order = malloc((d->count + 1) * sizeof *order);
    uint8_t *p = malloc(total ? total : 1);
    if (!order || !p) {
        free(order);
        free(p);
        return MP_ENOMEM;
    }
    FOR_ENTRIES(d->tab, e)
        if (n <= d->count)
            order[n++] = (struct keyed){ e->seq, e };
    qsort(order, n, sizeof *order, cmp_seq);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(p + at, order[i].e->key, order[i].e->klen + 1);
        at += order[i].e->klen + 1;
    }
    free(order);
    *owned = p;
    *out = (struct mval){ .type = MV_BYTES, .p = p, .len = at };
    return 0;
}

int shdict_exec(struct shstore *s, const struct mmsg *m, struct mval *out, void **owned)
{
    struct shdict *d = NULL;
    memset(out, 0, sizeof *out);
    *owned = NULL;
    int rc = dict_of(s, &m->v[1], &d);
    if (rc < 0)
        return rc;
    struct shentry **slot;
    switch (m->v[0].i) {
    case OP_DICT_OPEN:
        return 0;
    case OP_DICT_SET:
        return dict_set(s, d, &m->v[2], &m->v[3]);
    case OP_DICT_GET:
        slot = tab_find(d->tab, m->v[2].p, m->v[2].len, hash_key(m->v[2].p, m->v[2].len), NULL);
        if (!slot)
            return MP_ENOTFOUND;
        *out = entry_view(*slot);
        return 0;
    case OP_DICT_DEL:
        return dict_del(s, d, &m->v[2]);
    case OP_DICT_LEN:
        *out = (struct mval){ .type = MV_INT, .i = (int64_t)d->count };
        return 0;
    case OP_DICT_KEYS:
        return dict_keys(d, out, owned);
    case OP_DICT_CLEAR:
        dict_clear(s, d, false);
        return 0;
    case OP_DICT_INCR:
        return dict_incr(s, d, m, out);
    case OP_DICT_CAS:
        return dict_cas(s, d, m);
    }
    return MP_EPROTO;
}

void shdict_drop(struct shstore *s, const uint8_t *name, size_t nlen)
{
    struct shentry **slot = tab_find(s->dir.tab, name, nlen, hash_key(name, nlen), NULL);
    if (!slot)
        return;
    struct shentry *e = *slot;
    dict_clear(s, entry_dict(e), false);
    commit(slot, TOMB);
    hook("drop-committed");
    s->dir.count--;
    dicts_counted(s);
    bytes_add(s, -(int64_t)entry_cost(e, true));
    arena_free(e);
}
