/* future.c - the result of a task: waiting on it, reading it, cancelling it.
 *
 * A future is the task itself, in the arena. Its 32-bit state word is also
 * the futex its waiters sleep on; whoever finishes the task publishes rc,
 * code and output with one CAS on that word, and wakes only if a waiter set
 * TASK_WAITERS, so an uncontended completion makes no system call.
 */
#include "pool_internal.h"

#include <limits.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SPIN_NS 20000

/* The future whose on_done callbacks this thread is running, the innermost
 * (a callback's cancel or on_done runs others in it); NULL: none. */
static __thread const mp_future *callbacks_of;

/* Runs cb on f as one of f's callbacks: f's handle stays valid in it, and
 * the thread sees futures done once final (task_settled). */
static void run_callback(mp_future *f, void (*cb)(mp_future *, void *), void *ctx)
{
    const mp_future *outer = callbacks_of;
    callbacks_of = f;
    cb(f, ctx);
    callbacks_of = outer;
}

bool future_in_callbacks(void)
{
    return callbacks_of != NULL;
}

bool future_valid(const mp_future *f)
{
    /* Freed while pending (DETACHED) or since (MAGIC_FREED): refused; but
     * its own callbacks keep their handle to the end (task_run_callbacks),
     * freed by its caller meanwhile or not. */
    return f && arena_contains(f, sizeof *f) &&
           atomic_load_explicit(&f->magic, memory_order_relaxed) == MAGIC_FUTURE &&
           (!(atomic_load_explicit(&f->state, memory_order_relaxed) & TASK_DETACHED) ||
            f == callbacks_of);
}

bool task_settled(const mp_future *f, uint32_t s)
{
    if (!state_final(s))
        return false;
    return !(s & TASK_NOTIFY) || (s & TASK_PROCESSED) || callbacks_of ||
           pool_thread_serves_any() || f->callbacks_pid != pool_self_pid();
}

mp_future *task_new(mp_pool *p, uint32_t kind, size_t in_len)
{
    if (in_len > SIZE_MAX - sizeof(mp_future))
        return NULL;
    mp_future *f = arena_alloc_nozero(sizeof *f + in_len);
    if (!f)
        return NULL;
    HANDOVER_ACQUIRE(f);     /* it may be a task's block, freed after a worker ran it */
    /* The collector may still read the id of the task this block was (a
     * dead worker's notice: a different id says that task is gone), so the
     * id is cleared atomically and the rest around it. */
    size_t at = offsetof(mp_future, id), after = at + sizeof f->id;
    atomic_store_explicit(&f->id, 0, memory_order_relaxed);
    memset(f, 0, at);
    memset((char *)f + after, 0, sizeof *f - after);
    atomic_store_explicit(&f->magic, MAGIC_FUTURE, memory_order_relaxed);
    f->kind = kind;
    f->owner = p;
    f->fail_index = SIZE_MAX;
    f->in_len = in_len;
    return f;
}

void task_free(mp_future *f)
{
    atomic_store(&f->id, 0);
    atomic_store_explicit(&f->magic, MAGIC_FREED, memory_order_relaxed);
    /* A worker that died inside the allocator taking f->out's block left
     * the slot named in the allocation's journal: the repair (which the
     * next holder of the arena's lock makes) writes there, so it must come
     * before f is freed, and before f->out is read. */
    if (f->rc == MP_ECRASHED || f->rc == MP_EKILLED || atomic_load(&f->out) == HAND_CLAIMED)
        arena_settle();
    void *out = atomic_load(&f->out);
    if (out && out != HAND_CLAIMED && out != f->out_inline)
        arena_free(out);
    arena_free(f->blob);
    if (f->blob_new && f->blob_new != f->blob)   /* its worker died growing blob */
        arena_free(f->blob_new);
    if (f->blob_old && f->blob_old != f->blob)
        arena_free(f->blob_old);
    for (struct callback *c = f->callbacks, *next; c; c = next) {
        next = c->next;
        pool_mem_free(c);
    }
    arena_free(f);
}

/* Wakes whoever waits for f (state s, before the change just made): its
 * own waiters, and mp_futures_wait's on its pool. */
static void wake_waiters(mp_future *f, struct pool_shared *sh, uint32_t s)
{
    if (s & TASK_WAITERS)
        futex_wake(&f->state, INT_MAX);
    if (atomic_load(&sh->any_waiters)) {
        atomic_fetch_add(&sh->any_seq, 1);
        futex_wake(&sh->any_seq, INT_MAX);
    }
}

