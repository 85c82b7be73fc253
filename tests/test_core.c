/* test_core.c - error names, mp_buf, the shared arena, fnref, tlock.
 * MPROC_WHITEBOX: links the static library to reach fnref and tlock (internal.h). */
#include "testutil.h"

#include "internal.h"
#include "process_internal.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_errname_names_every_code(void **state)
{
    (void)state;
    assert_string_equal(mp_errname(MP_ETIMEDOUT), "MP_ETIMEDOUT");
    assert_string_equal(mp_errname(MP_EOWNERDEAD), "MP_EOWNERDEAD");
    assert_string_equal(mp_errname(MP_ECONFLICT), "MP_ECONFLICT");
    assert_string_equal(mp_errname(0), "OK");
    assert_string_equal(mp_errname(-EBADF), "EBADF");
    assert_string_equal(mp_errname(123456), "UNKNOWN");
    for (int rc = MP_EFULL; rc >= MP_EPROTO; rc--) {
        assert_non_null(mp_strerror(rc));
        assert_string_not_equal(mp_strerror(rc), "unknown error");
        assert_memory_equal(mp_errname(rc), "MP_E", 4);
    }
    assert_string_equal(mp_strerror(MP_ETIMEDOUT), "timeout expired");
}

static void test_buf_append_grows_and_free_resets(void **state)
{
    (void)state;
    mp_buf b = { 0 };
    for (int i = 0; i < 1000; i++)
        TU_OK(mp_buf_append(&b, "abcd", 4));
    assert_int_equal(b.len, 4000);
    assert_true(b.cap >= 4000);
    assert_memory_equal((char *)b.data + 3996, "abcd", 4);
    TU_ASSERT_RC(mp_buf_append(NULL, "a", 1), MP_EINVAL);
    TU_ASSERT_RC(mp_buf_append(&b, NULL, 1), MP_EINVAL);
    TU_OK(mp_buf_append(&b, NULL, 0));
    mp_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len + b.cap, 0);
    mp_buf_free(NULL);
}

/* Appending a buffer to itself, or a part of itself (Python's ba += ba):
 * growing moves the bytes being appended. */
static void test_buf_append_of_its_own_bytes_survives_the_move(void **state)
{
    (void)state;
    mp_buf b = { 0 };
    TU_OK(mp_buf_append(&b, "ab", 2));
    for (int i = 0; i < 20; i++)            /* 2 MiB at the end: moved by realloc */
        TU_OK(mp_buf_append(&b, b.data, b.len));
    assert_int_equal(b.len, (size_t)2 << 20);
    for (size_t i = 0; i < b.len; i++)
        if (((char *)b.data)[i] != "ab"[i & 1])
            fail_msg("byte %zu of %zu is wrong", i, b.len);
    size_t len = b.len;
    TU_OK(mp_buf_append(&b, (char *)b.data + 1, 3));      /* a part: "bab" */
    assert_memory_equal((char *)b.data + len, "bab", 3);
    mp_buf_free(&b);
}

static void test_buf_reserve_keeps_contents_and_refuses_null(void **state)
{
    (void)state;
    mp_buf b = { 0 };
    TU_OK(mp_buf_append(&b, "xyz", 3));
    TU_OK(mp_buf_reserve(&b, 1 << 20));
    assert_true(b.cap >= (1u << 20));
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "xyz", 3);
    size_t cap = b.cap;
    TU_OK(mp_buf_reserve(&b, 10));          /* never shrinks */
    assert_int_equal(b.cap, cap);
    TU_ASSERT_RC(mp_buf_reserve(&b, SIZE_MAX), MP_ENOMEM);
    assert_int_equal(b.len, 3);             /* a failed reserve loses nothing */
    TU_ASSERT_RC(mp_buf_reserve(NULL, 1), MP_EINVAL);
    mp_buf_free(&b);
}

static int child_writes(void *arg)
{
    int *p = arg;
    p[0] = 42;
    return 0;
}

