/* pool_internal.h - what pool.c, pool_map.c and future.c share.
 *
 * Every task is an mp_future in the family arena, so the caller, the worker
 * that runs it and the pool's threads all hold the same pointer. Its state
 * word says where it is (queued, running, final) plus three flags; each
 * change is one CAS on that word, so a worker killed at any instruction
 * leaves a task the pool can still account for exactly once.
 */
#ifndef MPROC_POOL_INTERNAL_H
#define MPROC_POOL_INTERNAL_H

#include "internal.h"

#include <stdalign.h>

/* A task written by one thread of the caller's process and read by another
 * after passing through a worker process: ThreadSanitizer cannot see the
 * other process's atomics, so the hand-over is declared to it. */
#if defined(__SANITIZE_THREAD__)
#define POOL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define POOL_TSAN 1
#endif
#endif
#ifdef POOL_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define HANDOVER_RELEASE(p) __tsan_release(p)
#define HANDOVER_ACQUIRE(p) __tsan_acquire(p)
#else
#define HANDOVER_RELEASE(p) ((void)(p))
#define HANDOVER_ACQUIRE(p) ((void)(p))
#endif

/* ------------------------------------------------------------------ tasks */

enum { TASK_QUEUED = 1, TASK_RUNNING = 2, TASK_FINAL = 3 };   /* state & TASK_BASE */
#define TASK_BASE 0xffu
#define TASK_NOTIFY 0x100u      /* the caller's process must see the end: callbacks, chunks */
#define TASK_DETACHED 0x200u    /* nobody holds a handle: whoever finishes it frees it */
#define TASK_PROCESSED 0x400u   /* the collector has handled a NOTIFY task */
#define TASK_WAITERS 0x800u     /* someone sleeps on the word: wake at the end */

enum task_kind { KIND_APPLY, KIND_CHUNK, KIND_JOB };

struct fnentry {                /* a function the pool has seen, named for other images */
    fnref ref;
    uint32_t index;             /* a worker's cache slot for the resolved pointer */
    struct fnentry *next;
};

struct callback { void (*cb)(mp_future *, void *); void *ctx; struct callback *next; };
struct job;
struct pool_shared;

#define TASK_INLINE 32          /* small results live in the task itself */

struct mp_future {
    _Atomic uint32_t magic;             /* relaxed: a caller may check a freed handle
                                         * while the collector frees it */
    uint32_t kind;
    _Atomic uint32_t state;
    _Atomic uint64_t id;                /* unique per pool; 0 once freed */
    struct pool_shared *sh;
    mp_pool *owner;                     /* the creating process's pool: callbacks */
    struct mp_future *next;             /* task list, under sh->lock */
    struct mp_future *_Atomic next_done;   /* collector stack */
    const struct fnentry *fn;
    int rc, code;                       /* valid once final */
    void *_Atomic out;                  /* result: out_inline or an arena block,
                                         * named here from its taking on */
    size_t out_len;
    struct callback *callbacks;         /* creating process only, under owner's lock */
    pid_t callbacks_pid;                /* where they run: set before TASK_NOTIFY */
    struct job *job;                    /* chunks: their map or imap; KIND_JOB: its own */
    size_t start, count;                /* chunks: items [start, start + count) */
    _Atomic size_t cur;                 /* chunks: items finished so far */
    size_t fail_index;                  /* chunks: first failing item, SIZE_MAX none */
    int fail_rc, fail_code;
    unsigned char *blob;                /* imap chunks: records, arena */
    _Atomic size_t blob_len;
    size_t blob_cap;
    /* While a worker grows blob: the new block, then the old one too, so a
     * worker killed meanwhile leaves them to task_free (append_record). */
    unsigned char *blob_new, *blob_old;
    unsigned char out_inline[TASK_INLINE];
    size_t in_len;
    alignas(16) unsigned char in[];
};

/* One imap record: a header and len bytes of result, 8-byte aligned. */
struct record { uint64_t index, len; int32_t rc, code; };
#define RECORD_SIZE(len) ((sizeof(struct record) + (len) + 7) & ~(size_t)7)

struct job {                            /* a map or imap, in the arena */
    bool imap;
    const struct fnentry *fn;
    unsigned char *in;                  /* n * in_size, arena copy */
    unsigned char *out;                 /* map: n * out_size, arena */
    size_t n, in_size, out_size;
    /* Only the collector (creating process) touches what follows. */
    size_t chunks_left;
    size_t fail_index;
    int fail_rc, fail_code;
    void *user_out;
    mp_future *future;                  /* map: the caller's future */
    mp_iter *iter;                      /* imap: the caller's iterator */
};

