/* tlock.c - the queue's lock: one CAS to take, one store to give back
 * (a thread it is lent to: two plain stores).
 *
 * The word names its owner: the thread's id in the low half (the futex
 * word, with TLOCK_WAITERS set once someone sleeps on it) and the thread's
 * start time in the high half. Unlike the robust pthread mutex (rmutex.c),
 * nothing is registered with the kernel, so an uncontended lock and unlock
 * cost about a third as much; robustness comes from the waiters instead: one
 * that has slept a slice asks whether the owner still lives and, if it does
 * not, takes the lock over and is told MP_EOWNERDEAD, so the caller repairs
 * what the dead owner left (the queue's journal). The start time is what
 * makes "still lives" exact: the kernel hands a dead thread's id to new
 * threads (after 32768 of them on a small machine), and a live stranger
 * with that id must not pass for the owner, nor may this very thread.
 *
 * The unlock reads the word and then stores zero, with no read-modify-write
 * between. A waiter that sets TLOCK_WAITERS in that gap is cleared by the
 * store: if it has not slept yet its futex_wait sees the changed word and
 * returns, and if it has, its slice ends the sleep. Either way it retries
 * and finds the lock free; nobody waits longer than a slice for a wake-up.
 *
 * Lending. Every take through the word is a locked instruction, and on x86
 * one waits until every store before it has left the core: after a queue
 * put, the lines the other process reads must first come back. A thread
 * that has taken the lock TLOCK_LEND_MIN times in a row (more after loans
 * that did not pay) is lent it when it gives it back through the word: it
 * becomes the borrower, named in lent. The borrower then takes the lock by
 * raising a flag of its own (in) and checking that the loan still stands,
 * and gives it back by lowering the flag: no locked instruction, nothing
 * waited for. Anyone else takes the word as before and then calls the
 * loan in: it marks lent TLOCK_CALLED_IN, issues
 * membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED), and waits until no flag is
 * up. The two sides are Dekker's: each stores, then loads what the other
 * stored. The borrower has no fence between its store and its load; the
 * membarrier is both fences (it runs a full barrier on every CPU that runs
 * a registered process, and a borrower registers before its first loan).
 * So either the caller sees the flag and waits, or the borrower sees the
 * loan gone and takes the word like everyone else. Each borrower has its
 * own flag (TLOCK_BORROWERS per lock, a slot each for as long as its
 * thread lives): a thread that read lent long ago and only now raises its
 * flag, to find the loan gone, must not lower the flag of whoever borrows
 * the lock now. A call-in costs the caller a system call of some 25 us
 * here, so loans go only to threads that take the lock thousands of times
 * without anyone else: a queue's only producer, or its only consumer. A
 * process where membarrier does not work (old kernels, valgrind, seccomp)
 * is never lent a lock.
 *
 * Robustness is unchanged. A borrower killed holding the lock leaves its
 * flag up and the caller waiting on it; the caller asks each slice whether
 * the borrower lives and, if not, takes over with MP_EOWNERDEAD, as from a
 * dead owner of the word. A borrower killed outside it leaves a loan that
 * the next caller ends. A stopped borrower holds the caller until its
 * timeout, as a stopped owner does; whoever takes the word later waits on
 * its flag too, and no loan is made while a flag is up.
 *
 * One death goes unseen: a thread other than the main one calls execve while
 * the main thread holds the lock. The kernel ends the main thread and gives
 * the new program its id and start time, so the lock stays taken until that
 * program exits. (A robust mutex is released on exec; this corner is the
 * price of the cheaper lock.)
 */
#include "internal.h"
#include "platform/platform.h"
#include "platform/valgrind_check.h"

#include <endian.h>

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TLOCK_WAITERS 0x80000000u
#define TLOCK_CALLED_IN 0x80000000u   /* in lent: the loan is over */
#define TLOCK_SPINS 400
/* Takes in a row through the word that earn a loan: from TLOCK_LEND_MIN,
 * doubled each time a loan is called in before its borrower took the lock
 * TLOCK_LEND_PAID times (a call-in, ~25 us, is worth ~500 takes' fences),
 * up to TLOCK_LEND_MAX; a loan that paid sets it back. */