static void test_shared_alloc_is_zeroed_and_shared_with_children(void **state)
{
    (void)state;
    int *p = mp_shared_alloc(4096);
    assert_non_null(p);
    for (int i = 0; i < 1024; i++)
        assert_int_equal(p[i], 0);
    pid_t pid = tu_fork(child_writes, p);
    assert_int_equal(tu_wait(pid, 10), 0);
    assert_int_equal(p[0], 42);
    mp_shared_free(p);
    int *q = mp_shared_alloc(4096);   /* reused and zeroed again */
    assert_int_equal(q[0], 0);
    mp_shared_free(q);
    mp_shared_free(NULL);
    assert_null(mp_shared_alloc(0));
    assert_null(mp_shared_alloc(SIZE_MAX));
}

static void test_shared_alloc_big_block(void **state)
{
    (void)state;
    size_t n = (size_t)300 << 20;
    char *p = mp_shared_alloc(n);
    assert_non_null(p);
    p[n - 1] = 7;
    mp_shared_free(p);
}

/* ------------------------------------------------------------------ fnref */

int core_test_target(void *arg);
int core_test_target(void *arg)
{
    return arg ? 1 : 2;
}

static void *names_the_target(void *arg)
{
    fnref *r = arg;
    return (void *)(intptr_t)fnref_from((const void *)core_test_target, r);
}

/* The first calls race to find the main program once; every one of them
 * gets the same name, and it leads back to the function. Runs first. */
static void test_fnref_names_a_main_program_function_from_racing_threads(void **state)
{
    (void)state;
    enum { N = 4 };
    pthread_t t[N];
    fnref r[N];
    for (int i = 0; i < N; i++)
        assert_int_equal(pthread_create(&t[i], NULL, names_the_target, &r[i]), 0);
    for (int i = 0; i < N; i++) {
        void *rc;
        assert_int_equal(pthread_join(t[i], &rc), 0);
        assert_int_equal((intptr_t)rc, 0);
        assert_string_equal(r[i].object, "");           /* the main program */
        assert_int_equal(r[i].offset, r[0].offset);
        assert_ptr_equal(fnref_resolve(&r[i]), (void *)core_test_target);
    }
}

static void test_fnref_names_a_shared_object_function_by_path(void **state)
{
    (void)state;
    fnref r;
    TU_OK(fnref_from((const void *)getpid, &r));
    assert_string_not_equal(r.object, "");              /* libc, by its path */
    assert_ptr_equal(fnref_resolve(&r), (void *)getpid);
}

static int child_resolves_the_target(void *arg)
{
    fnref *r = arg;
    int (*fn)(void *) = (int (*)(void *))fnref_resolve(r);
    return fn == core_test_target ? fn(NULL) : 99;
}

static void test_fnref_resolves_in_a_forked_child(void **state)
{
    (void)state;
    fnref r;
    TU_OK(fnref_from((const void *)core_test_target, &r));
    assert_int_equal(tu_wait(tu_fork(child_resolves_the_target, &r), 20), 2);
}

static void test_fnref_refuses_what_is_not_in_a_loaded_object(void **state)
{
    (void)state;
    fnref r;
    int on_the_stack = 0;
    TU_ASSERT_RC(fnref_from(&on_the_stack, &r), MP_EINVAL);
    TU_ASSERT_RC(fnref_from(NULL, &r), MP_EINVAL);
    TU_ASSERT_RC(fnref_from((const void *)core_test_target, NULL), MP_EINVAL);
    fnref missing = { "/nonexistent/libnothing.so", 0 };
    assert_null(fnref_resolve(&missing));
    assert_null(fnref_resolve(NULL));
}

/* ------------------------------------------------------------------ copy_big */

/* Streaming copies above the threshold, at every alignment of source and
 * destination and with ragged ends, copy exactly and nothing outside. */