static inline bool state_final(uint32_t s) { return (s & TASK_BASE) == TASK_FINAL; }

/* A task's code as callers see it (mp_future_code, mp_iter_code): for
 * MP_ECRASHED the code is kept signed as mp_process_exitcode gives a
 * worker's end (-signal, or the exit status), and shown as its size;
 * mp_future_exitcode gives the sign too. */
static inline int task_code(int rc, int code)
{
    return rc == MP_ECRASHED && code < 0 ? -code : code;
}

mp_future *task_new(mp_pool *p, uint32_t kind, size_t in_len);
void task_free(mp_future *f);
bool future_valid(const mp_future *f);   /* a live handle: not freed by its caller */
/* MP_EINVAL for fs[i], not a live future, saying so for fn (mp_last_error). */
int future_fail_listed(const char *fn, size_t i, const mp_future *f);
/* Marks in repeat[i] each fs[i] listed before (at a lower index) and
 * counts them. Up to REPEATS_BY_PAIRS futures (or with no memory) by
 * comparing pairs, more through a table from pool_mem_alloc_until(d). */
#define REPEATS_BY_PAIRS 256
int futures_repeats(mp_future *const *fs, size_t n, bool *repeat, const mp_deadline *d);
/* mp_futures_wait; distinct: fs lists no future twice (as_completed's
 * rest), so nothing is allocated. */
int futures_wait(mp_future **fs, size_t n, int mode, double timeout, bool distinct);
/* Moves f from base state `from` to final with rc/code, wakes its waiters
 * and hands it on: to the collector if NOTIFY, freed if DETACHED. Only one
 * party may finish a task from a given state (the worker running it, the
 * collector after that worker died, cancel or terminate under the list
 * lock), so rc and code are written before the one CAS that publishes them.
 * Returns 0, or -1 if f was not in state `from`. f may be gone on return. */
int task_finish(mp_future *f, uint32_t from, int rc, int code);
/* task_finish, but with callbacks_here a future that has callbacks is left
 * to the caller (1), which runs them (task_run_callbacks, task_processed)
 * instead of the result thread. */
int task_finish_as(mp_future *f, uint32_t from, int rc, int code, bool callbacks_here);
/* Waits until f is done as its caller sees it (task_settled). */
int task_wait(mp_future *f, const mp_deadline *d);
/* Whether f, in state s, is done as its caller sees it: final, and (in the
 * process its on_done callbacks run in) those callbacks have returned, as
 * Python's AsyncResult runs callback= before get() returns. A thread that
 * runs callbacks (any pool's result thread, or one whose cancel or
 * on_done runs them) sees f done once final: callbacks never wait for
 * callbacks, so two that wait on each other's futures, or a cancel's
 * callback on the future being cancelled, cannot deadlock. */
bool task_settled(const mp_future *f, uint32_t s);
void task_run_callbacks(mp_future *f);
/* The collector marks a NOTIFY task handled; frees it if detached. */
void task_processed(mp_future *f);

/* ------------------------------------------------------------------ the pool */

/* Rules: a slot is written only by the worker it belongs to (current,
 * current_id, started_ns, ready, exited, all atomic) and read by the
 * monitor, which clears it before it starts that slot's replacement. One
 * cache line each, so workers never share one. */
struct slot {                           /* one worker's record, read after it dies */
    _Atomic(mp_future *) current;
    _Atomic uint64_t current_id;
    _Atomic uint64_t started_ns;        /* this item's start (task_timeout only), 0 idle */
    _Atomic uint32_t ready;             /* initializer ran */
    _Atomic uint32_t exited;            /* threads backend: the loop returned */
    /* A worker killed between taking an arena block and publishing it in
     * its task would leak the block, so the pool kills its own workers
     * only outside such a hand-over: the killer raises kill_req and waits
     * out hold (HOLD_WAIT_NS at most); a worker raises hold, then looks at
     * kill_req and, if it is up, dies there, with nothing half done. Both
     * sequentially consistent: one of the two sees the other's store. */
    _Atomic uint32_t hold;
    _Atomic uint32_t kill_req;          /* set only for a worker that is a process */
    char pad[MP_CACHELINE - 40];
};
_Static_assert(sizeof(struct slot) == MP_CACHELINE, "a worker's slot is one cache line");

