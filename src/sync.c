/* sync.c - Semaphore, BoundedSemaphore and Event: one futex word each.
 *
 * The word is the count (or the flag) itself, changed with compare-and-swap.
 * A waiter spins a few microseconds, then counts itself in `waiters` and
 * sleeps on the word; a release or set wakes only when someone is counted.
 * A waiter killed while asleep leaves its count behind: that costs later
 * releases a futex_wake system call each, never a lost wake-up. Sleeps last
 * at most FUTEX_SLICE: a releaser killed between its increment and its wake,
 * or a woken acquirer killed before it took the count, wakes nobody, and
 * the sleepers must find the count anyway.
 */
#include "sync_internal.h"

#include <limits.h>

struct mp_semaphore {
    uint32_t magic;
    uint32_t bounded;
    uint32_t bound;                 /* the initial value, for a bounded one */
    _Atomic uint32_t value;
    _Atomic uint32_t waiters;
};

/* flag: EVENT_SET while set; the bits above count the sets (mod 2^31), so a
 * waiter that saw the word clear knows a set came during its wait even if a
 * clear followed before it woke up (Python: wait returns True). */
#define EVENT_SET 1u
#define EVENT_GEN 2u

struct mp_event {
    uint32_t magic;
    _Atomic uint32_t flag;
    _Atomic uint32_t waiters;
};

/* Spins a few microseconds for *word != val: 0 once it differs, else
 * MP_ETIMEDOUT. Waiters spin before counting themselves, so a release that
 * finds nobody counted makes no system call. */
static int sync_spin(_Atomic uint32_t *word, uint32_t val)
{
    mp_deadline passed = { { 0, 0 }, false };
    return futex_wait_spin(word, val, &passed);
}

/* ------------------------------------------------------------------ semaphore */

static int semaphore_create(mp_semaphore **out, unsigned value, bool bounded, const char *fn)
{
    if (!out)
        return mp_fail(MP_EINVAL, fn, "s (where the semaphore goes) is NULL");
    *out = NULL;
    if (value > INT_MAX)
        return mp_fail(MP_EINVAL, fn, "value %u is over INT_MAX", value);
    mp_semaphore *s = arena_alloc(sizeof *s);
    if (!s)
        return mp_fail(MP_ENOMEM, fn, "the shared arena is full");
    s->bounded = bounded;
    s->bound = value;
    atomic_store(&s->value, value);
    s->magic = MAGIC_SEM;
    *out = s;
    return 0;
}

int mp_semaphore_new(mp_semaphore **s, unsigned value)
{
    return semaphore_create(s, value, false, __func__);
}

int mp_bounded_semaphore_new(mp_semaphore **s, unsigned value)
{
    return semaphore_create(s, value, true, __func__);
}

