/* internal.h - what the library's files share and users never see.
 *
 * The arena (one memfd mapped at the same address in every process of a
 * family) holds every shared object, so a pointer is valid in every process
 * under every start method. Waiting is a futex word: spin briefly, then sleep.
 */
#ifndef MPROC_INTERNAL_H
#define MPROC_INTERNAL_H

#include "mproc.h"
#include "platform/slices.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define MP_CACHELINE 64
/* Built with ThreadSanitizer (gcc says so one way, clang another). */
#if defined(__SANITIZE_THREAD__)
#define MP_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MP_TSAN 1
#endif
#endif
/* Thread-local storage read on a hot path: the initial-exec model reads it
 * at a fixed offset from the thread pointer instead of calling
 * __tls_get_addr. Only for a few small variables: a library loaded by
 * dlopen takes them from the loader's small static-TLS reserve. */
#define MP_TLS_HOT __thread __attribute__((tls_model("initial-exec")))
#define MP_UNUSED(x) ((void)(x))
/* A function compiled into each caller, so that arguments a caller passes
 * as constants prune what it does not need (the queue's common paths). */
#define MP_ALWAYS_INLINE inline __attribute__((always_inline))
/* A function kept out of its callers, so that their common case does not
 * pay for its stack frame. */
#define MP_NOINLINE __attribute__((noinline))

/* Magic words at the head of every handle: a misused handle is refused with
 * MP_EINVAL instead of crashing (SQLite's SafetyCheck). */
enum {
    MAGIC_LOCK = 0x4c4f434b,      /* LOCK */
    MAGIC_MLOCK = 0x4d4c434b,     /* MLCK: a manager lock (same mp_lock calls) */
    MAGIC_SEM = 0x53454d41,       /* SEMA */
    MAGIC_EVENT = 0x45564e54,     /* EVNT */
    MAGIC_COND = 0x434f4e44,      /* COND */
    MAGIC_BARRIER = 0x42415252,   /* BARR */
    MAGIC_QUEUE = 0x51554555,     /* QUEU */
    MAGIC_PROCESS = 0x50524f43,   /* PROC */
    MAGIC_THREAD = 0x54485244,    /* THRD */
    MAGIC_CONN = 0x434f4e4e,      /* CONN */
    MAGIC_LISTENER = 0x4c53544e,  /* LSTN */
    MAGIC_SHM = 0x53484d5f,       /* SHM_ */
    MAGIC_POOL = 0x504f4f4c,      /* POOL */
    MAGIC_FUTURE = 0x46555452,    /* FUTR */
    MAGIC_ITER = 0x49544552,      /* ITER */
    MAGIC_FREED = 0x66726565,     /* free: a use after free is refused too */
};

/* ------------------------------------------------------------------ arena */

/* Allocates zeroed memory in the family arena, creating the arena on first
 * use. NULL when size is 0 or too large, or the arena cannot be made. */
void *arena_alloc(size_t size);
void *arena_alloc_nozero(size_t size);    /* big message buffers: no memset */
/* Maps every page of [p, p+n) into this process in one call, so a big copy
 * does not take a page fault per 4 KiB (a no-op where the kernel cannot, or
 * where this process mapped the range already and no sweep has punched
 * pages since). */
void arena_prefault(void *p, size_t n, bool write);
void arena_free(void *p);
/* LeakSanitizer does not look inside the arena: an arena object holding
 * pointers to this process's heap is a root for that memory while it lives
 * (live true at creation, false before its arena_free). No-op without ASan. */
void arena_heap_root(const void *obj, size_t size, bool live);
bool arena_contains(const void *p, size_t len);
/* This process starts using memory that another process took from the
 * arena and handed over (through a socket, say). ThreadSanitizer cannot
 * see the other process take the arena's lock, so it would take the block
 * headers this process's threads once wrote in those bytes for a race with
 * the new owner's data: this tells it that every allocation and free this
 * process made so far came first. A no-op in other builds. */
void arena_handed_over(void);
/* The other way round: this thread has just read a word of a block that
 * may have been freed meanwhile (a stale handle's id, checked on purpose),
 * and an allocation that reuses the block in this process comes after
 * that read. Also a no-op outside ThreadSanitizer. */
