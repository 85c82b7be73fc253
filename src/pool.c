/* pool.c - worker pools that survive their workers: Pool and ProcessPoolExecutor.
 *
 * Tasks are futures in the arena, queued on one list under a robust mutex.
 * A worker claims a task by writing it into its slot before unlinking it, so
 * when a worker dies the pool knows exactly which task it took: the monitor
 * thread sees the death (pidfd), the collector thread fails that one task
 * (MP_ECRASHED, or MP_EKILLED for task_timeout and terminate) and the monitor
 * starts a replacement (after a back-off if workers die before ready; only
 * the pool's own cause breaks it: post_notice). The collector also runs
 * on_done callbacks, finishes maps and feeds imap iterators, all in the
 * caller's process. The worker's side is pool_worker.c; map and imap are
 * pool_map.c; futures future.c.
 *
 * Forks and the heap. The monitor forks replacements while the collector
 * and the caller's threads run, and a forked worker inherits every lock
 * another thread held at that instant. glibc's malloc takes its own locks
 * around fork(); a sanitizer's malloc may not (ThreadSanitizer's does not,
 * up to LLVM 17 at least), and a worker forked while the collector was
 * inside it hung at its first allocation, holding its chunk for ever. So
 * what the collector and the iterators make and free while workers start
 * (notices, imap records, callbacks) comes from the arena, whose locks are
 * process-shared and whose holder lives on in this process after the fork
 * (pool_mem_alloc); the heap only when the arena is full.
 */
#include "pool_internal.h"
#include "process_internal.h"

#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define PROGRESS_NS 100000000ull
#define INIT_FAILURES_MAX 3        /* initializers failing by their own fault in a row: broken */
#define START_FAILURES_MAX 8       /* starts failing in a row with no worker alive: broken, */
#define SHORTAGE_MAX_NS ((uint64_t)(POOL_SHORTAGE_MAX_S * 1e9))   /* or for this long,
                                   * when for want of a resource (descriptors, processes, memory) */
#define UNWATCHED_NAP_MS 50        /* a live worker with no sentinel: look this often */
#define BACKOFF_MIN_NS 1000000ull  /* a slot whose workers die before ready waits 1 ms, */
#define BACKOFF_MAX_NS 500000000ull   /* doubling up to 0.5 s, before its next start */
#define ENDING_NAP_MS 10           /* a worker ended, its status not published yet */
#define OWED_RETRY_S 0.01          /* a death owed a notice: try again at least this often */

enum { POOL_OPEN, POOL_CLOSED, POOL_TERMINATED };

struct notice {                     /* a worker died holding this task */
    struct notice *next;
    mp_future *f;
    uint64_t id;
    int rc, code;
    _Atomic bool *spare_of;         /* a worker's spare: handed back, not freed */
};

struct worker {
    mp_process *proc;               /* processes backend */
    pthread_t thread;               /* threads backend */
    bool alive;
    bool killing;                   /* we killed it: its task ends MP_EKILLED */
    bool readable;                  /* its sentinel was readable at the last poll */
    bool ending;                    /* ... but it was not reaped: poll it with naps */
    unsigned quick_deaths;          /* workers of this slot dead before ready, in a row */
    uint64_t not_before;            /* no start in this slot before (now_ns clock) */
    /* The notice of a death when neither the arena nor the heap has room
     * for one: posted by the monitor, handed back by the collector. */
    struct notice spare;
    _Atomic bool spare_posted;
    /* A death with no notice to post it in (no memory, and the spare still
     * carries the last one): the slot is not restarted until it is posted,
     * so it owes one death at most. */
    bool owes_notice;
    mp_future *owed_f;
    uint64_t owed_id;
    int owed_status;
};

struct fncache { const void *fn; const struct fnentry *e; };

struct mp_pool {
    uint32_t magic;
    pid_t owner;
    struct pool_shared *sh;
    const struct pool_backend *ops;
    mp_pool_opts o;
    int nworkers;
    struct worker *workers;
    pthread_mutex_t lock;           /* workers, state, notices */
    pthread_mutex_t cblock;         /* callbacks of this pool's futures */
    pthread_mutex_t fnlock;         /* fncache and the shared function list */
    _Atomic int state;              /* POOL_* */
    _Atomic int halted_by;          /* what halt failed the tasks with: MP_EBROKEN, ... */
    _Atomic int broken_start;       /* the start failure that broke the pool, or 0 */
    int efd;                        /* wakes the monitor */
    struct pollfd *pollfds;         /* the monitor's: efd and one per worker */
    int *pollslots;                 /* the worker of each pollfds entry */
    pthread_t monitor, collector;
    bool threads_running, threads_joined;
    _Atomic uint32_t monitor_done;
    _Atomic uint32_t finished;      /* futex: the collector has drained everything */
    _Atomic uint32_t cancel_callbacks;   /* futex: cancels running callbacks in their thread */
    _Atomic uint32_t start_rc;      /* futex: 0 starting, 1 started, else the error */
    _Atomic uint32_t collector_up;  /* futex: the collector's thread has started */
    struct notice *notices;
    _Atomic uint32_t notices_pending;   /* posted, not yet handled */
    int init_failures;              /* see post_notice */
    int start_failures;
    uint64_t short_since;           /* when starts began to fail for want of a resource */
    struct fncache *fns;
    size_t nfns, capfns;
    uint64_t progress_done, progress_total, progress_ns;
    mp_pool *next_live;
};

/* Pools still running in this process, terminated at exit (Python's Pool
 * finalizer) before the process module stops their workers: the one piece
 * of global state here, or workers would be replaced while exit kills them. */

/* The MPI backend, registered by libmproc_mpi when it is loaded. */
static const struct pool_backend *_Atomic mpi_backend;

void mp__pool_register_mpi(const struct pool_backend *b)
{
    atomic_store(&mpi_backend, b);
}
static struct {
    pthread_mutex_t lock;
    mp_pool *list;
    pthread_once_t registered;
    _Atomic pid_t pid;               /* getpid() is a system call: cached, reset at fork */
} live = { PTHREAD_MUTEX_INITIALIZER, NULL, PTHREAD_ONCE_INIT, 0 };
static void live_add(mp_pool *p);
static void live_register(void);

/* The handle lives in the arena, as every mproc object: a freed one is
 * still mapped, reads MAGIC_FREED and is refused (ASan sees no heap). */
static bool valid(const mp_pool *p)
{
    return p && arena_contains(p, sizeof *p) && p->magic == MAGIC_POOL;
}

pid_t pool_self_pid(void)
{
    pid_t pid = atomic_load_explicit(&live.pid, memory_order_relaxed);
    if (!pid) {
        pid = getpid();
        atomic_store_explicit(&live.pid, pid, memory_order_relaxed);
    }
    return pid;
}

bool pool_owned_here(const mp_pool *p)
{
    return p->owner == pool_self_pid();
}

pthread_mutex_t *pool_lock(mp_pool *p)
{
    return &p->cblock;
}

struct pool_shared *pool_shared_of(const mp_pool *p)
{
    return p->sh;
}

