/* rmutex.c - the robust, process-shared mutex every shared structure uses.
 *
 * glibc's robust pthread mutex registers each held mutex on the thread's
 * kernel robust list, so when a holder dies the kernel marks the word and the
 * next locker learns it (EOWNERDEAD). It is glibc's plain robust type:
 * glibc itself refuses an unlock by a non-owner, and a thread that would
 * wait for itself is caught here before it sleeps (-EDEADLK). It lives under platform/ because it reads glibc's mutex layout (the owner's
 * tid in __data.__lock) and the kernel's robust-futex bits.
 *
 * Codes, one per cause: 0, MP_EOWNERDEAD (held, its holder died),
 * MP_ETIMEDOUT (busy until the deadline), -EDEADLK (the caller holds it).
 */
#include "internal.h"
#include "platform/platform.h"

#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef MP_TSAN
#include <sanitizer/tsan_interface.h>
#endif

/* Looks at a held mutex before sleeping: 0, as glibc's own robust mutex.
 * Measured with two processes taking it in a loop (bench/sync.c), any spin
 * hands the lock back and forth more often, and each hand-off moves the
 * line between CPUs: 200 trylocks made it 2.5 times slower than glibc. */
#define SPIN_LOOKS 0

int rmutex_init(rmutex *m)
{
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a) != 0)
        return MP_ENOMEM;
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&m->m, &a);
    pthread_mutexattr_destroy(&a);
    return rc ? -rc : 0;
}

static int owner_died(rmutex *m)
{
    pthread_mutex_consistent(&m->m);
    return MP_EOWNERDEAD;
}

uint32_t rmutex_owner(rmutex *m)
{
    /* The futex word holds the owner's tid; the kernel clears it (and sets
     * FUTEX_OWNER_DIED) when that owner dies. */
    return __atomic_load_n(&m->m.__data.__lock, __ATOMIC_RELAXED) & FUTEX_TID_MASK;
}

/* Held by the calling thread: the word holds our tid, and only we could
 * have put it there or could take it out. */
static bool held_by_me(rmutex *m)
{
    return rmutex_owner(m) == mp_gettid();
}

int rmutex_trylock_failed(rmutex *m, int err)
{
    switch (err) {
    case EOWNERDEAD: return owner_died(m);
    case EBUSY: return held_by_me(m) ? -EDEADLK : MP_ETIMEDOUT;
    default: return MP_ETIMEDOUT;        /* ENOTRECOVERABLE: never ours */
    }
}

/* glibc records the owner's tid in every mutex it locks, of any type. */
bool mutex_held_here(pthread_mutex_t *m)
{
    return __atomic_load_n(&m->__data.__owner, __ATOMIC_RELAXED) == (int)mp_gettid();
}

#ifdef MPROC_CHECKS
void mp_check_failed(const char *cond, const char *file, int line)
{
    fprintf(stderr, "mproc: lock rule broken at %s:%d: %s\n", file, line, cond);
    abort();
}
#endif

/* ThreadSanitizer does not intercept pthread_mutex_clocklock: tell it. */
int mutex_clocklock(pthread_mutex_t *m, const struct timespec *at)
{
#ifdef MP_TSAN
    __tsan_mutex_pre_lock(m, __tsan_mutex_try_lock);
    int rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, at);
    bool got = rc == 0 || rc == EOWNERDEAD;
    __tsan_mutex_post_lock(m, __tsan_mutex_try_lock | (got ? 0 : __tsan_mutex_try_lock_failed), 0);
    return rc;
#else
    return pthread_mutex_clocklock(m, CLOCK_MONOTONIC, at);
#endif
}

int rmutex_lock(rmutex *m, const mp_deadline *d)
{
    int rc = rmutex_trylock(m);
    return rc == MP_ETIMEDOUT ? rmutex_wait(m, d) : rc;
}

/* The kernel gives a dead holder's robust mutexes back by walking its
 * robust list, but at most ROBUST_LIST_LIMIT (2048) entries of it: a thread
 * killed holding more leaves the oldest with its tid in the word, held by
 * nobody for ever. A sleeper whose slice ended asks /proc whether that tid
 * still names a live thread; if not, it does what the walk would have
 * done: the owner-died bit set, the tid cleared, the waiters bit kept, one
 * sleeper woken, and glibc's next lock takes the mutex with EOWNERDEAD.
 * A zombie is not a live thread; a new thread given the same tid passes
 * for the holder (as a live one must); and "no such task" counts only
 * where /proc finds the sleeper itself. */
static void give_back_if_holder_gone(rmutex *m)
{
    uint32_t *word = (uint32_t *)&m->m.__data.__lock;
    uint32_t w = __atomic_load_n(word, __ATOMIC_RELAXED);
    uint64_t start;
    if ((w & FUTEX_TID_MASK) == 0 || proc_task_start((pid_t)(w & FUTEX_TID_MASK), &start) != 0)
        return;
    if (proc_task_start((pid_t)mp_gettid(), &start) != 1)
        return;                     /* no /proc to ask: "not found" says nothing */
    uint32_t dead = (w & FUTEX_WAITERS) | FUTEX_OWNER_DIED;
    if (__atomic_compare_exchange_n(word, &w, dead, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        futex_wake((_Atomic uint32_t *)word, 1);
}

int rmutex_wait(rmutex *m, const mp_deadline *d)
{
    /* Spin by looking, not by trying: a failed trylock takes the cache line
     * from the holder, and a holder slowed that way keeps the lock longer. */
    int rc = EBUSY;
    for (int i = 0; rc == EBUSY && i < SPIN_LOOKS; i++) {
        cpu_relax();
        if (rmutex_owner(m) == 0)
            rc = pthread_mutex_trylock(&m->m);
    }
    /* Sleep in slices: a holder killed inside pthread_mutex_unlock, after it
     * cleared the word but before its wake-up, leaves sleepers unwoken (the
     * kernel's robust-list cleanup sees a free word and wakes nobody). A
     * slice ends such a sleep; the retry then finds the mutex free. */
    while (rc == EBUSY || rc == ETIMEDOUT) {
        mp_deadline slice = deadline_in(RMUTEX_SLICE);
        bool last = !d->forever && deadline_left(d) <= RMUTEX_SLICE;
        rc = mutex_clocklock(&m->m, last ? &d->at : &slice.at);
        if (last)
            break;
        if (rc == ETIMEDOUT)
            give_back_if_holder_gone(m);
    }
    switch (rc) {
    case 0: return 0;
    case EOWNERDEAD: return owner_died(m);
    case ETIMEDOUT: case EBUSY: return MP_ETIMEDOUT;
    case EDEADLK: return -EDEADLK;
    default: return -rc;
    }
}

#ifdef MP_TSAN
int rmutex_unlock(rmutex *m)
{
    if (rmutex_owner(m) != mp_gettid())
        return MP_EINVAL;
    return pthread_mutex_unlock(&m->m) == 0 ? 0 : MP_EINVAL;
}
#endif

void rmutex_destroy(rmutex *m)
{
    pthread_mutex_destroy(&m->m);
}