int task_finish(mp_future *f, uint32_t from, int rc, int code)
{
    return task_finish_as(f, from, rc, code, false);
}

int task_finish_as(mp_future *f, uint32_t from, int rc, int code, bool callbacks_here)
{
    struct pool_shared *sh = f->sh;
    uint32_t kind = f->kind;
    uint32_t s = atomic_load(&f->state);
    if ((s & TASK_BASE) != from)
        return -1;
    f->rc = rc;
    f->code = code;
    while (!atomic_compare_exchange_weak(&f->state, &s, (s & ~TASK_BASE) | TASK_FINAL))
        if ((s & TASK_BASE) != from)
            return -1;
    /* From here f may belong to its caller again: touch only what s allows. */
    if (kind == KIND_APPLY && sh->count_items)
        atomic_fetch_add(&sh->items_done, 1);
    wake_waiters(f, sh, s);
    if ((s & TASK_NOTIFY) && callbacks_here)
        return 1;
    if (s & TASK_NOTIFY)
        collector_push(sh, f);
    else if (s & TASK_DETACHED)
        task_free(f);
    return 0;
}

void task_processed(mp_future *f)
{
    struct pool_shared *sh = f->sh;
    uint32_t s = atomic_fetch_or(&f->state, TASK_PROCESSED);
    wake_waiters(f, sh, s);              /* those in the callbacks' process wait for this */
    if (s & TASK_DETACHED)
        task_free(f);
}

/* On the collector, before task_processed. A callback gets a handle it can
 * use even if its caller freed it meanwhile: DETACHED is lifted for it. */
void task_run_callbacks(mp_future *f)
{
    pthread_mutex_t *lock = pool_lock(f->owner);
    pthread_mutex_lock(lock);
    struct callback *list = f->callbacks;
    f->callbacks = NULL;
    pthread_mutex_unlock(lock);
    if (!list)
        return;
    uint32_t freed = atomic_fetch_and(&f->state, ~TASK_DETACHED) & TASK_DETACHED;
    for (struct callback *c = list, *next; c; c = next) {
        next = c->next;
        run_callback(f, c->cb, c->ctx);
        pool_mem_free(c);
    }
    if (freed)
        atomic_fetch_or(&f->state, TASK_DETACHED);
}

static bool spin_until_settled(mp_future *f)
{
    if (!several_cpus())
        return false;
    uint64_t start = now_ns();
    for (unsigned i = 0;; i++) {
        if (task_settled(f, atomic_load_explicit(&f->state, memory_order_acquire)))
            return true;
        sched_yield();               /* the worker we wait for may need this CPU */
        if ((i & 7) == 7 && now_ns() - start > SPIN_NS)
            return false;
    }
}

int task_wait(mp_future *f, const mp_deadline *d)
{
    if (task_settled(f, atomic_load(&f->state)))
        return 0;
    if (deadline_passed(d))
        return MP_ETIMEDOUT;
    if (spin_until_settled(f))
        return 0;
    for (;;) {
        uint32_t s = atomic_load(&f->state);
        if (task_settled(f, s))
            return 0;
        if (!(s & TASK_WAITERS)) {
            if (!atomic_compare_exchange_weak(&f->state, &s, s | TASK_WAITERS))
                continue;
            s |= TASK_WAITERS;
        }
        if (futex_wait(&f->state, s, d) == MP_ETIMEDOUT)
            return task_settled(f, atomic_load(&f->state)) ? 0 : MP_ETIMEDOUT;
    }
}

/* A map's future that only the calling thread could finish: it is that
 * pool's result thread (in an on_done or progress callback), which
 * finishes maps. A wait for it would wait for itself. */
static bool finished_only_by_caller(const mp_future *f)
{
    return f->kind == KIND_JOB && !state_final(atomic_load(&f->state)) &&
           pool_thread_serves(f->sh);
}

#define WAITS_FOR_ITSELF "called from the pool's own result thread (an on_done or progress " \
                         "callback), which finishes this map: it would wait for itself"

static int future_wait(mp_future *f, double timeout, const char *fn)
{
    if (!future_valid(f))
        return mp_fail_handle(fn, "f", f);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(fn, timeout);
    if (timeout != 0 && finished_only_by_caller(f))
        return mp_fail(MP_ESTATE, fn, WAITS_FOR_ITSELF);
    mp_deadline d = deadline_in(timeout);
    int rc = task_wait(f, &d);
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, fn, "the task has not finished within %g s", timeout);
    return rc;
}