void arena_looked_at(void);
/* p is the start of an arena block in use (what arena_alloc returned). */
bool arena_is_block(const void *p);
size_t arena_block_size(const void *p);  /* its usable bytes; p from arena_alloc */
/* Validates the allocator under its lock (after repairing a dead holder's
 * operation): every header, link, bitmap and cache stack consistent. Fills
 * *st if not NULL: used counts blocks in use by callers; cached, freed small
 * blocks waiting in the cache's stacks; deferred, freed blocks waiting in
 * the deferred stack for the lock (taking it frees them, so only frees made
 * since); stray, blocks marked cached or deferred but in no stack (a process
 * killed while pushing or taking one: leaked). */
struct arena_stats {
    size_t used_bytes, used_blocks, free_bytes, free_blocks, largest_free;
    size_t cached_bytes, cached_blocks, deferred_blocks, stray_blocks;
};
bool arena_check(struct arena_stats *st);
/* Called at named points inside alloc and free, so a test can SIGKILL a
 * process exactly there. Only in the test-only build (MP_TEST_HOOK). */
#ifdef MPROC_TEST_HOOKS
MP_EXTERN extern void (*mp__arena_test_hook)(const char *point);
#endif
int arena_fd(void);                      /* the memfd, creating the arena; <0 on failure:
                                          * why (-EMFILE, ...), else MP_ENOMEM */
void *arena_base(void);                  /* NULL until created */
size_t arena_size(void);
/* The bytes the allocator keeps in front of each block (arena.c's
 * BLOCK_HEADER): a block of 2^k bytes holds 2^k - ARENA_BLOCK_HEADER
 * (queue.c sizes its segments by it). A cache line, so payloads stay
 * cache-line aligned. */
#define ARENA_BLOCK_HEADER 64
_Static_assert(ARENA_BLOCK_HEADER % MP_CACHELINE == 0, "payloads stay cache-line aligned");
/* Maps an inherited arena at the parent's address (spawn, forkserver). */
int arena_attach(int fd, uintptr_t base, size_t size);

/* Family-wide named slots, so subsystems keep one shared root object each
 * (the fork server's state, ...). Slot values are arena pointers. */
enum { ARENA_SLOT_FORKSERVER, ARENA_SLOT_CROSSED, ARENA_SLOT_COUNT = 16 };
void **arena_slot(int slot);

/* p lies in one of this process's mp_shm mappings (shm.c), which another
 * image of the program maps at another address. */
bool shm_mapping_contains(const void *p);

/* ------------------------------------------------------------------ test hooks */

/* Hooks the tests use to kill a process at a chosen point or check a
 * structure (mp__arena_test_hook, mp__queue_test_hook, mp__queue_valid)
 * exist only in libmproc_testing.a, a static build of the library made
 * with MPROC_TEST_HOOKS for the tests that need them (tests/CMakeLists.txt).
 * In libmproc.so and libmproc.a, MP_TEST_HOOK makes them static: a hook
 * pointer that is never set, which the compiler folds away with every
 * call through it, and a check nothing calls. */
#ifdef MPROC_TEST_HOOKS
#define MP_TEST_HOOK MP_EXTERN
#else
#define MP_TEST_HOOK static __attribute__((unused))
#endif
/* Asked by mp_buf_reserve before it grows a buffer to cap bytes: true
 * fails the growth with MP_ENOMEM, as a full heap would. */
#ifdef MPROC_TEST_HOOKS
MP_EXTERN extern bool (*mp__buf_refuse_alloc)(size_t cap);
#endif

/* ------------------------------------------------------------------ time */

/* A timeout turned once into an absolute CLOCK_MONOTONIC deadline. */
typedef struct { struct timespec at; bool forever; } mp_deadline;
mp_deadline deadline_in(double timeout);   /* timeout < 0: forever */
bool deadline_passed(const mp_deadline *d);
double deadline_left(const mp_deadline *d);  /* seconds, >= 0; huge if forever */
/* poll()'s timeout for what is left of d: -1 when forever, else the
 * milliseconds left rounded up and capped at INT_MAX (a wait of more than
 * 24 days polls again for the rest; a bigger double would overflow int). */
int deadline_poll_ms(const mp_deadline *d);
uint64_t now_ns(void);                      /* CLOCK_MONOTONIC */
/* A call's deadline made only when it first waits: most queue puts and
 * gets never do, and reading the clock costs more than the rest of a put. */
