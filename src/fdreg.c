/* fdreg.c - the registry of descriptor handles (fdreg.h).
 *
 * Each process keeps a list of the handles it holds a descriptor for. A fork
 * counts the child as one more holder of each, and for an mp_process child
 * records those holds in a lease that whoever learns of its end gives back.
 * Spawn keeps the descriptors open across exec, and the fork server's
 * requester sends them along with the lease's holds; either child adopts
 * its lease. A handle that goes where no registry or lease can follow it
 * (past a lease's room) becomes immortal and joins the family's list of
 * crossed handles (an arena slot), where a process that got it that way
 * finds it by its descriptor.
 */
#include "fdreg.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

/* Rules: items, n and cap are this process's own, read and written under
 * lock only (fdreg_keep_across_exec reads them without it, in a child where
 * no other thread exists). */
static struct {
    pthread_mutex_t lock;
    struct fdhandle **items;
    size_t n, cap;
} registry = { PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0 };

/* An mp_process child's holds (fdreg.h): forked, spawned or from the fork
 * server. slot[i].held is 1 until the hold on slot[i].h is given back, by
 * the child or by whoever learns of its end (fdreg_lease_end), whichever
 * takes it to 0. The child then clears slot[i].h, before its count can
 * free the handle: a handle it makes later may get the same address (and
 * is recorded afresh, see lease_record). fdreg_lease_end reads h only
 * after taking held from 1.
 * The handles the child makes itself are its holds too: it records each
 * in its lease (lease_record), in a spent slot or a free one, and past the
 * lease's room in chunks chained from it (next, each a struct fdreg_lease
 * of its own), so its reaper gives them back as well. Only the child
 * changes its lease's slots while it lives (under the registry's lock, or
 * its own CAS on held); its reaper reads them once it has ended. */
struct fdreg_lease {
    uint32_t cap;             /* slots allocated */
    _Atomic uint32_t n;       /* slots filled, each after its count */
    struct fdreg_lease *_Atomic next;   /* more slots for handles the child made */
    /* Whether a child has the lease (LEASE_TAKEN) or its starter's reaper
     * gave its holds back after the starter died inside the start
     * (LEASE_VOID): a CAS from LEASE_OPEN decides (fdreg_lease_take,
     * fdreg_lease_abandon). exec_drops: the child execs a program that
     * closes every handle (the fork server), so it never takes it. */
    _Atomic uint32_t taken;
    bool exec_drops;
    struct lease_slot {
        struct fdhandle *_Atomic h;
        _Atomic uint32_t held;
    } slot[];
};

/* Room past the handles registered now, for those made before the fork. */
#define LEASE_SPARE 16
/* Slots in each chunk chained for the handles a child makes. */
#define LEASE_CHUNK 32

enum { LEASE_OPEN, LEASE_TAKEN, LEASE_VOID };

/* The lease the next fork of this thread fills in, and in a child, its
 * own (set by the fork hook for every fork: a raw fork's child has none). */
static __thread struct fdreg_lease *lease_armed;
static struct fdreg_lease *lease_mine;

/* One more hold on h for a child, recorded in l's next slot while there
 * is room: the count first, then the slot, then n, so a starter killed
 * in between leaves at worst a hold unrecorded (kept for good), never a
 * recorded one that was not counted (given back twice). Past cap
 * (handles made since the lease was sized), the child's holds are not
 * leased: its close counts them as ever, and its death leaks them, as a
 * raw fork's would. */
/* Records a hold on h in l's next slot, slot before n: false if l is full. */
static bool lease_append(struct fdreg_lease *l, struct fdhandle *h)
{
    uint32_t n = atomic_load_explicit(&l->n, memory_order_relaxed);
    if (n >= l->cap)
        return false;
    atomic_store_explicit(&l->slot[n].h, h, memory_order_relaxed);
    atomic_store_explicit(&l->slot[n].held, 1, memory_order_relaxed);
    atomic_store_explicit(&l->n, n + 1, memory_order_release);
    return true;
}

static bool lease_hold(struct fdreg_lease *l, struct fdhandle *h)
{
    atomic_fetch_add(&h->refs, 1);
    return l && lease_append(l, h);
}