static bool semaphore_take(mp_semaphore *s)
{
    uint32_t v = atomic_load(&s->value);
    while (v > 0)
        if (atomic_compare_exchange_weak_explicit(&s->value, &v, v - 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return true;
    return false;
}

static int fail_sem(const char *fn, const mp_semaphore *s)
{
    return mp_fail_handle(fn, "semaphore", s);
}

int mp_semaphore_acquire(mp_semaphore *s, double timeout)
{
    if (!s || s->magic != MAGIC_SEM)
        return fail_sem(__func__, s);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    if (semaphore_take(s))
        return 0;
    if (timeout == 0)
        return mp_fail(MP_ETIMEDOUT, __func__, "the count is 0 (timeout 0)");
    mp_deadline d = deadline_in(timeout);
    if (sync_spin(&s->value, 0) == 0 && semaphore_take(s))
        return 0;
    atomic_fetch_add(&s->waiters, 1);
    int rc = 0;
    for (;;) {
        if (semaphore_take(s)) {
            rc = 0;
            break;
        }
        if (rc != 0)                /* timed out: the take above was the last try */
            break;
        rc = futex_wait_sliced(&s->value, 0, &d, false);
    }
    atomic_fetch_sub(&s->waiters, 1);
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, __func__, "the count stayed 0 until the timeout");
    return mp_fail_code(rc, __func__);
}

int mp_semaphore_release(mp_semaphore *s)
{
    if (!s || s->magic != MAGIC_SEM)
        return fail_sem(__func__, s);
    uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    do {
        if (s->bounded && v >= s->bound)
            return mp_fail(MP_EINVAL, __func__, "released more times than acquired: the count "
                           "is at its bound %u (Python: ValueError)", s->bound);
        if (v >= INT_MAX)
            return mp_fail(MP_EINVAL, __func__, "the count is at INT_MAX");
    } while (!atomic_compare_exchange_weak(&s->value, &v, v + 1));
    if (atomic_load(&s->waiters))
        futex_wake(&s->value, 1);
    return 0;
}

int mp_semaphore_value(mp_semaphore *s)
{
    if (!s || s->magic != MAGIC_SEM)
        return fail_sem(__func__, s);
    return (int)atomic_load(&s->value);
}

void mp_semaphore_free(mp_semaphore *s)
{
    if (!s || s->magic != MAGIC_SEM)
        return;
    s->magic = MAGIC_FREED;
    arena_free(s);
}

/* ------------------------------------------------------------------ event */

int mp_event_new(mp_event **out)
{
    if (!out)
        return mp_fail(MP_EINVAL, __func__, "e (where the event goes) is NULL");
    *out = NULL;
    mp_event *e = arena_alloc(sizeof *e);
    if (!e)
        return mp_fail(MP_ENOMEM, __func__, "the shared arena is full");
    e->magic = MAGIC_EVENT;
    *out = e;
    return 0;
}

int mp_event_set(mp_event *e)
{
    if (!e || e->magic != MAGIC_EVENT)
        return mp_fail_handle(__func__, "event", e);
    uint32_t v = atomic_load(&e->flag);
    while (!(v & EVENT_SET) && !atomic_compare_exchange_weak(&e->flag, &v, (v + EVENT_GEN) | EVENT_SET))
        ;
    if (atomic_load(&e->waiters))
        futex_wake(&e->flag, INT32_MAX);
    return 0;
}

int mp_event_clear(mp_event *e)
{
    if (!e || e->magic != MAGIC_EVENT)
        return mp_fail_handle(__func__, "event", e);
    atomic_fetch_and(&e->flag, ~EVENT_SET);
    return 0;
}

bool mp_event_is_set(mp_event *e)
{
    return e && e->magic == MAGIC_EVENT && (atomic_load(&e->flag) & EVENT_SET);
}

int mp_event_wait(mp_event *e, double timeout)
{
    if (!e || e->magic != MAGIC_EVENT)
        return mp_fail_handle(__func__, "event", e);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    /* Any change of the word from w0 is a set (a clear of a clear word
     * changes nothing): set during the wait, even if cleared since. */
    uint32_t w0 = atomic_load(&e->flag);
    if ((w0 & EVENT_SET) || timeout == 0)
        return (w0 & EVENT_SET) ? 0 : mp_fail(MP_ETIMEDOUT, __func__, "not set (timeout 0)");
    mp_deadline d = deadline_in(timeout);
    if (sync_spin(&e->flag, w0) == 0)
        return 0;
    atomic_fetch_add(&e->waiters, 1);
    int rc = 0;
    while (atomic_load(&e->flag) == w0 && rc == 0)
        rc = futex_wait_sliced(&e->flag, w0, &d, false);
    atomic_fetch_sub(&e->waiters, 1);
    /* Like threading.Event: a set during the wait counts, even if the time
     * ran out since or a clear came after it. */
    if (atomic_load(&e->flag) != w0)
        return 0;
    return mp_fail(rc ? rc : MP_ETIMEDOUT, __func__, "not set by the timeout");
}

void mp_event_free(mp_event *e)
{
    if (!e || e->magic != MAGIC_EVENT)
        return;
    e->magic = MAGIC_FREED;
    arena_free(e);
}