typedef struct {
    double timeout;
    bool set;
    mp_deadline at;
} lazy_deadline;
static inline const mp_deadline *lazy_deadline_at(lazy_deadline *d)
{
    if (!d->set) {
        d->at = deadline_in(d->timeout);
        d->set = true;
    }
    return &d->at;
}
/* A process-local condition variable whose timed waits use CLOCK_MONOTONIC,
 * the clock of every mp_deadline. */
void cond_init_monotonic(pthread_cond_t *c);

/* arena_alloc and arena_alloc_nozero for a call with a timeout: they wait
 * for the arena's lock, which another process may hold stopped inside an
 * allocation, only until d (at least LOCK_GRACE_S): NULL with errno
 * ETIMEDOUT then. NULL d: as long as the holder lives, as arena_alloc. */
void *arena_alloc_until(size_t size, const mp_deadline *d);
void *arena_alloc_nozero_until(size_t size, const mp_deadline *d);
/* Blocks in hand. A process that takes a block nobody else names yet, and
 * then works on it for a while (copies a big item in and waits for room to
 * queue it, builds a pipe's rings), takes it into a slot of its own record:
 * arena_alloc_held writes the block's address into *slot as soon as the
 * block is taken, under the arena's lock, before its pages are reserved
 * or zeroed. Should the process die holding it, its reaper frees it.
 * hand_claim takes a free slot (NULL: this process has no record of its
 * own, as the first process and a raw fork's child, or all PROC_HANDS are
 * taken; the block is then held as any other). hand_release empties one,
 * just before the block is named elsewhere (the commit that queues it) or
 * freed: a process killed between the two leaks that block, as one killed
 * inside arena_alloc does. hand_alloc claims and takes (on failure NULL,
 * the slot released); hand_free frees and empties the slot in one step
 * (arena_free_held). NULL slots: no-ops. */
void *arena_alloc_held(size_t size, bool zero, const mp_deadline *d, void *_Atomic *slot);
/* A hand slot claimed and not yet filled: never a block's address. Such a
 * slot is named in the allocation's journal, so a process killed inside
 * arena_alloc_held once its block is taken leaves the block in the slot (the
 * next holder of the arena's lock repairs, and writes it there). */
#define HAND_CLAIMED ((void *)(uintptr_t)1)
/* Takes the arena's lock and gives it back (waiting LOCK_GRACE_S at most):
 * a dead holder's journal is repaired by then. */
void arena_settle(void);
void *_Atomic *hand_claim(void);
/* Puts p, a block this process has just become the only holder of (the
 * last reference to a shared thing it is about to free), in hand: the slot,
 * or NULL (none free). A process killed between becoming its holder and
 * this store leaks it, as one killed between a release and a commit. */
void *_Atomic *hand_hold(void *p);
void hand_release(void *_Atomic *slot);
void *hand_alloc(size_t size, bool zero, const mp_deadline *d, void *_Atomic **slot);
void hand_free(void *_Atomic *slot, void *p);
/* Frees p, which slot names, and empties slot in the same step: the free's
 * journal names it, so a process killed before the commit leaves p in the
 * slot (its reaper frees it), and one killed after has the repair empty it
 * (nothing is freed twice). Without the arena's lock within its grace it
 * empties the slot first, as arena_free defers. slot NULL: arena_free. */
void arena_free_held(void *_Atomic *slot, void *p);
/* arena_is_block for a call with a timeout: 1 (and *size, if not NULL, its
 * usable bytes), 0 not a block in use, -1 the arena's lock stayed held
 * until d (at least LOCK_GRACE_S). */
int arena_block_until(const void *p, const mp_deadline *d, size_t *size);
/* arena_block_until that also marks the block as a queue's
 * (mp_queue_put_shared): -2 if it is a queue's already; mp_shared_free
 * refuses it until arena_unmark_queued (its get_shared, or a put that
 * failed). A free by the library (a get that copied it) needs no unmark:
 * a block taken again starts unmarked. */
int arena_mark_queued(void *p, const mp_deadline *d, size_t *size);
void arena_unmark_queued(void *p);
/* One rule for every blocking call: MP_FOREVER and +inf block, 0 and any
 * positive value bound the wait; NaN and every other negative value are a
 * mistake (a deadline computed as "then - now" that has already passed, say)
 * and give MP_EINVAL at once, as Python raises ValueError. Inline: every
 * acquire asks it. */
