/* test_future.c - futures: waiting with timeouts, cancel, callbacks,
 * waiting on many, and freeing one that is still pending. */
#include "pool_tasks.h"

#include <pthread.h>

/* ------------------------------------------------------------------ futures */

static void test_future_result_times_out_while_pending(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *f = submit_wait(p, flag);
    TU_ASSERT_RC(mp_future_result(f, NULL, 0), MP_ETIMEDOUT);
    TU_ASSERT_RC(mp_future_wait(f, 0.05), MP_ETIMEDOUT);
    assert_false(mp_future_done(f));
    assert_int_equal(mp_future_code(f), 0);
    size_t index;
    TU_ASSERT_RC(mp_future_failed_index(f, &index), MP_ESTATE);
    atomic_store(flag, 1);
    TU_OK(mp_future_wait(f, 30));
    TU_OK(mp_future_result(f, NULL, 0));
    mp_future_free(f);
    mp_shared_free(flag);
    mp_pool_free(p);
}

static void test_future_cancel_before_start_gives_ecancelled(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *busy = submit_wait(p, flag);
    mp_future *queued = submit_int(p, t_square, 5);
    mp_future *after = submit_int(p, t_square, 6);
    TU_OK(mp_future_cancel(queued));
    TU_ASSERT_RC(mp_future_result(queued, NULL, 0), MP_ECANCELLED);
    TU_OK(mp_future_cancel(queued));                         /* again: as Python, True */
    assert_true(mp_future_done(queued));
    atomic_store(flag, 1);
    TU_OK(mp_future_wait(busy, 30));
    TU_ASSERT_RC(mp_future_cancel(busy), MP_ESTATE);         /* it ran */
    int v;
    TU_OK(result_int(after, &v));                              /* the one behind it still runs */
    assert_int_equal(v, 36);
    mp_future_free(busy);
    mp_future_free(queued);
    mp_future_free(after);
    mp_shared_free(flag);
    mp_pool_free(p);
}

struct cb_record { _Atomic int calls; _Atomic pthread_t thread; _Atomic int rc; };

static void on_done_cb(mp_future *f, void *ctx)
{
    struct cb_record *r = ctx;
    r->rc = mp_future_result(f, NULL, 0);
    r->thread = pthread_self();
    atomic_fetch_add(&r->calls, 1);
}

static bool cb_called(void *arg)
{
    return atomic_load(&((struct cb_record *)arg)->calls) > 0;
}

static void test_future_on_done_runs_on_result_thread_or_at_once(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *f = submit_wait(p, flag);
    struct cb_record later = { 0 }, now = { 0 };
    TU_OK(mp_future_on_done(f, on_done_cb, &later));
    assert_int_equal(later.calls, 0);
    atomic_store(flag, 1);
    assert_true(tu_wait_for(cb_called, &later, 30));
    assert_false(pthread_equal(later.thread, pthread_self()));   /* the pool's thread */
    TU_OK(later.rc);
    TU_OK(mp_future_on_done(f, on_done_cb, &now));                /* already done: here, now */
    assert_int_equal(now.calls, 1);
    assert_true(pthread_equal(now.thread, pthread_self()));
    assert_int_equal(later.calls, 1);
    mp_future_free(f);

    f = submit_int(p, t_fail_with_input, 3);                      /* errors reach callbacks too */
    struct cb_record failed = { 0 };
    TU_OK(mp_future_on_done(f, on_done_cb, &failed));
    assert_true(tu_wait_for(cb_called, &failed, 30));
    TU_ASSERT_RC(failed.rc, MP_ETASK);
    mp_future_free(f);
    mp_shared_free(flag);
    mp_pool_free(p);
}