struct pool_shared *mp__pool_shared_of(const mp_pool *p)
{
    return p->sh;
}

int pool_worker_count(const mp_pool *p)
{
    return p->nworkers;
}

bool pool_terminating(const mp_pool *p)
{
    return atomic_load(&p->state) == POOL_TERMINATED;
}

/* The reason a pool handle cannot be used here, for mp_last_error (with
 * the call's name still to come: mp_fail_code); 0 if it can. */
static int pool_check_usable(mp_pool *p)
{
    if (!valid(p))
        return mp_fail_handle(NULL, "pool", p);
    if (!pool_owned_here(p))
        return mp_fail(MP_ESTATE, NULL, "the pool belongs to the process that made it; "
                       "another process (a forked child) cannot use it");
    return 0;
}

int pool_broken_why(mp_pool *p)
{
    int why = atomic_load(&p->broken_start);
    if (why)
        return mp_fail(MP_EBROKEN, NULL, "the pool is broken: no worker could be started for "
                       "%.0f s (%s); make a new one", POOL_SHORTAGE_MAX_S, mp_strerror(why));
    return mp_fail(MP_EBROKEN, NULL, "the pool is broken: it could not keep a worker alive "
                   "(does its initializer kill them?); make a new one");
}

int pool_check_open(mp_pool *p)
{
    int rc = pool_check_usable(p);
    if (rc != 0)
        return rc;
    int state = atomic_load(&p->state);
    if (state == POOL_TERMINATED && atomic_load(&p->halted_by) == MP_EBROKEN)
        return pool_broken_why(p);
    if (state != POOL_OPEN)
        return mp_fail(MP_ECLOSED, NULL, "the pool is %s; submit work before mp_pool_close",
                       state == POOL_CLOSED ? "closed" : "terminated");
    return 0;
}

int pool_closed_meanwhile(mp_pool *p)
{
    int rc = pool_check_open(p);        /* broke, or terminated: it says which */
    return rc ? rc : mp_fail(MP_ECLOSED, NULL, "the pool was terminated meanwhile");
}

static void signal_monitor(mp_pool *p)
{
    uint64_t one = 1;
    ssize_t w = write(p->efd, &one, sizeof one);
    (void)w;
}

void *pool_mem_alloc(size_t size)
{
    return pool_mem_alloc_until(size, NULL);
}

void *pool_mem_alloc_until(size_t size, const mp_deadline *d)
{
    void *p = d ? arena_alloc_nozero_until(size, d) : arena_alloc_nozero(size);
    if (p)
        HANDOVER_ACQUIRE(p);   /* it may be a block this process handed to a worker, freed there */
    return p ? p : malloc(size);
}

void pool_mem_free(void *p)
{
    if (arena_contains(p, 1))
        arena_free(p);
    else
        free(p);
}

/* ------------------------------------------------------------------ task list */

/* A worker killed inside list_pop may have claimed the head without
 * unlinking it: the head is then no longer QUEUED. Killed before that, it
 * named the head in its slot without claiming it: that claim is void (the
 * head stays queued for another worker, and the dead one's notice must not
 * fail it there). Only a worker inside list_pop, under this lock, names a
 * queued task, so a slot naming the queued head is the dead worker's. */
static void list_repair(struct pool_shared *sh)
{
    mp_future *head = sh->head;
    if (head && (atomic_load(&head->state) & TASK_BASE) != TASK_QUEUED) {
        sh->head = head->next;
    } else if (head) {
        uint64_t id = atomic_load(&head->id);
        for (int i = 0; i < sh->nslots; i++) {
            struct slot *s = &sh->slots[i];
            if (atomic_load(&s->current) == head && atomic_load(&s->current_id) == id) {
                atomic_store(&s->current, NULL);
                atomic_store(&s->current_id, 0);
            }
        }
    }
    uint64_t n = 0;
    sh->tail = NULL;
    for (mp_future *f = sh->head; f; f = f->next, n++)
        sh->tail = f;
    atomic_store(&sh->queued, n);
}

void list_lock(struct pool_shared *sh)
{
    mp_deadline forever = deadline_in(MP_FOREVER);
    if (rmutex_lock(&sh->lock, &forever) == MP_EOWNERDEAD)
        list_repair(sh);
}

void list_unlock(struct pool_shared *sh)
{
    rmutex_unlock(&sh->lock);
}

bool list_unlink(struct pool_shared *sh, mp_future *f)
{
    mp_future *prev = NULL;
    for (mp_future *t = sh->head; t; prev = t, t = t->next) {
        if (t != f)
            continue;
        if (prev)
            prev->next = t->next;
        else
            sh->head = t->next;
        if (sh->tail == t)
            sh->tail = prev;
        atomic_fetch_sub(&sh->queued, 1);
        return true;
    }
    return false;
}

int pool_push(struct pool_shared *sh, mp_future *first, mp_future *last, size_t count)
{
    last->next = NULL;
#ifdef POOL_TSAN
    /* next is read before f is released: once released, f may be done,
     * freed and its block reused by another thread. */
    for (mp_future *f = first, *next; f; f = next) {
        next = f->next;
        HANDOVER_RELEASE(f);
    }
#endif
    list_lock(sh);
    if (atomic_load(&sh->closing) == CLOSING_NOW) {   /* terminated since the caller looked */
        list_unlock(sh);
        return MP_ECLOSED;
    }
    if (sh->tail) {
        sh->tail->next = first;
        HANDOVER_RELEASE(sh->tail);  /* released when pushed, and written again since */
    } else {
        sh->head = first;
    }
    sh->tail = last;
    atomic_fetch_add(&sh->queued, count);
    list_unlock(sh);
    atomic_fetch_add(&sh->seq, 1);
    if (atomic_load(&sh->sleepers))
        futex_wake(&sh->seq, count < INT_MAX ? (int)count : INT_MAX);
    return 0;
}

static void wake_workers(struct pool_shared *sh)
{
    atomic_fetch_add(&sh->seq, 1);
    futex_wake(&sh->seq, INT_MAX);
}

void collector_push(struct pool_shared *sh, mp_future *f)
{
    mp_future *old = atomic_load(&sh->done_head);
    do
        atomic_store_explicit(&f->next_done, old, memory_order_relaxed);
    while (!atomic_compare_exchange_weak(&sh->done_head, &old, f));
    if (atomic_load(&sh->collector_sleeping)) {
        atomic_fetch_add(&sh->done_seq, 1);
        futex_wake(&sh->done_seq, 1);
    }
}

static void wake_collector(struct pool_shared *sh)
{
    atomic_fetch_add(&sh->done_seq, 1);
    futex_wake(&sh->done_seq, 1);
}

/* ------------------------------------------------------------------ functions */

/* Every function a task names is registered once per pool as an fnref in
 * the arena; tasks carry the entry, workers cache what it resolves to. */