static inline bool timeout_valid(double timeout)
{
    return timeout >= 0 || timeout == MP_FOREVER;
}

/* ------------------------------------------------------------------ futex */

/* Sleeps while *word == val, until woken or the deadline: 0 (woken, changed,
 * or spurious: recheck), MP_ETIMEDOUT. Process-shared, EINTR-safe. */
int futex_wait(_Atomic uint32_t *word, uint32_t val, const mp_deadline *d);
void futex_wake(_Atomic uint32_t *word, int n);   /* n = INT32_MAX: all */
/* Spins a few microseconds for *word != val, then futex_wait. */
int futex_wait_spin(_Atomic uint32_t *word, uint32_t val, const mp_deadline *d);
/* One sleep (after a spin if spin) of at most FUTEX_SLICE seconds: 0 when
 * woken or when the slice ended first (look again), MP_ETIMEDOUT once d has
 * passed. For waiters whose waker may be killed between its change and its
 * futex_wake: no sleep outlasts a slice, so none outlasts the change
 * (platform/slices.h has every slice and the rule). */
int futex_wait_sliced(_Atomic uint32_t *word, uint32_t val, const mp_deadline *d, bool spin);
void cpu_relax(void);
/* More than one CPU online: spinning only pays when the other side can run
 * meanwhile. Looked up once. */
bool several_cpus(void);
/* Spins until ready(arg), for at most *budget_ns (a caller's per-thread
 * variable, 0 at first): it doubles when spinning paid off and halves when it
 * did not, within 1-50 µs (20 at first), so busy pairs hand off in microseconds while
 * waiters on an idle object, or an oversubscribed machine, soon just sleep.
 * Between looks: `pauses` pauses, or with 0 a sched_yield every other look,
 * for a peer that may need this very CPU. False at once on one CPU. */
bool spin_adaptive(bool (*ready)(void *), void *arg, uint64_t *budget_ns, unsigned pauses);

/* ------------------------------------------------------------------ robust mutex */

/* A process-shared robust pthread mutex living in the arena: the kernel's
 * robust list tells the next owner when a holder died (MP_EOWNERDEAD, and the
 * mutex is made consistent and held). Used by locks, queues, the pool. */
typedef struct { pthread_mutex_t m; } rmutex;
/* pthread_mutex_clocklock by a CLOCK_MONOTONIC time (a deadline's at), so
 * that every sanitizer sees it for a lock: pthread's code (0, ETIMEDOUT,
 * EOWNERDEAD, ...). */
int mutex_clocklock(pthread_mutex_t *m, const struct timespec *at);
int rmutex_init(rmutex *m);
int rmutex_lock(rmutex *m, const mp_deadline *d);   /* 0, MP_EOWNERDEAD, MP_ETIMEDOUT, -EDEADLK */
int rmutex_wait(rmutex *m, const mp_deadline *d);   /* rmutex_lock after a trylock found it busy */
/* A timed call waits for an object's internal lock (a queue's side, a
 * barrier's state) for its time left, but at least this long, so that a
 * timeout of 0 does not fail because another holds the lock for a moment;
 * only a holder that is stopped makes the deadline matter. Seconds. */
#define LOCK_GRACE_S 0.01
/* MP_EINVAL if not the owner: a robust mutex refuses a non-owner itself
 * (EPERM), from the tid glibc keeps at hand. ThreadSanitizer would report
 * the attempt as a bug of ours, so under it rmutex.c asks first. */
#ifdef MP_TSAN
int rmutex_unlock(rmutex *m);
#else
static inline int rmutex_unlock(rmutex *m)
{
    return pthread_mutex_unlock(&m->m) == 0 ? 0 : MP_EINVAL;
}
#endif
int rmutex_trylock_failed(rmutex *m, int err);     /* rmutex_trylock's code for pthread's err */
/* 0, MP_EOWNERDEAD, MP_ETIMEDOUT (busy), -EDEADLK (ours). Inline, for the
 * uncontended acquire: one call into glibc and nothing else. */
static inline int rmutex_trylock(rmutex *m)
{
    int err = pthread_mutex_trylock(&m->m);
    return err == 0 ? 0 : rmutex_trylock_failed(m, err);
}
uint32_t rmutex_owner(rmutex *m);  /* tid of the live holder, 0 if none */
void rmutex_destroy(rmutex *m);

