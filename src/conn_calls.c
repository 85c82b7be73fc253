/* conn_calls.c - this process's calls inside its conns, and the close that
 * wakes them.
 *
 * As the listener does for accept (listener.c), each conn (a socket, or an
 * end of mp_pipe, whose descriptor carries its doorbells) has a record in
 * this process: the calls inside it and an eventfd that
 * mp_conn_close writes, which every wait of those calls watches beside the
 * conn's descriptor (never a sleep in read or send), so they return
 * MP_ECLOSED at once; close then waits for them to leave before it lets go
 * of the descriptor and the handle. Records sit at the conn's descriptor
 * number, so finding one costs no walk; a closed conn's record stays there
 * (a tombstone) until a new conn gets that number, and refuses later calls
 * on the old handle even when another process keeps it alive.
 */
#include "conn_handle.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* How long a close waits for the calls inside to leave (they are woken at
 * once; this bounds one that is held up). Then the last to leave ends the
 * close. Seconds, as the listener's. */
#define CALLS_LEAVE_S 2

enum { CONN_OPEN, CONN_CLOSING, CONN_CLOSED };

/* A call enters and leaves without the lock while its conn is open (one
 * atomic add each way): it counts itself in users, then looks at state;
 * a close sets state, then looks at users (both seq_cst, so one of them
 * sees the other), and the last call to leave a closing conn takes the
 * lock to tell it. So a record, once reachable, is never freed while this
 * process may still use it (a reset gives it to the next conn of its
 * number; only a fork's child, with one thread, frees them), and the
 * table is never moved under a reader (a bigger one replaces it; the old
 * ones are kept). Everything else is under calls.mu. */
struct conn_local {
    _Atomic(const mp_conn *) c;
    _Atomic int wake_fd;         /* an eventfd, readable once c is closed here; -1: none yet */
    _Atomic int users;           /* calls inside */
    _Atomic int state;           /* CONN_* */
    bool leaver_ends;            /* close stopped waiting: the last call to leave ends it */
    bool detached;               /* out of the table (its number went to a new conn) */
    struct conn_local *next_detached;
};

struct table {
    struct table *older;         /* replaced, kept for readers that still see it */
    size_t cap;
    struct conn_local *_Atomic at[];   /* by descriptor number */
};

static struct {
    pthread_mutex_t mu;          /* everything here; a close releases its conn under it */
    pthread_cond_t left;         /* a call of a closing conn left */
    struct table *_Atomic table;
    struct conn_local *detached; /* records with calls still inside, out of the table */
} calls = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL };

/* The record of the call this thread is in (the public calls enter one
 * conn each), for its waits and its error message. */
static MP_TLS_HOT struct conn_local *call_now;

static void calls_lock(void) { pthread_mutex_lock(&calls.mu); }
static void calls_unlock(void) { pthread_mutex_unlock(&calls.mu); }

static void local_free(struct conn_local *loc)
{
    if (atomic_load(&loc->wake_fd) >= 0)
        close(atomic_load(&loc->wake_fd));
    free(loc);
}

/* The child has no thread inside any call and must not share our
 * eventfds (a write there would wake our threads): every record that is
 * not a tombstone goes, made afresh on first use; so does a close under
 * way, whose conn the child still holds. Tombstones stay true. */
static void calls_fork_child(void)
{
    struct table *t = atomic_load(&calls.table);
    for (size_t fd = 0; t && fd < t->cap; fd++) {
        struct conn_local *loc = atomic_load(&t->at[fd]);
        if (loc && atomic_load(&loc->state) != CONN_CLOSED) {
            local_free(loc);
            atomic_store(&t->at[fd], NULL);
        }
    }
    while (calls.detached) {
        struct conn_local *next = calls.detached->next_detached;
        local_free(calls.detached);
        calls.detached = next;
    }
    pthread_cond_init(&calls.left, NULL);
    calls_unlock();               /* taken by this same thread in prepare */
}

MP_SETUP_CONSTRUCTOR static void calls_fork_hooks(void)
{
    fork_hook_set(FORK_CONN_CALLS, calls_lock, calls_unlock, calls_fork_child);
}

/* Under calls.mu: the slot of descriptor fd, the table grown to hold it;
 * NULL without memory. */
static struct conn_local *_Atomic *slot_of(int fd)
{
    size_t want = (size_t)fd + 1;
    struct table *t = atomic_load(&calls.table);
    if (!t || want > t->cap) {
        size_t cap = t ? t->cap : 64;
        while (cap < want)
            cap *= 2;
        struct table *n = calloc(1, sizeof *n + cap * sizeof n->at[0]);
        if (!n)
            return NULL;
        n->cap = cap;
        n->older = t;
        for (size_t i = 0; t && i < t->cap; i++)
            atomic_init(&n->at[i], atomic_load(&t->at[i]));
        atomic_store_explicit(&calls.table, n, memory_order_release);
        t = n;
    }
    return &t->at[fd];
}

