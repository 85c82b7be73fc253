/* queue_internal.h - what the queue shows its tests and nobody else.
 *
 * mp__queue_test_hook, when set, is called at named points inside put and get so
 * a test child can SIGKILL itself exactly there. Both hooks exist only in the
 * test-only build (MP_TEST_HOOK, internal.h).
 */
#ifndef MPROC_QUEUE_INTERNAL_H
#define MPROC_QUEUE_INTERNAL_H

#include "internal.h"

/* Points: "put_written" (record in the ring, not yet committed),
 * "put_committed" (item counted, producer position not yet advanced),
 * "get_copied" (item copied out, not yet committed),
 * "get_committed" (item counted as got, consumer position not yet advanced). */
#ifdef MPROC_TEST_HOOKS
MP_EXTERN extern void (*mp__queue_test_hook)(const char *point);

/* Checks the queue's structure under both of its locks (repairing after a
 * dead holder first): every counted item present and well-formed, nothing
 * else. For tests; safe while the queue is in use. */
MP_EXTERN bool mp__queue_valid(mp_queue *q);

/* Whether the producers' (put) or the consumers' lock is lent to the
 * calling thread (platform/tlock.c): then it takes that lock with plain
 * stores. For tests. */
MP_EXTERN bool mp__queue_lent(mp_queue *q, bool put);
#endif

/* Items inline in the ring up to this size; bigger ones go out of line. */
#define QUEUE_INLINE_MAX ((size_t)16 << 10)

#endif
