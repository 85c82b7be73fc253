/* pool_worker.c - a pool worker's life: initializer, take a task, run it, repeat.
 *
 * A worker only touches the pool's shared part (struct pool_shared): it claims
 * the head of the task list into its slot, runs the function it resolved by
 * fnref in its own image, publishes the result with one CAS on the task's
 * state and clears its slot. It spins briefly when idle, then sleeps on the
 * list's sequence word until a submitter or close wakes it.
 */
#include "pool_internal.h"

#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define SPIN_NS 20000

/* The slot is written before the task leaves the list, so at every point a
 * dead worker's slot or the list (see list_repair) still names the task. */
static mp_future *list_pop(struct pool_shared *sh, struct slot *s)
{
    list_lock(sh);
    mp_future *f = sh->head;
    if (f) {
        atomic_store(&s->current_id, atomic_load(&f->id));
        atomic_store(&s->current, f);
        pool_hook("claimed");
        uint32_t st = atomic_load(&f->state);
        while (!atomic_compare_exchange_weak(&f->state, &st, (st & ~TASK_BASE) | TASK_RUNNING))
            ;
        sh->head = f->next;
        if (!sh->head)
            sh->tail = NULL;
        atomic_fetch_sub(&sh->queued, 1);
    }
    list_unlock(sh);
    return f;
}

struct worker_local {
    void **fns;                     /* resolved, by fnentry index */
    uint32_t cap;
    mp_buf out;
};

static mp_fn worker_resolve(struct worker_local *L, const struct fnentry *e)
{
    if (e->index >= L->cap) {
        uint32_t cap = e->index + 16;
        void **n = realloc(L->fns, cap * sizeof *n);
        if (!n)
            return NULL;
        memset(n + L->cap, 0, (cap - L->cap) * sizeof *n);
        L->fns = n;
        L->cap = cap;
    }
    if (!L->fns[e->index])
        L->fns[e->index] = fnref_resolve(&e->ref);
    return (mp_fn)L->fns[e->index];
}

static void idle_wait(struct pool_shared *sh, uint32_t seq)
{
    uint64_t start = now_ns();
    for (unsigned i = 0; atomic_load_explicit(&sh->seq, memory_order_acquire) == seq; i++) {
        sched_yield();               /* on a busy machine the submitter needs the CPU */
        if ((i & 7) == 7 && now_ns() - start > SPIN_NS) {
            mp_deadline forever = deadline_in(MP_FOREVER);
            atomic_fetch_add(&sh->sleepers, 1);
            if (atomic_load(&sh->seq) == seq)
                futex_wait(&sh->seq, seq, &forever);
            atomic_fetch_sub(&sh->sleepers, 1);
            return;
        }
    }
}

static mp_future *take_task(struct pool_shared *sh, struct slot *s)
{
    for (;;) {
        uint32_t seq = atomic_load(&sh->seq);
        uint32_t closing = atomic_load(&sh->closing);
        if (closing == CLOSING_NOW)
            return NULL;
        if (atomic_load(&sh->queued) > 0) {
            mp_future *f = list_pop(sh, s);
            if (f)
                return f;
            continue;
        }
        if (closing == CLOSING_DRAIN)
            return NULL;
        idle_wait(sh, seq);
    }
}

MP_TEST_HOOK void (*mp__pool_test_hook)(const char *point);
MP_TEST_HOOK bool (*mp__pool_refuse_alloc)(const char *what);

void pool_hook(const char *point)
{
    if (mp__pool_test_hook)
        mp__pool_test_hook(point);
}

bool pool_alloc_refused(const char *what)
{
    return mp__pool_refuse_alloc && mp__pool_refuse_alloc(what);
}

void worker_hold(struct slot *s)
{
    atomic_store(&s->hold, 1);
    if (atomic_load(&s->kill_req)) {
        atomic_store(&s->hold, 0);
        raise(SIGKILL);              /* the pool is killing us: here nothing is half done */
    }
}

void worker_release(struct slot *s)
{
    atomic_store(&s->hold, 0);
}