const struct fnentry *pool_fn(mp_pool *p, mp_fn fn)
{
    const struct fnentry *e = NULL;
    pthread_mutex_lock(&p->fnlock);
    for (size_t i = p->nfns; i-- > 0;)
        if (p->fns[i].fn == (const void *)fn) {
            e = p->fns[i].e;
            goto out;
        }
    if (p->nfns == p->capfns) {
        size_t cap = p->capfns ? p->capfns * 2 : 8;
        struct fncache *n = realloc(p->fns, cap * sizeof *n);
        if (!n)
            goto out;
        p->fns = n;
        p->capfns = cap;
    }
    struct fnentry *ne = arena_alloc(sizeof *ne);
    if (!ne)
        goto out;
    if (fnref_from((const void *)fn, &ne->ref) != 0) {
        arena_free(ne);
        goto out;
    }
    ne->index = p->sh->nfns++;
    ne->next = p->sh->fns;
    p->sh->fns = ne;
    p->fns[p->nfns++] = (struct fncache){ (const void *)fn, ne };
    e = ne;
out:
    pthread_mutex_unlock(&p->fnlock);
    return e;
}

/* ------------------------------------------------------------------ backends */

static int proc_start(mp_pool *p, int slot)
{
    struct worker_arg a = { p->sh, slot, NULL };
    char name[32];
    snprintf(name, sizeof name, "PoolWorker-%d", slot + 1);
    mp_process_opts po = { .name = name, .daemon = true, .method = p->o.method, .arg_size = sizeof a };
    mp_process *proc;
    int rc = mp_process_new(&proc, pool_worker_main, &a, &po);
    if (rc != 0)
        return rc;
    rc = mp_process_start(proc);
    if (rc != 0) {
        mp_process_free(proc);
        return rc;
    }
    p->workers[slot].proc = proc;
    return 0;
}

static bool proc_ended(mp_pool *p, int slot, int *status)
{
    mp_process *proc = p->workers[slot].proc;
    return mp_process_join(proc, 0) == 0 && mp_process_exitcode(proc, status) == 0;
}

static int proc_kill(mp_pool *p, int slot)
{
    return mp_process_kill(p->workers[slot].proc);
}

static int proc_sentinel(mp_pool *p, int slot)
{
    return mp_process_sentinel(p->workers[slot].proc);
}

static void proc_release(mp_pool *p, int slot)
{
    mp_process_free(p->workers[slot].proc);
    p->workers[slot].proc = NULL;
}

static void proc_stop(mp_pool *p, int slot)
{
    mp_process_kill(p->workers[slot].proc);
    mp_process_join(p->workers[slot].proc, MP_FOREVER);
    proc_release(p, slot);
}

static const struct pool_backend processes_backend = {
    "processes", proc_start, proc_ended, proc_kill, proc_sentinel, proc_release, proc_stop, NULL,
};

struct thread_arg { struct worker_arg a; mp_pool *p; };

/* The thread pool whose worker this thread is: its tasks must not wait for
 * the pool's threads, their own among them. */
static __thread const mp_pool *working_for;

static void *thread_main(void *arg)
{
    struct thread_arg t = *(struct thread_arg *)arg;
    free(arg);
    working_for = t.p;
    pool_worker_main(&t.a);
    atomic_store(&t.a.sh->slots[t.a.slot].exited, 1);
    signal_monitor(t.p);
    return NULL;
}

static int thread_start(mp_pool *p, int slot)
{
    struct thread_arg *t = malloc(sizeof *t);
    if (!t)
        return MP_ENOMEM;
    *t = (struct thread_arg){ { p->sh, slot, NULL }, p };
    int rc = pthread_create(&p->workers[slot].thread, NULL, thread_main, t);
    if (rc != 0) {
        free(t);
        return -rc;
    }
    return 0;
}

static bool thread_ended(mp_pool *p, int slot, int *status)
{
    if (!atomic_load(&p->sh->slots[slot].exited))
        return false;
    pthread_join(p->workers[slot].thread, NULL);
    *status = 0;
    return true;
}

static int thread_kill(mp_pool *p, int slot)
{
    (void)p, (void)slot;
    return MP_ESTATE;                /* a thread cannot be killed; it ends with its task */
}

static int thread_sentinel(mp_pool *p, int slot)
{
    (void)p, (void)slot;
    return -1;
}

static void thread_release(mp_pool *p, int slot)
{
    (void)p, (void)slot;
}

static void thread_stop(mp_pool *p, int slot)
{
    pthread_join(p->workers[slot].thread, NULL);   /* the pool is closing: it returns */
}

static const struct pool_backend threads_backend = {
    "threads", thread_start, thread_ended, thread_kill, thread_sentinel, thread_release, thread_stop,
    NULL,
};

/* ------------------------------------------------------------------ stopping */

/* Fails every queued task with rc: terminate, or a pool that cannot run. */
static void fail_queued(struct pool_shared *sh, int rc)
{
    list_lock(sh);
    mp_future *list = sh->head;
    sh->head = sh->tail = NULL;
    atomic_store(&sh->queued, 0);
    list_unlock(sh);
    for (mp_future *f = list, *next; f; f = next) {
        next = f->next;
        task_finish(f, TASK_QUEUED, rc, 0);
    }
}

/* A worker's hand-over is an allocation and a copy: this long at most,
 * unless the worker is stopped, and then it is killed anyway (one block may
 * leak, as for any process killed inside the allocator). */
#define HOLD_WAIT_NS (100 * 1000000ull)

static void request_kill(mp_pool *p, int i)
{
    if (p->ops == &processes_backend)   /* a thread or a rank's proxy is never killed */
        atomic_store(&p->sh->slots[i].kill_req, 1);
}

/* Kills worker i outside an arena hand-over (struct slot). */
static void kill_worker(mp_pool *p, int i)
{
    struct slot *s = &p->sh->slots[i];
    request_kill(p, i);
    uint64_t start = now_ns();
    while (atomic_load(&s->hold) && now_ns() - start < HOLD_WAIT_NS)
        sched_yield();
    p->ops->kill(p, i);
}

/* Under p->lock: no new work, no replacements, every worker killed. */
static void halt(mp_pool *p, int rc)
{
    ASSERT_HELD(&p->lock);
    atomic_store(&p->halted_by, rc);
    atomic_store(&p->state, POOL_TERMINATED);
    atomic_store(&p->sh->closing, CLOSING_NOW);
    wake_workers(p->sh);
    /* Processes die before their queue is failed: one stopped (SIGSTOP)
     * inside list_pop holds the list until it dies, and its death gives
     * the lock back (robust). Threads are never killed: theirs goes now. */
    bool killed = p->ops == &processes_backend;
    if (!killed)
        fail_queued(p->sh, rc);
    for (int i = 0; i < p->nworkers; i++)   /* all at once, then each waited out */
        if (p->workers[i].alive)
            request_kill(p, i);
    for (int i = 0; i < p->nworkers; i++)
        if (p->workers[i].alive)
            kill_worker(p, i);
    if (killed)
        fail_queued(p->sh, rc);
}

/* ------------------------------------------------------------------ the monitor */