static void fork_prepare(void)
{
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.n; i++)
        lease_hold(lease_armed, registry.items[i]);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&registry.lock);
}

static void fork_child(void)
{
    struct fdreg_lease *l = lease_armed;
    lease_mine = l;
    lease_armed = NULL;
    pthread_mutex_unlock(&registry.lock);
    /* Our starter died after the fork and its reaper has given our holds
     * back: we hold nothing we could use, so we never run. */
    if (l && !l->exec_drops && !fdreg_lease_take(l))
        _exit(127);
}

MP_SETUP_CONSTRUCTOR static void registry_init(void)
{
    fork_hook_set(FORK_FDREG, fork_prepare, fork_parent, fork_child);
}

/* Under the registry's lock, in a child with a lease: h, which it has just
 * made (its own hold, the only one), becomes one of the lease's holds, so
 * that its reaper gives it back should the child die holding it. A spent
 * slot is reused, else a free one taken, else a chunk chained; slot then
 * count, so a child killed half-way leaves at worst h unrecorded (kept
 * for good, as before), never a slot its reaper could misread. The chunk
 * waits for the arena's lock until d at most (NULL: as long as its holder
 * lives), so a timed call that made h keeps its timeout while a stopped
 * process holds that lock; h is then unrecorded, as when the arena is
 * full. */
static void lease_record(struct fdhandle *h, const mp_deadline *d)
{
    struct fdreg_lease *l = lease_mine, *last = NULL;
    for (; l; last = l, l = atomic_load_explicit(&l->next, memory_order_acquire)) {
        uint32_t n = atomic_load_explicit(&l->n, memory_order_relaxed);
        for (uint32_t i = 0; i < n; i++) {
            struct lease_slot *sl = &l->slot[i];
            if (atomic_load(&sl->held) || atomic_load(&sl->h))
                continue;
            atomic_store(&sl->h, h);
            atomic_store(&sl->held, 1);
            return;
        }
        if (lease_append(l, h))
            return;
    }
    if (!last)
        return;
    struct fdreg_lease *c = arena_alloc_until(sizeof *c + LEASE_CHUNK * sizeof c->slot[0], d);
    if (!c)
        return;                       /* unrecorded: kept for good, as before */
    c->cap = LEASE_CHUNK;
    lease_append(c, h);
    atomic_store_explicit(&last->next, c, memory_order_release);
}

static int registry_add(struct fdhandle *h, bool made, const mp_deadline *d)
{
    struct stat st;
    if (!h->ino && fstat(h->fd, &st) == 0)
        h->ino = (uint64_t)st.st_ino;
    int rc = 0;
    pthread_mutex_lock(&registry.lock);
    if (registry.n == registry.cap) {
        size_t cap = registry.cap ? registry.cap * 2 : 16;
        void *p = realloc(registry.items, cap * sizeof *registry.items);
        if (p) {
            registry.items = p;
            registry.cap = cap;
        } else {
            rc = MP_ENOMEM;
        }
    }
    if (rc == 0) {
        registry.items[registry.n++] = h;
        if (made)
            lease_record(h, d);
    }
    pthread_mutex_unlock(&registry.lock);
    return rc;
}

int fdhandle_register(struct fdhandle *h)
{
    return registry_add(h, true, NULL);
}

int fdhandle_register_until(struct fdhandle *h, const mp_deadline *d)
{
    return registry_add(h, true, d);
}

static bool registry_remove(struct fdhandle *h)
{
    bool found = false;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = registry.n; i-- > 0;) {
        if (registry.items[i] == h) {
            registry.items[i] = registry.items[--registry.n];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&registry.lock);
    return found;
}

/* h goes where our registry cannot follow (across an exec, to the fork
 * server's child): never freed, since its holders can no longer be counted,
 * and put on the family's list of such handles, where fdhandle_find finds
 * it. No lock and no allocation: this also runs between fork and exec. */
static void mark_shared_for_good(struct fdhandle *h)
{
    atomic_store(&h->immortal, 1);
    struct fdhandle *_Atomic *head = (struct fdhandle *_Atomic *)arena_slot(ARENA_SLOT_CROSSED);
    if (!head || atomic_exchange(&h->crossed, 1))
        return;
    struct fdhandle *first = atomic_load(head);
    do
        atomic_store(&h->next_crossed, first);
    while (!atomic_compare_exchange_weak(head, &first, h));
}