enum { CLOSING_NO, CLOSING_DRAIN, CLOSING_NOW };

/* Rules (shared by the pool's creator and its workers, in the arena).
 * lock (list_lock, robust): head, tail and each task's next; queued and
 * closing are atomic copies readers look at without it. seq, sleepers:
 * the workers' futex word and its waiter count (sliced sleeps); done_head,
 * done_seq, collector_sleeping: a lock-free stack workers push finished
 * tasks on and the collector alone pops. items_done, items_total, any_seq,
 * any_waiters, next_id: atomic counters. Everything from count_items to
 * fns is written by the creator before the first worker starts and read
 * only after. slots: see struct slot. Each group that different parties
 * write sits on its own cache line. */
struct pool_shared {
    uint32_t magic;
    rmutex lock;                        /* the task list */
    mp_future *head, *tail;
    _Atomic uint64_t queued;            /* list length, readable without the lock */
    _Atomic uint32_t closing;           /* CLOSING_*: workers leave when drained / at once */
    alignas(MP_CACHELINE) _Atomic uint32_t seq;   /* bumped on push and close: workers sleep here */
    _Atomic uint32_t sleepers;
    alignas(MP_CACHELINE) mp_future *_Atomic done_head;   /* tasks the collector must see */
    _Atomic uint32_t done_seq;
    _Atomic uint32_t collector_sleeping;
    alignas(MP_CACHELINE) _Atomic uint64_t items_done, items_total;
    _Atomic uint32_t any_seq, any_waiters;   /* mp_futures_wait */
    _Atomic uint64_t next_id;
    bool count_items;                   /* a progress callback wants items_done */
    double task_timeout;
    int maxtasks, nslots;
    bool has_init;
    fnref init_ref;
    void *initarg;                      /* arena copy, or the caller's pointer */
    size_t initarg_size;
    uint32_t nfns;
    struct fnentry *fns;
    alignas(MP_CACHELINE) struct slot slots[];
};

/* Memory for what the pool's threads and its iterators make and free
 * while workers are being forked: the arena, the heap only when the arena
 * is full (pool.c, "Forks and the heap"). Not zeroed; free takes either. */
void *pool_mem_alloc(size_t size);
/* The same for a call with deadline d: the arena's lock is waited for only
 * until d (at least LOCK_GRACE_S), and then the heap serves. */
void *pool_mem_alloc_until(size_t size, const mp_deadline *d);
void pool_mem_free(void *p);

/* The task list: lock repairs what a worker killed mid-pop left. */
void list_lock(struct pool_shared *sh);
void list_unlock(struct pool_shared *sh);
bool list_unlink(struct pool_shared *sh, mp_future *f);   /* under the lock */
/* Pushes the tasks first..last (linked by next) in one go and wakes workers. */
int pool_push(struct pool_shared *sh, mp_future *first, mp_future *last, size_t count);   /* MP_ECLOSED */
/* The collector's inbox: lock-free push from any process. */
void collector_push(struct pool_shared *sh, mp_future *f);
const struct fnentry *pool_fn(mp_pool *p, mp_fn fn);   /* NULL: not in a loaded object */
int pool_check_open(mp_pool *p);        /* 0, MP_EINVAL, MP_ECLOSED, MP_EBROKEN, MP_ESTATE */
/* After pool_push's MP_ECLOSED: MP_EBROKEN if the pool broke meanwhile,
 * else MP_ECLOSED, with its message. */
int pool_closed_meanwhile(mp_pool *p);
/* Starts failing for want of a resource (EMFILE, EAGAIN, ...) with no
 * worker alive break a pool only once they have failed this long. */
#define POOL_SHORTAGE_MAX_S 10.0
/* MP_EBROKEN, with the message that says why the pool broke. */
int pool_broken_why(mp_pool *p);
bool pool_owned_here(const mp_pool *p); /* this process created p */
int pool_worker_count(const mp_pool *p);
struct pool_shared *pool_shared_of(const mp_pool *p);
pthread_mutex_t *pool_lock(mp_pool *p);
bool pool_terminating(const mp_pool *p);
void pool_progress_add_total(mp_pool *p, uint64_t items);
void pool_progress_final(mp_pool *p);   /* the progress callback, now, if anything changed */

/* How a worker runs its tasks' function: in its own image (runner NULL), or
 * elsewhere (libmproc_mpi's proxy threads ship each call to an MPI rank). */