static int start_worker(mp_pool *p, int slot)
{
    struct slot *s = &p->sh->slots[slot];
    atomic_store(&s->current, NULL);
    atomic_store(&s->current_id, 0);
    atomic_store(&s->started_ns, 0);
    atomic_store(&s->ready, 0);
    atomic_store(&s->exited, 0);
    atomic_store(&s->hold, 0);
    atomic_store(&s->kill_req, 0);
    /* Not while a submitter is inside dladdr (pool_fn): a child forked
     * then could inherit the loader's lock held (ThreadSanitizer's
     * interceptor does deadlock so), and it needs the loader to find fns.
     * fnref names the main program's functions without the loader now;
     * this still guards those of shared objects. */
    pthread_mutex_lock(&p->fnlock);
    int rc = p->ops->start(p, slot);
    pthread_mutex_unlock(&p->fnlock);
    p->workers[slot].alive = rc == 0;
    p->workers[slot].killing = false;
    return rc;
}

/* A death the worker caused itself: an exit (its initializer's, or one not
 * found in this image) or a fault of its own code. Outside signals (an OOM
 * killer's SIGKILL, SIGTERM, ...) and ends nobody can tell are not. */
static bool own_fault(int status)
{
    return status >= 0 || proc_fault_signal(-status);
}

/* Under p->lock: the slot's next start waits, doubling with each worker
 * that dies before it is ready, so a kill loop cannot make us spin. */
static void back_off(mp_pool *p, int slot, unsigned times)
{
    ASSERT_HELD(&p->lock);
    unsigned shift = times > 0 ? times - 1 : 0;
    uint64_t wait = shift >= 10 ? BACKOFF_MAX_NS : BACKOFF_MIN_NS << shift;
    p->workers[slot].not_before = now_ns() + (wait < BACKOFF_MAX_NS ? wait : BACKOFF_MAX_NS);
}

/* Under p->lock: the notice that slot's worker died (w->owed_status)
 * holding task w->owed_f, counted in notices_pending already. False if
 * there is no notice to post it in: no memory, and the slot's own still
 * carries the last death, not yet handled. */
static bool post_death(mp_pool *p, int slot)
{
    struct worker *w = &p->workers[slot];
    struct notice *n = pool_alloc_refused("notice") ? NULL : pool_mem_alloc(sizeof *n);
    if (n) {
        n->spare_of = NULL;
    } else if (!atomic_exchange(&w->spare_posted, true)) {
        n = &w->spare;               /* out of memory: the slot's own */
        n->spare_of = &w->spare_posted;
    } else {
        return false;
    }
    int status = w->owed_status;
    bool ours = w->killing || atomic_load(&p->state) == POOL_TERMINATED;
    n->f = w->owed_f;
    n->id = w->owed_id;
    n->rc = ours ? MP_EKILLED : MP_ECRASHED;
    n->code = status == MP_EXITCODE_UNKNOWN ? 0               /* a crash's signed: task_code */
            : ours && status < 0 ? -status : status;
    n->next = p->notices;
    p->notices = n;
    return true;
}

/* Under p->lock: posts the deaths slots owe (see struct worker), true if
 * it posted any; *owing tells whether some are still owed. */
static bool post_owed(mp_pool *p, bool *owing)
{
    bool any = false;
    *owing = false;
    for (int i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->workers[i];
        if (!w->owes_notice)
            continue;
        w->owes_notice = !post_death(p, i);
        any |= !w->owes_notice;
        *owing |= w->owes_notice;
    }
    return any;
}

/* Under p->lock, which it gives up while it takes the list: a worker
 * stopped (SIGSTOP) inside list_pop holds the list, and terminate needs
 * p->lock to kill it. The slot is no longer alive, so nothing touches it
 * meanwhile. Only the pool's own cause breaks it: initializers that fail
 * by their own fault INIT_FAILURES_MAX times in a row. A worker killed
 * from outside before it was ready is replaced without counting, after a
 * back-off. */
static void post_notice(mp_pool *p, int slot, int status)
{
    struct slot *s = &p->sh->slots[slot];
    struct worker *w = &p->workers[slot];
    pthread_mutex_unlock(&p->lock);
    list_lock(p->sh);                /* repaired first: a claim it died making is void */
    mp_future *f = atomic_load(&s->current);
    uint64_t id = atomic_load(&s->current_id);
    list_unlock(p->sh);
    pthread_mutex_lock(&p->lock);
    bool ours = w->killing || atomic_load(&p->state) == POOL_TERMINATED;
    if (atomic_load(&s->ready)) {
        p->init_failures = 0;
        w->quick_deaths = 0;
    } else if (!ours) {
        back_off(p, slot, ++w->quick_deaths);
        if (own_fault(status) && ++p->init_failures >= INIT_FAILURES_MAX)
            halt(p, MP_EBROKEN);     /* its initializer kills every worker it starts */
    }
    if (!f)
        return;
    atomic_fetch_add(&p->notices_pending, 1);
    w->owed_f = f;
    w->owed_id = id;
    w->owed_status = status;
    w->owes_notice = !post_death(p, slot);
}

/* Under p->lock (which post_notice gives up for a moment): reaps ended
 * workers, posting what each held. */
static bool reap_workers(mp_pool *p)
{
    ASSERT_HELD(&p->lock);
    bool any = false;
    for (int i = 0; i < p->nworkers; i++) {
        int status;
        struct worker *w = &p->workers[i];
        if (!w->alive)
            continue;
        if (!p->ops->ended(p, i, &status)) {
            w->ending = w->readable;     /* ended, not published yet: no busy poll */
            w->readable = false;
            continue;
        }
        w->alive = w->readable = w->ending = false;
        post_notice(p, i, status);
        p->ops->release(p, i);
        any = true;
    }
    return any;
}

static int alive_count(const mp_pool *p)
{
    int n = 0;
    for (int i = 0; i < p->nworkers; i++)
        n += p->workers[i].alive;
    return n;
}

/* Under p->lock: keeps the pool at full strength while there is work.
 * Returns seconds until a slot waiting out its back-off may start, or -1. */
static double replace_workers(mp_pool *p)
{
    ASSERT_HELD(&p->lock);
    struct pool_shared *sh = p->sh;
    if (atomic_load(&p->state) == POOL_TERMINATED)
        return -1;
    if (atomic_load(&sh->closing) != CLOSING_NO && atomic_load(&sh->queued) == 0)
        return -1;
    uint64_t now = now_ns(), next = UINT64_MAX;
    for (int i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->workers[i];
        if (w->alive || w->owes_notice)
            continue;
        if (w->not_before > now) {
            next = w->not_before < next ? w->not_before : next;
            continue;
        }
        int rc = start_worker(p, i);
        if (rc == 0) {
            p->start_failures = 0;
            p->short_since = 0;
            continue;
        }
        /* Try again later; give up only when nothing runs and nothing
         * starts. A fork server killed from outside (ECONNRESET, EPIPE:
         * forkserver.c says MP_EBROKEN for one that died of its own fault)
         * is an outside death, which a pool survives: the next start
         * launches another. A shortage (EMFILE, EAGAIN, ...) may pass: it
         * breaks the pool only once it has lasted SHORTAGE_MAX_NS. */
        back_off(p, i, ++w->quick_deaths);
        next = w->not_before < next ? w->not_before : next;
        if (rc == -ECONNRESET || rc == -EPIPE)
            continue;
        bool shortage = rc == -EMFILE || rc == -ENFILE || rc == -EAGAIN || rc == -ENOMEM ||
                        rc == MP_ENOMEM || rc == -ENOBUFS || rc == -ENOSPC;
        bool none = alive_count(p) == 0;   /* the clock runs only while none works */
        if (shortage && (!none || !p->short_since))
            p->short_since = none ? now : 0;
        bool gave_up = shortage ? p->short_since && now - p->short_since >= SHORTAGE_MAX_NS
                                : ++p->start_failures >= START_FAILURES_MAX;
        if (gave_up && none) {
            atomic_store(&p->broken_start, rc);
            halt(p, MP_EBROKEN);
            return -1;
        }
    }
    return next == UINT64_MAX ? -1 : (double)(next - now) / 1e9;
}

