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
 *
 * One death goes unseen: a thread other than the main one calls execve while
 * the main thread holds the lock. The kernel ends the main thread and gives
 * the new program its id and start time, so the lock stays taken until that
 * program exits. (A robust mutex is released on exec; this corner is the
 * price of the cheaper lock.)
 */
#include "internal.h"
#include "platform/platform.h"

#include <endian.h>

#define TLOCK_WAITERS 0x80000000u
#define TLOCK_SPINS 400

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
 * (and again in a fork child, whose tid differs). If /proc cannot be read
 * the start is recorded as 0, which waiters take as "unknown". */
static uint64_t self_word(void)
{
    static MP_TLS_HOT uint64_t word;
    uint32_t tid = mp_gettid();
    if (tid_of(word) != tid)
        word = task_word(tid);
    return word;
}

uint64_t task_word(uint32_t id)
{
    uint64_t start = 0;                 /* stays 0 unless proc_task_start finds it */
    proc_task_start((pid_t)id, &start);
    return (uint64_t)(uint32_t)start << 32 | id;
}

/* The word w names a task that has ended, or whose id now belongs
 * to another thread (its start time differs from the recorded one). Only
 * evidence counts: if /proc cannot be read, or the owner recorded no start
 * time, a live thread with its id is taken for the owner. Taking a live
 * owner's lock would hand out its item twice; waiting on is the lesser harm. */
bool task_word_gone(uint64_t w)
{
    uint64_t start = 0;
    uint32_t recorded = (uint32_t)(w >> 32);
    switch (proc_task_start((pid_t)tid_of(w), &start)) {
    case 0:
        return true;
    case 1:
        return recorded != 0 && (uint32_t)start != recorded;
    default:
        return false;
    }
}

static bool take_from(tlock *l, uint64_t *seen, uint64_t to)
{
    return atomic_compare_exchange_strong_explicit(&l->word, seen, to, memory_order_acquire,
                                                   memory_order_relaxed);
}

/* The sooner of two deadlines. */
static const mp_deadline *sooner(const mp_deadline *a, const mp_deadline *b)
{
    if (a->forever)
        return b;
    if (b->forever)
        return a;
    return a->at.tv_sec < b->at.tv_sec ||
           (a->at.tv_sec == b->at.tv_sec && a->at.tv_nsec < b->at.tv_nsec) ? a : b;
}

int tlock_lock(tlock *l)
{
    return tlock_lock_timed(l, MP_FOREVER);
}

int tlock_lock_timed(tlock *l, double timeout)
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
    uint64_t watched = 0;
    mp_deadline check = deadline_in(MP_FOREVER);   /* set once an owner is watched */
    mp_deadline until = deadline_in(timeout);      /* made only now: most takes never get here */
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
        /* One owner held it a whole slice, however often signals or
         * wake-ups broke our sleep: does it still live? */
        uint64_t owner = v & ~(uint64_t)TLOCK_WAITERS;
        if (owner != watched) {
            watched = owner;
            check = deadline_in(TLOCK_SLICE);
        } else if (deadline_passed(&check)) {
            if (task_word_gone(v) && take_from(l, &v, self | TLOCK_WAITERS))
                return MP_EOWNERDEAD;
            check = deadline_in(TLOCK_SLICE);
            continue;
        }
        if (deadline_passed(&until)) {
            /* Not before asking whether the owner lives: a caller whose
             * time is shorter than a slice would otherwise never take a
             * dead owner's lock over, however often it came back. */
            if (task_word_gone(v) && take_from(l, &v, self | TLOCK_WAITERS))
                return MP_EOWNERDEAD;
            return MP_ETIMEDOUT;
        }
        if (!(v & TLOCK_WAITERS) && !atomic_compare_exchange_weak_explicit(
                                        &l->word, &v, v | TLOCK_WAITERS,
                                        memory_order_relaxed, memory_order_relaxed))
            continue;
        futex_wait(futex_word(l), (uint32_t)v | TLOCK_WAITERS, sooner(&check, &until));
    }
}

void tlock_unlock(tlock *l)
{
    uint64_t v = atomic_load_explicit(&l->word, memory_order_relaxed);
    atomic_store_explicit(&l->word, 0, memory_order_release);
    if (v & TLOCK_WAITERS)
        futex_wake(futex_word(l), 1);
}
