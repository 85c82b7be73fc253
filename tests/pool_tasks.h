/* pool_tasks.h - tasks and helpers shared by test_pool.c and test_future.c.
 *
 * Tasks that must hold a worker wait on a flag in shared memory that the test
 * raises (t_wait_flag); nothing sleeps to synchronise. Static inline, so each
 * test binary has its own copies and the pool finds them by fnref as usual.
 */
#ifndef MPROC_POOL_TASKS_H
#define MPROC_POOL_TASKS_H

#include "testutil.h"

#include <dirent.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* LeakSanitizer checks at exit() and, in a forked worker that cannot stop
 * its parent's threads, reports "leaks" and replaces the exit status with
 * its own: under ASan an exit status is not what the task passed. */
#if defined(__SANITIZE_ADDRESS__)
#define EXIT_STATUS_KEPT 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EXIT_STATUS_KEPT 0
#endif
#endif
#ifndef EXIT_STATUS_KEPT
#define EXIT_STATUS_KEPT 1
#endif

/* ------------------------------------------------------------------ tasks */

static inline int get_int(const void *in) { int x; memcpy(&x, in, sizeof x); return x; }

static inline int t_square(const void *in, size_t len, mp_buf *out)
{
    (void)len;
    unsigned x = (unsigned)get_int(in);
    x *= x;                                  /* wraps, as the checks expect */
    return mp_buf_append(out, &x, sizeof x);
}

static inline int t_fail_with_input(const void *in, size_t len, mp_buf *out)
{
    (void)len;
    mp_buf_append(out, "bad", 3);
    return get_int(in);
}

static inline int t_signal_self(const void *in, size_t len, mp_buf *out)
{
    (void)len, (void)out;
    raise(get_int(in));
    return 0;
}

static inline int t_exit_with_input(const void *in, size_t len, mp_buf *out)
{
    (void)len, (void)out;
    exit(get_int(in));
}

static inline int t_pid(const void *in, size_t len, mp_buf *out)
{
    (void)in, (void)len;
    pid_t pid = getpid();
    return mp_buf_append(out, &pid, sizeof pid);
}

/* Input: a pointer to two shared ints; sets flag[1] (started), then
 * returns once flag[0] is non-zero (30 s at most). */
static inline int t_wait_flag(const void *in, size_t len, mp_buf *out)
{
    (void)len, (void)out;
    _Atomic int *flag;
    memcpy(&flag, in, sizeof flag);
    atomic_store(&flag[1], 1);
    for (int i = 0; i < 30000 && !atomic_load(flag); i++)
        usleep(1000);
    return 0;
}

static inline int t_spin_forever(const void *in, size_t len, mp_buf *out)
{
    (void)in, (void)len, (void)out;
    for (;;)
        pause();
    return 0;
}

/* map item: killed on 7, fails with code 50 on 13, squares the rest. */
static inline int t_map_mixed(const void *in, size_t len, mp_buf *out)
{
    int x = get_int(in);
    if (x == 7)
        raise(SIGKILL);
    if (x == 13)
        return 50;
    return t_square(in, len, out);
}

/* map item: kills its worker on multiples of 25, squares the rest. */
static inline int t_square_or_die(const void *in, size_t len, mp_buf *out)
{
    if (get_int(in) % 25 == 0)
        raise(SIGKILL);
    return t_square(in, len, out);
}

/* map item: hangs on 5, squares the rest. */
static inline int t_square_or_hang(const void *in, size_t len, mp_buf *out)
{
    if (get_int(in) == 5)
        return t_spin_forever(in, len, out);
    return t_square(in, len, out);
}

/* imap item: a result as long as the input says. */
static inline int t_repeat(const void *in, size_t len, mp_buf *out)
{
    (void)len;
    int x = get_int(in);
    for (int i = 0; i < x; i++)
        mp_buf_append(out, "x", 1);
    return 0;
}

/* ------------------------------------------------------------------ helpers */

static inline _Atomic int *shared_flag(void)
{
    _Atomic int *f = mp_shared_alloc(2 * sizeof *f);
    assert_non_null(f);
    return f;
}

static inline mp_future *submit_int(mp_pool *p, mp_fn fn, int x)
{
    mp_future *f;
    TU_OK(mp_pool_apply_async(p, fn, &x, sizeof x, &f));
    return f;
}

static inline bool started(void *flag)
{
    return atomic_load(&((_Atomic int *)flag)[1]) != 0;
}

static inline mp_future *submit_wait(mp_pool *p, _Atomic int *flag)
{
    mp_future *f;
    TU_OK(mp_pool_apply_async(p, t_wait_flag, &flag, sizeof flag, &f));
    return f;
}

/* The tests' own thread and the heap. Pools fork replacement workers while
 * the test's thread waits for results, and a worker forked while that thread
 * was inside malloc or free inherits the allocator's lock held: under a
 * sanitizer's malloc, which does not take its locks around fork() (clang 14's
 * ASan and TSan), the worker hangs at its first allocation, a square's
 * result, and the test times out (docs/pool.md, "Forks and the heap"). So
 * results come back through one buffer per thread that only ever grows:
 * reserved before main for the main thread, it is never reallocated for an
 * int and never freed. (Only the main thread asks for results here; another
 * thread's buffer would be left behind at its exit.) */
static _Thread_local mp_buf result_buf;

__attribute__((constructor)) static void reserve_result_buf(void)
{
    if (mp_buf_reserve(&result_buf, 64) != 0)
        abort();
}

static inline int result_int(mp_future *f, int *value)
{
    int rc = mp_future_result(f, &result_buf, 30);
    if (rc == 0 && result_buf.len == sizeof(int))
        memcpy(value, result_buf.data, sizeof(int));
    return rc;
}

static inline void expect_squares(mp_pool *p, int from, int to)
{
    mp_future *fs[64];
    assert_true(to - from <= 64);
    for (int i = from; i < to; i++)
        fs[i - from] = submit_int(p, t_square, i);
    for (int i = from; i < to; i++) {
        int v = -1;
        TU_OK(result_int(fs[i - from], &v));
        assert_int_equal(v, i * i);
        mp_future_free(fs[i - from]);
    }
}

/* Calls fn(pid, state, ppid, buf, ctx) for every process in /proc; buf is
 * its stat line (the command name in parentheses). */
static inline void each_process(void (*fn)(pid_t, char, int, const char *, void *), void *ctx)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[300], buf[512];
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *fp = fopen(path, "r");
        if (!fp)
            continue;
        size_t r = fread(buf, 1, sizeof buf - 1, fp);
        fclose(fp);
        buf[r] = 0;
        char *close = strrchr(buf, ')');
        char st;
        int ppid;
        if (close && sscanf(close + 2, "%c %d", &st, &ppid) == 2)
            fn(atoi(e->d_name), st, ppid, buf, ctx);
    }
    if (d)
        closedir(d);
}

struct child_count { int n, zombies; };

static inline void count_child(pid_t pid, char st, int ppid, const char *stat, void *ctx)
{
    struct child_count *c = ctx;
    (void)pid;
    if (ppid == getpid() && !strstr(stat, "(mp-forkserver)")) {
        c->n++;
        c->zombies += st == 'Z';
    }
}

/* Children of this process but its fork server (which outlives pools),
 * and how many of them are zombies. */
static inline int count_children(int *zombies)
{
    struct child_count c = { 0, 0 };
    each_process(count_child, &c);
    *zombies = c.zombies;
    return c.n;
}

static inline mp_pool *pool_of(int n, mp_backend backend)
{
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = n, .backend = backend }));
    return p;
}

#endif
