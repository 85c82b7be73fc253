/* barrier.c - Barrier with exactly threading.Barrier's states and rules.
 *
 * State lives under a robust mutex; every change bumps a futex word that
 * waiters sleep on. Each party inside wait() holds a robust mutex of its own
 * slot, and sleepers wake every BARRIER_SLICE to try those: a party that was
 * killed (MP_EOWNERDEAD) is taken out, and if the barrier was still filling it is
 * broken, so the survivors get MP_EBROKEN instead of waiting forever. The
 * party that would trip it, n_waiting and broken take the dead out too, so
 * a party killed with no one else waiting breaks it as well. A timed wait
 * waits for the mutex only until its deadline (a holder may be stopped):
 * then it leaves the barrier broken through the next holder, see
 * barrier_give_up.
 */
#include "sync_internal.h"

#include <limits.h>


enum { FILLING = 0, DRAINING = 1, RESETTING = -1, BROKEN = -2 };   /* Python's _state */

struct party {
    rmutex alive;             /* held by the party while it is inside wait() */
    uint32_t used;
};

struct mp_barrier {
    uint32_t magic;
    uint32_t parties;
    rmutex m;
    _Atomic uint32_t seq;     /* bumped on every change of state or count */
    _Atomic uint32_t break_owed;  /* set without m by a wait that could not take it */
    int32_t state;
    uint32_t count;           /* parties inside wait(), as Python's _count */
    struct party slot[];
};

int mp_barrier_new(mp_barrier **out, unsigned parties)
{
    if (!out)
        return mp_fail(MP_EINVAL, __func__, "b (where the barrier goes) is NULL");
    *out = NULL;
    if (parties == 0 || parties > INT_MAX / sizeof(struct party))
        return mp_fail(MP_EINVAL, __func__, "parties is %u; from 1 to %zu", parties,
                       INT_MAX / sizeof(struct party));
    mp_barrier *b = arena_alloc(sizeof *b + parties * sizeof(struct party));
    if (!b)
        return mp_fail(MP_ENOMEM, __func__, "the shared arena is full");
    int rc = rmutex_init(&b->m);
    for (unsigned i = 0; i < parties && rc == 0; i++)
        rc = rmutex_init(&b->slot[i].alive);
    if (rc != 0) {
        arena_free(b);
        return mp_fail_code(rc, __func__);
    }
    b->parties = parties;
    b->magic = MAGIC_BARRIER;
    *out = b;
    return 0;
}

static bool barrier_ok(const mp_barrier *b)
{
    return b && b->magic == MAGIC_BARRIER;
}

static void changed(mp_barrier *b)
{
    atomic_fetch_add(&b->seq, 1);
    futex_wake(&b->seq, INT32_MAX);
}

static void barrier_break(mp_barrier *b)
{
    b->state = BROKEN;
    changed(b);
}

/* The last party out lets the next round fill (Python's _exit). */
static void barrier_exit(mp_barrier *b)
{
    if (b->count == 0 && (b->state == RESETTING || b->state == DRAINING)) {
        b->state = FILLING;
        changed(b);
    }
}

MP_TEST_HOOK void (*mp__barrier_test_hook)(const char *point);

static void hook(const char *point)
{
    if (mp__barrier_test_hook)
        mp__barrier_test_hook(point);
}

/* Takes the lock by d (waiting at least LOCK_GRACE_S, so that a short
 * timeout does not fail because another party holds it for a moment; only
 * a stopped holder makes d matter): 0, or MP_ETIMEDOUT without it.
 * MP_EOWNERDEAD: a party died in here, and what it was changing cannot be
 * trusted, so the barrier breaks. Its count is made again from the slots:
 * whenever the lock is free, a party is counted exactly while its slot is
 * marked used (both change under the lock; a wait that gave up keeps both,
 * barrier_give_up), so one killed between the two changes is counted as
 * its slot says, and the slots' own repair (barrier_reap, a used slot
 * whose owner is gone) takes it out once, not twice or never. */
static int barrier_lock(mp_barrier *b, const mp_deadline *d)
{
    int rc = rmutex_trylock(&b->m);
    if (rc == MP_ETIMEDOUT) {
        double left = deadline_left(d);
        mp_deadline at = d->forever ? *d : deadline_in(left > LOCK_GRACE_S ? left : LOCK_GRACE_S);
        rc = rmutex_wait(&b->m, &at);
    }
    if (rc == MP_ETIMEDOUT)
        return rc;
    if (rc == MP_EOWNERDEAD) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < b->parties; i++)
            n += b->slot[i].used != 0;
        b->count = n;
        barrier_break(b);
    }
    if (atomic_load(&b->break_owed) && atomic_exchange(&b->break_owed, 0))
        barrier_break(b);
    return 0;
}

