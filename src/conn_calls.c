/* conn_calls.c - this process's calls inside its descriptor conns, and the
 * close that wakes them.
 *
 * As the listener does for accept (listener.c), each descriptor conn has a
 * record in this process: the calls inside it and an eventfd that
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

struct conn_local {
    const mp_conn *c;
    int wake_fd;                 /* an eventfd, readable once c is closed here; -1: none yet */
    int users;                   /* calls inside, under calls.mu */
    _Atomic int state;           /* CONN_*: a call looks at it without the lock */
    bool leaver_ends;            /* close stopped waiting: the last call to leave ends it */
    bool detached;               /* out of the table (its number went to a new conn) */
    struct conn_local *next_detached;
};

static struct {
    pthread_mutex_t mu;          /* everything here; a close releases its conn under it */
    pthread_cond_t left;         /* a call of a closing conn left */
    struct conn_local **at;      /* by descriptor number */
    size_t cap;
    struct conn_local *detached; /* records with calls still inside, out of the table */
} calls = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, NULL };

/* The record of the call this thread is in (the public calls enter one
 * conn each), for its waits and its error message. */
static __thread struct conn_local *call_now;

static void calls_lock(void) { pthread_mutex_lock(&calls.mu); }
static void calls_unlock(void) { pthread_mutex_unlock(&calls.mu); }

static void local_free(struct conn_local *loc)
{
    if (loc->wake_fd >= 0)
        close(loc->wake_fd);
    free(loc);
}

/* The child has no thread inside any call and must not share our
 * eventfds (a write there would wake our threads): every record that is
 * not a tombstone goes, made afresh on first use; so does a close under
 * way, whose conn the child still holds. Tombstones stay true. */