static bool monitor_finished(mp_pool *p)
{
    if (alive_count(p) > 0)
        return false;
    if (atomic_load(&p->state) == POOL_TERMINATED)
        return true;
    return atomic_load(&p->sh->closing) != CLOSING_NO && atomic_load(&p->sh->queued) == 0 &&
           atomic_load(&p->notices_pending) == 0;
}

/* Kills workers whose item overran task_timeout; seconds to the next check. */
static double enforce_timeouts(mp_pool *p)
{
    double limit = p->sh->task_timeout;
    if (limit <= 0)
        return -1;
    double next = limit;
    uint64_t now = now_ns();
    for (int i = 0; i < p->nworkers; i++) {
        uint64_t started = atomic_load(&p->sh->slots[i].started_ns);
        if (!p->workers[i].alive || started == 0 || started > now)
            continue;
        double age = (double)(now - started) / 1e9;
        if (age < limit) {
            next = next < limit - age ? next : limit - age;
        } else if (!p->workers[i].killing) {
            p->workers[i].killing = true;
            kill_worker(p, i);
        }
    }
    return next;
}

static void monitor_poll(mp_pool *p, double wait)
{
    struct pollfd *fds = p->pollfds;
    nfds_t n = 0;
    int ms = wait < 0 ? -1 : (int)(wait * 1000) + 1;
    fds[n++] = (struct pollfd){ .fd = p->efd, .events = POLLIN };
    pthread_mutex_lock(&p->lock);
    for (int i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->workers[i];
        if (w->alive && w->ending) {
            ms = ms < 0 || ms > ENDING_NAP_MS ? ENDING_NAP_MS : ms;
            continue;
        }
        int fd = w->alive ? p->ops->sentinel(p, i) : -1;
        if (fd >= 0) {
            p->pollslots[n] = i;
            fds[n++] = (struct pollfd){ .fd = fd, .events = POLLIN };
        } else if (w->alive && p->ops == &processes_backend) {
            /* none to be had (EMFILE): ask ended() now and then. (A thread
             * has none by design: its end is rung on efd.) */
            ms = ms < 0 || ms > UNWATCHED_NAP_MS ? UNWATCHED_NAP_MS : ms;
        }
    }
    pthread_mutex_unlock(&p->lock);
    if (poll(fds, n, ms) <= 0)
        return;
    if (fds[0].revents & POLLIN) {
        uint64_t v;
        ssize_t r = read(p->efd, &v, sizeof v);
        (void)r;
    }
    pthread_mutex_lock(&p->lock);
    for (nfds_t k = 1; k < n; k++)
        if (fds[k].revents)
            p->workers[p->pollslots[k]].readable = true;
    pthread_mutex_unlock(&p->lock);
}

/* The first workers are started here too: a process worker is a daemon,
 * killed when the *thread* that started it ends (PR_SET_PDEATHSIG), and this
 * thread lives as long as the pool. mp_pool_new waits for the outcome. */
static int start_first_workers(mp_pool *p)
{
    pthread_mutex_lock(&p->lock);
    int rc = 0;
    for (int i = 0; i < p->nworkers && rc == 0; i++) {
        rc = start_worker(p, i);
        /* A fork server killed from outside with the request is an outside
         * death here too: the slot is started again after its back-off,
         * as replace_workers does (mp_pool_new failed with ECONNRESET). */
        if (rc == -ECONNRESET || rc == -EPIPE) {
            back_off(p, i, ++p->workers[i].quick_deaths);
            rc = 0;
        }
    }
    if (rc != 0) {
        atomic_store(&p->sh->closing, CLOSING_NOW);
        wake_workers(p->sh);
        for (int i = 0; i < p->nworkers; i++)
            if (p->workers[i].alive)
                p->ops->stop(p, i);
    }
    pthread_mutex_unlock(&p->lock);
    atomic_store(&p->start_rc, rc == 0 ? 1u : (uint32_t)rc);
    futex_wake(&p->start_rc, INT_MAX);
    return rc;
}

static void monitor_loop(mp_pool *p)
{
    for (;;) {
        pthread_mutex_lock(&p->lock);
        bool owing, posted = reap_workers(p);
        posted |= post_owed(p, &owing);
        if (posted)
            wake_collector(p->sh);
        bool done = monitor_finished(p);
        double wait = done ? 0 : enforce_timeouts(p);
        double start = done ? -1 : replace_workers(p);
        done = done || monitor_finished(p);     /* replace_workers may have broken it */
        if (start >= 0 && (wait < 0 || start < wait))
            wait = start;
        if (owing && (wait < 0 || wait > OWED_RETRY_S))
            wait = OWED_RETRY_S;     /* memory may come back before the spare does */
        pthread_mutex_unlock(&p->lock);
        if (done)
            return;
        monitor_poll(p, wait);
    }
}

/* The pool whose monitor or collector the calling thread is (NULL: none). */
static __thread const struct pool_shared *serving;

bool pool_thread_serves(const struct pool_shared *sh)
{
    return sh && serving == sh;
}

bool pool_thread_serves_any(void)
{
    return serving != NULL;
}

static void *monitor_main(void *arg)
{
    mp_pool *p = arg;
    serving = p->sh;
    if (start_first_workers(p) == 0)
        monitor_loop(p);
    atomic_store(&p->monitor_done, 1);
    wake_collector(p->sh);
    return NULL;
}

/* ------------------------------------------------------------------ the collector */

static void progress_tick(mp_pool *p, bool force)
{
    if (!p->o.progress)
        return;
    uint64_t done = atomic_load(&p->sh->items_done), total = atomic_load(&p->sh->items_total);
    if (done == p->progress_done && total == p->progress_total)
        return;
    uint64_t now = now_ns();
    if (!force && done != total && now - p->progress_ns < PROGRESS_NS)
        return;
    p->progress_done = done;
    p->progress_total = total;
    p->progress_ns = now;
    p->o.progress(done, total, p->o.progress_ctx);
}

void pool_progress_add_total(mp_pool *p, uint64_t items)
{
    if (p->sh->count_items)
        atomic_fetch_add(&p->sh->items_total, items);
}

void pool_progress_final(mp_pool *p)
{
    progress_tick(p, true);
}

