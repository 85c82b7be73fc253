/* shdict.h - the manager's dicts, in the family arena, under one robust lock.
 *
 * The manager server keeps its dicts here rather than in its own heap, so
 * a process of the server's family (which maps the arena at the same
 * address) works on them directly, under the same lock as the server, with
 * no round trip. Every change is committed by one word store (a slot of a
 * table, a table pointer, or an 8-byte number in place), so a process
 * killed at any step while holding the lock leaves every dict as it was
 * before or after its operation, with at most one arena block leaked; the
 * next holder of the lock (told by EOWNERDEAD) recomputes the counters and
 * finishes a clear that had committed. The life lock is held by the
 * serving server's main thread: a direct caller that finds it unowned, or
 * the store closed, gets MP_EBROKEN, as over the socket.
 */
#ifndef MPROC_MANAGER_SHDICT_H
#define MPROC_MANAGER_SHDICT_H

#include "manager/protocol.h"

struct shstore;

/* Creates an empty store in the arena: NULL when the arena has no room. */
struct shstore *shstore_new(void);
/* The server's main thread: takes the life lock, sets the byte budget
 * (dicts and server_bytes together). 0 or MP_ENOMEM. */
int shstore_serve(struct shstore *s, size_t max_bytes);
/* Frees every dict and marks the store closed (later direct calls get
 * MP_EBROKEN); gives up the life lock if this thread holds it. Safe to
 * repeat, and to run after a process died inside it. */
void shstore_close(struct shstore *s);
/* shstore_close, then frees the store itself: the last reference. */
void shstore_destroy(struct shstore *s);

/* The store lock, repairing after a holder that died. 0, or MP_EBROKEN
 * when not taken within MANAGER_REPLY_TIMEOUT_S. */
int shstore_lock(struct shstore *s);
void shstore_unlock(struct shstore *s);
/* The server is serving it and it is not closed. Lock held. */
bool shstore_live(struct shstore *s);

/* Runs one checked dict request (OP_DICT_OPEN..OP_DICT_CAS) on the dict
 * named m->v[1], creating it when missing; lock held. The status; *out is
 * the reply value (MV_NONE: none), a view valid while the lock is held, or
 * into *owned (malloc'd, the caller frees) for keys. */
int shdict_exec(struct shstore *s, const struct mmsg *m, struct mval *out, void **owned);
/* Deletes the dict name with its entries. Lock held. */
void shdict_drop(struct shstore *s, const uint8_t *name, size_t nlen);

/* The budget the server's own objects (lists, queues, locks) spend, and how
 * many there are, so one budget and one object cap cover both. */
void shstore_publish(struct shstore *s, size_t server_bytes, size_t server_objects);
size_t shstore_bytes(struct shstore *s);     /* what the dicts hold */
size_t shstore_objects(struct shstore *s);   /* how many dicts */

/* Validates the store under its lock (after repairing a dead holder's
 * operation): every table, slot and entry, each key findable, counters and
 * bytes as recomputed, sequence numbers unique. Fills the counts if asked. */
struct shstore_stats { size_t dicts, entries, blocks, bytes; };
bool shstore_check(struct shstore *s, struct shstore_stats *st);

#ifdef MPROC_TEST_HOOKS
/* Called at named points inside the dict operations, so a test can SIGKILL
 * the process exactly there. */
MP_EXTERN extern void (*mp__shdict_test_hook)(const char *point);
#endif

#endif