/* Copies the worker's output into the task: inline when small. */
static int store_output(struct slot *s, mp_future *f, const mp_buf *out)
{
    if (out->len == 0)
        return 0;
    void *dst = f->out_inline;
    worker_hold(s);
    /* f->out names the block from its taking on, before its pages are
     * reserved: a worker killed after that leaves it to task_free. Claimed
     * first, so that the allocation's journal names it: one killed between
     * the commit and the store leaves the block there too, by the repair. */
    if (out->len > TASK_INLINE) {
        atomic_store(&f->out, HAND_CLAIMED);
        if (!(dst = arena_alloc_held(out->len, false, NULL, &f->out))) {
            atomic_store(&f->out, NULL);
            worker_release(s);
            return MP_ENOMEM;
        }
    }
    f->out = dst;
    atomic_signal_fence(memory_order_seq_cst);
    memcpy(dst, out->data, out->len);
    pool_hook("output_copied");
    f->out_len = out->len;
    worker_release(s);
    return 0;
}

int task_call(const struct task_runner *r, const struct fnentry *e, mp_fn fn, const void *in,
              size_t len, mp_buf *out, int *code)
{
    int rc = 0;
    *code = 0;
    out->len = 0;
    if (r)
        rc = r->call(r->ctx, e, in, len, out, code);
    else if (fn)
        *code = fn(in, len, out);
    else
        rc = MP_EINVAL;                  /* its object cannot be found in this image */
    return rc == 0 && *code != 0 ? MP_ETASK : rc;
}

static int run_apply(struct pool_shared *sh, struct slot *s, mp_future *f, mp_fn fn,
                     const struct task_runner *r, mp_buf *out)
{
    int code;
    if (sh->task_timeout > 0)
        atomic_store(&s->started_ns, now_ns());
    int rc = task_call(r, f->fn, fn, f->in, f->in_len, out, &code);
    if (rc == WORKER_GONE)
        return rc;
    atomic_store(&s->started_ns, 0);
    if (rc == 0 || rc == MP_ETASK) {
        int src = store_output(s, f, out);
        rc = src ? src : rc;
    }
    task_finish(f, TASK_RUNNING, rc, code);
    return 0;
}

static bool run_initializer(struct pool_shared *sh, void **keep)
{
    void (*init)(void *) = (void (*)(void *))fnref_resolve(&sh->init_ref);
    void *arg = sh->initarg;
    if (!init)
        return false;
    if (sh->initarg_size) {          /* each worker gets its own copy, kept for its life */
        *keep = malloc(sh->initarg_size);
        if (*keep)
            memcpy(*keep, sh->initarg, sh->initarg_size);
        arg = *keep;
    }
    init(arg);
    return true;
}

int pool_worker_main(void *arg)
{
    struct worker_arg a = *(struct worker_arg *)arg;
    struct pool_shared *sh = a.sh;
    struct slot *s = &sh->slots[a.slot];
    struct worker_local L = { 0 };
    void *initarg = NULL;
    int status = 0;
    /* A runner runs the initializer where it runs tasks, before this. */
    if (sh->has_init && !a.runner && !run_initializer(sh, &initarg))
        return 127;                  /* not found in this image: counts as a failed start */
    atomic_store(&s->ready, 1);
    for (int done = 0; sh->maxtasks == 0 || done < sh->maxtasks; done++) {
        mp_future *f = take_task(sh, s);
        if (!f)
            break;
        mp_fn fn = a.runner ? NULL : worker_resolve(&L, f->kind == KIND_CHUNK ? f->job->fn : f->fn);
        int rc = f->kind == KIND_CHUNK ? chunk_run(sh, s, f, fn, a.runner, &L.out)
                                       : run_apply(sh, s, f, fn, a.runner, &L.out);
        if (rc == WORKER_GONE) {
            status = -1;
            break;
        }
        atomic_store(&s->current, NULL);
    }
    free(initarg);
    free(L.fns);
    mp_buf_free(&L.out);
    return status;
}

int mp__pool_worker_main(void *arg)
{
    return pool_worker_main(arg);
}

void *mp__fnref_resolve(const fnref *r)
{
    return fnref_resolve(r);
}
