/* futex.c - sleeping on a 32-bit word shared between processes.
 *
 * Waits spin first: a hand-off between two busy cores costs well under a
 * microsecond, a sleep and wake-up on this kind of VM 70-300 us. The spin is
 * short and backs off, so an idle waiter costs no CPU.
 */
#include "internal.h"

#include <limits.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* spin_adaptive's budget: where it starts, and its bounds. */
#define SPIN_NS 20000
#define SPIN_MAX_NS 50000
#define SPIN_MIN_NS 1000

void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

int futex_wait(_Atomic uint32_t *word, uint32_t val, const mp_deadline *d)
{
    if (!d->forever && deadline_passed(d))
        return MP_ETIMEDOUT;
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline. */
    long rc = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, val,
                      d->forever ? NULL : &d->at, NULL, FUTEX_BITSET_MATCH_ANY);
    if (rc == 0 || errno == EAGAIN || errno == EINTR)
        return 0;
    if (errno == ETIMEDOUT)
        return MP_ETIMEDOUT;
    return -errno;
}

void futex_wake(_Atomic uint32_t *word, int n)
{
    syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* A futex waiter's spin budget (spin_adaptive), per thread. */
static MP_TLS_HOT uint64_t spin_budget_ns;

bool several_cpus(void)
{
    static _Atomic int ncpu;
    int n = atomic_load_explicit(&ncpu, memory_order_relaxed);
    if (!n) {
        n = (int)sysconf(_SC_NPROCESSORS_ONLN);
        atomic_store_explicit(&ncpu, n, memory_order_relaxed);
    }
    return n > 1;
}

bool spin_adaptive(bool (*ready)(void *), void *arg, uint64_t *budget_ns, unsigned pauses)
{
    if (!several_cpus())
        return false;
    if (*budget_ns == 0)
        *budget_ns = SPIN_NS;
    uint64_t start = now_ns();
    for (unsigned i = 1;; i++) {
        if (ready(arg)) {
            *budget_ns = *budget_ns * 2 > SPIN_MAX_NS ? SPIN_MAX_NS : *budget_ns * 2;
            return true;
        }
        if (pauses == 0 && (i & 1))
            sched_yield();
        else
            for (unsigned k = 0; k < (pauses ? pauses : 1); k++)
                cpu_relax();
        if ((i & 7) == 0 && now_ns() - start > *budget_ns) {
            *budget_ns = *budget_ns / 2 < SPIN_MIN_NS ? SPIN_MIN_NS : *budget_ns / 2;
            return false;
        }
    }
}

struct word_wait { _Atomic uint32_t *word; uint32_t val; };

static bool word_changed(void *arg)
{
    struct word_wait *w = arg;
    return atomic_load_explicit(w->word, memory_order_acquire) != w->val;
}

int futex_wait_spin(_Atomic uint32_t *word, uint32_t val, const mp_deadline *d)
{
    struct word_wait w = { word, val };
    if (spin_adaptive(word_changed, &w, &spin_budget_ns, 1))
        return 0;
    return futex_wait(word, val, d);
}

int futex_wait_sliced(_Atomic uint32_t *word, uint32_t val, const mp_deadline *d, bool spin)
{
    bool last = !d->forever && deadline_left(d) <= FUTEX_SLICE;
    mp_deadline slice = last ? *d : deadline_in(FUTEX_SLICE);
    int rc = spin ? futex_wait_spin(word, val, &slice) : futex_wait(word, val, &slice);
    return rc == MP_ETIMEDOUT && !last ? 0 : rc;
}

/* fork copies the forking thread's cached tid into the child; bumping a
 * generation in the child (the FORK_TID fork hook) makes every cache refresh. A
 * child made by _Fork() or a raw clone runs no atfork handler, so a page
 * the kernel zeroes in every child (MADV_WIPEONFORK, Linux 4.14; the way
 * glibc's arc4random notices forks) catches those: found zero, it means a
 * fork nobody told us about. Without it, only the atfork path remains. */
static _Atomic uint32_t tid_generation = 1;
static _Atomic uint32_t *fork_marker;

static void tid_after_fork(void)
{
    atomic_fetch_add_explicit(&tid_generation, 1, memory_order_relaxed);
    if (fork_marker)
        atomic_store_explicit(fork_marker, 1, memory_order_relaxed);
}

MP_SETUP_CONSTRUCTOR static void tid_cache_init(void)
{
    fork_hook_set(FORK_TID, NULL, NULL, tid_after_fork);
#ifdef MADV_WIPEONFORK
    long page = sysconf(_SC_PAGESIZE);
    void *p = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return;
    if (madvise(p, (size_t)page, MADV_WIPEONFORK) != 0) {
        munmap(p, (size_t)page);
        return;
    }
    fork_marker = p;
    atomic_store_explicit(fork_marker, 1, memory_order_relaxed);
#endif
}

uint32_t mp_gettid(void)
{
    static MP_TLS_HOT uint32_t tid, generation;
    if (fork_marker && !atomic_load_explicit(fork_marker, memory_order_relaxed))
        tid_after_fork();
    uint32_t g = atomic_load_explicit(&tid_generation, memory_order_relaxed);
    if (generation != g) {
        tid = (uint32_t)syscall(SYS_gettid);
        generation = g;
    }
    return tid;
}