static void collect(mp_pool *p, mp_future *f)
{
    if (f->kind == KIND_CHUNK) {
        chunk_collect(p, f);
        return;
    }
    task_run_callbacks(f);
    task_processed(f);
}

/* The worker is gone, and everything it pushed has been collected: its
 * slot's task either still runs (it died in it) or ended unannounced. */
static void handle_notice(mp_pool *p, const struct notice *n)
{
    mp_future *f = n->f;
    pool_hook("notice");
    HANDOVER_ACQUIRE(f);
    bool same = atomic_load(&f->id) == n->id;
    arena_looked_at();               /* f may be freed, and reused by the next task */
    if (!same)
        return;                      /* finished and freed since */
    uint32_t s = atomic_load(&f->state);
    if ((s & TASK_BASE) == TASK_RUNNING) {
        task_finish(f, TASK_RUNNING, n->rc, n->code);
        return;
    }
    if (!state_final(s))
        return;
    /* It died inside task_finish, after the CAS: its wake-ups may not
     * have been issued. Issue them again (a spare wake costs nothing). */
    futex_wake(&f->state, INT_MAX);
    atomic_fetch_add(&p->sh->any_seq, 1);
    futex_wake(&p->sh->any_seq, INT_MAX);
    if ((s & TASK_NOTIFY) && !(s & TASK_PROCESSED))
        collector_push(p->sh, f);
}

static mp_future *take_done(struct pool_shared *sh)
{
    mp_future *list = atomic_exchange(&sh->done_head, NULL), *fifo = NULL;
    while (list) {                   /* the stack is newest first */
        HANDOVER_ACQUIRE(list);
        mp_future *next = atomic_load_explicit(&list->next_done, memory_order_relaxed);
        atomic_store_explicit(&list->next_done, fifo, memory_order_relaxed);
        fifo = list;
        list = next;
    }
    return fifo;
}

static void collector_sleep(mp_pool *p, bool tick)
{
    struct pool_shared *sh = p->sh;
    atomic_store(&sh->collector_sleeping, 1);
    uint32_t seq = atomic_load(&sh->done_seq);
    if (!atomic_load(&sh->done_head) && !atomic_load(&p->notices_pending) &&
        !atomic_load(&p->monitor_done)) {
        mp_deadline d = deadline_in(tick ? 0.1 : MP_FOREVER);
        futex_wait(&sh->done_seq, seq, &d);
    }
    atomic_store(&sh->collector_sleeping, 0);
}

static bool collect_pushed(mp_pool *p)
{
    mp_future *done = take_done(p->sh);
    for (mp_future *f = done, *next; f; f = next) {
        next = atomic_load_explicit(&f->next_done, memory_order_relaxed);
        collect(p, f);
    }
    return done != NULL;
}

static bool collector_round(mp_pool *p)
{
    pthread_mutex_lock(&p->lock);
    struct notice *notes = p->notices;
    p->notices = NULL;
    pthread_mutex_unlock(&p->lock);
    if (notes) {                     /* repairs the list before slots are trusted */
        list_lock(p->sh);
        list_unlock(p->sh);
    }
    bool any = collect_pushed(p) || notes;
    uint32_t handled = 0;
    for (struct notice *n = notes, *next; n; n = next, handled++) {
        next = n->next;
        handle_notice(p, n);
        if (n->spare_of)
            atomic_store(n->spare_of, false);
        else
            pool_mem_free(n);
    }
    if (handled) {
        /* What the notices just failed (a chunk queues its rest again) is
         * collected before the monitor may decide that all work is done. */
        collect_pushed(p);
        atomic_fetch_sub(&p->notices_pending, handled);
        signal_monitor(p);
    }
    return any;
}

static void *collector_main(void *arg)
{
    mp_pool *p = arg;
    serving = p->sh;
    pool_hook("collector_started");
    atomic_store(&p->collector_up, 1);
    futex_wake(&p->collector_up, INT_MAX);
    for (;;) {
        bool stop = atomic_load(&p->monitor_done);
        bool any = collector_round(p);
        progress_tick(p, false);
        if (stop && !any && !atomic_load(&p->sh->done_head) && !atomic_load(&p->notices_pending))
            break;
        if (!any) {
            bool busy = atomic_load(&p->sh->items_done) != atomic_load(&p->sh->items_total);
            collector_sleep(p, p->o.progress && (busy || p->progress_done != p->progress_total));
        }
    }
    progress_tick(p, true);
    atomic_store(&p->finished, 1);
    futex_wake(&p->finished, INT_MAX);
    return NULL;
}

/* ------------------------------------------------------------------ the pool */

static int check_opts(const mp_pool_opts *o)
{
    const char *fn = "mp_pool_new";
    if (o->processes < 0)
        return mp_fail(MP_EINVAL, fn, "opts.processes is %d; use 0 for one per CPU",
                       o->processes);
    if (o->maxtasksperchild < 0)
        return mp_fail(MP_EINVAL, fn, "opts.maxtasksperchild is %d; use 0 for no limit",
                       o->maxtasksperchild);
    if (!timeout_valid(o->task_timeout) || o->task_timeout < 0)
        return mp_fail(MP_EINVAL, fn, "opts.task_timeout is %g; use 0 for none or a positive "
                       "number of seconds", o->task_timeout);
    if (o->initarg_size && !o->initarg)
        return mp_fail(MP_EINVAL, fn, "opts.initarg_size is %zu but opts.initarg is NULL",
                       o->initarg_size);
    if (o->method < MP_START_DEFAULT || o->method > MP_FORKSERVER)
        return mp_fail(MP_EINVAL, fn, "opts.method is %d, not an mp_start_method", (int)o->method);
    if (o->backend != MP_PROCESSES && o->backend != MP_THREADS && o->backend != MP_MPI)
        return mp_fail(MP_EINVAL, fn, "opts.backend is %d, not an mp_pool_backend", (int)o->backend);
    if (o->backend == MP_THREADS && o->task_timeout > 0)
        return mp_fail(MP_EINVAL, fn, "opts.task_timeout needs MP_PROCESSES: a thread cannot "
                       "be killed when its task runs late");
    if (o->backend == MP_MPI && !atomic_load(&mpi_backend))
        return mp_fail(MP_EINVAL, fn, "opts.backend is MP_MPI, which needs the program "
                       "linked with libmproc_mpi");
    return 0;
}

static int shared_new(mp_pool *p)
{
    const mp_pool_opts *o = &p->o;
    size_t size = sizeof(struct pool_shared) + (size_t)p->nworkers * sizeof(struct slot);
    struct pool_shared *sh = arena_alloc(size);
    if (!sh)
        return MP_ENOMEM;
    p->sh = sh;
    sh->magic = MAGIC_POOL;
    int rc = rmutex_init(&sh->lock);
    if (rc != 0)
        return rc;
    sh->next_id = 1;
    sh->count_items = o->progress != NULL;
    sh->task_timeout = o->task_timeout;
    sh->maxtasks = o->maxtasksperchild;
    sh->nslots = p->nworkers;
    if (o->initializer) {
        sh->has_init = true;
        if (fnref_from((const void *)o->initializer, &sh->init_ref) != 0)
            return mp_fail(MP_EINVAL, NULL, "opts.initializer is not a function of the "
                           "program or a loaded library");
        sh->initarg = o->initarg;
        sh->initarg_size = o->initarg_size;
        if (o->initarg_size) {
            if (!(sh->initarg = arena_alloc_nozero(o->initarg_size)))
                return MP_ENOMEM;
            memcpy(sh->initarg, o->initarg, o->initarg_size);
        }
    }
    return 0;
}

