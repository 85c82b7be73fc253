/* waitflag.h - a futex word that says whether anyone sleeps on it.
 *
 * Bit 0 is the flag "someone may sleep here"; the other bits are a sequence
 * number each wake-up bumps. A sleeper raises the flag (waitflag_raise),
 * looks at the shared state once more, and sleeps on the value raise
 * returned; a waker, after its commit, wakes only if the flag is up
 * (waitflag_wake), so a put or a send pays no system call while nobody
 * sleeps. A flag rather than a count of sleepers, so a sleeper killed in
 * its sleep costs one spare wake-up, not a syscall on every later commit.
 *
 * The caller orders the sleeper's raise-then-look against the waker's
 * commit-then-wake: a seq_cst fence on both sides (the pipe ring), or a
 * lock both take (the queue's sides). Every sleep is still sliced
 * (docs/sleeping.md): a waker killed between its commit and its wake-up
 * wakes nobody.
 *
 * Used by the pipe ring (pipe_ring.c) and the queue's wait words (queue.c).
 */
#ifndef MPROC_PLATFORM_WAITFLAG_H
#define MPROC_PLATFORM_WAITFLAG_H

#include "internal.h"

#include <limits.h>

/* Raises the flag: the value to futex-sleep on (the flag set). */
static inline uint32_t waitflag_raise(_Atomic uint32_t *word)
{
    uint32_t v = atomic_load(word);
    while (!(v & 1) && !atomic_compare_exchange_weak(word, &v, v | 1))
        ;
    return v | 1;
}

/* Whether a sleeper has raised the flag (the waker's cheap look). */
static inline bool waitflag_up(_Atomic uint32_t *word)
{
    return atomic_load_explicit(word, memory_order_relaxed) & 1;
}

/* Wakes every sleeper if the flag is up, lowering it and bumping the
 * sequence so sleepers that raced see a changed word. */
static inline void waitflag_wake(_Atomic uint32_t *word)
{
    uint32_t v = atomic_load_explicit(word, memory_order_relaxed);
    if ((v & 1) && atomic_compare_exchange_strong(word, &v, (v + 2) & ~1u))
        futex_wake(word, INT_MAX);
}

#endif