int future_fail_listed(const char *fn, size_t i, const mp_future *f)
{
    return mp_fail(MP_EINVAL, fn, "fs[%zu] is %s", i, !f ? "NULL" :
                   *(const uint32_t *)f == MAGIC_FREED ? "a freed future" : "not a future");
}

int mp_future_wait(mp_future *f, double timeout)
{
    return future_wait(f, timeout, __func__);
}

bool mp_future_done(mp_future *f)
{
    return future_valid(f) && task_settled(f, atomic_load(&f->state));
}

int mp_future_result(mp_future *f, mp_buf *out, double timeout)
{
    const char *fn = __func__;
    int rc = future_wait(f, timeout, fn);
    if (rc != 0)
        return rc;
    if (out) {
        out->len = 0;
        rc = f->out_len ? mp_buf_append(out, f->out, f->out_len) : 0;   /* else maybe claimed only */
        if (rc != 0)
            return mp_fail(rc, fn, "no memory for the %zu-byte result in out", f->out_len);
    }
    switch (f->rc) {
    case 0:
        return 0;
    case MP_ETASK:
        return mp_fail(f->rc, fn, "the task returned the error code %d (mp_future_code gives it)",
                       f->code);
    case MP_ECRASHED:
        if (f->code < 0)
            return mp_fail(f->rc, fn, "the worker process running the task was killed by signal "
                           "%d (mp_future_code gives it; the pool runs the next tasks in a new "
                           "worker)", -f->code);
        return mp_fail(f->rc, fn, "the worker process running the task exited, with status %d "
                       "(did the task call exit? mp_future_code gives it; the pool runs the next "
                       "tasks in a new worker)", f->code);
    case MP_EKILLED:
        return mp_fail(f->rc, fn, "the pool killed the task (its task_timeout passed, or "
                       "mp_pool_terminate)");
    case MP_ECANCELLED:
        return mp_fail(f->rc, fn, "the task was cancelled before it ran");
    case MP_EBROKEN:
        return mp_fail(f->rc, fn, "the pool broke before the task ran: it could not start a "
                       "worker for %.0f s (out of descriptors, processes or memory), or its "
                       "initializer kills the workers; a submit to it says which",
                       POOL_SHORTAGE_MAX_S);
    default:
        return mp_fail_code(f->rc, fn);
    }
}

int mp_future_code(mp_future *f)
{
    if (!future_valid(f) || !task_settled(f, atomic_load(&f->state)))
        return 0;
    return task_code(f->rc, f->code);
}

/* The checks of a call that reads what a finished f tells into out (named
 * out_name; f is what): 0, or the code of the message made for fn. */
static int finished_check(mp_future *f, const void *out, const char *out_name,
                          const char *what, const char *fn)
{
    if (!future_valid(f))
        return mp_fail_handle(fn, "f", f);
    if (!out)
        return mp_fail(MP_EINVAL, fn, "%s is NULL", out_name);
    if (!task_settled(f, atomic_load(&f->state)))
        return mp_fail(MP_ESTATE, fn, "the %s has not finished; wait for it first", what);
    return 0;
}

int mp_future_exitcode(mp_future *f, int *exitcode)
{
    int rc = finished_check(f, exitcode, "exitcode", "task", __func__);
    if (rc != 0)
        return rc;
    if (f->rc != MP_ECRASHED)
        return mp_fail(MP_ESTATE, __func__, "the task's worker did not die under it (its "
                       "result is %s)", mp_errname(f->rc));
    *exitcode = f->code;
    return 0;
}

int mp_future_failed_index(mp_future *f, size_t *index)
{
    int rc = finished_check(f, index, "index", "map", __func__);
    if (rc != 0)
        return rc;
    if (f->fail_index == SIZE_MAX)
        return mp_fail(MP_ESTATE, __func__, "no item failed (or f is not a map's future)");
    *index = f->fail_index;
    return 0;
}