static void calls_fork_child(void)
{
    for (size_t fd = 0; fd < calls.cap; fd++) {
        struct conn_local *loc = calls.at[fd];
        if (loc && atomic_load(&loc->state) != CONN_CLOSED) {
            local_free(loc);
            calls.at[fd] = NULL;
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
static struct conn_local **slot_of(int fd)
{
    size_t want = (size_t)fd + 1;
    if (want > calls.cap) {
        size_t cap = calls.cap ? calls.cap : 64;
        while (cap < want)
            cap *= 2;
        struct conn_local **at = realloc(calls.at, cap * sizeof *at);
        if (!at)
            return NULL;
        memset(at + calls.cap, 0, (cap - calls.cap) * sizeof *at);
        calls.at = at;
        calls.cap = cap;
    }
    return &calls.at[fd];
}

static struct conn_local *local_new(const mp_conn *c, int state)
{
    struct conn_local *loc = calloc(1, sizeof *loc);
    if (loc) {
        loc->c = c;
        loc->wake_fd = -1;
        atomic_init(&loc->state, state);
    }
    return loc;
}

/* Under calls.mu: rings loc's eventfd, if it has one. */
static void local_ring(struct conn_local *loc)
{
    uint64_t one = 1;
    if (loc->wake_fd >= 0) {
        ssize_t w = write(loc->wake_fd, &one, sizeof one);
        MP_UNUSED(w);
    }
}

/* Under calls.mu: wakes the calls inside loc (a pipe end's writers wait
 * for room on a futex word, not on a descriptor). */
static void local_wake(struct conn_local *loc)
{
    atomic_store(&loc->state, CONN_CLOSING);
    local_ring(loc);
    if (loc->c->shm)
        pipe_wake_writers(loc->c);
}

/* Under calls.mu, the calls inside gone: lets go of c in this process
 * (under the lock, so a fork sees c open or closed, never half) and
 * leaves loc as its tombstone. */
static void local_end(struct conn_local *loc, mp_conn *c)
{
    atomic_store(&loc->state, CONN_CLOSED);
    loc->leaver_ends = false;
    if (loc->wake_fd >= 0)
        close(loc->wake_fd);
    loc->wake_fd = -1;
    conn_release(c);
}

void calls_claim(const mp_conn *c, int fd)
{
    calls_lock();
    struct conn_local **at = slot_of(fd), *old = at ? *at : NULL;
    if (old && old->users > 0) {          /* its descriptor was closed behind its back */
        local_wake(old);
        old->detached = true;
        old->next_detached = calls.detached;
        calls.detached = old;
    } else if (old) {
        local_free(old);
    }
    if (at)
        *at = local_new(c, CONN_OPEN);    /* without memory: made on first use */
    calls_unlock();
}

/* Under calls.mu: loc's eventfd, made on first use (-1 if it cannot be:
 * a close then cannot wake the calls, only wait for them). MP_ECLOSED if
 * the eventfd got the conn's own number fd: that was free, so the conn's
 * descriptor was closed behind its back. */
static int local_wake_fd(struct conn_local *loc, int fd)
{
    loc->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loc->wake_fd != fd)
        return 0;
    close(loc->wake_fd);
    loc->wake_fd = -1;
    return MP_ECLOSED;
}

struct conn_local *calls_enter(const mp_conn *c, int fd, int *rc)
{
    calls_lock();
    struct conn_local **at = slot_of(fd), *loc = at ? *at : NULL;
    *rc = 0;
    if (!at)
        *rc = MP_ENOMEM;
    else if (!loc && !(loc = *at = local_new(c, CONN_OPEN)))
        *rc = MP_ENOMEM;
    else if (loc->c != c || atomic_load(&loc->state) != CONN_OPEN)
        *rc = MP_ECLOSED;          /* closed here, or its number is another conn's now */
    if (*rc == 0 && loc->wake_fd < 0 && !c->shm)   /* a pipe end's: when it first sleeps */
        *rc = local_wake_fd(loc, fd);
    if (*rc == 0)
        loc->users++;
    calls_unlock();
    return *rc == 0 ? loc : NULL;
}

static void unlink_detached(struct conn_local *loc)
{
    struct conn_local **link = &calls.detached;
    while (*link != loc)
        link = &(*link)->next_detached;
    *link = loc->next_detached;
}

void calls_leave(struct conn_local *loc)
{
    calls_lock();
    if (--loc->users == 0 && loc->detached) {
        unlink_detached(loc);
        local_free(loc);
    } else if (loc->users == 0 && loc->leaver_ends) {
        local_end(loc, (mp_conn *)loc->c);
    } else if (loc->users == 0 && atomic_load(&loc->state) == CONN_CLOSING) {
        pthread_cond_broadcast(&calls.left);
    }
    calls_unlock();
}

int calls_wake_fd(struct conn_local *loc)
{
    if (!loc || loc->wake_fd >= 0 || !loc->c->shm)
        return loc ? loc->wake_fd : -1;
    calls_lock();                 /* a pipe end about to sleep: its eventfd now */
    if (loc->wake_fd < 0 && local_wake_fd(loc, loc->c->h.fd) == 0 &&
        atomic_load(&loc->state) != CONN_OPEN)
        local_ring(loc);          /* closed before it had one */
    calls_unlock();
    return loc->wake_fd;
}

int call_enter(mp_conn *c)
{
    int rc = 0;
    call_now = calls_enter(c, c->h.fd, &rc);
    return rc;
}

void call_leave(const mp_conn *c)
{
    (void)c;
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
int call_lock(const mp_conn *c, rmutex *m, const mp_deadline *d)
{
    (void)c;
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
    struct conn_local **at = slot_of(c->h.fd), *loc = at ? *at : NULL;
    if (loc && (loc->c != c || atomic_load(&loc->state) != CONN_OPEN)) {
        calls_unlock();           /* closed here already, or closing */
        return;
    }
    if (!loc && at)
        loc = *at = local_new(c, CONN_OPEN);
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
    while (loc->users > 0 && e == 0)
        e = pthread_cond_timedwait(&calls.left, &calls.mu, &until);
    if (loc->users == 0)
        local_end(loc, c);
    else
        loc->leaver_ends = true;
    calls_unlock();
}