#define TLOCK_LEND_MIN 1024u
#define TLOCK_LEND_MAX (1u << 24)
#define TLOCK_LEND_PAID 4096u

/* The futex word: the low half of the 64-bit lock word. */
static _Atomic uint32_t *futex_word(tlock *l)
{
    return (_Atomic uint32_t *)(void *)&l->word + (BYTE_ORDER == BIG_ENDIAN);
}

static uint32_t tid_of(uint64_t w)
{
    return (uint32_t)w & ~TLOCK_WAITERS;
}

/* This thread as a lock word: tid and start time, looked up once per thread
 * (and again in a fork child, whose tid differs). If /proc cannot be read
 * the start is recorded as 0, which waiters take as "unknown". */
static uint64_t self_word(void)
{
    static MP_TLS_HOT uint64_t word;
    uint32_t tid = mp_gettid();
    if (tid_of(word) != tid)
        word = task_word(tid);
    return word;
}

uint64_t task_word(uint32_t id)
{
    uint64_t start = 0;                 /* stays 0 unless proc_task_start finds it */
    proc_task_start((pid_t)id, &start);
    return (uint64_t)(uint32_t)start << 32 | id;
}

/* The word w names a task that has ended, or whose id now belongs
 * to another thread (its start time differs from the recorded one). Only
 * evidence counts: if /proc cannot be read, or the owner recorded no start
 * time, a live thread with its id is taken for the owner. Taking a live
 * owner's lock would hand out its item twice; waiting on is the lesser harm. */
bool task_word_gone(uint64_t w)
{
    uint64_t start = 0;
    uint32_t recorded = (uint32_t)(w >> 32);
    switch (proc_task_start((pid_t)tid_of(w), &start)) {
    case 0:
        return true;
    case 1:
        return recorded != 0 && (uint32_t)start != recorded;
    default:
        return false;
    }
}

/* ------------------------------------------------------------------ lending */

static long membarrier(int cmd)
{
    return syscall(SYS_membarrier, cmd, 0, 0);
}

/* Whether this thread may borrow: its process is registered for
 * membarrier's expedited barriers and one ran. Asked once per thread (a fork
 * child's thread has another tid, and registers its own process). */
static bool may_borrow(void)
{
    static MP_TLS_HOT uint32_t asked_tid;
    static MP_TLS_HOT bool ok;
    uint32_t tid = mp_gettid();
    if (asked_tid != tid) {
        asked_tid = tid;
        /* valgrind does not know the call (it warns, and fails it). */
        ok = !RUNNING_ON_VALGRIND &&
             membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0 &&
             membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0;
    }
    return ok;
}

bool tlock_lending(void)
{
    return may_borrow();
}

bool tlock_lent_to_caller(tlock *l)
{
    return atomic_load_explicit(&l->lent, memory_order_relaxed) == self_word();
}

/* The heavy half of the borrower's fence: after it, every borrower that
 * runs has either made its raised flag visible or will see the loan ended. */
static void fence_borrowers(void)
{
    if (membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0 ||
        membarrier(MEMBARRIER_CMD_GLOBAL) == 0)
        return;
    /* This process may not call membarrier (a seccomp filter) though the
     * borrower's could: a fence here and, below, the wait for in (which a
     * store in a borrower's store buffer reaches in nanoseconds) is all that
     * is left. Not reached on a kernel that lent the lock to anyone. */
    atomic_thread_fence(memory_order_seq_cst);
    for (int i = 0; i < 1000; i++)
        cpu_relax();
}

/* The slot of borrower self, or NULL. A slot is its thread's until that
 * thread ends, so the answer does not change under a live caller. */
