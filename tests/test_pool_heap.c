/* test_pool_heap.c - a pool in a process whose heap is not fork-safe.
 *
 * A forked worker inherits every lock another thread of its parent held at
 * the fork. glibc's malloc takes its own locks around fork(); a sanitizer's
 * may not (ThreadSanitizer's does not, up to LLVM 17 at least), and then a
 * worker forked while the pool's collector was inside malloc hangs at its
 * first allocation, holding its chunk for ever. This file replaces malloc
 * with glibc's behind a lock of its own that fork does not take, as such a
 * heap, and holds that lock a moment on each call from a thread that has
 * never forked: the pool's threads and the caller's must then stay out of
 * the heap while the monitor forks workers.
 *
 * Plain builds only: under a sanitizer malloc is the sanitizer's, and the
 * cases are skipped. A pool thread's start is reached through the pool's
 * test hook (MPROC_WHITEBOX).
 */
#include "pool_tasks.h"

#include "internal.h"
#include "pool_internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define HEAP_OWN 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define HEAP_OWN 0
#endif
#endif
#ifndef HEAP_OWN
#define HEAP_OWN 1
#endif

/* ------------------------------------------------------------------ the heap */

static _Atomic bool watching;           /* hold the lock a moment on each call */
static _Atomic int overlaps;            /* forks while another thread was in the heap */

#if HEAP_OWN
static _Atomic int in_heap;             /* threads inside the heap now */
static __thread bool forker;            /* this thread has forked (the pool's monitor) */
static __thread unsigned hold_us = 300; /* how long a watched call holds the lock */

void *__libc_malloc(size_t size);
void *__libc_calloc(size_t n, size_t size);
void *__libc_realloc(void *p, size_t size);
void __libc_free(void *p);

static pthread_mutex_t heap_lock = PTHREAD_MUTEX_INITIALIZER;   /* fork does not take it */

static void heap_enter(void)
{
    atomic_fetch_add(&in_heap, 1);
    pthread_mutex_lock(&heap_lock);
    if (atomic_load_explicit(&watching, memory_order_relaxed) && !forker)
        usleep(hold_us);                /* as a sanitizer's refill under its lock, slowed */
}

static void heap_leave(void)
{
    pthread_mutex_unlock(&heap_lock);
    atomic_fetch_sub(&in_heap, 1);
}

void *malloc(size_t size)
{
    heap_enter();
    void *p = __libc_malloc(size);
    heap_leave();
    return p;
}

void *calloc(size_t n, size_t size)
{
    heap_enter();
    void *p = __libc_calloc(n, size);
    heap_leave();
    return p;
}

void *realloc(void *old, size_t size)
{
    heap_enter();
    void *p = __libc_realloc(old, size);
    heap_leave();
    return p;
}

void free(void *p)
{
    if (!p)
        return;
    heap_enter();
    __libc_free(p);
    heap_leave();
}

/* Runs in the forking thread before the fork: another thread inside the
 * heap now leaves the child a heap it can never enter. */
static void before_fork(void)
{
    forker = true;
    if (atomic_load(&watching) && atomic_load(&in_heap) > 0)
        atomic_fetch_add(&overlaps, 1);
}
#endif

static void watch(bool on)
{
    if (on)
        atomic_store(&overlaps, 0);
    atomic_store(&watching, on);
}

/* A pool thread starting: as a sanitizer's runtime does in each new thread
 * (pthread_getattr_np), it allocates, here slowly. */
static void allocate_at_thread_start(const char *point)
{
#if HEAP_OWN
    if (strcmp(point, "collector_started") == 0) {
        hold_us = 20000;
        free(malloc(64));
        hold_us = 300;
    }
#else
    (void)point;
#endif
}

static void need_own_heap(void)
{
    if (!HEAP_OWN)
        skip();                         /* the sanitizer's malloc is in place */
}

/* ------------------------------------------------------------------ cases */

/* pool.imap over items that kill their worker, one in every chunk: each
 * death forks a replacement while the collector files records and the
 * caller reads them. */
