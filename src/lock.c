/* lock.c - Lock and RLock: a robust, process-shared mutex in the arena.
 *
 * The mutex is glibc's robust pthread mutex (rmutex): its futex word holds
 * the owner's tid, and the kernel's robust list marks it when the owner
 * dies, so the next acquirer gets MP_EOWNERDEAD instead of hanging. The
 * uncontended path is one trylock and one unlock, no clock, no syscall:
 * every other check waits until the trylock has failed.
 * An RLock keeps its depth beside the mutex; only the owner touches it.
 * A manager's lock (MAGIC_MLOCK) is the same handle type served by the
 * manager's client (mlock_*, manager/client.c), called directly.
 */
#include "sync_internal.h"

static int lock_create(mp_lock **out, bool recursive, const char *fn)
{
    if (!out)
        return mp_fail(MP_EINVAL, fn, "l (where the lock goes) is NULL");
    *out = NULL;
    mp_lock *l = arena_alloc(sizeof *l);
    if (!l)
        return mp_fail(MP_ENOMEM, fn, "the shared arena is full");
    int rc = rmutex_init(&l->m);
    if (rc != 0) {
        arena_free(l);
        return mp_fail_code(rc, fn);
    }
    l->recursive = recursive;
    l->magic = MAGIC_LOCK;
    *out = l;
    return 0;
}

int mp_lock_new(mp_lock **l)
{
    return lock_create(l, false, __func__);
}

int mp_rlock_new(mp_lock **l)
{
    return lock_create(l, true, __func__);
}

/* A thread taking a plain Lock it already holds would wait forever (Python
 * blocks): a bounded wait runs out its time, an unbounded one is refused. */
static int self_deadlock(double timeout)
{
    mp_deadline d = deadline_in(timeout);
    if (d.forever)                /* MP_FOREVER, or a timeout too long to tell apart */
        return -EDEADLK;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &d.at, NULL) == EINTR)
        ;
    return MP_ETIMEDOUT;
}

/* The message for what an acquire returned (nothing for 0). */
static int acquire_result(int rc, double timeout)
{
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, "mp_lock_acquire", timeout == 0 ? "the lock is held (timeout 0)"
                                                            : "the lock is still held at the timeout");
    if (rc == -EDEADLK)
        return mp_fail(rc, "mp_lock_acquire", "this thread holds this Lock already and would wait "
                       "for itself forever; release it first, or use mp_rlock_new");
    if (rc == MP_EOWNERDEAD)
        return mp_fail(rc, "mp_lock_acquire", "acquired, but its last holder died holding it: "
                       "check the data it guards");
    return mp_fail_code(rc, "mp_lock_acquire");
}

int mp_lock_acquire(mp_lock *l, double timeout)
{
    int rc = MP_EINVAL;
    if (l && l->magic == MAGIC_LOCK && timeout_valid(timeout)) {
        rc = rmutex_trylock(&l->m);
        if (rc == 0) {                 /* the uncontended path: nothing else */
            l->depth = 1;
            return 0;
        }
    }
    if (!l || (l->magic != MAGIC_LOCK && l->magic != MAGIC_MLOCK))
        return mp_fail_handle(__func__, "lock", l);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    if (l->magic == MAGIC_MLOCK)
        return mp_fail_code(mlock_acquire(l, timeout), __func__);
    if (rc == -EDEADLK) {
        if (!l->recursive)
            return acquire_result(self_deadlock(timeout), timeout);
        if (l->depth == UINT32_MAX)
            return mp_fail(MP_EINVAL, __func__, "this RLock is held %u levels deep already", l->depth);
        l->depth++;
        return 0;
    }
    if (rc == MP_ETIMEDOUT && timeout != 0) {
        mp_deadline d = deadline_in(timeout);
        rc = rmutex_wait(&l->m, &d);
    }
    if (rc == 0 || rc == MP_EOWNERDEAD)
        l->depth = 1;
    return rc == 0 ? 0 : acquire_result(rc, timeout);
}

/* The MP_EINVAL for a release by a thread that does not hold the lock. */
static int fail_not_held(mp_lock *l, const char *fn)
{
    uint32_t owner = rmutex_owner(&l->m);
    if (!owner)
        return mp_fail(MP_EINVAL, fn, "the lock is not held (released already?)");
    return mp_fail(MP_EINVAL, fn, "the lock is held by thread %u, not by this thread (%u): "
                   "only the holder releases it", owner, mp_gettid());
}

/* mp_lock_release, its messages named fn (a condition releases its lock). */
static inline int release(mp_lock *l, const char *fn)
{
    if (l && l->magic == MAGIC_LOCK && !l->recursive)     /* the common path */
        return rmutex_unlock(&l->m) == 0 ? 0 : fail_not_held(l, fn);
    if (!l || (l->magic != MAGIC_LOCK && l->magic != MAGIC_MLOCK))
        return mp_fail_handle(fn, "lock", l);
    if (l->magic == MAGIC_MLOCK)
        return mp_fail_code(mlock_release(l), fn);
    if (l->recursive) {
        if (!lock_is_mine(l))
            return fail_not_held(l, fn);
        if (--l->depth > 0)
            return 0;
    }
    int rc = rmutex_unlock(&l->m);     /* the mutex itself refuses a non-owner */
    return rc == 0 ? 0 : fail_not_held(l, fn);
}

int mp_lock_release(mp_lock *l)
{
    return release(l, __func__);
}

int lock_release_as(mp_lock *l, const char *fn)
{
    return release(l, fn);
}

void mp_lock_free(mp_lock *l)
{
    if (!l)
        return;
    if (l->magic == MAGIC_MLOCK) {
        mlock_free(l);
        return;
    }
    if (l->magic != MAGIC_LOCK)
        return;
    /* A mutex we still hold sits on our robust list: take it off first. */
    if (lock_is_mine(l))
        rmutex_unlock(&l->m);
    l->magic = MAGIC_FREED;
    rmutex_destroy(&l->m);
    arena_free(l);
}

bool lock_is_mine(mp_lock *l)
{
    return rmutex_owner(&l->m) == mp_gettid();
}

int lock_release_all(mp_lock *l, uint32_t *depth)
{
    if (!lock_is_mine(l))
        return MP_EINVAL;
    *depth = l->depth;
    l->depth = 0;
    return rmutex_unlock(&l->m);
}

int lock_restore(mp_lock *l, uint32_t depth)
{
    mp_deadline forever = deadline_in(MP_FOREVER);
    int rc = rmutex_lock(&l->m, &forever);
    if (rc == 0 || rc == MP_EOWNERDEAD)
        l->depth = depth;
    return rc;
}