static _Atomic uint32_t *in_flag(tlock *l, uint64_t self)
{
    for (int i = 0; i < TLOCK_BORROWERS; i++)
        if (atomic_load_explicit(&l->borrowers[i].who, memory_order_relaxed) == self)
            return &l->borrowers[i].in;
    return NULL;
}

/* The borrower's take: 0, -EDEADLK (it holds the lock already), or 1: the
 * loan was called in (take the word). Each borrower raises its own flag: a
 * thread that read lent long ago, and only now raises its flag and finds
 * the loan gone, must not lower the flag of whoever borrows it now. */
static int borrow(tlock *l, uint64_t self)
{
    _Atomic uint32_t *in = in_flag(l, self);
    if (!in)
        return 1;
    if (atomic_load_explicit(in, memory_order_relaxed))
        return -EDEADLK;
    atomic_store_explicit(in, 1, memory_order_relaxed);
    /* The light half of the fence: only the compiler is kept from moving
     * the load above the store; fence_borrowers does the rest. */
    atomic_signal_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&l->lent, memory_order_acquire) == self) {
        uint32_t uses = atomic_load_explicit(&l->uses, memory_order_relaxed);
        if (uses < TLOCK_LEND_PAID)   /* counted only as far as call_in asks */
            atomic_store_explicit(&l->uses, uses + 1, memory_order_relaxed);
        return 0;
    }
    atomic_store_explicit(in, 0, memory_order_release);
    return 1;
}

/* The sooner of two deadlines. */
static const mp_deadline *sooner(const mp_deadline *a, const mp_deadline *b)
{
    if (a->forever)
        return b;
    if (b->forever)
        return a;
    return a->at.tv_sec < b->at.tv_sec ||
           (a->at.tv_sec == b->at.tv_sec && a->at.tv_nsec < b->at.tv_nsec) ? a : b;
}

/* A flag still up: the borrower's, or one of an earlier borrower that read
 * lent before the loan ended and is about to find that out; NULL if none. */
static struct tlock_borrower *flag_up(tlock *l)
{
    for (int i = 0; i < TLOCK_BORROWERS; i++)
        if (atomic_load_explicit(&l->borrowers[i].in, memory_order_acquire))
            return &l->borrowers[i];
    return NULL;
}

/* Gives the word back as to: 0, or the dead owner's word it was taken
 * from, so that the next taker is told MP_EOWNERDEAD and repairs. */
static void give_word_back(tlock *l, uint64_t to)
{
    uint64_t v = atomic_load_explicit(&l->word, memory_order_relaxed);
    atomic_store_explicit(&l->word, to, memory_order_release);
    if (v & TLOCK_WAITERS)
        futex_wake(futex_word(l), 1);
}

/* Holding the word: ends any loan and waits until no borrower is inside.
 * 0; MP_EOWNERDEAD if the borrower died inside (the lock is ours: repair);
 * MP_ETIMEDOUT at until (the word is given back as dead: see give_word_back). */