static void test_copy_big_copies_exactly_at_any_alignment(void **state)
{
    (void)state;
    size_t n = COPY_STREAM_MIN + 4096 + 77;
    unsigned char *src = malloc(n + 64), *dst = malloc(n + 64);
    assert_non_null(src);
    assert_non_null(dst);
    for (size_t i = 0; i < n + 64; i++)
        src[i] = (unsigned char)(i * 131 + (i >> 12));
    size_t sizes[] = { 0, 1, 100, COPY_STREAM_MIN - 1, COPY_STREAM_MIN, n };
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        for (size_t so = 0; so < 17; so += 7) {
            for (size_t dof = 0; dof < 17; dof += 7) {
                memset(dst, 0xee, n + 64);
                copy_big(dst + dof, src + so, sizes[k]);
                assert_memory_equal(dst + dof, src + so, sizes[k]);
                for (size_t i = 0; i < dof; i++)
                    assert_int_equal(dst[i], 0xee);
                assert_int_equal(dst[dof + sizes[k]], 0xee);
            }
        }
    }
    free(src);
    free(dst);
}

/* ------------------------------------------------------------------ tlock */

static void test_tlock_is_free_when_zeroed_and_refuses_its_own_holder(void **state)
{
    (void)state;
    tlock *l = arena_alloc(sizeof *l);
    assert_non_null(l);
    TU_OK(tlock_lock(l));
    TU_ASSERT_RC(tlock_lock(l), -EDEADLK);
    tlock_unlock(l);
    TU_OK(tlock_lock(l));
    tlock_unlock(l);
    arena_free(l);
}

/* A lock naming this thread's id with another start time was left by a
 * dead thread whose id was handed on to this one: taken over, not a
 * deadlock. */
static void test_tlock_takes_over_from_a_dead_thread_that_had_our_tid(void **state)
{
    (void)state;
    tlock *l = arena_alloc(sizeof *l);
    atomic_store(&l->word, (uint64_t)0x1234 << 32 | mp_gettid());
    TU_ASSERT_RC(tlock_lock(l), MP_EOWNERDEAD);
    tlock_unlock(l);
    TU_OK(tlock_lock(l));
    tlock_unlock(l);
    arena_free(l);
}

static int sleep_until_killed(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return 0;
}

/* A child that sleeps until killed, and its start time. */
static pid_t fork_sleeper(uint64_t *start)
{
    pid_t pid = tu_fork(sleep_until_killed, NULL);
    *start = 0;
    for (int i = 0; i < 1000 && proc_task_start(pid, start) != 1; i++)
        usleep(1000);
    assert_true(*start != 0);
    return pid;
}

struct planted { tlock *l; uint64_t word; };

static void *release_after_100ms(void *arg)
{
    struct planted *p = arg;
    usleep(100000);
    atomic_store(&p->l->word, 0);
    return NULL;
}

/* The id of a dead owner now names a live stranger: its start time gives it
 * away, and the lock is taken over. The same id with the right start time
 * is a live owner: waited for. */
static void test_tlock_tells_a_live_stranger_with_the_owners_tid_from_the_owner(void **state)
{
    (void)state;
    tlock *l = arena_alloc(sizeof *l);
    uint64_t start;
    pid_t pid = fork_sleeper(&start);
    atomic_store(&l->word, (start + 1) << 32 | (uint32_t)pid);
    TU_ASSERT_RC(tlock_lock(l), MP_EOWNERDEAD);
    tlock_unlock(l);
    struct planted p = { l, start << 32 | (uint32_t)pid };
    atomic_store(&l->word, p.word);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_after_100ms, &p), 0);
    TU_OK(tlock_lock(l));                 /* not MP_EOWNERDEAD: the owner lived */
    tlock_unlock(l);
    pthread_join(t, NULL);
    kill(pid, SIGKILL);
    assert_int_equal(tu_wait(pid, 10), -SIGKILL);
    arena_free(l);
}

/* A count bumped without atomics under the lock, by processes and a thread
 * taking it in bursts (yielding between them). */
struct tlock_counter {
    tlock lock;
    uint64_t n;               /* guarded by lock */
    int bursts, per_burst;
    _Atomic uint32_t loans;   /* bursts that ended with the lock lent to their thread */
};