/* For the calls without a timeout: they wait as a lock does, for as long
 * as a stopped holder stays stopped. */
static void barrier_lock_untimed(mp_barrier *b)
{
    mp_deadline forever = deadline_in(MP_FOREVER);
    barrier_lock(b, &forever);
}

static struct party *party_enter(mp_barrier *b)
{
    for (uint32_t i = 0; i < b->parties; i++) {
        struct party *p = &b->slot[i];
        if (p->used)
            continue;
        /* MP_EOWNERDEAD: a party killed between taking this slot and
         * marking it (or between unmarking and leaving it): ours now. */
        int rc = rmutex_trylock(&p->alive);
        if (rc == 0 || rc == MP_EOWNERDEAD) {
            p->used = 1;
            return p;
        }
    }
    return NULL;               /* not reached: count < parties whenever one enters */
}

static void party_leave(mp_barrier *b, struct party *p)
{
    b->count--;
    hook("barrier_uncounted");
    if (p) {
        p->used = 0;
        rmutex_unlock(&p->alive);
    }
}

/* Under the lock: takes out the parties that left wait() without it,
 * killed or given up (barrier_give_up): a used slot whose alive is free. */
static void barrier_reap(mp_barrier *b)
{
    ASSERT_RHELD(&b->m);
    for (uint32_t i = 0; i < b->parties; i++) {
        struct party *p = &b->slot[i];
        int rc = p->used ? rmutex_trylock(&p->alive) : MP_ETIMEDOUT;
        if (rc == MP_ETIMEDOUT || rc == -EDEADLK)
            continue;                  /* free, or held by a live party */
        if (b->state == FILLING)
            barrier_break(b);
        party_leave(b, p);
        barrier_exit(b);
        changed(b);
    }
}

/* The answer of a wait that could not take the lock by its deadline: it
 * no longer holds it (not an index, nor any MP_E code). */
enum { LOCK_MISSED = INT_MIN };

/* Under the lock; returns with it held: 0 (look again), MP_ETIMEDOUT once
 * d has passed; or LOCK_MISSED without it. */
static int barrier_sleep(mp_barrier *b, const mp_deadline *d)
{
    ASSERT_RHELD(&b->m);
    if (deadline_passed(d))
        return MP_ETIMEDOUT;
    uint32_t seen = atomic_load(&b->seq);
    rmutex_unlock(&b->m);
    hook("barrier_asleep");
    double left = deadline_left(d);
    mp_deadline slice = deadline_in(left < BARRIER_SLICE ? left : BARRIER_SLICE);
    int rc = futex_wait_spin(&b->seq, seen, &slice);
    if (barrier_lock(b, d) != 0)
        return LOCK_MISSED;
    /* Its slice passed, or a signal cut it short with nothing changed: a
     * process whose signals come faster than BARRIER_SLICE (an interval
     * timer) must still look for killed parties. */
    if (rc == MP_ETIMEDOUT || atomic_load(&b->seq) == seen)
        barrier_reap(b);
    return deadline_passed(d) ? MP_ETIMEDOUT : 0;
}

/* Python's _enter: wait while the previous round drains or resets. */
static int barrier_enter(mp_barrier *b, const mp_deadline *d)
{
    while (b->state == DRAINING || b->state == RESETTING) {
        int rc = barrier_sleep(b, d);
        if (rc == LOCK_MISSED)
            return rc;
        if (rc == MP_ETIMEDOUT && (b->state == DRAINING || b->state == RESETTING)) {
            barrier_break(b);
            return MP_EBROKEN;
        }
    }
    return b->state < 0 ? MP_EBROKEN : 0;
}

/* Python's _wait: until the barrier trips; timing out breaks it. */
static int barrier_await(mp_barrier *b, const mp_deadline *d, int index)
{
    while (b->state == FILLING) {
        int rc = barrier_sleep(b, d);
        if (rc == LOCK_MISSED)
            return rc;
        if (rc == MP_ETIMEDOUT && b->state == FILLING) {
            barrier_break(b);
            return MP_EBROKEN;
        }
    }
    return b->state < 0 ? MP_EBROKEN : index;
}

