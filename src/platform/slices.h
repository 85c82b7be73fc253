/* slices.h - how long any sleeper in mproc sleeps before it looks again.
 *
 * The rule (docs/sleeping.md): a process may be killed between its change
 * to shared memory (an item put, a lock word cleared, a count released, a
 * flag set) and the wake-up that tells sleepers about it. The kernel then
 * wakes nobody. So no sleep waits only for a wake-up: every sleep ends after
 * a slice at most, and the sleeper looks at the shared state again. A slice
 * bounds how late a sleeper notices such a change, and each costs an idle
 * sleeper one wake-up. These are all the slices, in one place, in seconds.
 */
#ifndef MPROC_PLATFORM_SLICES_H
#define MPROC_PLATFORM_SLICES_H

/* futex_wait_sliced: queues, semaphores, events, conditions, process joins. */
#define FUTEX_SLICE 0.5
/* rmutex (glibc's robust mutex): a holder killed inside its unlock, after it
 * cleared the word but before its wake-up. */
#define RMUTEX_SLICE 0.2
/* tlock: how often a sleeper asks whether the owner it waits for still lives
 * (the kernel does not tell a tlock's waiters of its owner's death). */
#define TLOCK_SLICE 0.01
/* Pipe rings (pipe_ring.c): a sleeper on a ring, and mp_wait over ring ends. */
#define RING_SLICE 0.1
/* A call on a conn waiting for its send or receive lock, which another
 * process may hold: how soon it notices that this process closed the conn. */
#define CALL_LOCK_SLICE 0.05
/* Barrier: how soon a party killed while waiting is noticed. */
#define BARRIER_SLICE 0.1
/* Manager (manager/): a client waiting on its shared-memory channel notices
 * a dead server this fast; a server thread waiting on an idle client's
 * channel wakes this often; a server waits at most this long inside one
 * request (a blocking get or acquire) before it looks at its client again. */
#define MANAGER_CLIENT_SLICE 0.1
#define MANAGER_SERVER_SLICE 0.5
#define MANAGER_REQUEST_SLICE 0.1

#endif