static void test_futures_wait_first_completed_first_exception_all(void **state)
{
    (void)state;
    mp_pool *p = pool_of(2, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *fs[3];
    fs[0] = submit_wait(p, flag);
    fs[1] = submit_int(p, t_square, 2);
    assert_int_equal(mp_futures_wait(fs, 2, MP_FIRST_COMPLETED, 30), 1);
    assert_true(mp_future_done(fs[1]));
    assert_int_equal(mp_futures_wait(fs, 2, MP_ALL_COMPLETED, 0.05), 1);   /* timeout: count */
    fs[2] = submit_int(p, t_fail_with_input, 1);
    int n = mp_futures_wait(fs, 3, MP_FIRST_EXCEPTION, 30);
    assert_int_equal(n, 2);
    assert_false(mp_future_done(fs[0]));
    atomic_store(flag, 1);
    assert_int_equal(mp_futures_wait(fs, 3, MP_ALL_COMPLETED, 30), 3);
    assert_int_equal(mp_futures_wait(fs, 0, MP_ALL_COMPLETED, 0), 0);
    for (int mode = MP_FIRST_COMPLETED; mode <= MP_ALL_COMPLETED; mode++) {
        double t0 = tu_now();                  /* nothing to wait for: at once (Python's wait([])) */
        assert_int_equal(mp_futures_wait(fs, 0, mode, 2.0), 0);
        assert_true(tu_now() - t0 < 1.0);
        assert_int_equal(mp_futures_wait(NULL, 0, mode, MP_FOREVER), 0);
    }
    for (int i = 0; i < 3; i++)
        mp_future_free(fs[i]);
    mp_shared_free(flag);
    mp_pool_free(p);
}

static void test_future_free_while_pending_detaches(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *f = submit_wait(p, flag);
    struct cb_record r = { 0 };
    TU_OK(mp_future_on_done(f, on_done_cb, &r));
    mp_future_free(f);                                 /* still running: it goes on */
    for (int i = 0; i < 10; i++)
        mp_future_free(submit_int(p, t_square, i));    /* queued, never looked at */
    atomic_store(flag, 1);
    assert_true(tu_wait_for(cb_called, &r, 30));       /* and its callback still runs, */
    TU_OK(r.rc);                                       /* with a handle it can use */
    expect_squares(p, 0, 4);
    TU_OK(mp_pool_close(p));
    TU_OK(mp_pool_join(p, 30));
    mp_shared_free(flag);
    mp_pool_free(p);
}

/* Freed handles are refused, as the arena's are, and a second free is
 * harmless: a future freed done or pending, an iterator, a pool. */
static void test_freed_handles_give_einval_and_double_free_is_harmless(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *done = submit_int(p, t_square, 3);
    TU_OK(mp_future_wait(done, 30));
    mp_future_free(done);
    TU_ASSERT_RC(mp_future_result(done, NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_future_wait(done, 0), MP_EINVAL);
    assert_false(mp_future_done(done));
    TU_ASSERT_RC(mp_future_cancel(done), MP_EINVAL);
    mp_future_free(done);
    mp_future *pending = submit_wait(p, flag);
    mp_future_free(pending);                           /* it still runs */
    TU_ASSERT_RC(mp_future_result(pending, NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_future_on_done(pending, on_done_cb, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_futures_wait(&pending, 1, MP_ALL_COMPLETED, 0), MP_EINVAL);
    mp_future_free(pending);
    int in[64];
    for (int i = 0; i < 64; i++)
        in[i] = i;
    mp_iter *it;
    TU_OK(mp_pool_imap(p, t_square, in, 64, sizeof *in, 1, false, &it));
    mp_iter_free(it);                                  /* items pending behind the flag */
    size_t index;
    TU_ASSERT_RC(mp_iter_next(it, &index, NULL, 0), MP_EINVAL);
    mp_iter_free(it);
    atomic_store(flag, 1);
    TU_OK(mp_pool_imap(p, t_square, in, 4, sizeof *in, 1, false, &it));
    while (mp_iter_next(it, &index, NULL, 30) != MP_EEOF)
        ;
    mp_iter_free(it);                                  /* finished: gone at once */
    TU_ASSERT_RC(mp_iter_next(it, &index, NULL, 0), MP_EINVAL);
    assert_int_equal(mp_iter_code(it), 0);
    mp_iter_free(it);
    expect_squares(p, 0, 8);
    mp_pool_free(p);
    int x = 1;
    mp_future *f = NULL;
    TU_ASSERT_RC(mp_pool_apply_async(p, t_square, &x, sizeof x, &f), MP_EINVAL);
    assert_null(f);
    TU_ASSERT_RC(mp_pool_close(p), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_terminate(p), MP_EINVAL);
    TU_ASSERT_RC(mp_pool_join(p, 0), MP_EINVAL);
    mp_pool_free(p);
    mp_shared_free(flag);
}

static int next_of(mp_iter *it, size_t *index, int *value)
{
    mp_buf b = { 0 };
    int rc = mp_iter_next(it, index, &b, 30);
    if (b.len == sizeof *value)
        memcpy(value, b.data, sizeof *value);
    mp_buf_free(&b);
    return rc;
}

/* concurrent.futures.as_completed: each future's index as it finishes,
 * with its result; a timeout while some are pending; then MP_EEOF. */
static void test_as_completed_gives_each_future_as_it_finishes(void **state)
{
    (void)state;
    mp_pool *p = pool_of(3, MP_PROCESSES);
    _Atomic int *a = shared_flag(), *b = shared_flag();
    mp_future *fs[4];
    fs[0] = submit_wait(p, a);
    fs[1] = submit_int(p, t_square, 3);
    fs[2] = submit_int(p, t_fail_with_input, 7);
    fs[3] = submit_wait(p, b);
    mp_iter *it;
    TU_OK(mp_as_completed(fs, 4, &it));
    bool seen[4] = { false };
    for (int k = 0; k < 2; k++) {               /* the two that do not wait */
        size_t i = 99;
        int v = -1;
        int rc = next_of(it, &i, &v);
        assert_true(i == 1 || i == 2);
        assert_false(seen[i]);
        seen[i] = true;
        if (i == 1) {
            TU_OK(rc);
            assert_int_equal(v, 9);
            assert_int_equal(mp_iter_code(it), 0);
        } else {
            TU_ASSERT_RC(rc, MP_ETASK);
            assert_int_equal(mp_iter_code(it), 7);
        }
    }
    size_t i = 99;
    TU_ASSERT_RC(mp_iter_next(it, &i, NULL, 0.05), MP_ETIMEDOUT);
    assert_int_equal(i, 99);
    atomic_store(b, 1);
    int v;
    TU_OK(next_of(it, &i, &v));
    assert_int_equal(i, 3);                     /* the second waiter first */
    atomic_store(a, 1);
    TU_OK(next_of(it, &i, &v));
    assert_int_equal(i, 0);
    TU_ASSERT_RC(mp_iter_next(it, &i, NULL, 0), MP_EEOF);
    mp_iter_free(it);
    TU_ASSERT_RC(mp_iter_next(it, &i, NULL, 0), MP_EINVAL);
    mp_iter_free(it);                           /* harmless */
    TU_OK(mp_as_completed(NULL, 0, &it));       /* nothing: at the end at once */
    TU_ASSERT_RC(mp_iter_next(it, &i, NULL, 0), MP_EEOF);
    mp_iter_free(it);
    TU_ASSERT_RC(mp_as_completed(NULL, 1, &it), MP_EINVAL);
    TU_ASSERT_RC(mp_as_completed(fs, 4, NULL), MP_EINVAL);
    mp_future_free(fs[1]);
    TU_ASSERT_RC(mp_as_completed(fs, 4, &it), MP_EINVAL);   /* a freed future */
    assert_null(it);
    mp_future_free(fs[0]);
    mp_future_free(fs[2]);
    mp_future_free(fs[3]);
    mp_shared_free(a);
    mp_shared_free(b);
    mp_pool_free(p);
}

/* A future listed more than once counts once, as in Python (whose wait and
 * as_completed work on a set of futures). */
static void test_futures_listed_twice_count_once(void **state)
{
    (void)state;
    mp_pool *p = pool_of(2, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *done = submit_int(p, t_square, 4), *waits = submit_wait(p, flag);
    TU_OK(mp_future_wait(done, 30));
    mp_future *fs[] = { done, waits, done, done };
    assert_int_equal(mp_futures_wait(fs, 4, MP_ALL_COMPLETED, 0.05), 1);
    assert_int_equal(mp_futures_wait(fs, 4, MP_FIRST_COMPLETED, 0), 1);
    mp_future *same[300];               /* past REPEATS_BY_PAIRS: through a table */
    for (int k = 0; k < 300; k++)
        same[k] = k % 3 ? done : waits;
    assert_int_equal(mp_futures_wait(same, 2, MP_ALL_COMPLETED, 0), 1);
    assert_int_equal(mp_futures_wait(same, 300, MP_ALL_COMPLETED, 0), 1);
    mp_iter *it;
    TU_OK(mp_as_completed(fs, 4, &it));
    size_t i = 99;
    TU_OK(mp_iter_next(it, &i, NULL, 30));
    assert_int_equal(i, 0);                     /* the first place it is listed */
    TU_ASSERT_RC(mp_iter_next(it, &i, NULL, 0.05), MP_ETIMEDOUT);
    atomic_store(flag, 1);
    TU_OK(mp_iter_next(it, &i, NULL, 30));
    assert_int_equal(i, 1);
    TU_ASSERT_RC(mp_iter_next(it, &i, NULL, 0), MP_EEOF);
    mp_iter_free(it);
    TU_OK(mp_as_completed(same, 300, &it));
    TU_OK(mp_iter_next(it, &i, NULL, 0));
    TU_OK(mp_iter_next(it, &i, NULL, 0));
    TU_ASSERT_RC(mp_iter_next(it, &i, NULL, 0), MP_EEOF);
    mp_iter_free(it);
    mp_future_free(done);
    mp_future_free(waits);
    mp_shared_free(flag);
    mp_pool_free(p);
}

/* Python's cancel runs the future's callbacks before it returns True. */
static void test_future_cancel_runs_its_callbacks_before_it_returns(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *busy = submit_wait(p, flag), *queued = submit_int(p, t_square, 5);
    struct cb_record r = { 0 };
    TU_OK(mp_future_on_done(queued, on_done_cb, &r));
    TU_OK(mp_future_cancel(queued));
    assert_int_equal(atomic_load(&r.calls), 1);
    assert_int_equal(atomic_load(&r.rc), MP_ECANCELLED);
    assert_true(pthread_equal(atomic_load(&r.thread), pthread_self()));
    atomic_store(flag, 1);
    TU_OK(mp_future_wait(busy, 30));
    mp_future_free(busy);
    mp_future_free(queued);
    assert_int_equal(atomic_load(&r.calls), 1);
    mp_shared_free(flag);
    mp_pool_free(p);
}

static void test_future_of_a_map_takes_callbacks_and_waits(void **state)
{
    (void)state;
    mp_pool *p = pool_of(2, MP_PROCESSES);
    int in[50], out[50];
    for (int i = 0; i < 50; i++)
        in[i] = i;
    mp_future *fs[2];
    TU_OK(mp_pool_map_async(p, t_square, in, 50, sizeof *in, out, sizeof *out, 3, &fs[0]));
    TU_OK(mp_pool_map_async(p, t_square, in, 0, sizeof *in, NULL, 0, 0, &fs[1]));   /* n = 0 */
    struct cb_record r = { 0 };
    TU_OK(mp_future_on_done(fs[0], on_done_cb, &r));
    assert_int_equal(mp_futures_wait(fs, 2, MP_ALL_COMPLETED, 30), 2);
    assert_true(tu_wait_for(cb_called, &r, 30));
    TU_OK(r.rc);
    TU_ASSERT_RC(mp_future_cancel(fs[0]), MP_ESTATE);       /* maps cannot be cancelled */
    size_t index;
    TU_ASSERT_RC(mp_future_failed_index(fs[0], &index), MP_ESTATE);   /* none failed */
    for (int i = 0; i < 50; i++)
        assert_int_equal(out[i], i * i);
    mp_future_free(fs[0]);
    mp_future_free(fs[1]);
    mp_pool_free(p);
}

struct self_join { mp_pool *pool; _Atomic int rc, calls; };

static void join_from_callback(mp_future *f, void *ctx)
{
    (void)f;
    struct self_join *j = ctx;
    j->rc = mp_pool_join(j->pool, 0);
    atomic_fetch_add(&j->calls, 1);
}

static bool joined(void *arg)
{
    return atomic_load(&((struct self_join *)arg)->calls) > 0;
}

static void test_future_callback_cannot_wait_for_its_own_pool(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *f = submit_wait(p, flag);
    struct self_join j = { p, 0, 0 };
    TU_OK(mp_future_on_done(f, join_from_callback, &j));
    TU_OK(mp_pool_close(p));
    atomic_store(flag, 1);
    assert_true(tu_wait_for(joined, &j, 30));
    TU_ASSERT_RC(j.rc, MP_ESTATE);       /* it would wait for itself: refused */
    TU_OK(mp_pool_join(p, 30));
    mp_future_free(f);
    mp_shared_free(flag);
    mp_pool_free(p);
}

/* A callback slow enough that a wait which did not wait for it would
 * return first. */
struct slow_cb { _Atomic int started, finished, rc, code; };

static void slow_callback(mp_future *f, void *ctx)
{
    struct slow_cb *r = ctx;
    atomic_store(&r->started, 1);
    usleep(100 * 1000);
    r->rc = mp_future_result(f, NULL, 0);
    r->code = mp_future_code(f);
    atomic_store(&r->finished, 1);
}

/* Python's AsyncResult runs callback= before wait() and get() return, so
 * what the callback did is there to read after them. */
static void test_wait_and_result_return_after_the_callbacks(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    mp_future *f = submit_int(p, t_fail_with_input, 42);
    struct slow_cb r = { 0 };
    TU_OK(mp_future_on_done(f, slow_callback, &r));
    TU_OK(mp_future_wait(f, 30));
    assert_int_equal(atomic_load(&r.finished), 1);
    assert_true(mp_future_done(f));
    TU_ASSERT_RC(r.rc, MP_ETASK);
    assert_int_equal(r.code, 42);

    mp_future *g = submit_int(p, t_fail_with_input, 7);
    struct slow_cb r2 = { 0 };
    TU_OK(mp_future_on_done(g, slow_callback, &r2));
    mp_buf out = { 0 };
    TU_ASSERT_RC(mp_future_result(g, &out, 30), MP_ETASK);
    assert_int_equal(atomic_load(&r2.finished), 1);
    assert_int_equal(mp_future_code(g), 7);
    mp_future *both[] = { f, g };
    assert_int_equal(mp_futures_wait(both, 2, MP_ALL_COMPLETED, 0), 2);
    mp_buf_free(&out);
    mp_future_free(f);
    mp_future_free(g);
    mp_pool_free(p);
}

struct freed_under { _Atomic int started, freed, rc, code; char out[4]; };

static bool flag_set(void *arg) { return atomic_load((_Atomic int *)arg) != 0; }

static void reads_after_free(mp_future *f, void *ctx)
{
    struct freed_under *r = ctx;
    atomic_store(&r->started, 1);
    tu_wait_for(flag_set, &r->freed, 30);
    mp_buf out = { 0 };
    r->rc = mp_future_result(f, &out, 0);
    r->code = mp_future_code(f);
    if (out.len == 3)
        memcpy(r->out, out.data, 3);
    mp_buf_free(&out);
    atomic_store(&r->started, 2);
}

static bool callback_ended(void *arg) { return atomic_load(&((struct freed_under *)arg)->started) == 2; }

/* The header's promise: f stays valid until all its callbacks have
 * returned, even when its caller frees it while one runs. */
static void test_a_callback_keeps_its_future_when_the_caller_frees_it_meanwhile(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    mp_future *f = submit_int(p, t_fail_with_input, 42);
    struct freed_under r = { 0 };
    TU_OK(mp_future_on_done(f, reads_after_free, &r));
    assert_true(tu_wait_for(flag_set, &r.started, 30));
    mp_future_free(f);                   /* while its callback runs */
    atomic_store(&r.freed, 1);
    assert_true(tu_wait_for(callback_ended, &r, 30));
    TU_ASSERT_RC(r.rc, MP_ETASK);
    assert_int_equal(r.code, 42);
    assert_memory_equal(r.out, "bad", 3);
    TU_OK(mp_pool_close(p));
    TU_OK(mp_pool_join(p, 30));
    mp_pool_free(p);
}

/* Callbacks never wait for callbacks: a thread running them sees a future
 * done once its task ends. Else each of two callbacks that wait on the
 * other pool's future waited for the other's callback, for good. */
struct waits_on { mp_future *other; _Atomic int rc, ran; };

static void wait_on_other(mp_future *f, void *ctx)
{
    (void)f;
    struct waits_on *w = ctx;
    w->rc = mp_future_wait(w->other, 10);
    atomic_store(&w->ran, 1);
}

static void test_callbacks_waiting_on_each_other_across_pools_do_not_deadlock(void **state)
{
    (void)state;
    mp_pool *a = pool_of(1, MP_PROCESSES), *b = pool_of(1, MP_THREADS);
    _Atomic int *flag = shared_flag();
    mp_future *fa = submit_wait(a, flag), *fb = submit_wait(b, flag);
    struct waits_on on_b = { fb, 1, 0 }, on_a = { fa, 1, 0 };
    TU_OK(mp_future_on_done(fa, wait_on_other, &on_b));
    TU_OK(mp_future_on_done(fb, wait_on_other, &on_a));
    atomic_store(flag, 1);
    TU_OK(mp_future_wait(fa, 30));
    TU_OK(mp_future_wait(fb, 30));
    assert_int_equal(on_b.ran + on_a.ran, 2);
    TU_OK(on_b.rc);                      /* not MP_ETIMEDOUT after 10 s */
    TU_OK(on_a.rc);
    mp_future_free(fa);
    mp_future_free(fb);
    mp_shared_free(flag);
    mp_pool_free(a);
    mp_pool_free(b);
}

/* A cancel runs the callbacks in the cancelling thread; one that cancels
 * another future, whose callback waits on the first, ran nested in that
 * thread and waited on itself. */
struct nested { mp_future *first, *second; _Atomic int rc, ran; };

static void cancel_second(mp_future *f, void *ctx)
{
    (void)f;
    struct nested *n = ctx;
    mp_future_cancel(n->second);
}

static void wait_on_first(mp_future *f, void *ctx)
{
    (void)f;
    struct nested *n = ctx;
    n->rc = mp_future_wait(n->first, 10);
    atomic_store(&n->ran, 1);
}

static void test_a_cancels_callbacks_may_wait_on_the_cancelled_future(void **state)
{
    (void)state;
    mp_pool *a = pool_of(1, MP_PROCESSES), *b = pool_of(1, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *busy_a = submit_wait(a, flag), *busy_b = submit_wait(b, flag);
    struct nested n = { submit_int(a, t_square, 2), submit_int(b, t_square, 3), 1, 0 };
    TU_OK(mp_future_on_done(n.first, cancel_second, &n));
    TU_OK(mp_future_on_done(n.second, wait_on_first, &n));
    TU_OK(mp_future_cancel(n.first));    /* both queued behind the busy ones */
    assert_int_equal(atomic_load(&n.ran), 1);
    TU_OK(n.rc);
    TU_ASSERT_RC(mp_future_result(n.second, NULL, 0), MP_ECANCELLED);
    atomic_store(flag, 1);
    TU_OK(mp_future_wait(busy_a, 30));
    TU_OK(mp_future_wait(busy_b, 30));
    mp_future *all[] = { busy_a, busy_b, n.first, n.second };
    for (int i = 0; i < 4; i++)
        mp_future_free(all[i]);
    mp_shared_free(flag);
    mp_pool_free(a);
    mp_pool_free(b);
}

/* A callback added once the task has ended runs at once in the adding
 * thread, as one of f's own: it sees f done, though an earlier callback
 * still runs on the result thread. */
struct late { struct slow_cb slow; _Atomic int done, rc; };

static void late_callback(mp_future *f, void *ctx)
{
    struct late *l = ctx;
    l->done = mp_future_done(f);
    l->rc = mp_future_wait(f, 0);
}

static void test_a_callback_added_late_sees_its_future_done(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    mp_future *f = submit_int(p, t_fail_with_input, 5);
    struct late l = { { 0 }, 0, 1 };
    TU_OK(mp_future_on_done(f, slow_callback, &l.slow));
    assert_true(tu_wait_for(flag_set, &l.slow.started, 30));   /* f's task has ended */
    TU_OK(mp_future_on_done(f, late_callback, &l));
    assert_int_equal(l.done, 1);
    TU_OK(l.rc);
    TU_OK(mp_future_wait(f, 30));
    assert_int_equal(atomic_load(&l.slow.finished), 1);
    mp_future_free(f);
    mp_pool_free(p);
}

/* join waits for every on_done callback, those a cancel runs in its own
 * thread too: it returned while one still ran, and free then freed the
 * pool under it. */
static void *cancel_in_thread(void *f)
{
    mp_future_cancel(f);
    return NULL;
}

static void test_join_waits_for_the_callbacks_a_cancel_runs(void **state)
{
    (void)state;
    mp_pool *p = pool_of(1, MP_PROCESSES);
    _Atomic int *flag = shared_flag();
    mp_future *busy = submit_wait(p, flag), *queued = submit_int(p, t_square, 4);
    struct slow_cb r = { 0 };
    TU_OK(mp_future_on_done(queued, slow_callback, &r));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, cancel_in_thread, queued), 0);
    assert_true(tu_wait_for(flag_set, &r.started, 30));
    TU_OK(mp_pool_close(p));
    atomic_store(flag, 1);
    TU_OK(mp_pool_join(p, 30));
    assert_int_equal(atomic_load(&r.finished), 1);
    pthread_join(t, NULL);
    TU_ASSERT_RC(r.rc, MP_ECANCELLED);
    mp_future_free(busy);
    mp_future_free(queued);
    mp_shared_free(flag);
    mp_pool_free(p);
}

int main(void)
{
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_future_result_times_out_while_pending),
        cmocka_unit_test(test_future_cancel_before_start_gives_ecancelled),
        cmocka_unit_test(test_future_on_done_runs_on_result_thread_or_at_once),
        cmocka_unit_test(test_futures_wait_first_completed_first_exception_all),
        cmocka_unit_test(test_future_free_while_pending_detaches),
        cmocka_unit_test(test_freed_handles_give_einval_and_double_free_is_harmless),
        cmocka_unit_test(test_as_completed_gives_each_future_as_it_finishes),
        cmocka_unit_test(test_futures_listed_twice_count_once),
        cmocka_unit_test(test_future_cancel_runs_its_callbacks_before_it_returns),
        cmocka_unit_test(test_future_of_a_map_takes_callbacks_and_waits),
        cmocka_unit_test(test_future_callback_cannot_wait_for_its_own_pool),
        cmocka_unit_test(test_wait_and_result_return_after_the_callbacks),
        cmocka_unit_test(test_a_callback_keeps_its_future_when_the_caller_frees_it_meanwhile),
        cmocka_unit_test(test_callbacks_waiting_on_each_other_across_pools_do_not_deadlock),
        cmocka_unit_test(test_a_cancels_callbacks_may_wait_on_the_cancelled_future),
        cmocka_unit_test(test_a_callback_added_late_sees_its_future_done),
        cmocka_unit_test(test_join_waits_for_the_callbacks_a_cancel_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
