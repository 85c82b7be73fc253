/* sync_helpers.h - what the synchronisation tests share: a flag in shared
 * memory to wait on, raw threads, a child that blocks until it is killed, and
 * a check that a blocking call returned on time. */
#ifndef MPROC_SYNC_HELPERS_H
#define MPROC_SYNC_HELPERS_H

#include "testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>

/* Spawn and forkserver children need pidfd_open, which this valgrind lacks. */
#define SKIP_START_METHODS_UNDER_VALGRIND() \
    do { if (RUNNING_ON_VALGRIND) skip(); } while (0)

/* Lives in mp_shared_alloc memory so children and threads see it. */
typedef struct {
    atomic_int n;
} tu_flag;

static inline tu_flag *flag_new(void)
{
    tu_flag *f = mp_shared_alloc(sizeof *f);
    assert_non_null(f);
    return f;
}

static bool flag_reached_(void *arg)
{
    tu_flag *f = arg;
    return atomic_load(&f->n) > 0;
}

/* True once the flag is raised (n > 0), within timeout seconds. */
static inline bool flag_wait(tu_flag *f, double timeout)
{
    return tu_wait_for(flag_reached_, f, timeout);
}

/* What a child does once it has done its part: block until it is killed. */
static inline int block_forever(void)
{
    for (;;)
        pause();
    return 0;
}

static inline pthread_t thread_start(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fn, arg), 0);
    return t;
}

static inline void *thread_join(pthread_t t)
{
    void *ret = NULL;
    assert_int_equal(pthread_join(t, &ret), 0);
    return ret;
}

/* Kills a child with SIGKILL and reaps it. */
static inline void kill_child(pid_t pid)
{
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(tu_wait(pid, 10), -SIGKILL);
}

/* A bounded wait of `want` seconds took `took`: not early, not much late. */
static inline void assert_on_time(double took, double want)
{
    assert_true(took >= want - 0.002);
    assert_true(took < want + 0.5 * tu_slow());
}

#endif
