/* tlock.c - the queue's lock: one CAS to take, one store to give back.
 *
 * The word names its owner: the thread's id in the low half (the futex
 * word, with TLOCK_WAITERS set once someone sleeps on it) and the thread's
 * start time in the high half. Unlike the robust pthread mutex (rmutex.c),
 * nothing is registered with the kernel, so an uncontended lock and unlock
 * cost about a third as much; robustness comes from the waiters instead: one
 * that has slept a slice asks whether the owner still lives and, if it does
 * not, takes the lock over and is told MP_EOWNERDEAD, so the caller repairs
 * what the dead owner left (the queue's journal). The start time is what
 * makes "still lives" exact: the kernel hands a dead thread's id to new
 * threads (after 32768 of them on a small machine), and a live stranger
 * with that id must not pass for the owner, nor may this very thread.
 *
 * The unlock reads the word and then stores zero, with no read-modify-write
 * between. A waiter that sets TLOCK_WAITERS in that gap is cleared by the
 * store: if it has not slept yet its futex_wait sees the changed word and
 * returns, and if it has, its slice ends the sleep. Either way it retries
 * and finds the lock free; nobody waits longer than a slice for a wake-up.
 */
#include "internal.h"
#include "process_internal.h"

#include <endian.h>

#define TLOCK_WAITERS 0x80000000u
#define TLOCK_SPINS 400
#define TLOCK_SLICE 0.01      /* seconds a sleeper waits before it looks again */

/* The futex word: the low half of the 64-bit lock word. */
static _Atomic uint32_t *futex_word(tlock *l)
{
    return (_Atomic uint32_t *)(void *)&l->word + (BYTE_ORDER == BIG_ENDIAN);
}

static uint32_t tid_of(uint64_t w)
{
    return (uint32_t)w & ~TLOCK_WAITERS;
}

/* This thread as a lock word: tid and start time, looked up once per thread
 * (and again in a fork child, whose tid differs). */
static uint64_t self_word(void)
{
    static __thread uint64_t word __attribute__((tls_model("initial-exec")));
    uint32_t tid = mp_gettid();
    if (tid_of(word) != tid)
        word = (uint64_t)(uint32_t)proc_start_ticks((pid_t)tid) << 32 | tid;
    return word;
}

/* The owner word w names a thread that has ended, or whose id now belongs
 * to another thread (its start time differs). */
static bool owner_gone(uint64_t w)
{
    pid_t tid = (pid_t)tid_of(w);
    uint64_t start = tid ? proc_start_ticks(tid) : 1;   /* 0: gone, or a zombie */
    return tid != 0 && (start == 0 || (uint32_t)start != (uint32_t)(w >> 32));
}

static bool take_from(tlock *l, uint64_t *seen, uint64_t to)
{
    return atomic_compare_exchange_strong_explicit(&l->word, seen, to, memory_order_acquire,
                                                   memory_order_relaxed);
}

int tlock_lock(tlock *l)
{
    uint64_t self = self_word(), v = 0;
    if (take_from(l, &v, self))
        return 0;
    for (int i = 0; i < TLOCK_SPINS; i++) {
        cpu_relax();
        v = atomic_load_explicit(&l->word, memory_order_relaxed);
        if (v == 0 && take_from(l, &v, self))
            return 0;
    }
    /* Sleep. Having slept, take the lock with TLOCK_WAITERS set: others may
     * still sleep, and our unlock must wake the next. */
    for (;;) {
        v = atomic_load_explicit(&l->word, memory_order_relaxed);
        if (tid_of(v) == 0) {
            if (take_from(l, &v, self | TLOCK_WAITERS))
                return 0;
            continue;
        }
        if ((v & ~(uint64_t)TLOCK_WAITERS) == self)
            return -EDEADLK;
        if (tid_of(v) == tid_of(self)) {      /* a dead thread's, with our id */
            if (take_from(l, &v, self | TLOCK_WAITERS))
                return MP_EOWNERDEAD;
            continue;
        }
        if (!(v & TLOCK_WAITERS) && !atomic_compare_exchange_weak_explicit(
                                        &l->word, &v, v | TLOCK_WAITERS,
                                        memory_order_relaxed, memory_order_relaxed))
            continue;
        mp_deadline slice = deadline_in(TLOCK_SLICE);
        if (futex_wait(futex_word(l), (uint32_t)v | TLOCK_WAITERS, &slice) != MP_ETIMEDOUT)
            continue;
        /* A whole slice with the same owner: does it still live? */
        v = atomic_load_explicit(&l->word, memory_order_relaxed);
        if (tid_of(v) != 0 && owner_gone(v) && take_from(l, &v, self | TLOCK_WAITERS))
            return MP_EOWNERDEAD;
    }
}

void tlock_unlock(tlock *l)
{
    uint64_t v = atomic_load_explicit(&l->word, memory_order_relaxed);
    atomic_store_explicit(&l->word, 0, memory_order_release);
    if (v & TLOCK_WAITERS)
        futex_wake(futex_word(l), 1);
}