/* A wait that could not take the lock by its deadline (its holder is
 * stopped) has timed out, and a wait that times out breaks the barrier;
 * but breaking takes the lock. So it leaves the break owed, and the next
 * holder makes it before anything else (barrier_lock): no call sees the
 * barrier without the lock, so to every call made after this one returns
 * the barrier was broken by then. It breaks whatever the state (it cannot
 * see whether its round tripped), as a wait timing out in _enter does.
 * Counted (me), it gives its slot's alive mutex back but leaves the slot
 * marked and counted: barrier_reap takes it out, once, as a killed party. */
static int barrier_give_up(mp_barrier *b, struct party *me)
{
    atomic_store(&b->break_owed, 1);
    if (me)
        rmutex_unlock(&me->alive);
    changed(b);                     /* sleepers go for the lock, and make the break */
    return LOCK_MISSED;
}

/* Under the lock: one party's way through (Python's wait). Its index,
 * MP_EBROKEN, or LOCK_MISSED (it gave up), the lock given back. */
static int barrier_pass(mp_barrier *b, const mp_deadline *d)
{
    int rc = barrier_enter(b, d);
    if (rc == LOCK_MISSED)
        return barrier_give_up(b, NULL);
    /* The party that would trip it first takes out any killed while they
     * waited, which no sleeper may have done yet (or ever, when the dead
     * were the only ones waiting): a dead party must break the round, not
     * complete it. */
    if (rc == 0 && b->count + 1 == b->parties) {
        barrier_reap(b);
        rc = b->state < 0 ? MP_EBROKEN : 0;
    }
    if (rc == 0) {
        int index = (int)b->count++;
        hook("barrier_counted");
        struct party *me = party_enter(b);
        if ((uint32_t)index + 1 == b->parties) {
            b->state = DRAINING;
            changed(b);
            rc = index;
        } else {
            rc = barrier_await(b, d, index);
            if (rc == LOCK_MISSED)
                return barrier_give_up(b, me);
        }
        party_leave(b, me);
        barrier_exit(b);
    }
    rmutex_unlock(&b->m);
    return rc;
}

int mp_barrier_wait(mp_barrier *b, double timeout)
{
    if (!barrier_ok(b))
        return mp_fail_handle(__func__, "barrier", b);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    mp_deadline d = deadline_in(timeout);
    int rc = barrier_lock(b, &d) == 0 ? barrier_pass(b, &d) : barrier_give_up(b, NULL);
    if (rc == LOCK_MISSED)
        return mp_fail(MP_EBROKEN, __func__, "another process held the barrier's lock past the "
                       "timeout (a stopped one?): the wait gave up, which breaks the barrier as a "
                       "timeout does; mp_barrier_reset makes it usable again");
    if (rc == MP_EBROKEN)
        return mp_fail(rc, __func__, "the barrier is broken (a wait timed out, a party was "
                       "killed, or mp_barrier_abort); mp_barrier_reset makes it usable again");
    return mp_fail_code(rc, __func__);
}

int mp_barrier_abort(mp_barrier *b)
{
    if (!barrier_ok(b))
        return mp_fail_handle(__func__, "barrier", b);
    barrier_lock_untimed(b);
    barrier_break(b);
    rmutex_unlock(&b->m);
    return 0;
}

int mp_barrier_reset(mp_barrier *b)
{
    if (!barrier_ok(b))
        return mp_fail_handle(__func__, "barrier", b);
    barrier_lock_untimed(b);
    if (b->count == 0)
        b->state = FILLING;
    else if (b->state == FILLING || b->state == BROKEN)
        b->state = RESETTING;     /* cleared when the last party leaves */
    changed(b);
    rmutex_unlock(&b->m);
    return 0;
}

int mp_barrier_parties(mp_barrier *b)
{
    return barrier_ok(b) ? (int)b->parties : mp_fail_handle(__func__, "barrier", b);
}

int mp_barrier_n_waiting(mp_barrier *b)
{
    if (!barrier_ok(b))
        return mp_fail_handle(__func__, "barrier", b);
    barrier_lock_untimed(b);
    barrier_reap(b);
    int n = b->state == FILLING ? (int)b->count : 0;
    rmutex_unlock(&b->m);
    return n;
}

bool mp_barrier_broken(mp_barrier *b)
{
    if (!barrier_ok(b))
        return false;
    barrier_lock_untimed(b);
    barrier_reap(b);
    bool broken = b->state == BROKEN;
    rmutex_unlock(&b->m);
    return broken;
}

void mp_barrier_free(mp_barrier *b)
{
    if (!barrier_ok(b))
        return;
    b->magic = MAGIC_FREED;
    for (uint32_t i = 0; i < b->parties; i++)
        rmutex_destroy(&b->slot[i].alive);
    rmutex_destroy(&b->m);
    arena_free(b);
}