static int bump_many(void *arg)
{
    struct tlock_counter *c = arg;
    for (int burst = 0; burst < c->bursts; burst++) {
        for (int i = 0; i < c->per_burst; i++) {
            if (tlock_lock(&c->lock) != 0)
                return 1;
            c->n++;
            tlock_unlock(&c->lock);
        }
        if (tlock_lent_to_caller(&c->lock))
            atomic_fetch_add(&c->loans, 1);
        sched_yield();
    }
    return 0;
}

static void *bump_many_thread(void *arg)
{
    return (void *)(intptr_t)bump_many(arg);
}

/* kids processes, a thread and this one each take the lock bursts times
 * per_burst times; the count must be exact. The bursts that ended with a
 * loan. */
static uint32_t bump_from_everywhere(int bursts, int per_burst, int kids)
{
    struct tlock_counter *c = arena_alloc(sizeof *c);
    c->bursts = bursts;
    c->per_burst = per_burst;
    pid_t pids[2];
    for (int i = 0; i < kids; i++)
        pids[i] = tu_fork(bump_many, c);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, bump_many_thread, c), 0);
    assert_int_equal(bump_many(c), 0);
    void *ret;
    pthread_join(t, &ret);
    assert_null(ret);
    for (int i = 0; i < kids; i++)
        assert_int_equal(tu_wait(pids[i], 60 * tu_slow()), 0);
    assert_int_equal(c->n, (uint64_t)(kids + 2) * (uint64_t)bursts * (uint64_t)per_burst);
    uint32_t loans = atomic_load(&c->loans);
    arena_free(c);
    return loans;
}

static void test_tlock_excludes_threads_and_processes(void **state)
{
    (void)state;
    bump_from_everywhere(1, 200000, 2);
}

static int lock_and_die(void *arg)
{
    tlock_lock(arg);
    raise(SIGKILL);
    return 0;
}

/* The holder is killed and left a zombie (not reaped): the next locker is
 * told at once the owner died, within a few slices, and the lock works on. */
/* The next take of l, whose holder died, is told so within a few slices,
 * and the lock works on. */
static void expect_taken_over(tlock *l)
{
    double t0 = tu_now();
    TU_ASSERT_RC(tlock_lock(l), MP_EOWNERDEAD);
    assert_true(tu_now() - t0 < 5 * tu_slow());
    tlock_unlock(l);
    TU_OK(tlock_lock(l));
    tlock_unlock(l);
}

static void test_tlock_passes_a_dead_holders_lock_on_with_eownerdead(void **state)
{
    (void)state;
    tlock *l = arena_alloc(sizeof *l);
    pid_t pid = tu_fork(lock_and_die, l);
    while (tu_proc_state(pid) != 'Z')
        usleep(1000);
    expect_taken_over(l);
    assert_int_equal(tu_wait(pid, 10), -SIGKILL);
    arena_free(l);
}

struct holder {
    tlock *l;
    _Atomic int held;
};

static void *hold_for_100ms(void *arg)
{
    struct holder *h = arg;
    TU_OK(tlock_lock(h->l));
    atomic_store(&h->held, 1);
    usleep(100000);           /* many of the waiter's slices */
    tlock_unlock(h->l);
    return NULL;
}

/* A waiter that sleeps past its slices finds the owner alive and keeps
 * waiting: a slow holder is never taken for a dead one. */
static void test_tlock_waits_out_a_slow_live_holder(void **state)
{
    (void)state;
    struct holder h = { arena_alloc(sizeof(tlock)), 0 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, hold_for_100ms, &h), 0);
    while (!atomic_load(&h.held))
        usleep(1000);
    TU_OK(tlock_lock(h.l));
    tlock_unlock(h.l);
    pthread_join(t, NULL);
    arena_free(h.l);
}

/* A live owner is waited for even when its life cannot be checked: here
 * the waiter has no descriptor left to open /proc with, and the owner's
 * word records no start time (its own /proc read had failed). */