/* The record at descriptor number fd, without the lock (NULL: none). */
static struct conn_local *record_at(int fd)
{
    struct table *t = atomic_load_explicit(&calls.table, memory_order_acquire);
    if (!t || fd < 0 || (size_t)fd >= t->cap)
        return NULL;
    return atomic_load_explicit(&t->at[fd], memory_order_acquire);
}

static struct conn_local *local_new(const mp_conn *c, int state)
{
    struct conn_local *loc = calloc(1, sizeof *loc);
    if (loc) {
        atomic_init(&loc->c, c);
        atomic_init(&loc->wake_fd, -1);
        atomic_init(&loc->state, state);
    }
    return loc;
}

/* Under calls.mu, nobody inside: loc is c's now (a call of the conn it
 * was, should one be about to count itself, sees c and goes away). */
static void local_reset(struct conn_local *loc, const mp_conn *c)
{
    int fd = atomic_exchange(&loc->wake_fd, -1);
    if (fd >= 0)
        close(fd);
    loc->leaver_ends = false;
    atomic_store(&loc->c, c);
    atomic_store(&loc->state, CONN_OPEN);
}

/* Under calls.mu: rings loc's eventfd, if it has one. */
static void local_ring(struct conn_local *loc)
{
    uint64_t one = 1;
    int fd = atomic_load(&loc->wake_fd);
    if (fd >= 0) {
        ssize_t w = write(fd, &one, sizeof one);
        MP_UNUSED(w);
    }
}

/* Under calls.mu: wakes the calls inside loc (a pipe end's writers wait
 * for room on a futex word, not on a descriptor). */
static void local_wake(struct conn_local *loc)
{
    atomic_store(&loc->state, CONN_CLOSING);
    local_ring(loc);
    const mp_conn *c = atomic_load(&loc->c);
    if (c->shm)
        pipe_wake_writers(c);
}

/* Under calls.mu, the calls inside gone: lets go of c in this process
 * (under the lock, so a fork sees c open or closed, never half) and
 * leaves loc as its tombstone. */
static void local_end(struct conn_local *loc, mp_conn *c)
{
    atomic_store(&loc->state, CONN_CLOSED);
    loc->leaver_ends = false;
    int fd = atomic_exchange(&loc->wake_fd, -1);
    if (fd >= 0)
        close(fd);
    conn_release(c);
}

void calls_claim(const mp_conn *c, int fd)
{
    calls_lock();
    struct conn_local *_Atomic *at = slot_of(fd);
    struct conn_local *old = at ? atomic_load(at) : NULL;
    if (old && atomic_load(&old->users) > 0) {   /* its descriptor was closed behind its back */
        local_wake(old);
        old->detached = true;            /* kept: calls of it may still look */
        old->next_detached = calls.detached;
        calls.detached = old;
        atomic_store(at, local_new(c, CONN_OPEN));   /* without memory: made on first use */
    } else if (old) {
        local_reset(old, c);
    } else if (at) {
        atomic_store(at, local_new(c, CONN_OPEN));
    }
    calls_unlock();
}

/* Under calls.mu: loc's eventfd, made on first use (-1 if it cannot be:
 * a close then cannot wake the calls, only wait for them). MP_ECLOSED if
 * the eventfd got the conn's own number fd: that was free, so the conn's
 * descriptor was closed behind its back. */
static int local_wake_fd(struct conn_local *loc, int fd)
{
    int e = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e == fd) {
        close(e);
        return MP_ECLOSED;
    }
    atomic_store(&loc->wake_fd, e);
    return 0;
}

/* Counts a call of c into loc, without the lock, if c is open there and
 * has what its waits need (a socket conn its eventfd). */
static bool enter_open(struct conn_local *loc, const mp_conn *c)
{
    if (!loc || atomic_load_explicit(&loc->c, memory_order_relaxed) != c ||
        (!c->shm && atomic_load_explicit(&loc->wake_fd, memory_order_relaxed) < 0))
        return false;
    atomic_fetch_add(&loc->users, 1);
    if (atomic_load(&loc->state) == CONN_OPEN && atomic_load(&loc->c) == c)
        return true;
    calls_leave(loc);             /* closing, or given to another conn meanwhile */
    return false;
}