int mp_future_cancel(mp_future *f)
{
    if (!future_valid(f))
        return mp_fail_handle(__func__, "f", f);
    if (f->kind != KIND_APPLY)
        return mp_fail(MP_ESTATE, __func__, "only a future of mp_pool_apply_async can be "
                       "cancelled, not a map's");
    struct pool_shared *sh = f->sh;
    int rc = MP_ESTATE, finished = -1;
    if ((atomic_load(&f->state) & TASK_BASE) == TASK_QUEUED) {
        list_lock(sh);
        /* Its callbacks run here before we return, as Python's cancel
         * runs them, where they can: in the process that made the pool
         * (alive while f is queued in it). */
        if ((atomic_load(&f->state) & TASK_BASE) == TASK_QUEUED && list_unlink(sh, f))
            finished = task_finish_as(f, TASK_QUEUED, MP_ECANCELLED, 0,
                                      f->owner && pool_owned_here(f->owner));
        list_unlock(sh);
    }
    if (finished == 1) {                /* as the result thread would */
        mp_pool *owner = f->owner;       /* f may be freed by task_processed */
        pool_cancel_callbacks(owner, true);
        task_run_callbacks(f);
        task_processed(f);
        pool_cancel_callbacks(owner, false);
    }
    if (finished >= 0)
        rc = 0;
    if (rc != 0 && state_final(atomic_load(&f->state)) && f->rc == MP_ECANCELLED)
        return 0;                     /* cancelled already: Python's cancel says True again */
    if (rc != 0)
        return mp_fail(rc, __func__, "the task is %s; only one still queued can be cancelled "
                       "(as Python's Future.cancel)", state_final(atomic_load(&f->state)) ?
                       "finished" : "running");
    return 0;
}

int mp_future_on_done(mp_future *f, void (*cb)(mp_future *, void *), void *ctx)
{
    if (!future_valid(f))
        return mp_fail_handle(__func__, "f", f);
    if (!cb)
        return mp_fail(MP_EINVAL, __func__, "cb is NULL");
    if (state_final(atomic_load(&f->state))) {
        run_callback(f, cb, ctx);
        return 0;
    }
    if (!f->owner || !pool_owned_here(f->owner))
        return mp_fail(MP_ESTATE, __func__, "callbacks run in the process that made the pool, "
                       "and this is another one");
    struct callback *c = pool_mem_alloc(sizeof *c);   /* the collector frees it */
    if (!c)
        return mp_fail(MP_ENOMEM, __func__, "no memory for the callback");
    c->cb = cb;
    c->ctx = ctx;
    c->next = NULL;
    pthread_mutex_t *lock = pool_lock(f->owner);
    pthread_mutex_lock(lock);
    f->callbacks_pid = pool_self_pid();  /* before NOTIFY, which the CAS publishes */
    uint32_t s = atomic_load(&f->state);
    while (!state_final(s) && !atomic_compare_exchange_weak(&f->state, &s, s | TASK_NOTIFY))
        ;
    if (state_final(s)) {            /* finished meanwhile: run it here, now */
        pthread_mutex_unlock(lock);
        pool_mem_free(c);
        run_callback(f, cb, ctx);
        return 0;
    }
    struct callback **tail = &f->callbacks;
    while (*tail)
        tail = &(*tail)->next;
    *tail = c;
    pthread_mutex_unlock(lock);
    return 0;
}

/* A table of the futures seen, by address (open addressing): no sort,
 * which may allocate from the heap; a pool's caller stays out of it. */
static bool seen_before(uintptr_t *table, size_t mask, uintptr_t f)
{
    size_t at = (size_t)((f >> 4) * 0x9E3779B97F4A7C15ull) & mask;
    while (table[at] && table[at] != f)
        at = (at + 1) & mask;
    bool seen = table[at] == f;
    table[at] = f;
    return seen;
}

int futures_repeats(mp_future *const *fs, size_t n, bool *repeat, const mp_deadline *d)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    uintptr_t *table = n > REPEATS_BY_PAIRS ? pool_mem_alloc_until(cap * sizeof *table, d) : NULL;
    if (table)
        memset(table, 0, cap * sizeof *table);
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        repeat[i] = false;
        if (table)
            repeat[i] = seen_before(table, cap - 1, (uintptr_t)fs[i]);
        else
            for (size_t j = 0; j < i && !repeat[i]; j++)   /* few, or no memory */
                repeat[i] = fs[j] == fs[i];
        count += repeat[i];
    }
    pool_mem_free(table);
    return count;
}

/* Whether the wait for fs (each counted once: repeat[i] marks a future
 * listed before) is over; *done: how many are. */
