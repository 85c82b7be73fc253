/* tlock.c - the queue's lock: one CAS to take, one store to give back.
 *
 * The word holds the owner's tid, with TLOCK_WAITERS set once someone sleeps
 * on it. Unlike the robust pthread mutex (rmutex.c), nothing is registered
 * with the kernel, so an uncontended lock and unlock cost about a third as
 * much; robustness comes from the waiters instead: one that has slept a
 * slice asks whether the owner still lives and, if it does not, takes the
 * lock over and is told MP_EOWNERDEAD, so the caller repairs what the dead
 * owner left (the queue's journal).
 *
 * The unlock reads the word and then stores zero, with no read-modify-write
 * between. A waiter that sets TLOCK_WAITERS in that gap is cleared by the
 * store: if it has not slept yet its futex_wait sees the changed word and
 * returns, and if it has, its slice ends the sleep. Either way it retries
 * and finds the lock free; nobody waits longer than a slice for a wake-up.
 */
#include "internal.h"
#include "process_internal.h"

#include <signal.h>

#define TLOCK_WAITERS 0x80000000u
#define TLOCK_SPINS 400
#define TLOCK_SLICE 0.01      /* seconds a sleeper waits before it looks again */

/* How many tlocks this thread holds. The queue never takes one it holds, so
 * a lock that names this thread while it holds none was taken by a thread
 * that died, whose tid the kernel has since given to this one. */
static __thread unsigned held __attribute__((tls_model("initial-exec")));

static bool owner_gone(uint32_t word)
{
    pid_t tid = (pid_t)(word & ~TLOCK_WAITERS);
    return tid != 0 && proc_pid_ended(tid);
}

static int tlock_take(tlock *l)
{
    uint32_t self = mp_gettid(), v = 0;
    if (atomic_compare_exchange_strong_explicit(&l->word, &v, self, memory_order_acquire,
                                                memory_order_relaxed))
        return 0;
    for (int i = 0; i < TLOCK_SPINS; i++) {
        cpu_relax();
        v = atomic_load_explicit(&l->word, memory_order_relaxed);
        if (v == 0 && atomic_compare_exchange_weak_explicit(&l->word, &v, self,
                                                            memory_order_acquire,
                                                            memory_order_relaxed))
            return 0;
    }
    /* Sleep. Having slept, take the lock with TLOCK_WAITERS set: others may
     * still sleep, and our unlock must wake the next. */
    for (;;) {
        v = atomic_load_explicit(&l->word, memory_order_relaxed);
        if ((v & ~TLOCK_WAITERS) == 0) {
            if (atomic_compare_exchange_weak_explicit(&l->word, &v, self | TLOCK_WAITERS,
                                                      memory_order_acquire,
                                                      memory_order_relaxed))
                return 0;
            continue;
        }
        if ((v & ~TLOCK_WAITERS) == self) {
            if (held)
                return -EDEADLK;
            if (atomic_compare_exchange_strong_explicit(&l->word, &v, self | TLOCK_WAITERS,
                                                        memory_order_acquire,
                                                        memory_order_relaxed))
                return MP_EOWNERDEAD;
            continue;
        }
        if (!(v & TLOCK_WAITERS) &&
            !atomic_compare_exchange_weak_explicit(&l->word, &v, v | TLOCK_WAITERS,
                                                   memory_order_relaxed, memory_order_relaxed))
            continue;
        mp_deadline slice = deadline_in(TLOCK_SLICE);
        if (futex_wait(&l->word, v | TLOCK_WAITERS, &slice) != MP_ETIMEDOUT)
            continue;
        /* A whole slice with the same owner: does it still live? */
        v = atomic_load_explicit(&l->word, memory_order_relaxed);
        if ((v & ~TLOCK_WAITERS) != 0 && owner_gone(v) &&
            atomic_compare_exchange_strong_explicit(&l->word, &v, self | TLOCK_WAITERS,
                                                    memory_order_acquire,
                                                    memory_order_relaxed))
            return MP_EOWNERDEAD;
    }
}

int tlock_lock(tlock *l)
{
    int rc = tlock_take(l);
    held += rc == 0 || rc == MP_EOWNERDEAD;
    return rc;
}

void tlock_unlock(tlock *l)
{
    held--;
    uint32_t v = atomic_load_explicit(&l->word, memory_order_relaxed);
    if (!(v & TLOCK_WAITERS)) {
        atomic_store_explicit(&l->word, 0, memory_order_release);
        return;
    }
    atomic_store_explicit(&l->word, 0, memory_order_release);
    futex_wake(&l->word, 1);
}