static int lock_planted_word_at_emfile(void *arg)
{
    struct planted *p = arg;
    if (!tu_exhaust_fds())
        return 10;
    atomic_store(&p->l->word, p->word);
    pthread_t t;
    if (pthread_create(&t, NULL, release_after_100ms, p) != 0)
        return 12;
    int rc = tlock_lock(p->l);        /* 0 after ~100 ms, not MP_EOWNERDEAD after 10 */
    pthread_join(t, NULL);
    return rc == 0 ? 0 : 13;
}

static void test_tlock_never_takes_a_live_owners_lock_it_cannot_check(void **state)
{
    (void)state;
    tlock *l = arena_alloc(sizeof *l);
    uint64_t start;
    pid_t owner = fork_sleeper(&start);
    struct planted with_start = { l, start << 32 | (uint32_t)owner };
    assert_int_equal(tu_wait(tu_fork(lock_planted_word_at_emfile, &with_start), 10), 0);
    tlock_unlock(l);
    struct planted no_start = { l, (uint32_t)owner };   /* recorded start 0: unknown */
    atomic_store(&l->word, no_start.word);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_after_100ms, &no_start), 0);
    TU_OK(tlock_lock(l));
    tlock_unlock(l);
    pthread_join(t, NULL);
    kill(owner, SIGKILL);
    assert_int_equal(tu_wait(owner, 10), -SIGKILL);
    arena_free(l);
}

/* ------------------------------------------------------------------ tlock loans */

/* Takes and gives back l n times: the streak that earns a loan. */
static void take_often(tlock *l, int n)
{
    for (int i = 0; i < n; i++) {
        TU_OK(tlock_lock(l));
        tlock_unlock(l);
    }
}

static int take_once(void *arg)
{
    tlock *l = arg;
    int rc = tlock_lock_timed(l, 10);
    tlock_unlock(l);
    return rc == 0 ? 0 : 1;
}

/* A thread that takes the lock thousands of times in a row is lent it, and
 * then takes it as borrower (and is refused a second take, as any holder
 * is); another process's take calls the loan in, and the borrower goes on
 * through the word. */
static void test_tlock_is_lent_to_a_thread_that_takes_it_in_a_row_and_called_in(void **state)
{
    (void)state;
    if (!tlock_lending())
        skip();                       /* no membarrier here: never lent */
    tlock *l = arena_alloc(sizeof *l);
    take_often(l, 5000);
    assert_true(tlock_lent_to_caller(l));
    TU_OK(tlock_lock(l));
    TU_ASSERT_RC(tlock_lock(l), -EDEADLK);
    tlock_unlock(l);
    assert_int_equal(tu_wait(tu_fork(take_once, l), 10), 0);
    assert_false(tlock_lent_to_caller(l));
    TU_OK(tlock_lock(l));
    assert_int_equal(atomic_load(&l->word) & 0xffffffffu, mp_gettid());   /* the word's */
    tlock_unlock(l);
    arena_free(l);
}

/* Two processes and a thread each take the lock in bursts long enough to
 * earn loans, and call each other's loans in; the count loses nothing. */
static void test_tlock_loans_keep_threads_and_processes_apart(void **state)
{
    (void)state;
    uint32_t loans = bump_from_everywhere(20, 10000, 1);
    if (tlock_lending())
        assert_true(loans > 0);
}

/* A child earns a loan, then dies (a) holding the lock as borrower, or
 * (b) after giving it back. (a) passes the lock on with MP_EOWNERDEAD,
 * within a few slices; (b) is a plain take. */
/* Earns a loan of l and takes l as its borrower: false if not lent. */
static bool take_as_borrower(tlock *l)
{
    take_often(l, 5000);
    return tlock_lent_to_caller(l) && tlock_lock(l) == 0;
}

static int borrow_and_die(void *arg)
{
    if (!take_as_borrower(arg))
        return 2;
    raise(SIGKILL);
    return 3;
}

