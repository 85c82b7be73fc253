/* condition.c - Condition: a FIFO of waiters, each asleep on its own word.
 *
 * As in Python's threading.Condition, a waiter queues a record of its own
 * (here in the arena) under the lock, releases the lock fully and sleeps;
 * notify(n) marks the first n records not yet notified and wakes them, so
 * it wakes exactly those already waiting and at most n. A record leaves the
 * queue only under the lock, taken out by its own waiter once it holds the
 * lock again, or by a notify (or free) that finds its waiter dead: each
 * record holds a robust mutex while its waiter lives, and a trylock that
 * gives MP_EOWNERDEAD says the waiter was killed. So a waiter killed while
 * waiting swallows no notification (notify wakes the next instead), and one
 * killed after its notify, on its way back to the lock, leaves its record
 * where the next notify frees it. Marking is one store, so a notifier
 * killed mid-notify leaves its choice marked, and waiters look at their
 * word every FUTEX_SLICE: the one it chose still wakes.
 */
#include "sync_internal.h"

#include <limits.h>

struct waiter {
    rmutex alive;                   /* held by the waiting thread */
    _Atomic uint32_t notified;
    struct waiter *next;
};

struct mp_condition {
    uint32_t magic;
    uint32_t own_lock;
    mp_lock *lock;
    struct waiter *head;            /* oldest first; under lock */
};

int mp_condition_new(mp_condition **out, mp_lock *l)
{
    if (!out)
        return mp_fail(MP_EINVAL, __func__, "c (where the condition goes) is NULL");
    *out = NULL;
    if (l && l->magic == MAGIC_MLOCK)    /* manager locks cannot wake our waiters */
        return mp_fail(MP_EINVAL, __func__, "l is a manager lock; a condition needs a lock from "
                       "mp_lock_new or mp_rlock_new (or NULL for its own)");
    if (l && l->magic != MAGIC_LOCK)
        return mp_fail_handle(__func__, "l", l);
    mp_condition *c = arena_alloc(sizeof *c);
    if (!c)
        return mp_fail(MP_ENOMEM, __func__, "the shared arena is full");
    c->lock = l;
    if (!l) {
        int rc = mp_rlock_new(&c->lock);
        if (rc != 0) {
            arena_free(c);
            return mp_fail_code(rc, __func__);
        }
        c->own_lock = true;
    }
    c->magic = MAGIC_COND;
    *out = c;
    return 0;
}

static bool condition_ok(const mp_condition *c)
{
    return c && c->magic == MAGIC_COND;
}

static int fail_condition(const char *fn, const mp_condition *c)
{
    return mp_fail_handle(fn, "condition", c);
}

/* The MP_EINVAL for a call that needs the condition's lock held. */
static int fail_unlocked(const char *fn)
{
    return mp_fail(MP_EINVAL, fn, "this thread does not hold the condition's lock; call "
                   "mp_condition_acquire first (Python: RuntimeError)");
}

int mp_condition_acquire(mp_condition *c, double timeout)
{
    return condition_ok(c) ? mp_lock_acquire(c->lock, timeout) : fail_condition(__func__, c);
}

int mp_condition_release(mp_condition *c)
{
    return condition_ok(c) ? lock_release_as(c->lock, __func__) : fail_condition(__func__, c);
}

/* d bounds the wait for the arena's lock (see arena_alloc_until). */
static struct waiter *waiter_new(const mp_deadline *d)
{
    struct waiter *w = arena_alloc_until(sizeof *w, d);
    if (!w)
        return NULL;
    if (rmutex_init(&w->alive) != 0 || rmutex_trylock(&w->alive) != 0) {
        arena_free(w);
        return NULL;
    }
    return w;
}

static void waiter_free(struct waiter *w)
{
    rmutex_unlock(&w->alive);
    rmutex_destroy(&w->alive);
    arena_free(w);
}

/* Under the lock. The queue is a singly linked list from head, and every
 * change is one pointer store, so a process killed in the middle of one
 * leaves a valid list (at worst its own record unreachable). */
static void queue_push(mp_condition *c, struct waiter *w)
{
    w->next = NULL;
    struct waiter **at = &c->head;
    while (*at)
        at = &(*at)->next;
    *at = w;
}