/* ------------------------------------------------------------------ lock-rule checks */

/* What the rules blocks on the structs say, checked where it is cheap:
 * compiled in with MPROC_CHECKS (CMake's option of that name, on in the
 * sanitizer and Debug builds), nothing otherwise. A failed check names the
 * condition, file and line on stderr and aborts: it is a bug in mproc,
 * never a caller's bad input.
 *   ASSERT_HELD(&mutex)   a process-local pthread mutex held by this thread
 *   ASSERT_RHELD(&rmutex) a robust shared mutex held by this thread */
bool mutex_held_here(pthread_mutex_t *m);           /* platform/rmutex.c */
#ifdef MPROC_CHECKS
void mp_check_failed(const char *cond, const char *file, int line) __attribute__((noreturn));
#define MP_CHECK(cond) ((cond) ? (void)0 : mp_check_failed(#cond, __FILE__, __LINE__))
#else
#define MP_CHECK(cond) ((void)0)
#endif
#define ASSERT_HELD(m) MP_CHECK(mutex_held_here(m))
#define ASSERT_RHELD(m) MP_CHECK(rmutex_owner(m) == mp_gettid())

/* ------------------------------------------------------------------ big copies */

/* memcpy, except that from COPY_STREAM_MIN bytes the destination is written
 * past the cache (streaming stores): for big items, which cannot stay
 * cached anyway. Ordered before any later store of the caller. */
#define COPY_STREAM_MIN ((size_t)8 << 20)
void copy_big(void *dst, const void *src, size_t n);

/* ------------------------------------------------------------------ tid lock */

/* A lighter robust lock for hot paths (the queue): one CAS to take, one
 * store to give back. The word names the owner (tid and start time); a
 * waiter that has slept a slice checks that the owner lives and takes a dead
 * owner's lock over (MP_EOWNERDEAD: held, repair what it guarded). A thread
 * that takes it many times in a row is lent it: it then takes and gives it
 * back with plain stores, until another locker calls the loan in
 * (platform/tlock.c). Zero-initialised = free. Hold it only briefly. */
#define TLOCK_BORROWERS 4
typedef struct {
    _Atomic uint64_t word;    /* the owner through the word, | TLOCK_WAITERS */
    _Atomic uint64_t lent;    /* the borrower's word, | TLOCK_CALLED_IN once the loan ends */
    _Atomic uint32_t uses;    /* takes under the current loan (by the borrower) */
    uint32_t streak;          /* under word: takes in a row by last, */
    uint64_t last;
    uint32_t need;            /* and how many earn a loan (0: TLOCK_LEND_MIN) */
    struct tlock_borrower {   /* threads lent it (now or before), each with */
        _Atomic uint64_t who; /* its own flag: no one else ever stores to it */
        _Atomic uint32_t in;  /* 1 while it takes or holds the lock as borrower */
    } borrowers[TLOCK_BORROWERS];
} tlock;
int tlock_lock(tlock *l);        /* 0, MP_EOWNERDEAD, -EDEADLK (already ours) */
/* A thread or process as the tlock names its owner: the id in the low half,
 * the low half of its start time in the high half (0: unknown). Gone: there
 * is evidence that it ended (a zombie has; an unreadable /proc is none). */
uint64_t task_word(uint32_t id);
bool task_word_gone(uint64_t w);
/* The same, or MP_ETIMEDOUT once timeout seconds (MP_FOREVER: none) have
 * passed with the lock held by another: a holder that is stopped. */
int tlock_lock_timed(tlock *l, double timeout);
void tlock_unlock(tlock *l);
/* Whether this thread can be lent a tlock (membarrier works here), and
 * whether l is lent to it now. */
bool tlock_lending(void);
bool tlock_lent_to_caller(tlock *l);

/* ------------------------------------------------------------------ functions across exec */

/* A function named by (object, offset) so spawn, forkserver, the pool and
 * MPI ranks can find it in another image of the program. */
typedef struct {
    char object[256];     /* "" = main executable, else the shared object's path */
    uint64_t offset;      /* from the object's load base */
} fnref;
int fnref_from(const void *fn, fnref *out);   /* MP_EINVAL if fn is not in a loaded object */
void *fnref_resolve(const fnref *r);          /* NULL if it cannot be found */

/* ------------------------------------------------------------------ manager locks */

