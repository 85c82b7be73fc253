/* fdreg.h - the registry of descriptor handles: which handles (mp_conn,
 * mp_listener) this process holds a descriptor for, and the family's list of
 * those that crossed an exec.
 *
 * It sits below the process layer: spawn.c keeps the registered descriptors
 * open across exec, forkserver.c sends them with each start request, and a
 * fork counts one more holder for each (its fork hook). The handles
 * register themselves (conn.c, listener.c); the registry knows nothing of
 * what they are beyond struct fdhandle.
 */
#ifndef MPROC_FDREG_H
#define MPROC_FDREG_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>

struct fdreg_lease;           /* a child's holds on our handles (below) */

/* Every handle that owns a descriptor (mp_conn, mp_listener) starts with
 * this. Handles live in the arena, so a child reaches them after fork or
 * spawn; refs counts the processes that may hold fd (each fork adds one per
 * live handle), and a handle that crossed an exec is never freed, because
 * its holders can no longer be counted.
 *
 * Rules: magic and fd are written once, before fdhandle_register, and read
 * by anyone. refs is changed only atomically: +1 per fork (under this
 * process's registry lock), -1 per process that closes it, or for a forked
 * mp_process child that did not, by its reaper (fdreg_lease_end). immortal and
 * crossed go from 0 to 1 once, never back; next_crossed is written only by
 * the one process that set crossed, before the handle is published on the
 * family's list (CAS on its head), and never again. */
struct fdhandle {
    uint32_t magic;
    int fd;
    _Atomic uint32_t refs;
    _Atomic uint32_t immortal;
    /* Once it crosses an exec or reaches a fork-server child, a handle joins
     * the family's list of such handles (arena slot ARENA_SLOT_CROSSED), so
     * a process that got it that way still finds it by its descriptor; ino
     * tells whether that descriptor is still the handle's file. */
    uint64_t ino;
    struct fdhandle *_Atomic next_crossed;
    _Atomic uint32_t crossed;
};

/* Records a live handle of this process (fork and exec hooks walk them).
 * _until: for a handle a timed call made; d bounds the wait for the
 * arena's lock should the handle's record in this child's lease need more
 * room (the handle is then kept unrecorded). */
int fdhandle_register(struct fdhandle *h);
int fdhandle_register_until(struct fdhandle *h, const mp_deadline *d);
/* Closes h's descriptor in this process: true when no process holds it any
 * more and the caller must free the handle. */
bool fdhandle_release(struct fdhandle *h);
/* The handle of this process on fd that match accepts: one it registered,
 * or one that reached it across an exec or from the fork server. NULL if
 * none. match runs under the registry's lock: it must only look at h. */
struct fdhandle *fdhandle_find(int fd, bool (*match)(const struct fdhandle *h, int fd));

/* Called by spawn in the child between fork and exec: clears FD_CLOEXEC on
 * the descriptors of the registered handles, so a connection created before
 * the child starts stays usable in it at the same fd number (as under fork);
 * those the fork did not lease are held for good from then on. No lock, no
 * allocation. */
void fdreg_keep_across_exec(void);

/* For the fork server start method, whose children inherit nothing from the
 * requester: the requester sends the descriptors of its registered handles
 * (at most cap) with the start request, SCM_RIGHTS; the server's child puts
 * each received one back at the number it has in the requester
 * (proc_place_fds) and adopts lease, so handles reached through the
 * argument work as under fork. Each handle gets a hold in lease for the
 * child, as a fork counts one; those past its room (or all, lease NULL)
 * are marked shared for good. */
size_t fdreg_live_fds(struct fdreg_lease *lease, int *fds, size_t cap);

/* A child about to exit: closes every handle still registered (mp_conn_close,
 * mp_listener_free), which drops this process's count of each. */
void fdreg_close_all(void);
/* Calls fn on each handle registered in this process (on a copy of the
 * list, taken under its lock). */
void fdreg_each(void (*fn)(struct fdhandle *h));

/* The holds an mp_process child took on its parent's handles, kept so
 * that what the child could not give back (it was killed, or called _exit,
 * or a daemon thread of its kept them) is given back by whoever learns of
 * its end: each hold exactly once, by the child's close or by
 * fdreg_lease_end, never twice (a CAS per hold decides who), at worst not
 * at all (a child killed between its CAS and its count). In the arena;
 * NULL when none could be made, and then the child's holds stay as a raw
 * fork's do.
 *   fdreg_lease_new: before the start, in the parent;
 *   fdreg_lease_arm: the next fork by this thread fills in lease (its fork
 *     hook, under the registry's lock, as it counts the child) and makes
 *     it the child's own; NULL disarms. Under process_fork_lock;
 *   fdreg_lease_adopt: in a spawned or fork-server child, before its
 *     target runs: the handles leased to it reached it at their numbers
 *     (fdreg_keep_across_exec, or the request's descriptors) and become its
 *     own, as a forked child's are: registered (its own forks count them),
 *     given back by its close or by fdreg_lease_end, not held for good;
 *   fdreg_lease_end: once the child has ended, by its reaper (for a
 *     fork-server child, its creator), or for a start undone: gives back
 *     the holds the child still had, frees each handle no process holds
 *     any more, and frees the lease. NULL: nothing.
 * A starter killed inside its start, after the holds were counted and
 * before it could end or hand over the lease, would leave them held for
 * good (no child may exist to give them back). So the starter names the
 * lease in its own record while the start is under way (process.c's
 * process_starting), and its reaper abandons it:
 *   fdreg_lease_take: by the child, first thing (the fork hook, and
 *     fdreg_lease_adopt in a new image): true if the lease is its own,
 *     false if the starter's reaper abandoned it first; the child then
 *     exits (127) before its target runs, touching no handle;
 *   fdreg_lease_abandon: by the reaper of a starter that died with the
 *     lease named: unless a child took it, gives back its holds (the
 *     lease's block stays: a child may yet look at it). NULL: nothing;
 *   fdreg_lease_dies_at_exec: the child execs a program that keeps none of
 *     our handles (the fork server): it never takes the lease, and its
 *     holds always go back when abandoned. */
struct fdreg_lease *fdreg_lease_new(void);
void fdreg_lease_arm(struct fdreg_lease *lease);
bool fdreg_lease_adopt(struct fdreg_lease *lease);   /* false: fdreg_lease_take failed */
void fdreg_lease_end(struct fdreg_lease *lease);
bool fdreg_lease_take(struct fdreg_lease *lease);
bool fdreg_lease_abandon(struct fdreg_lease *lease);   /* true: no child took it */
void fdreg_lease_dies_at_exec(struct fdreg_lease *lease);

/* Frees a conn's or a listener's handle once no process holds it: for
 * fdreg_lease_end, which tells them apart by magic. */
void conn_destroy_unheld(struct fdhandle *h);
void listener_destroy_unheld(struct fdhandle *h);

#endif
