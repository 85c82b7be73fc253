/* testutil.h - what every test file shares: cmocka, a watchdog, and helpers
 * that start a child doing X and wait for it with a bound (never a sleep). */
#ifndef MPROC_TESTUTIL_H
#define MPROC_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <sys/types.h>

#include "mproc.h"

/* RUNNING_ON_VALGRIND: true under valgrind, where tests that time things or
 * need many processes scale down (0 where valgrind's header is absent). */
#include "platform/valgrind_check.h"

/* TU_TSAN: 1 under ThreadSanitizer, which cannot follow some tests (a
 * thread holding thousands of locks, memory figures). */
#if defined(__SANITIZE_THREAD__)
#define TU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TU_TSAN 1
#endif
#endif
#ifndef TU_TSAN
#define TU_TSAN 0
#endif

/* Aborts the whole test binary after sec seconds: a deadlock fails loudly.
 * Scaled by MPROC_TEST_SLOW (e.g. 4 under sanitizers). With MPROC_TEST_CASE
 * set, only the case of that name runs, bounded by MPROC_CASE_TIMEOUT. */
void tu_watchdog(unsigned sec);

/* Forks a child that runs fn(arg) and _exits with its return value. */
pid_t tu_fork(int (*fn)(void *), void *arg);

/* Waits up to timeout seconds for pid: its exit code, -signal, or
 * TU_TIMEOUT (after which the child has been SIGKILLed and reaped). */
#define TU_TIMEOUT (-1000)
int tu_wait(pid_t pid, double timeout);

/* Polls cond(arg) every millisecond up to timeout: true once it holds. */
bool tu_wait_for(bool (*cond)(void *), void *arg, double timeout);

/* Starts target(arg) in an MP_FORK child (copying arg_size bytes of arg,
 * or passing arg as is for 0) and returns it; fails the test if it cannot. */
mp_process *tu_start_fork(mp_target target, void *arg, size_t arg_size);
/* Joins p within timeout seconds (scaled by tu_slow), frees it, and
 * returns its exit code (-signal if a signal ended it). */
int tu_join_free(mp_process *p, double timeout);

double tu_now(void);                 /* CLOCK_MONOTONIC seconds */
bool tu_pid_gone(pid_t pid);         /* no such process (or a zombie of ours reaped) */
double tu_slow(void);                /* the MPROC_TEST_SLOW multiplier, >= 1 */
char tu_proc_state(pid_t pid);       /* /proc state letter ('S' asleep, 'Z', ...); 0 if gone */
/* Polls until pid (a process, or a thread's tid) is asleep in the kernel
 * ('S': a futex, poll, read), or every thread of this process but the
 * caller's is: true once so, false after timeout (scaled by
 * MPROC_TEST_SLOW). For "let it fall asleep" without a fixed sleep. */
bool tu_wait_asleep(pid_t pid, double timeout);
bool tu_wait_threads_asleep(double timeout);
pid_t tu_proc_ppid(pid_t pid);       /* parent pid from /proc; 0 if gone */
/* A thread body for a test that stops a process: after 10 s it resumes
 * (SIGCONT) the pid in *slot (an _Atomic pid_t) unless the test has set it
 * to 0 first, so a call that waits for the stopped process fails slowly
 * instead of hanging. */
void *tu_resume_later(void *slot);

/* Makes pidfd_open fail with ENOMEM in this process from now on (a seccomp
 * filter, inherited by its children): false if it could not. */
bool tu_fail_pidfd_open(void);

/* Makes this process die (SIGSYS) at its next call of system call nr
 * (SYS_clone: inside fork, after every prepare hook ran; SYS_sendmsg: as
 * it sends a descriptor): false if it could not. */
bool tu_die_at_syscall(long nr);

/* Leaves this process no free descriptor (soft limit lowered to 32, the
 * rest opened): false if that could not be done. For a forked child. */
bool tu_exhaust_fds(void);

/* A readable page whose next page is not mapped: a buffer there with a
 * length longer than a page runs past this process's memory. */
char *tu_page_before_hole(void);

/* Fails the test unless mp_last_error() contains each of the fragments
 * (a NULL-terminated list). */
void tu_last_error_has(const char *first, ...);

#define TU_ASSERT_RC(expr, want) assert_int_equal((expr), (want))
#define TU_OK(expr) assert_int_equal((expr), 0)

#endif