static int call_in(tlock *l, uint64_t self, lazy_deadline *u, uint64_t dead)
{
    uint64_t lent = atomic_load_explicit(&l->lent, memory_order_relaxed);
    if (lent == 0)
        return 0;                     /* never lent: no flag was ever raised */
    uint64_t borrower = lent & ~(uint64_t)TLOCK_CALLED_IN;
    if (!(lent & TLOCK_CALLED_IN)) {
        uint32_t uses = atomic_load_explicit(&l->uses, memory_order_relaxed);
        uint32_t need = l->need ? l->need : TLOCK_LEND_MIN;
        l->need = uses >= TLOCK_LEND_PAID ? TLOCK_LEND_MIN
                  : need >= TLOCK_LEND_MAX / 2 ? TLOCK_LEND_MAX : need * 2;
        atomic_store_explicit(&l->lent, lent | TLOCK_CALLED_IN, memory_order_seq_cst);
        if (borrower != self)
            fence_borrowers();
    }
    /* A flag up is the borrower inside (or killed there, or stopped there
     * while a caller before us timed out), or a late reader of lent about
     * to lower it again. Borrowers wake nobody, so look, then sleep a little
     * longer each time. */
    uint64_t step_ns = 20000;
    mp_deadline check = { .forever = true };   /* set once the spins are over */
    struct tlock_borrower *up;
    for (int i = 0; (up = flag_up(l)); i++) {
        if (i < TLOCK_SPINS) {
            cpu_relax();
            continue;
        }
        if (i == TLOCK_SPINS)
            check = deadline_in(TLOCK_SLICE);
        /* Each slice, and before giving up (else a caller whose time is
         * shorter than a slice would never take over from a dead borrower),
         * ask whether the flag's thread still lives. */
        const mp_deadline *until = lazy_deadline_at(u);
        bool time_up = deadline_passed(until);
        if (time_up || deadline_passed(&check)) {
            uint64_t who = atomic_load_explicit(&up->who, memory_order_relaxed);
            if (task_word_gone(who)) {
                atomic_store_explicit(&up->in, 0, memory_order_relaxed);
                if (who == borrower)
                    return MP_EOWNERDEAD;
                continue;             /* a late reader: it held nothing */
            }
            check = deadline_in(TLOCK_SLICE);
        }
        if (time_up) {
            give_word_back(l, dead);
            return MP_ETIMEDOUT;
        }
        mp_deadline nap = deadline_in((double)step_ns * 1e-9);
        futex_wait(&up->in, 1, sooner(&nap, sooner(&check, until)));
        step_ns = step_ns < 1000000 ? step_ns * 2 : step_ns;
    }
    return 0;
}

/* Giving the word back after streak takes in a row: lends the lock to self
 * if that has earned it and a slot is free (or was a thread's that ended).
 * A try that fails starts the streak again. */
static void maybe_lend(tlock *l, uint64_t self)
{
    if (l->last != self || l->streak < (l->need ? l->need : TLOCK_LEND_MIN) || !may_borrow())
        return;
    /* Not while a flag is up: a stopped borrower whose caller timed out may
     * still be inside, and the new borrower would not wait for it. */
    if (flag_up(l)) {
        l->streak = 0;
        return;
    }
    _Atomic uint32_t *in = in_flag(l, self);
    for (int i = 0; i < TLOCK_BORROWERS && !in; i++) {
        uint64_t who = atomic_load_explicit(&l->borrowers[i].who, memory_order_relaxed);
        if (who == 0 || (!atomic_load_explicit(&l->borrowers[i].in, memory_order_relaxed) &&
                         task_word_gone(who))) {
            atomic_store_explicit(&l->borrowers[i].who, self, memory_order_relaxed);
            in = &l->borrowers[i].in;
        }
    }
    l->streak = 0;
    if (!in)
        return;
    atomic_store_explicit(&l->uses, 0, memory_order_relaxed);
    atomic_store_explicit(&l->lent, self, memory_order_release);
}

/* ------------------------------------------------------------------ the word */

static bool take_from(tlock *l, uint64_t *seen, uint64_t to)
{
    return atomic_compare_exchange_strong_explicit(&l->word, seen, to, memory_order_acquire,
                                                   memory_order_relaxed);
}

int tlock_lock(tlock *l)
{
    return tlock_lock_timed(l, MP_FOREVER);
}

/* Takes the word: 0, MP_EOWNERDEAD (*dead: the dead owner's word), -EDEADLK
 * or MP_ETIMEDOUT. */