#define WORKER_GONE 1                   /* the worker must end now: its slot names its task */
struct task_runner {
    /* One call: 0 (code = fn's return), MP_EINVAL (fn not found there), or
     * WORKER_GONE: the worker returns at once and the monitor fails its
     * task as for a dead process (MP_EKILLED if killed, else MP_ECRASHED). */
    int (*call)(void *ctx, const struct fnentry *e, const void *in, size_t len, mp_buf *out,
                int *code);
    /* Optional: items [from, to) of a map are about to be called in order. */
    void (*prefetch)(void *ctx, const struct job *job, size_t from, size_t to);
    void *ctx;
};
/* 0, MP_ETASK (code set), MP_EINVAL (fn not found) or WORKER_GONE. */
int task_call(const struct task_runner *r, const struct fnentry *e, mp_fn fn, const void *in,
              size_t len, mp_buf *out, int *code);

/* pool_map.c: chunks in the worker, and in the collector. */
/* Returns WORKER_GONE, leaving f running, if the runner says so; else 0. */
int chunk_run(struct pool_shared *sh, struct slot *s, mp_future *f, mp_fn fn,
              const struct task_runner *r, mp_buf *out);
void chunk_collect(mp_pool *p, mp_future *chunk);

/* ------------------------------------------------------------------ backends */

/* How workers are started, watched and stopped. Processes and threads live
 * in pool.c; the MPI backend lives in libmproc_mpi, which registers it when
 * it is loaded (mp__pool_register_mpi): unregistered, MP_MPI is refused. */
struct pool_backend {
    const char *name;
    int (*start)(mp_pool *p, int slot);               /* runs pool_worker_main */
    bool (*ended)(mp_pool *p, int slot, int *status); /* reaped: exit code or -signal */
    int (*kill)(mp_pool *p, int slot);                /* MP_ESTATE if it cannot */
    int (*sentinel)(mp_pool *p, int slot);            /* fd to poll, or -1 */
    void (*release)(mp_pool *p, int slot);            /* after ended */
    void (*stop)(mp_pool *p, int slot);               /* kill, wait, release: failure paths */
    int (*workers)(int processes);    /* optional: pool size for opts.processes, or MP_E* */
};

struct worker_arg { struct pool_shared *sh; int slot; const struct task_runner *runner; };
/* getpid(), cached (a system call otherwise) and reset at fork. */
pid_t pool_self_pid(void);
/* Whether the calling thread is one of sh's pool's own threads, where its
 * on_done and progress callbacks run: the collector finishes maps and
 * feeds imap iterators, so a wait there for one of them would never end. */
bool pool_thread_serves(const struct pool_shared *sh);
/* Whether it is any pool's monitor or result thread. */
bool pool_thread_serves_any(void);
/* Around the callbacks a cancel runs in its own thread (begin, then not):
 * join, terminate and free wait for them as for the result thread's. */
void pool_cancel_callbacks(mp_pool *p, bool begin);
/* Whether this thread is inside an on_done callback (future.c). */
bool future_in_callbacks(void);

/* In a worker, around an arena hand-over (struct slot). */
void worker_hold(struct slot *s);
void worker_release(struct slot *s);
/* Named points inside a worker's hand-overs ("blob_copied",
 * "output_copied") where a test can SIGKILL the worker: calls
 * mp__pool_test_hook in the test-only build, nothing otherwise. */
void pool_hook(const char *point);
/* Whether a test has the named allocation ("notice") fail, as if the
 * arena and the heap were both full: never, outside the test-only build. */
bool pool_alloc_refused(const char *what);
#ifdef MPROC_TEST_HOOKS
MP_EXTERN extern void (*mp__pool_test_hook)(const char *point);
MP_EXTERN extern bool (*mp__pool_refuse_alloc)(const char *what);
#endif
int pool_worker_main(void *arg);        /* a worker's whole life; its exit code */

/* The internals libmproc_mpi, a library of its own, calls: exported. */
#define POOL_SEAM __attribute__((visibility("default")))
POOL_SEAM void mp__pool_register_mpi(const struct pool_backend *b);
POOL_SEAM int mp__pool_worker_main(void *arg);   /* pool_worker_main; -1: WORKER_GONE */
POOL_SEAM struct pool_shared *mp__pool_shared_of(const mp_pool *p);
POOL_SEAM void *mp__fnref_resolve(const fnref *r);

#endif
