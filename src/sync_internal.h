/* sync_internal.h - what lock.c shares with condition.c.
 *
 * A Lock is a robust process-shared mutex in the arena; an RLock adds a depth
 * that only its owner touches. A Condition must release a lock fully while it
 * waits and put the same depth back afterwards.
 */
#ifndef MPROC_SYNC_INTERNAL_H
#define MPROC_SYNC_INTERNAL_H

#include "internal.h"

/* Rules: magic and recursive are written at creation; depth only by the
 * thread holding m (ASSERT_RHELD), so it needs no atomics. */
struct mp_lock {
    uint32_t magic;        /* MAGIC_LOCK (MAGIC_MLOCK handles live elsewhere) */
    uint32_t recursive;
    uint32_t depth;        /* RLock: times acquired by the owner; Lock: 1 while held */
    rmutex m;
};
_Static_assert(offsetof(struct mp_lock, magic) == 0, "every handle starts with its magic word");

bool lock_is_mine(mp_lock *l);
/* mp_lock_release, its failures told as fn's. */
int lock_release_as(mp_lock *l, const char *fn);
/* Releases l however deep the caller holds it; *depth says how deep. */
int lock_release_all(mp_lock *l, uint32_t *depth);
/* Takes l again (no timeout) at that depth: 0 or MP_EOWNERDEAD. */
int lock_restore(mp_lock *l, uint32_t depth);

/* Points inside mp_barrier_wait where a test can SIGKILL or SIGSTOP a party
 * with the barrier's lock held: "barrier_counted" (counted, its slot not
 * yet marked) and "barrier_uncounted" (leaving: uncounted, its slot still
 * marked); and without it: "barrier_asleep" (about to sleep a slice).
 * Only in the test-only build (MP_TEST_HOOK). */
#ifdef MPROC_TEST_HOOKS
MP_EXTERN extern void (*mp__barrier_test_hook)(const char *point);
#endif

#endif