static void shared_free(mp_pool *p)
{
    struct pool_shared *sh = p->sh;
    if (!sh)
        return;
    for (struct fnentry *e = sh->fns, *next; e; e = next) {
        next = e->next;
        arena_free(e);
    }
    if (sh->initarg_size)
        arena_free(sh->initarg);
    rmutex_destroy(&sh->lock);
    sh->magic = MAGIC_FREED;
    arena_free(sh);
    p->sh = NULL;
}

static void pool_destroy(mp_pool *p)
{
    shared_free(p);
    if (p->efd >= 0)
        close(p->efd);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->cblock);
    pthread_mutex_destroy(&p->fnlock);
    free(p->workers);
    free(p->pollfds);
    free(p->pollslots);
    free(p->fns);
    p->magic = MAGIC_FREED;
    arena_heap_root(p, sizeof *p, false);
    arena_free(p);
}

/* Starts the collector and the monitor, which starts the workers; a pool
 * whose workers cannot start is refused. The monitor is made once the
 * collector runs: a thread's start may allocate (a sanitizer's runtime
 * does, in pthread_getattr_np), and the first workers are forked at once
 * (see "Forks and the heap"). */
static int start_all(mp_pool *p)
{
    int rc = -pthread_create(&p->collector, NULL, collector_main, p);
    if (rc != 0)
        return rc;
    mp_deadline forever = deadline_in(MP_FOREVER);
    while (!atomic_load(&p->collector_up))
        futex_wait(&p->collector_up, 0, &forever);
    if ((rc = -pthread_create(&p->monitor, NULL, monitor_main, p)) != 0) {
        atomic_store(&p->monitor_done, 1);
        wake_collector(p->sh);
        pthread_join(p->collector, NULL);
        return rc;
    }
    uint32_t started;
    while ((started = atomic_load(&p->start_rc)) == 0)
        futex_wait(&p->start_rc, 0, &forever);
    if (started != 1) {
        pthread_join(p->monitor, NULL);
        pthread_join(p->collector, NULL);
        return (int)started;
    }
    p->threads_running = true;
    return 0;
}

