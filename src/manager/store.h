/* store.h - the manager server's named objects: dicts, lists, queues, locks.
 *
 * One mutex guards the whole store (requests are microseconds long); the
 * dicts live in the family arena under a robust lock of their own
 * (shdict.h), which a dict request takes too and holds until the store
 * mutex is let go, so a run of requests under store_lock stays one; each
 * object has a condition variable that blocked queue and lock requests wait
 * on, so a waiter never holds the mutex. Values are owned copies, typed as
 * bytes, int64 or double. Every allocation is counted, as malloc spends
 * it, against a byte budget before it is made: past it a write gets
 * MP_ENOMEM and nothing changes.
 */
#ifndef MPROC_MANAGER_STORE_H
#define MPROC_MANAGER_STORE_H

#include "manager/protocol.h"

#include <pthread.h>

enum {
    STORE_MAX_OBJECTS = 100000,
    STORE_MAX_BYTES_DEFAULT = 1024 * 1024 * 1024,  /* everything stored: values, keys,
                                                     * entries, tables, rings, objects */
};

struct store;
struct store_owner;    /* a client connection, as lock owner */

/* A reply: status, an optional value view, and storage to free after it is
 * encoded (a popped item). */
struct sreply {
    int status;
    struct mval v;
    void *owned;
    bool dicts_only, dicts_locked;   /* store_exec ran a dict request under the dicts' lock alone */
};

/* Asked before a queue get takes an item (waited: the get waited for it),
 * and before a put with a deadline commits (waited: true, so always asked):
 * false when the client has gone or given up; the item stays for the next
 * getter, or is not put. */
typedef bool (*store_wants_fn)(struct store_owner *owner, bool waited);

int store_new(struct store **s, size_t max_bytes, store_wants_fn wants);
/* The same, keeping the dicts in a shared store made by the server's
 * starter (shstore_new), which direct callers of its family use too:
 * store_free then empties and closes it but leaves it to its maker. The
 * calling thread becomes the one whose life direct callers watch (it must
 * live until store_free). */
struct shstore;
int store_new_shared(struct store **s, struct shstore *dicts, size_t max_bytes, store_wants_fn wants);
void store_free(struct store *s);

/* Runs one checked request for owner; may block up to the request's
 * timeout (capped at MANAGER_REQUEST_SLICE). The store mutex (for a dict
 * request, the dicts' lock instead) is held on return so the reply can be
 * encoded from the value view; call store_done after. */
void store_exec(struct store *s, struct store_owner *owner, const struct mmsg *req, struct sreply *r);
void store_done(struct store *s, struct sreply *r);

/* For a caller that runs several requests as one (pyproto.c): store_lock,
 * then any number of store_exec_locked, each followed by store_release
 * once its reply value is used, then store_unlock. */
void store_lock(struct store *s);
void store_unlock(struct store *s);
void store_exec_locked(struct store *s, struct store_owner *owner, const struct mmsg *req, struct sreply *r);
void store_release(struct sreply *r);
/* The bytes of the budget still free, and whether n more list items
 * could fit it (counting only their slots, which every item takes: a
 * lower bound, so a call that cannot succeed is refused before it
 * starts). Store mutex held. */
size_t store_room_locked(struct store *s);
bool store_items_fit_locked(struct store *s, uint64_t n);
/* Deletes the object that requests with op address as name (false: it is
 * in use by a waiting request; it stays). Store mutex held. */
bool store_drop_locked(struct store *s, int64_t op, const struct mval *name);

/* Puts an item whose reply could not be delivered back at the head of
 * queue name (its order kept; the bound and budget do not refuse it).
 * _locked: between store_exec and store_done. */
void store_unget(struct store *s, const struct mval *name, const struct mval *item);
void store_unget_locked(struct store *s, const struct mval *name, const struct mval *item);

/* Releases every lock owner holds; the next acquirer gets MP_EOWNERDEAD. */
void store_owner_gone(struct store *s, struct store_owner *owner);

#endif