static void test_pool_imap_survives_crashes_with_a_heap_fork_does_not_lock(void **state)
{
    (void)state;
    need_own_heap();
    mp_pool *p = pool_of(3, MP_PROCESSES);
    enum { N = 400 };
    static int in[N], rcs[N];
    static size_t order[N];
    for (int i = 0; i < N; i++)
        in[i] = i + 1;                  /* items 24, 49, ... kill their worker */
    mp_iter *it;
    TU_OK(mp_pool_imap(p, t_square_or_die, in, N, sizeof *in, 7, false, &it));
    watch(true);
    size_t count = 0, index;
    int rc;
    while (count < N && (rc = mp_iter_next(it, &index, NULL, 10 * tu_slow())) != MP_EEOF) {
        order[count] = index;
        rcs[count++] = rc;
        if (rc == MP_ETIMEDOUT)
            break;                      /* a worker hangs: asserted below, outside the watch */
    }
    watch(false);
    for (size_t i = 0; i < count; i++) {
        TU_ASSERT_RC(rcs[i], in[order[i]] % 25 ? 0 : MP_ECRASHED);
        assert_int_equal(order[i], i);
    }
    assert_int_equal(count, N);
    assert_int_equal(atomic_load(&overlaps), 0);
    mp_iter_free(it);
    mp_pool_free(p);
}

enum { N_CALLBACKS = 60 };

static void on_done_count(mp_future *f, void *ctx)
{
    (void)f;
    atomic_fetch_add((_Atomic int *)ctx, 1);
}

static bool all_called(void *ctx)
{
    return atomic_load((_Atomic int *)ctx) == N_CALLBACKS;
}

/* on_done callbacks (made by the caller, run and freed by the collector)
 * and mp_as_completed, with workers dying and being forked meanwhile: no
 * fork happens while another thread of the pool's process is in the heap. */
static void test_pool_callbacks_and_as_completed_stay_out_of_the_heap_at_forks(void **state)
{
    (void)state;
    need_own_heap();
    mp_pool *p = pool_of(2, MP_PROCESSES);
    expect_squares(p, 0, 4);            /* t_square and the pool's first allocations */
    mp_future *g = submit_int(p, t_signal_self, SIGKILL);
    TU_ASSERT_RC(mp_future_result(g, NULL, 30), MP_ECRASHED);
    mp_future_free(g);
    enum { N = N_CALLBACKS };
    static mp_future *fs[N];
    static int rcs[N];
    _Atomic int callbacks = 0;
    watch(true);
    for (int i = 0; i < N; i++) {
        int x = i % 6 == 5 ? SIGKILL : i;
        if (mp_pool_apply_async(p, i % 6 == 5 ? t_signal_self : t_square, &x, sizeof x, &fs[i]) != 0)
            fs[i] = NULL;
        else if (mp_future_on_done(fs[i], on_done_count, &callbacks) != 0)
            fs[i] = NULL;
    }
    mp_iter *it = NULL;
    int made = mp_as_completed(fs, N, &it);
    size_t got = 0, index;
    for (int rc = 0; made == 0 && got < N; got++) {
        rc = mp_iter_next(it, &index, NULL, 10 * tu_slow());
        if (rc == MP_ETIMEDOUT || rc == MP_EEOF || rc == MP_EINVAL)
            break;
        rcs[index] = rc;
    }
    watch(false);
    TU_OK(made);
    assert_int_equal(got, N);
    for (int i = 0; i < N; i++) {
        assert_non_null(fs[i]);
        TU_ASSERT_RC(rcs[i], i % 6 == 5 ? MP_ECRASHED : 0);
    }
    assert_true(tu_wait_for(all_called, &callbacks, 10 * tu_slow()));
    assert_int_equal(atomic_load(&overlaps), 0);
    mp_iter_free(it);
    for (int i = 0; i < N; i++)
        mp_future_free(fs[i]);
    mp_pool_free(p);
}

/* The first workers are forked as the pool starts, just as its collector
 * thread starts too. */
static void test_pool_start_forks_no_worker_while_its_collector_starts(void **state)
{
    (void)state;
    need_own_heap();
    mp__pool_test_hook = allocate_at_thread_start;
    watch(true);
    for (int i = 0; i < 4; i++) {
        mp_pool *p = pool_of(2, MP_PROCESSES);
        mp_future *f = submit_int(p, t_square, 7);
        int rc = mp_future_result(f, NULL, 10 * tu_slow());
        mp_future_free(f);
        mp_pool_free(p);
        if (rc != 0 || atomic_load(&overlaps) != 0) {
            watch(false);
            mp__pool_test_hook = NULL;
            TU_OK(rc);
        }
    }
    watch(false);
    mp__pool_test_hook = NULL;
    assert_int_equal(atomic_load(&overlaps), 0);
}

int main(void)
{
    tu_watchdog(200);
#if HEAP_OWN
    pthread_atfork(before_fork, NULL, NULL);
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_imap_survives_crashes_with_a_heap_fork_does_not_lock),
        cmocka_unit_test(test_pool_callbacks_and_as_completed_stay_out_of_the_heap_at_forks),
        cmocka_unit_test(test_pool_start_forks_no_worker_while_its_collector_starts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