static int borrow_give_back_and_die(void *arg)
{
    if (!take_as_borrower(arg))
        return 2;
    tlock_unlock(arg);
    raise(SIGKILL);
    return 3;
}

static void test_tlock_passes_a_dead_borrowers_lock_on_with_eownerdead(void **state)
{
    (void)state;
    if (!tlock_lending())
        skip();
    tlock *l = arena_alloc(sizeof *l);
    pid_t pid = tu_fork(borrow_and_die, l);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), -SIGKILL);
    expect_taken_over(l);

    pid = tu_fork(borrow_give_back_and_die, l);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), -SIGKILL);
    TU_OK(tlock_lock(l));             /* it held nothing: no repair */
    tlock_unlock(l);
    arena_free(l);
}

/* A borrower stopped inside holds every caller until its timeout, the
 * second caller too (the loan is already called in); once it goes on and
 * gives the lock back, the lock is free. */
struct stopped_borrower {
    tlock lock;
    _Atomic int inside;
};

static int borrow_and_stop(void *arg)
{
    struct stopped_borrower *b = arg;
    if (!take_as_borrower(&b->lock))
        return 2;
    atomic_store(&b->inside, 1);
    raise(SIGSTOP);
    tlock_unlock(&b->lock);
    return 0;
}

static void test_tlock_waits_out_a_stopped_borrower_until_the_timeout(void **state)
{
    (void)state;
    if (!tlock_lending())
        skip();
    struct stopped_borrower *b = arena_alloc(sizeof *b);
    pid_t pid = tu_fork(borrow_and_stop, b);
    while (tu_proc_state(pid) != 'T')
        usleep(1000);
    assert_int_equal(atomic_load(&b->inside), 1);
    for (int i = 0; i < 2; i++) {
        double t0 = tu_now();
        TU_ASSERT_RC(tlock_lock_timed(&b->lock, 0.2), MP_ETIMEDOUT);
        double took = tu_now() - t0;
        assert_true(took >= 0.19 && took < 2 * tu_slow());
    }
    kill(pid, SIGCONT);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);
    TU_OK(tlock_lock_timed(&b->lock, 10));
    tlock_unlock(&b->lock);
    arena_free(b);
}

/* A caller takes over a dead owner's word and then times out waiting on a
 * borrower's flag (a live thread stopped inside): the dead owner's repair
 * is still owed, so the next taker must be told MP_EOWNERDEAD too. */
static void test_tlock_keeps_a_dead_owners_repair_owed_past_a_timeout(void **state)
{
    (void)state;
    tlock *l = arena_alloc(sizeof *l);
    uint64_t dead_start, live_start;
    pid_t dead = fork_sleeper(&dead_start), live = fork_sleeper(&live_start);
    kill(dead, SIGKILL);
    assert_int_equal(tu_wait(dead, 10), -SIGKILL);
    uint64_t live_word = live_start << 32 | (uint32_t)live;
    atomic_store(&l->borrowers[0].who, live_word);
    atomic_store(&l->borrowers[0].in, 1);
    atomic_store(&l->lent, live_word | 0x80000000u);     /* a loan already called in */
    atomic_store(&l->word, dead_start << 32 | (uint32_t)dead);
    TU_ASSERT_RC(tlock_lock_timed(l, 0.1), MP_ETIMEDOUT);
    atomic_store(&l->borrowers[0].in, 0);                /* the borrower goes on, out */
    TU_ASSERT_RC(tlock_lock_timed(l, 10), MP_EOWNERDEAD);
    tlock_unlock(l);
    TU_OK(tlock_lock(l));
    tlock_unlock(l);
    kill(live, SIGKILL);
    assert_int_equal(tu_wait(live, 10), -SIGKILL);
    arena_free(l);
}

/* Signals that break every sleep sooner than a slice do not keep a waiter
 * from finding that the owner is dead. */
static void on_alarm(int sig)
{
    (void)sig;
}