int mp_pool_new(mp_pool **out, const mp_pool_opts *o)
{
    static const mp_pool_opts defaults;
    if (!out)
        return mp_fail(MP_EINVAL, __func__, "p (where the new pool goes) is NULL");
    *out = NULL;
    o = o ? o : &defaults;
    int rc = check_opts(o);
    if (rc != 0)
        return rc;
    pthread_once(&live.registered, live_register);   /* before the first fork */
    mp_pool *p = arena_alloc(sizeof *p);
    if (!p)
        return mp_fail(MP_ENOMEM, __func__, "no room in the shared arena for a pool");
    arena_heap_root(p, sizeof *p, true);
    p->magic = MAGIC_POOL;
    p->owner = pool_self_pid();
    p->o = *o;
    p->efd = -1;
    p->ops = o->backend == MP_THREADS ? &threads_backend
           : o->backend == MP_MPI ? atomic_load(&mpi_backend) : &processes_backend;
    p->nworkers = p->ops->workers ? p->ops->workers(o->processes)
                : o->processes ? o->processes : mp_cpu_count();
    if (p->nworkers <= 0) {          /* MPI: not under mpirun, or too few ranks */
        rc = p->nworkers < 0 ? p->nworkers : MP_EINVAL;
        arena_heap_root(p, sizeof *p, false);
        arena_free(p);
        if (rc == MP_EINVAL)
            return mp_fail(rc, __func__, "no MPI ranks to work on (run the program under "
                           "mpirun with at least 2 ranks)");
        return mp_fail_code(rc, __func__);
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_init(&p->cblock, NULL);
    pthread_mutex_init(&p->fnlock, NULL);
    p->workers = calloc((size_t)p->nworkers, sizeof *p->workers);
    p->pollfds = calloc((size_t)p->nworkers + 1, sizeof *p->pollfds);
    p->pollslots = calloc((size_t)p->nworkers + 1, sizeof *p->pollslots);
    p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    rc = p->efd < 0 ? -errno : 0;    /* EMFILE, ENFILE: the real cause */
    if (rc == 0)
        rc = !p->workers || !p->pollfds || !p->pollslots ? MP_ENOMEM : shared_new(p);
    if (rc == 0)
        rc = start_all(p);
    if (rc != 0) {
        pool_destroy(p);
        return mp_fail_code(rc, __func__);
    }
    live_add(p);
    *out = p;
    return 0;
}

/* mp_pool_apply_async, whose messages name fname. */
static int apply_async(mp_pool *p, mp_fn fn, const void *in, size_t len, mp_future **out,
                       const char *fname)
{
    if (out)
        *out = NULL;
    int rc = pool_check_open(p);
    if (rc != 0)
        return mp_fail_code(rc, fname);
    if (!fn)
        return mp_fail(MP_EINVAL, fname, "fn is NULL");
    if (!out)
        return mp_fail(MP_EINVAL, fname, "f (where the future goes) is NULL");
    if (!in && len)
        return mp_fail(MP_EINVAL, fname, "in is NULL but len is %zu", len);
    if (len && (rc = mem_range_check(fname, "in", in, len)) != 0)   /* before a fault in the copy */
        return rc;
    const struct fnentry *e = pool_fn(p, fn);
    if (!e)
        return mp_fail(MP_EINVAL, fname, "fn is not a function of the program or a loaded "
                       "library, so a worker cannot find it");
    mp_future *f = task_new(p, KIND_APPLY, len);
    if (!f)
        return mp_fail(MP_ENOMEM, fname, "no room in the shared arena for a %zu-byte task", len);
    f->sh = p->sh;
    f->fn = e;
    atomic_store_explicit(&f->id, atomic_fetch_add(&p->sh->next_id, 1), memory_order_relaxed);
    if (len)
        memcpy(f->in, in, len);
    atomic_store_explicit(&f->state, TASK_QUEUED, memory_order_relaxed);
    pool_progress_add_total(p, 1);      /* before the push, as pool_map's */
    if ((rc = pool_push(p->sh, f, f, 1)) != 0) {
        pool_progress_add_total(p, 0 - (uint64_t)1);
        task_free(f);
        return mp_fail_code(rc == MP_ECLOSED ? pool_closed_meanwhile(p) : rc, fname);
    }
    *out = f;
    return 0;
}

int mp_pool_apply_async(mp_pool *p, mp_fn fn, const void *in, size_t len, mp_future **out)
{
    return apply_async(p, fn, in, len, out, __func__);
}

int mp_pool_apply(mp_pool *p, mp_fn fn, const void *in, size_t len, mp_buf *out)
{
    mp_future *f;
    int rc = apply_async(p, fn, in, len, &f, __func__);
    if (rc != 0)
        return rc;
    rc = mp_future_result(f, out, MP_FOREVER);
    mp_future_free(f);
    return rc;
}

int mp_pool_close(mp_pool *p)
{
    int rc = pool_check_usable(p);
    if (rc != 0)
        return mp_fail_code(rc, __func__);
    int open = POOL_OPEN;
    if (atomic_compare_exchange_strong(&p->state, &open, POOL_CLOSED)) {
        uint32_t no = CLOSING_NO;
        atomic_compare_exchange_strong(&p->sh->closing, &no, CLOSING_DRAIN);
        wake_workers(p->sh);
        signal_monitor(p);
    }
    return 0;
}

static void stop_workers_now(mp_pool *p)
{
    pthread_mutex_lock(&p->lock);
    halt(p, MP_EKILLED);
    pthread_mutex_unlock(&p->lock);
    signal_monitor(p);
}

/* Whether this thread is one that join, terminate and free wait for: the
 * pool's result or monitor thread (a callback), or one of its thread
 * workers (a task). */
static bool in_pool_thread(const mp_pool *p)
{
    return pool_thread_serves(p->sh) || working_for == p;
}

void pool_cancel_callbacks(mp_pool *p, bool begin)
{
    if (begin) {
        atomic_fetch_add(&p->cancel_callbacks, 1);
    } else if (atomic_fetch_sub(&p->cancel_callbacks, 1) == 1) {
        futex_wake(&p->cancel_callbacks, INT_MAX);
    }
}

/* Waits, by d, for the callbacks cancels run in their own threads; but a
 * thread inside callbacks (one of those) does not wait for itself. */
static int wait_cancel_callbacks(mp_pool *p, const mp_deadline *d)
{
    uint32_t n;
    while (!future_in_callbacks() && (n = atomic_load(&p->cancel_callbacks)) != 0)
        if (futex_wait(&p->cancel_callbacks, n, d) == MP_ETIMEDOUT &&
            atomic_load(&p->cancel_callbacks) != 0)
            return MP_ETIMEDOUT;
    return 0;
}

static int join_threads(mp_pool *p, const mp_deadline *d)
{
    if (in_pool_thread(p))
        return MP_ESTATE;            /* a callback cannot wait for its own thread */
    while (!atomic_load(&p->finished))
        if (futex_wait(&p->finished, 0, d) == MP_ETIMEDOUT && !atomic_load(&p->finished))
            return MP_ETIMEDOUT;
    if (wait_cancel_callbacks(p, d) != 0)
        return MP_ETIMEDOUT;
    pthread_mutex_lock(&p->lock);
    if (p->threads_running && !p->threads_joined) {
        p->threads_joined = true;
        pthread_join(p->monitor, NULL);
        pthread_join(p->collector, NULL);
    }
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static void pools_at_exit(void)
{
    pthread_mutex_lock(&live.lock);
    for (mp_pool *p = live.list; p; p = p->next_live)
        if (pool_owned_here(p) && !atomic_load(&p->finished))
            stop_workers_now(p);
    for (mp_pool *p = live.list; p; p = p->next_live) {
        /* Threads cannot be killed, and exit ends them anyway: don't wait. */
        if (pool_owned_here(p) && p->ops != &threads_backend && !in_pool_thread(p)) {
            mp_deadline forever = deadline_in(MP_FOREVER);
            join_threads(p, &forever);
        }
    }
    pthread_mutex_unlock(&live.lock);
}

/* A forked child owns none of its parent's pools (and the lock may have
 * been held by another thread at the fork). */
static void live_fork_child(void)
{
    pthread_mutex_init(&live.lock, NULL);
    live.list = NULL;
    atomic_store(&live.pid, 0);
}

MP_SETUP_CONSTRUCTOR static void live_fork_hook(void)
{
    fork_hook_set(FORK_POOL, NULL, NULL, live_fork_child);
}

/* atexit handlers run last registered first, so the process layer's (at
 * its runtime's first use) is registered here before ours: whatever mproc
 * call a program made first, its live pools are terminated at exit before
 * the process layer joins their workers, which a running monitor would
 * otherwise replace under it (a record reused by a replacement was joined
 * for ever). */
static void live_register(void)
{
    runtime();
    atexit(pools_at_exit);
}

static void live_add(mp_pool *p)
{
    pthread_mutex_lock(&live.lock);
    p->next_live = live.list;
    live.list = p;
    pthread_mutex_unlock(&live.lock);
}

static void live_remove(mp_pool *p)
{
    pthread_mutex_lock(&live.lock);
    for (mp_pool **l = &live.list; *l; l = &(*l)->next_live)
        if (*l == p) {
            *l = p->next_live;
            break;
        }
    pthread_mutex_unlock(&live.lock);
}

/* join_threads' refusal, in words. */
static int join_failed(int rc, const char *fn, double timeout)
{
    if (rc == MP_ESTATE)
        return mp_fail(rc, fn, "called from the pool's own thread (a callback, or a task of a "
                       "thread pool), which would wait for itself");
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, fn, "the pool's work is still running after %g s", timeout);
    return mp_fail_code(rc, fn);
}

int mp_pool_terminate(mp_pool *p)
{
    int rc = pool_check_usable(p);
    if (rc != 0)
        return mp_fail_code(rc, __func__);
    if (in_pool_thread(p))               /* refused before anything is stopped */
        return join_failed(MP_ESTATE, __func__, MP_FOREVER);
    stop_workers_now(p);
    mp_deadline forever = deadline_in(MP_FOREVER);
    rc = join_threads(p, &forever);
    return rc ? join_failed(rc, __func__, MP_FOREVER) : 0;
}

int mp_pool_join(mp_pool *p, double timeout)
{
    if (valid(p) && !timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    int rc = pool_check_usable(p);
    if (rc != 0)
        return mp_fail_code(rc, __func__);
    if (atomic_load(&p->state) == POOL_OPEN)
        return mp_fail(MP_ESTATE, __func__, "the pool is still open; call mp_pool_close (or "
                       "mp_pool_terminate) first, as in Python");
    mp_deadline d = deadline_in(timeout);
    rc = join_threads(p, &d);
    return rc ? join_failed(rc, __func__, timeout) : 0;
}

void mp_pool_free(mp_pool *p)
{
    if (!valid(p)) {
        if (p)
            mp_fail_handle(__func__, "pool", p);
        return;
    }
    if (!pool_owned_here(p))
        return;                      /* the creator's, seen from a forked child: not ours */
    if (in_pool_thread(p))
        return;                      /* from a callback: it would free its own thread */
    if (!atomic_load(&p->finished))
        mp_pool_terminate(p);
    else
        mp_pool_join(p, MP_FOREVER);
    mp_deadline forever = deadline_in(MP_FOREVER);
    wait_cancel_callbacks(p, &forever);  /* joined already, or the join failed */
    live_remove(p);
    pool_destroy(p);
}