static int take_word(tlock *l, uint64_t self, lazy_deadline *u, uint64_t *dead)
{
    uint64_t v = 0;
    if (take_from(l, &v, self))
        return 0;
    for (int i = 0; i < TLOCK_SPINS; i++) {
        cpu_relax();
        v = atomic_load_explicit(&l->word, memory_order_relaxed);
        if (v == 0 && take_from(l, &v, self))
            return 0;
    }
    /* Sleep. Having slept, take the lock with TLOCK_WAITERS set: others may
     * still sleep, and our unlock must wake the next. */
    uint64_t watched = 0;
    mp_deadline check = deadline_in(MP_FOREVER);   /* set once an owner is watched */
    const mp_deadline *until = lazy_deadline_at(u);
    for (;;) {
        v = atomic_load_explicit(&l->word, memory_order_relaxed);
        if (tid_of(v) == 0) {
            if (take_from(l, &v, self | TLOCK_WAITERS))
                return 0;
            continue;
        }
        if ((v & ~(uint64_t)TLOCK_WAITERS) == self)
            return -EDEADLK;
        if (tid_of(v) == tid_of(self)) {      /* a dead thread's, with our id */
            if (take_from(l, &v, self | TLOCK_WAITERS)) {
                *dead = v & ~(uint64_t)TLOCK_WAITERS;
                return MP_EOWNERDEAD;
            }
            continue;
        }
        /* One owner held it a whole slice, however often signals or
         * wake-ups broke our sleep: does it still live? */
        uint64_t owner = v & ~(uint64_t)TLOCK_WAITERS;
        if (owner != watched) {
            watched = owner;
            check = deadline_in(TLOCK_SLICE);
        } else if (deadline_passed(&check)) {
            if (task_word_gone(v) && take_from(l, &v, self | TLOCK_WAITERS)) {
                *dead = v & ~(uint64_t)TLOCK_WAITERS;
                return MP_EOWNERDEAD;
            }
            check = deadline_in(TLOCK_SLICE);
            continue;
        }
        if (deadline_passed(until)) {
            /* Not before asking whether the owner lives: a caller whose
             * time is shorter than a slice would otherwise never take a
             * dead owner's lock over, however often it came back. */
            if (task_word_gone(v) && take_from(l, &v, self | TLOCK_WAITERS)) {
                *dead = v & ~(uint64_t)TLOCK_WAITERS;
                return MP_EOWNERDEAD;
            }
            return MP_ETIMEDOUT;
        }
        if (!(v & TLOCK_WAITERS) && !atomic_compare_exchange_weak_explicit(
                                        &l->word, &v, v | TLOCK_WAITERS,
                                        memory_order_relaxed, memory_order_relaxed))
            continue;
        futex_wait(futex_word(l), (uint32_t)v | TLOCK_WAITERS, sooner(&check, until));
    }
}

int tlock_lock_timed(tlock *l, double timeout)
{
    uint64_t self = self_word();
    uint64_t lent = atomic_load_explicit(&l->lent, memory_order_relaxed);
    if (lent == self) {
        int rc = borrow(l, self);
        if (rc <= 0)
            return rc;
    } else if (lent != 0) {
        /* Still inside as a borrower whose loan a caller ends right now:
         * that caller waits for us, so we must not wait for it. */
        _Atomic uint32_t *in = in_flag(l, self);
        if (in && atomic_load_explicit(in, memory_order_relaxed))
            return -EDEADLK;
    }
    lazy_deadline u = { .timeout = timeout };
    uint64_t dead = 0;
    int rc = take_word(l, self, &u, &dead);
    if (rc != 0 && rc != MP_EOWNERDEAD)
        return rc;
    int called = call_in(l, self, &u, dead);
    if (called == MP_ETIMEDOUT)
        return called;
    if (l->last == self) {
        l->streak++;
    } else {
        l->last = self;
        l->streak = 1;
    }
    return called == MP_EOWNERDEAD ? called : rc;
}

void tlock_unlock(tlock *l)
{
    uint64_t self = self_word();
    uint64_t v = atomic_load_explicit(&l->word, memory_order_relaxed);
    if ((v & ~(uint64_t)TLOCK_WAITERS) != self) {
        _Atomic uint32_t *in = in_flag(l, self);     /* held as the borrower */
        if (in)
            atomic_store_explicit(in, 0, memory_order_release);
        return;
    }
    if (!(v & TLOCK_WAITERS))
        maybe_lend(l, self);
    give_word_back(l, 0);
}