static int lock_dead_owners_word_under_signals(void *arg)
{
    tlock *l = arg;
    struct sigaction sa = { .sa_handler = on_alarm };   /* no SA_RESTART */
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval every_3ms = { { 0, 3000 }, { 0, 3000 } };
    setitimer(ITIMER_REAL, &every_3ms, NULL);
    int rc = tlock_lock(l);
    struct itimerval off = { { 0, 0 }, { 0, 0 } };
    setitimer(ITIMER_REAL, &off, NULL);
    return rc == MP_EOWNERDEAD ? 0 : 1;
}

static void test_tlock_finds_a_dead_owner_through_a_storm_of_signals(void **state)
{
    (void)state;
    tlock *l = arena_alloc(sizeof *l);
    uint64_t start;
    pid_t dead = fork_sleeper(&start);
    kill(dead, SIGKILL);
    assert_int_equal(tu_wait(dead, 10), -SIGKILL);
    atomic_store(&l->word, start << 32 | (uint32_t)dead);
    assert_int_equal(tu_wait(tu_fork(lock_dead_owners_word_under_signals, l), 5 * tu_slow()), 0);
    arena_free(l);
}

/* A child made by _Fork() runs no atfork handler; it still knows its own
 * thread id, so its locks are not its parent's. */
static void test_gettid_is_right_in_a_child_made_without_atfork_handlers(void **state)
{
    (void)state;
    uint32_t parent = mp_gettid();
    assert_int_equal(parent, (uint32_t)syscall(SYS_gettid));
    pid_t pid = _Fork();
    if (pid == 0)
        _exit(mp_gettid() == (uint32_t)syscall(SYS_gettid) ? 0 : 1);
    assert_true(pid > 0);
    assert_int_equal(tu_wait(pid, 10), 0);
}

int main(void)
{
    tu_watchdog(60);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fnref_names_a_main_program_function_from_racing_threads),
        cmocka_unit_test(test_fnref_names_a_shared_object_function_by_path),
        cmocka_unit_test(test_fnref_resolves_in_a_forked_child),
        cmocka_unit_test(test_fnref_refuses_what_is_not_in_a_loaded_object),
        cmocka_unit_test(test_errname_names_every_code),
        cmocka_unit_test(test_buf_append_grows_and_free_resets),
        cmocka_unit_test(test_buf_append_of_its_own_bytes_survives_the_move),
        cmocka_unit_test(test_buf_reserve_keeps_contents_and_refuses_null),
        cmocka_unit_test(test_shared_alloc_is_zeroed_and_shared_with_children),
        cmocka_unit_test(test_shared_alloc_big_block),
        cmocka_unit_test(test_copy_big_copies_exactly_at_any_alignment),
        cmocka_unit_test(test_tlock_is_free_when_zeroed_and_refuses_its_own_holder),
        cmocka_unit_test(test_tlock_takes_over_from_a_dead_thread_that_had_our_tid),
        cmocka_unit_test(test_tlock_tells_a_live_stranger_with_the_owners_tid_from_the_owner),
        cmocka_unit_test(test_tlock_excludes_threads_and_processes),
        cmocka_unit_test(test_tlock_passes_a_dead_holders_lock_on_with_eownerdead),
        cmocka_unit_test(test_tlock_is_lent_to_a_thread_that_takes_it_in_a_row_and_called_in),
        cmocka_unit_test(test_tlock_loans_keep_threads_and_processes_apart),
        cmocka_unit_test(test_tlock_passes_a_dead_borrowers_lock_on_with_eownerdead),
        cmocka_unit_test(test_tlock_waits_out_a_stopped_borrower_until_the_timeout),
        cmocka_unit_test(test_tlock_keeps_a_dead_owners_repair_owed_past_a_timeout),
        cmocka_unit_test(test_tlock_waits_out_a_slow_live_holder),
        cmocka_unit_test(test_tlock_never_takes_a_live_owners_lock_it_cannot_check),
        cmocka_unit_test(test_tlock_finds_a_dead_owner_through_a_storm_of_signals),
        cmocka_unit_test(test_gettid_is_right_in_a_child_made_without_atfork_handlers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