/* mp_manager_lock hands out an mp_lock whose magic is MAGIC_MLOCK; the
 * mp_lock_* calls in lock.c forward such handles here (manager/). Every
 * handle struct starts with a uint32_t magic word. */
int mlock_acquire(mp_lock *l, double timeout);
int mlock_release(mp_lock *l);
void mlock_free(mp_lock *l);

/* ------------------------------------------------------------------ fork hooks */

/* The library's one pthread_atfork handler (platform/atfork.c) calls the
 * hooks each subsystem sets in its slot, in the order of the slots: prepare
 * from the first slot to the last, parent and child from the last to the
 * first. That order is the lock order at fork (docs/architecture.md has the
 * whole list): prepare takes the subsystem's process-local lock, parent and
 * child give it back; a child hook also drops what the child does not
 * inherit. A slot set once stays; setting it again changes nothing. */
enum fork_slot {
    FORK_POOL,             /* pool.c: child only, resets its list of live pools */
    FORK_MANAGER_CLIENT,   /* manager/client.c: local.mu, its manager connections */
    FORK_SHM,              /* shm.c: local.lock, its mappings */
    FORK_CONN_CALLS,       /* conn_calls.c: calls.mu, the calls inside conns (a close lets go
                            * of its conn under it: takes the locks of the slots after) */
    FORK_CONN,             /* conn.c: early.lock, descriptors a read-ahead kept */
    FORK_FDREG,            /* fdreg.c: registry.lock; prepare counts the child as a holder */
    FORK_PROCESS,          /* process.c: rt.lock, children, pidfds, threads */
    FORK_ARENA,            /* arena.c: arena.init, then seen.lock (taken under rt.lock) */
    FORK_LISTENER,         /* listener.c: sets.mu, the handshakes under way (taken under
                            * rt.lock and registry.lock, by a reaper that frees a listener) */
    FORK_TID,              /* platform/futex.c: child only, the tid cache: first in the child */
    FORK_SLOTS
};
void fork_hook_set(enum fork_slot slot, void (*prepare)(void), void (*parent)(void),
                   void (*child)(void));
/* The slots set so far: bit s for slot s. */
uint32_t fork_hooks_set(void);
/* For the constructors that set the library up (fork hooks, caches): they
 * run before the plain ones, and so before spawn_take_aside and
 * take_ranks_aside, which may run a target (and fork) before main. Without
 * a priority the order would be the link order. */
#define MP_SETUP_CONSTRUCTOR __attribute__((constructor(150)))

/* ------------------------------------------------------------------ runtime */

uint32_t mp_gettid(void);
int errno_to_mp(int err);    /* -err, with ENOMEM etc. kept as -errno */

/* ------------------------------------------------------------------ error messages */

/* What mp_last_error tells. A public call that fails returns through one of
 * these, so the message names the call (fn: pass __func__), the argument,
 * the reason and, where known, the fix:
 *   return mp_fail(MP_EINVAL, __func__, "address \"%s\" has no scheme", a);
 * Each returns rc and keeps errno. A helper that knows the reason but not
 * the call passes fn NULL; the public call then returns through
 * mp_fail_code(rc, __func__), which puts its name in front (or, if no
 * helper said why, writes mp_strerror's text). mp_fail_code returns rc >= 0
 * untouched, so `return mp_fail_code(rc, __func__);` may end any call. */
int mp_fail(int rc, const char *fn, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int mp_fail_code(int rc, const char *fn);
/* MP_EINVAL for a handle argument arg that is NULL, freed (MAGIC_FREED) or
 * not a handle of its kind; h's first word is its magic. */
int mp_fail_handle(const char *fn, const char *arg, const void *h);
/* MP_EINVAL for a timeout that is not a valid number of seconds. */
int mp_fail_timeout(const char *fn, double timeout);
/* Whether the caller's bytes what..what+len can all be read before they
 * are copied: MP_ETOOBIG past PTRDIFF_MAX (or wrapping round), MP_EINVAL
 * when the range reaches a page this process has not mapped (one msync),
 * so a wrong length is an error code instead of a fault in the copy.
 * Ranges under MEM_CHECK_MIN bytes are the caller's to get right (a
 * system call would cost more than their copy). */
#define MEM_CHECK_MIN ((size_t)64 << 10)
int mem_range_check(const char *fn, const char *what, const void *data, size_t len);

#endif