static void queue_remove(mp_condition *c, struct waiter *w)
{
    for (struct waiter **at = &c->head; *at; at = &(*at)->next)
        if (*at == w) {
            *at = w->next;
            return;
        }
}

int mp_condition_wait(mp_condition *c, double timeout)
{
    if (!condition_ok(c))
        return fail_condition(__func__, c);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    if (!lock_is_mine(c->lock))
        return fail_unlocked(__func__);
    mp_deadline d = deadline_in(timeout);
    errno = 0;
    struct waiter *w = waiter_new(&d);
    if (!w && errno == ETIMEDOUT)
        return mp_fail(MP_ETIMEDOUT, __func__, "another process held the shared arena's lock "
                       "until the timeout (is it stopped?); the lock is still held");
    if (!w)
        return mp_fail(MP_ENOMEM, __func__, "the shared arena is full");
    queue_push(c, w);
    uint32_t depth;
    lock_release_all(c->lock, &depth);

    int rc = 0;
    while (!atomic_load(&w->notified) && rc == 0)   /* sliced: a notifier killed before its wake */
        rc = futex_wait_sliced(&w->notified, 0, &d, true);

    int relock = lock_restore(c->lock, depth);
    /* A notify that came while the time ran out still counts: it chose us. */
    if (atomic_load(&w->notified))
        rc = 0;
    queue_remove(c, w);
    waiter_free(w);
    if (relock == MP_EOWNERDEAD)
        return mp_fail(relock, __func__, "the lock is held again, but a holder died holding it "
                       "meanwhile: check the data it guards");
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, __func__, "not notified by the timeout (the lock is held again)");
    return mp_fail_code(rc, __func__);
}

/* Python's wait_for, step for step: the predicate first, then wait and look
 * again until it holds or the time is up, and at least one wait when it
 * does not hold at first (timeout 0 included). */
int mp_condition_wait_for(mp_condition *c, bool (*pred)(void *ctx), void *ctx, double timeout)
{
    if (!condition_ok(c))
        return fail_condition(__func__, c);
    if (!pred)
        return mp_fail(MP_EINVAL, __func__, "pred is NULL; pass a function that says whether "
                       "to stop waiting");
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    if (!lock_is_mine(c->lock))
        return fail_unlocked(__func__);
    mp_deadline d = deadline_in(timeout);
    for (bool waited = false; !pred(ctx); waited = true) {
        if (waited && deadline_passed(&d))
            return mp_fail(MP_ETIMEDOUT, __func__, "the predicate was still false at the timeout "
                           "(the lock is held again)");
        int rc = mp_condition_wait(c, d.forever ? MP_FOREVER : deadline_left(&d));
        if (rc != 0 && rc != MP_ETIMEDOUT)
            return mp_fail_code(rc, __func__);
    }
    return 0;
}

int mp_condition_notify(mp_condition *c, int n)
{
    if (!condition_ok(c))
        return fail_condition(__func__, c);
    if (n < 0)
        return mp_fail(MP_EINVAL, __func__, "n is %d; it counts waiters to wake, >= 0", n);
    if (!lock_is_mine(c->lock))
        return fail_unlocked(__func__);
    int woken = 0;
    for (struct waiter **at = &c->head, *w; woken < n && (w = *at);) {
        if (rmutex_trylock(&w->alive) != MP_ETIMEDOUT) {
            *at = w->next;              /* MP_EOWNERDEAD: its waiter was killed */
            waiter_free(w);
            continue;
        }
        if (!atomic_load(&w->notified)) {   /* a live waiter not chosen yet */
            atomic_store(&w->notified, 1);
            futex_wake(&w->notified, 1);
            woken++;
        }
        at = &w->next;
    }
    return 0;
}

int mp_condition_notify_all(mp_condition *c)
{
    return mp_condition_notify(c, INT_MAX);
}

void mp_condition_free(mp_condition *c)
{
    if (!condition_ok(c))
        return;
    c->magic = MAGIC_FREED;
    /* Records left behind belong to waiters that were killed. */
    for (struct waiter *w; (w = c->head); ) {
        c->head = w->next;
        if (rmutex_trylock(&w->alive) != MP_ETIMEDOUT)
            waiter_free(w);
    }
    if (c->own_lock)
        mp_lock_free(c->lock);
    arena_free(c);
}
