/* atfork.c - the library's one pthread_atfork handler, over a table of
 * hooks in a fixed order.
 *
 * Each subsystem with per-process state sets its hooks in its slot
 * (internal.h, enum fork_slot), from a constructor or its first set-up;
 * the slot, not the moment of registration, fixes when its hooks run. So
 * the locks a fork takes are always taken in the same order, whatever a
 * program used first. This file knows the slots by number only and calls
 * nothing above platform/ except through the table.
 *
 * THE LOCK ORDER (also in docs/architecture.md). A thread holding a lock of
 * this list takes only locks further down:
 *
 *   1. per-object locks of this process: a pool's lock and fnlock, a map
 *      iterator's lock, a thread's join_lock, the manager's per-connection
 *      mconn mutex, its server's and its store's. pool.c starts workers
 *      (forks) under a pool's lock, so these come before the fork locks.
 *   2. pool.c live.lock, the list of live pools: pools_at_exit holds it
 *      while it stops pools (their locks, then the process layer's). Not
 *      taken at fork: at exit it is held while pool threads, which fork,
 *      are joined. A child owns no pools: its hook resets the list.
 *   3. rt.fs_lock (forkserver.c, one request at a time on the fork server's
 *      socket): the server is launched, and the registry read, under it.
 *   4. rt.fork_lock (process_fork_lock, around every fork of the library):
 *      the forking thread holds it when the prepare hooks run.
 *   5. the fork locks, taken by the prepare hooks in slot order and given
 *      back by the parent and child hooks in the reverse one:
 *        FORK_MANAGER_CLIENT  manager/client.c  local.mu
 *        FORK_SHM             shm.c             local.lock
 *        FORK_CONN            conn.c            early.lock
 *        FORK_FDREG           fdreg.c           registry.lock
 *        FORK_PROCESS         process.c         rt.lock
 *        FORK_ARENA           arena.c           arena.init, seen.lock
 *      Each is a leaf where it is used: the code takes no other of these
 *      under it (only malloc, and rt.lock the arena's lock), so no thread
 *      can hold one while it waits for an earlier one.
 *   6. shared-memory locks (the arena's, and the rmutexes and tlocks of
 *      queues, conns, pools, locks): robust, per family, never taken at
 *      fork; a thread may hold rt.lock while the arena allocates (and so
 *      takes arena.init the first time: FORK_ARENA comes after it).
 *
 * In the child the tid cache (FORK_TID, the last slot) is refreshed first,
 * so every later child hook that asks for its thread id gets the child's.
 *
 * A slot set while another thread forks may be seen by that fork's prepare
 * or not; the hooks a prepare ran are remembered (per thread: two threads
 * may fork at once), and its parent and child run exactly those.
 */
#include "internal.h"

#include <pthread.h>

struct hooks { void (*prepare)(void), (*parent)(void), (*child)(void); };

static struct hooks table[FORK_SLOTS];
static _Atomic uint32_t set_mask;           /* bit s: table[s] is filled in */
static __thread uint32_t prepared_mask;     /* the slots this thread's prepare saw */
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void prepare(void)
{
    uint32_t mask = atomic_load_explicit(&set_mask, memory_order_acquire);
    prepared_mask = mask;
    for (int s = 0; s < FORK_SLOTS; s++)
        if ((mask >> s & 1) && table[s].prepare)
            table[s].prepare();
}

static void parent(void)
{
    for (int s = FORK_SLOTS; s-- > 0;)
        if ((prepared_mask >> s & 1) && table[s].parent)
            table[s].parent();
}

static void child(void)
{
    for (int s = FORK_SLOTS; s-- > 0;)
        if ((prepared_mask >> s & 1) && table[s].child)
            table[s].child();
}

static void init(void)
{
    pthread_atfork(prepare, parent, child);
}

uint32_t fork_hooks_set(void)
{
    return atomic_load_explicit(&set_mask, memory_order_acquire);
}

static _Atomic uint32_t claimed_mask;      /* bit s: someone is filling in table[s] */

void fork_hook_set(enum fork_slot slot, void (*pre)(void), void (*par)(void), void (*chi)(void))
{
    _Static_assert(FORK_SLOTS <= 32, "set_mask has a bit per slot");
    pthread_once(&once, init);
    if (atomic_fetch_or(&claimed_mask, 1u << slot) & (1u << slot))
        return;                             /* set already (or being set): it stays */
    table[slot] = (struct hooks){ pre, par, chi };
    atomic_fetch_or_explicit(&set_mask, 1u << slot, memory_order_release);
}