struct conn_local *calls_enter(const mp_conn *c, int fd, int *rc)
{
    struct conn_local *loc = record_at(fd);
    *rc = 0;
    if (enter_open(loc, c))
        return loc;
    calls_lock();
    struct conn_local *_Atomic *at = slot_of(fd);
    loc = at ? atomic_load(at) : NULL;
    if (!at)
        *rc = MP_ENOMEM;
    else if (!loc && !(loc = local_new(c, CONN_OPEN)))
        *rc = MP_ENOMEM;
    else if (atomic_load(&loc->c) != c || atomic_load(&loc->state) != CONN_OPEN)
        *rc = MP_ECLOSED;          /* closed here, or its number is another conn's now */
    if (at && loc && !atomic_load(at))
        atomic_store(at, loc);
    if (*rc == 0 && atomic_load(&loc->wake_fd) < 0 && !c->shm)   /* a pipe end's: when it */
        *rc = local_wake_fd(loc, fd);                              /* first sleeps */
    if (*rc == 0)
        atomic_fetch_add(&loc->users, 1);
    calls_unlock();
    return *rc == 0 ? loc : NULL;
}

void calls_leave(struct conn_local *loc)
{
    if (atomic_fetch_sub(&loc->users, 1) != 1 || atomic_load(&loc->state) != CONN_CLOSING)
        return;
    calls_lock();                 /* the last of a closing conn: tell its close */
    if (atomic_load(&loc->users) == 0 && !loc->detached && atomic_load(&loc->state) == CONN_CLOSING) {
        if (loc->leaver_ends)
            local_end(loc, (mp_conn *)atomic_load(&loc->c));
        else
            pthread_cond_broadcast(&calls.left);
    }
    calls_unlock();
}

int calls_wake_fd(struct conn_local *loc)
{
    if (!loc)
        return -1;
    int fd = atomic_load(&loc->wake_fd);
    const mp_conn *c = atomic_load(&loc->c);
    if (fd >= 0 || !c->shm)
        return fd;
    calls_lock();                 /* a pipe end about to sleep: its eventfd now */
    if (atomic_load(&loc->wake_fd) < 0 && local_wake_fd(loc, c->h.fd) == 0 &&
        atomic_load(&loc->state) != CONN_OPEN)
        local_ring(loc);          /* closed before it had one */
    calls_unlock();
    return atomic_load(&loc->wake_fd);
}

int call_enter(mp_conn *c)
{
    int rc = 0;
    call_now = calls_enter(c, c->h.fd, &rc);
    return rc;
}

void call_leave(void)
{
    if (call_now)
        calls_leave(call_now);
    call_now = NULL;
}

bool call_closed(void)
{
    return call_now && atomic_load(&call_now->state) != CONN_OPEN;
}

int call_wake_fd(void)
{
    return calls_wake_fd(call_now);
}

int call_poll(int fd, short events, const mp_deadline *d)
{
    return fd_poll_woken(fd, events, call_wake_fd(), d);
}

/* A lock's holder may be another process, which our close cannot wake:
 * the wait looks at the close every CALL_LOCK_SLICE. */
int call_lock(rmutex *m, const mp_deadline *d)
{
    int rc = rmutex_trylock(m);
    while (rc == MP_ETIMEDOUT && call_now) {
        double left = d->forever ? CALL_LOCK_SLICE : deadline_left(d);
        mp_deadline slice = deadline_in(left < CALL_LOCK_SLICE ? left : CALL_LOCK_SLICE);
        rc = rmutex_wait(m, &slice);
        if (rc == MP_ETIMEDOUT && (call_closed() || (!d->forever && deadline_passed(d))))
            return call_closed() ? MP_ECLOSED : MP_ETIMEDOUT;
    }
    if (rc == MP_ETIMEDOUT)
        rc = rmutex_wait(m, d);
    if ((rc == 0 || rc == MP_EOWNERDEAD) && call_closed()) {
        rmutex_unlock(m);
        return MP_ECLOSED;
    }
    return rc;
}

void calls_close(mp_conn *c)
{
    calls_lock();
    struct conn_local *_Atomic *at = slot_of(c->h.fd);
    struct conn_local *loc = at ? atomic_load(at) : NULL;
    if (loc && (atomic_load(&loc->c) != c || atomic_load(&loc->state) != CONN_OPEN)) {
        calls_unlock();           /* closed here already, or closing */
        return;
    }
    if (!loc && at && (loc = local_new(c, CONN_OPEN)))
        atomic_store(at, loc);
    if (!loc) {                   /* no memory for a tombstone: close unguarded */
        conn_release(c);
        calls_unlock();
        return;
    }
    local_wake(loc);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += CALLS_LEAVE_S;
    int e = 0;
    while (atomic_load(&loc->users) > 0 && e == 0)
        e = pthread_cond_timedwait(&calls.left, &calls.mu, &until);
    if (atomic_load(&loc->users) == 0)
        local_end(loc, c);
    else
        loc->leaver_ends = true;
    calls_unlock();
}
