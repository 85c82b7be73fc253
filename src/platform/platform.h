/* platform.h - the platform layer's process calls (platform/proc.c): pidfds,
 * waits, /proc, exit pipes, descriptor passing. No policy: process.c,
 * spawn.c, forkserver.c, thread.c, the locks (tlock.c) and the manager call
 * these; they call nothing above platform/. (The futex, robust-mutex, spin
 * and copy primitives of platform/ are declared in internal.h, which every
 * file includes.)
 */
#ifndef MPROC_PLATFORM_H
#define MPROC_PLATFORM_H

#include "internal.h"

#include <signal.h>
#include <stdbool.h>
#include <sys/types.h>

#define PROC_FDS_MAX 253     /* SCM_MAX_FD: descriptors one SCM_RIGHTS record carries */
#ifdef SCM_MAX_FD
_Static_assert(PROC_FDS_MAX <= SCM_MAX_FD, "the kernel's limit per record");
#endif

/* Without pidfds (kernels before 5.3, valgrind, strict seccomp) a child is
 * watched through an exit pipe: it holds the write end, EOF means it ended. */
bool proc_have_pidfd(void);
int proc_pidfd_open(pid_t pid);                       /* fd or -errno */
int proc_signal(int fd, pid_t pid, int sig);          /* through the pidfd if any; 0 or -errno */
int proc_wait_pid(pid_t pid, siginfo_t *si, bool nohang);   /* own child: 1 reaped, 0 not yet, -errno */
bool proc_pid_ended(pid_t pid);    /* gone, or a zombie with no thread left running */
/* What glibc does once main's thread calls pthread_exit: that thread ends
 * alone while other threads run (the process lives on until the last one
 * ends), or else the process exits with status 0. For a main thread with
 * nothing of glibc's to return to (a target run inside a constructor). */
_Noreturn void proc_leave_main_thread(void);
/* How a process that is not our child ended, as far as the kernel still
 * tells the holder of its pidfd (its zombie's stat, or PIDFD_INFO_EXIT once
 * reaped): 1 with *code (exit status or -signal), 0 unknown or running. */
int proc_exit_code(int pidfd, pid_t pid, int *code);
/* A task's start time (clock ticks after boot): 1 alive (*start set), 0 gone
 * or a zombie, -1 unknown (/proc unreadable: EMFILE, hidepid, not mounted). */
int proc_task_start(pid_t tid, uint64_t *start);
/* A signal a process's own code raises (a fault, abort, a trap), not one
 * sent from outside (SIGKILL, SIGTERM, an OOM killer's). */
bool proc_fault_signal(int sig);
/* Before a fork: an exit pipe, or with pidfds {slot, -1}, a descriptor
 * held for the child's pidfd (process_exit_pipe_parent swaps them). */
int proc_exit_pipe(int fds[2]);
int proc_poll_fd(int fd, const mp_deadline *d);       /* 1 readable, 0 timeout, -errno */
int proc_set_pdeathsig(int sig);
void proc_set_name(const char *name);                 /* the comm shown by ps/top */
int proc_fd_inherit(int fd, bool inherit);            /* clears / sets FD_CLOEXEC */
int proc_read_file(const char *path, char **data, size_t *len);
int proc_send_fd(int sock, const void *data, size_t len, int fd);   /* fd < 0: none */
ssize_t proc_recv_fd(int sock, void *data, size_t len, int *fd);    /* *fd = -1 if none */
/* Up to PROC_FDS_MAX descriptors with one record; the received ones are
 * close-on-exec, any beyond cap are closed, a set the kernel truncated
 * (EMFILE) is closed and -EMFILE. */
int proc_send_fds(int sock, const void *data, size_t len, const int *fds, size_t nfds);
ssize_t proc_recv_fds(int sock, void *data, size_t len, int *fds, size_t cap, size_t *nfds);
/* Puts received[i] at descriptor number numbers[i] (close-on-exec), closing
 * every received one: 0, or the first error (the others are still placed). */
int proc_place_fds(const int *received, const int *numbers, size_t n);

#endif
