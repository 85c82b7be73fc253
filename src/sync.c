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

static int semaphore_create(mp_semaphore **out, unsigned value, bool bounded)
{
    if (!out)
        return MP_EINVAL;
    *out = NULL;
    if (value > INT_MAX)
        return MP_EINVAL;
    mp_semaphore *s = arena_alloc(sizeof *s);
    if (!s)
        return MP_ENOMEM;
    s->bounded = bounded;
    s->bound = value;
    atomic_store(&s->value, value);
    s->magic = MAGIC_SEM;
    *out = s;
    return 0;
}

int mp_semaphore_new(mp_semaphore **s, unsigned value)
{
    return semaphore_create(s, value, false);
}

int mp_bounded_semaphore_new(mp_semaphore **s, unsigned value)
{
    return semaphore_create(s, value, true);
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

int mp_semaphore_acquire(mp_semaphore *s, double timeout)
{
    if (!s || s->magic != MAGIC_SEM || !timeout_valid(timeout))
        return MP_EINVAL;
    if (semaphore_take(s))
        return 0;
    if (timeout == 0)
        return MP_ETIMEDOUT;
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
    return rc;
}

int mp_semaphore_release(mp_semaphore *s)
{
    if (!s || s->magic != MAGIC_SEM)
        return MP_EINVAL;
    uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    do {
        if ((s->bounded && v >= s->bound) || v >= INT_MAX)
            return MP_EINVAL;
    } while (!atomic_compare_exchange_weak(&s->value, &v, v + 1));
    if (atomic_load(&s->waiters))
        futex_wake(&s->value, 1);
    return 0;
}

int mp_semaphore_value(mp_semaphore *s)
{
    if (!s || s->magic != MAGIC_SEM)
        return MP_EINVAL;
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
        return MP_EINVAL;
    *out = NULL;
    mp_event *e = arena_alloc(sizeof *e);
    if (!e)
        return MP_ENOMEM;
    e->magic = MAGIC_EVENT;
    *out = e;
    return 0;
}

int mp_event_set(mp_event *e)
{
    if (!e || e->magic != MAGIC_EVENT)
        return MP_EINVAL;
    atomic_store(&e->flag, 1);
    if (atomic_load(&e->waiters))
        futex_wake(&e->flag, INT32_MAX);
    return 0;
}

int mp_event_clear(mp_event *e)
{
    if (!e || e->magic != MAGIC_EVENT)
        return MP_EINVAL;
    atomic_store(&e->flag, 0);
    return 0;
}

bool mp_event_is_set(mp_event *e)
{
    return e && e->magic == MAGIC_EVENT && atomic_load(&e->flag);
}

int mp_event_wait(mp_event *e, double timeout)
{
    if (!e || e->magic != MAGIC_EVENT || !timeout_valid(timeout))
        return MP_EINVAL;
    if (atomic_load(&e->flag) || timeout == 0)
        return atomic_load(&e->flag) ? 0 : MP_ETIMEDOUT;
    mp_deadline d = deadline_in(timeout);
    if (sync_spin(&e->flag, 0) == 0)
        return 0;
    atomic_fetch_add(&e->waiters, 1);
    int rc = 0;
    while (!atomic_load(&e->flag) && rc == 0)
        rc = futex_wait_sliced(&e->flag, 0, &d, false);
    atomic_fetch_sub(&e->waiters, 1);
    /* Like Python: the flag at the end decides, even if the time ran out. */
    return atomic_load(&e->flag) ? 0 : rc ? rc : MP_ETIMEDOUT;
}

void mp_event_free(mp_event *e)
{
    if (!e || e->magic != MAGIC_EVENT)
        return;
    e->magic = MAGIC_FREED;
    arena_free(e);
}