/* A handle on the family's crossed list whose descriptor fd is, in this
 * process, still the handle's file. Crossed handles are never freed, so
 * the walk needs no lock. */
static struct fdhandle *crossed_of_fd(int fd)
{
    struct fdhandle *_Atomic *head = (struct fdhandle *_Atomic *)arena_slot(ARENA_SLOT_CROSSED);
    struct stat st;
    if (!head || !atomic_load(head) || fstat(fd, &st) != 0)
        return NULL;
    for (struct fdhandle *h = atomic_load(head); h; h = atomic_load(&h->next_crossed))
        if (h->fd == fd && h->ino == (uint64_t)st.st_ino)
            return h;
    return NULL;
}

struct fdhandle *fdhandle_find(int fd, bool (*match)(const struct fdhandle *h, int fd))
{
    struct fdhandle *found = NULL;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.n && !found; i++)
        if (match(registry.items[i], fd))
            found = registry.items[i];
    pthread_mutex_unlock(&registry.lock);
    if (!found && (found = crossed_of_fd(fd)) && !match(found, fd))
        found = NULL;
    return found;
}

/* Runs in a forked child just before exec: no locks, no allocation. The
 * registry is this process's copy, so nobody changes it under us. The
 * handles the fork leased (the first lease_mine->n, in registry order) go
 * to the new image through the lease (fdreg_lease_adopt); only the others
 * are held for good. */
void fdreg_keep_across_exec(void)
{
    size_t leased = lease_mine ? lease_mine->n : 0;
    for (size_t i = 0; i < registry.n; i++) {
        struct fdhandle *h = registry.items[i];
        int flags = fcntl(h->fd, F_GETFD);
        if (flags >= 0)
            fcntl(h->fd, F_SETFD, flags & ~FD_CLOEXEC);
        if (i >= leased)
            mark_shared_for_good(h);
    }
}

size_t fdreg_live_fds(struct fdreg_lease *lease, int *fds, size_t cap)
{
    size_t n = 0;
    uint32_t leased = 0;     /* lease->n is 0: a new lease */
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.n && n < cap; i++) {
        struct fdhandle *h = registry.items[i];
        fds[n++] = h->fd;
        if (lease && leased < lease->cap) {     /* a hold for the child, as a fork counts */
            lease_hold(lease, h);
            leased++;
        } else {
            mark_shared_for_good(h);
        }
    }
    pthread_mutex_unlock(&registry.lock);
    return n;
}

/* Whether this process gives back its hold on h itself: yes, unless h is
 * one its lease names and the reaper has given that hold back already
 * (it never does while we live: then this only marks the slot). */
static bool lease_give_back(struct fdhandle *h)
{
    for (struct fdreg_lease *l = lease_mine; l; l = atomic_load_explicit(&l->next, memory_order_acquire)) {
        uint32_t n = atomic_load_explicit(&l->n, memory_order_acquire);
        for (uint32_t i = 0; i < n; i++) {
            if (atomic_load_explicit(&l->slot[i].h, memory_order_relaxed) != h)
                continue;
            uint32_t held = 1;
            bool mine = atomic_compare_exchange_strong(&l->slot[i].held, &held, 0);
            if (mine)         /* the slot is spent: never h's again, nor its address's */
                atomic_store_explicit(&l->slot[i].h, NULL, memory_order_relaxed);
            return mine;
        }
    }
    return true;
}

bool fdhandle_release(struct fdhandle *h)
{
    if (registry_remove(h)) {
        close(h->fd);
        return !atomic_load(&h->immortal) && lease_give_back(h) &&
               atomic_fetch_sub(&h->refs, 1) == 1;
    }
    /* Reached through a spawned child's argument: never registered here. */
    if (atomic_load(&h->immortal))
        close(h->fd);
    return false;
}

/* A handle's own close (its magic says which), or its own free once no
 * process holds it. */
static void handle_close(struct fdhandle *h)
{
    if (h->magic == MAGIC_CONN)
        mp_conn_close((mp_conn *)h);
    else if (h->magic == MAGIC_LISTENER)
        mp_listener_free((mp_listener *)h);
}