static bool wait_satisfied(mp_future **fs, size_t n, const bool *repeat, int mode, int *done)
{
    int count = 0;
    size_t distinct = 0;
    bool failed = false;
    for (size_t i = 0; i < n; i++) {
        if (repeat && repeat[i])
            continue;
        distinct++;
        if (!task_settled(fs[i], atomic_load(&fs[i]->state)))
            continue;
        count++;
        failed |= fs[i]->rc != 0 && fs[i]->rc != MP_ECANCELLED;
    }
    *done = count;
    n = distinct;
    if ((size_t)count == n)          /* all done, or nothing to wait for (Python's wait([])) */
        return true;
    if (mode == MP_FIRST_COMPLETED)
        return count > 0;
    if (mode == MP_FIRST_EXCEPTION && failed)
        return true;
    return (size_t)count == n;
}

/* Any pool one of the pending futures belongs to, and whether they span
 * several (then waits are sliced, since only one word is watched). */
static struct pool_shared *pending_pool(mp_future **fs, size_t n, bool *mixed)
{
    struct pool_shared *sh = NULL;
    *mixed = false;
    for (size_t i = 0; i < n; i++) {
        if (task_settled(fs[i], atomic_load(&fs[i]->state)))
            continue;
        if (sh && fs[i]->sh != sh)
            *mixed = true;
        if (!sh)
            sh = fs[i]->sh;
    }
    return sh;
}

int mp_futures_wait(mp_future **fs, size_t n, int mode, double timeout)
{
    return futures_wait(fs, n, mode, timeout, false);
}

int futures_wait(mp_future **fs, size_t n, int mode, double timeout, bool distinct)
{
    const char *fn = "mp_futures_wait";
    if (!fs && n)
        return mp_fail(MP_EINVAL, fn, "fs is NULL but n is %zu", n);
    if (n > INT_MAX)
        return mp_fail(MP_EINVAL, fn, "n is %zu; at most INT_MAX futures", n);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(fn, timeout);
    if (mode != MP_FIRST_COMPLETED && mode != MP_FIRST_EXCEPTION && mode != MP_ALL_COMPLETED)
        return mp_fail(MP_EINVAL, fn, "mode is %d; use MP_FIRST_COMPLETED, MP_FIRST_EXCEPTION "
                       "or MP_ALL_COMPLETED", mode);
    for (size_t i = 0; i < n; i++)
        if (!future_valid(fs[i]))
            return future_fail_listed(fn, i, fs[i]);
    for (size_t i = 0; timeout != 0 && i < n; i++)
        if (finished_only_by_caller(fs[i]))
            return mp_fail(MP_ESTATE, fn, "fs[%zu]: " WAITS_FOR_ITSELF, i);
    /* A future listed twice counts once (Python's wait works on a set). */
    mp_deadline d = deadline_in(timeout);
    bool few[REPEATS_BY_PAIRS], *repeat = distinct ? NULL : n <= REPEATS_BY_PAIRS ? few
                                                   : pool_mem_alloc_until(n, &d);
    if (!distinct && !repeat)
        return mp_fail(MP_ENOMEM, fn, "no memory to look over %zu futures", n);
    if (repeat)
        futures_repeats(fs, n, repeat, &d);
    int done;
    for (;;) {
        if (wait_satisfied(fs, n, repeat, mode, &done) || deadline_passed(&d))
            break;
        bool mixed;
        struct pool_shared *sh = pending_pool(fs, n, &mixed);
        if (!sh)
            continue;
        atomic_fetch_add(&sh->any_waiters, 1);
        uint32_t seq = atomic_load(&sh->any_seq);
        if (!wait_satisfied(fs, n, repeat, mode, &done)) {
            mp_deadline slice = d;
            if (mixed && deadline_left(&d) > 0.01)
                slice = deadline_in(0.01);
            futex_wait(&sh->any_seq, seq, &slice);
        }
        atomic_fetch_sub(&sh->any_waiters, 1);
    }
    if (repeat != few)
        pool_mem_free(repeat);
    return done;
}

void mp_future_free(mp_future *f)
{
    if (!future_valid(f)) {
        if (f)
            mp_fail_handle(__func__, "f", f);
        return;
    }
    uint32_t s = atomic_load(&f->state);
    for (;;) {
        if (state_final(s) && (!(s & TASK_NOTIFY) || (s & TASK_PROCESSED))) {
            task_free(f);
            return;
        }
        HANDOVER_RELEASE(f);          /* a worker may free it from here on */
        if (atomic_compare_exchange_weak(&f->state, &s, s | TASK_DETACHED))
            return;
    }
}