static void handle_destroy(struct fdhandle *h)
{
    if (h->magic == MAGIC_CONN)
        conn_destroy_unheld(h);
    else if (h->magic == MAGIC_LISTENER)
        listener_destroy_unheld(h);
}

/* In a child that is about to exit: every handle it inherited or made and
 * did not close is closed (which drops this process's count), so a child
 * that returns without closing its copies does not keep them, and the
 * arena memory behind them, for ever. */
void fdreg_each(void (*fn)(struct fdhandle *h))
{
    pthread_mutex_lock(&registry.lock);
    size_t n = registry.n;
    struct fdhandle **copy = n ? malloc(n * sizeof *copy) : NULL;
    if (copy)
        memcpy(copy, registry.items, n * sizeof *copy);
    pthread_mutex_unlock(&registry.lock);
    for (size_t i = 0; copy && i < n; i++)
        fn(copy[i]);
    free(copy);
}

void fdreg_close_all(void)
{
    fdreg_each(handle_close);
}

struct fdreg_lease *fdreg_lease_new(void)
{
    pthread_mutex_lock(&registry.lock);
    size_t cap = registry.n + LEASE_SPARE;
    pthread_mutex_unlock(&registry.lock);
    struct fdreg_lease *l = arena_alloc(sizeof *l + cap * sizeof l->slot[0]);
    if (l)
        l->cap = (uint32_t)cap;
    return l;
}

void fdreg_lease_arm(struct fdreg_lease *lease)
{
    lease_armed = lease;
}

bool fdreg_lease_take(struct fdreg_lease *lease)
{
    uint32_t open = LEASE_OPEN;
    return atomic_compare_exchange_strong(&lease->taken, &open, LEASE_TAKEN) ||
           open == LEASE_TAKEN;
}

bool fdreg_lease_adopt(struct fdreg_lease *lease)
{
    if (!lease || !arena_contains(lease, sizeof *lease))
        return true;
    if (!fdreg_lease_take(lease))
        return false;
    for (uint32_t i = 0; i < lease->n; i++) {
        struct fdhandle *h = atomic_load_explicit(&lease->slot[i].h, memory_order_relaxed);
        struct stat st;
        /* Only a descriptor that is still the handle's file here is ours to
         * close; unregistered (or on ENOMEM), the hold stays the lease's. */
        if (h && fstat(h->fd, &st) == 0 && (uint64_t)st.st_ino == h->ino)
            registry_add(h, false, NULL);      /* leased already */
    }
    lease_mine = lease;
    return true;
}

void fdreg_lease_dies_at_exec(struct fdreg_lease *lease)
{
    if (lease)
        lease->exec_drops = true;
}

/* Gives back the holds lease still has; frees each handle no process
 * holds any more. */
static void lease_give_back_all(struct fdreg_lease *lease)
{
    for (; lease; lease = atomic_load_explicit(&lease->next, memory_order_acquire)) {
        uint32_t n = atomic_load_explicit(&lease->n, memory_order_acquire);
        for (uint32_t i = 0; i < n; i++) {
            struct lease_slot *s = &lease->slot[i];
            uint32_t held = 1;
            if (!atomic_compare_exchange_strong(&s->held, &held, 0))
                continue;                      /* the child gave it back */
            struct fdhandle *h = atomic_load_explicit(&s->h, memory_order_relaxed);
            if (!atomic_load(&h->immortal) && atomic_fetch_sub(&h->refs, 1) == 1)
                handle_destroy(h);
        }
    }
}

bool fdreg_lease_abandon(struct fdreg_lease *lease)
{
    if (!lease)
        return false;
    uint32_t open = LEASE_OPEN;
    bool voided = atomic_compare_exchange_strong(&lease->taken, &open, LEASE_VOID);
    if (voided || lease->exec_drops)
        lease_give_back_all(lease);
    /* The block stays: a child forked just before its starter died may
     * yet look at it (and then never runs), or has taken it. */
    return voided;
}

void fdreg_lease_end(struct fdreg_lease *lease)
{
    if (!lease)
        return;
    lease_give_back_all(lease);
    while (lease) {
        struct fdreg_lease *next = atomic_load_explicit(&lease->next, memory_order_acquire);
        arena_free(lease);
        lease = next;
    }
}
