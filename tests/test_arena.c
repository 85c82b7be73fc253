/* test_arena.c - the family arena's allocator: freed memory is reused for any
 * size, its pages go back to the kernel, and a process killed inside alloc
 * or free, in the lists or in the small-block cache, leaks at most one block
 * and corrupts nothing (MPROC_WHITEBOX); threads and processes sharing the
 * cache never get one block twice.
 *
 * The whole binary runs on a 256 MiB arena (MPROC_ARENA_SIZE, set in main
 * before the arena exists), so running out is quick and exact. The shared
 * memory held is the memfd's allocated blocks (fstat st_blocks). */
#include "testutil.h"

#include "internal.h"
#include "platform/valgrind_check.h"
#include "queue_internal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)

/* Bytes of shared memory the arena's memfd holds now. */
static size_t held_bytes(void)
{
    struct stat st;
    assert_true(arena_fd() >= 0);
    assert_int_equal(fstat(arena_fd(), &st), 0);
    return (size_t)st.st_blocks * 512;
}

/* ------------------------------------------------------------------ reuse */

/* 1 MiB items fill the queue while the arena has room (a 1 MiB item once took
 * a 2 MiB block: 127 fitted), then the drained arena gives 3/4 of itself in
 * one block. */
static void test_drained_1mib_items_leave_room_for_three_quarters(void **state)
{
    (void)state;
    size_t held = held_bytes();
    mp_queue *q;
    TU_OK(mp_queue_new(&q, NULL));
    char *item = malloc(MIB);
    assert_non_null(item);
    memset(item, 7, MIB);
    int n = 0;
    while (n < 1000 && mp_queue_put(q, item, MIB, 0) == 0)
        n++;
    print_message("%d items of 1 MiB fitted in a %zu MiB arena\n", n, arena_size() >> 20);
    assert_true((size_t)n >= (arena_size() / MIB) * 9 / 10);
    size_t len;
    for (int i = 0; i < n; i++) {
        TU_OK(mp_queue_get(q, item, MIB, &len, 0));
        assert_int_equal(len, MIB);
        assert_int_equal(item[MIB - 1], 7);
    }
    print_message("shared memory: %zu MiB before, %zu MiB drained\n", held >> 20,
                  held_bytes() >> 20);
    assert_true(held_bytes() <= held + 64 * MIB);   /* the pages went back */
    void *big = mp_shared_alloc(arena_size() / 4 * 3);
    assert_non_null(big);
    mp_shared_free(big);
    mp_queue_free(q);
    free(item);
}

static void test_64mib_fits_an_empty_arena_and_so_does_three_quarters(void **state)
{
    (void)state;
    void *p = mp_shared_alloc(64 * MIB);
    assert_non_null(p);
    void *q = mp_shared_alloc(64 * MIB);
    assert_non_null(q);
    mp_shared_free(p);
    mp_shared_free(q);
    p = mp_shared_alloc(arena_size() / 4 * 3);
    assert_non_null(p);
    mp_shared_free(p);
}

/* A freed region serves every smaller or equal request: 1000 blocks freed
 * leave no more free blocks than before, and their run takes one request
 * of all their bytes. (Blocks above the small-block cache's sizes, which
 * go back to the lists at once.) */
static void test_neighbours_coalesce(void **state)
{
    (void)state;
    enum { N = 1000, SIZE = 4500, BLOCK = 4608 };
    static char *ps[N];
    struct arena_stats before, mid, after;
    assert_true(arena_check(&before));
    for (int i = 0; i < N; i++)
        assert_non_null(ps[i] = mp_shared_alloc(SIZE));
    char *pin = mp_shared_alloc(SIZE);             /* the run cannot merge with the end */
    for (int i = 0; i < N; i += 2)
        mp_shared_free(ps[i]);
    assert_true(arena_check(&mid));
    assert_true(mid.free_blocks >= before.free_blocks + N / 2 - 1);
    for (int i = 1; i < N; i += 2)
        mp_shared_free(ps[i]);
    assert_true(arena_check(&after));
    assert_true(after.free_blocks <= before.free_blocks + 1);
    char *whole = mp_shared_alloc((size_t)N * BLOCK - 64);
    assert_non_null(whole);
    mp_shared_free(pin);
    mp_shared_free(whole);
    assert_true(arena_check(&after));
    assert_int_equal(after.used_bytes, before.used_bytes);
}

/* A size no arena could give says so, rather than that the arena is full. */
static void test_impossible_sizes_say_why(void **state)
{
    (void)state;
    assert_null(mp_shared_alloc(0));
    tu_last_error_has("mp_shared_alloc", "size is 0", NULL);
    assert_null(mp_shared_alloc(SIZE_MAX));
    tu_last_error_has("mp_shared_alloc", "more than the whole shared arena", NULL);
    assert_null(mp_shared_alloc(arena_size() + 1));
    tu_last_error_has("more than the whole shared arena", NULL);
    struct arena_stats st;
    assert_true(arena_check(&st));
}

static void test_bad_frees_are_refused(void **state)
{
    (void)state;
    struct arena_stats before, after;
    char *p = mp_shared_alloc(1000);
    assert_true(arena_is_block(p));
    assert_false(arena_is_block(p + 64));
    assert_true(arena_check(&before));
    mp_shared_free(p + 64);                         /* not a block start */
    int local;
    mp_shared_free(&local);                         /* not in the arena */
    assert_true(arena_check(&after));
    assert_int_equal(after.used_bytes, before.used_bytes);
    size_t block = arena_block_size(p) + 64;        /* with its header */
    assert_true(block >= 1000 + 64);
    mp_shared_free(p);
    mp_shared_free(p);                              /* twice */
    assert_false(arena_is_block(p));
    assert_true(arena_check(&after));
    assert_int_equal(after.used_bytes, before.used_bytes - block);
}

/* ------------------------------------------------------------------ kills */

static const char *die_at;

static void die_here(const char *point)
{
    if (die_at && strcmp(point, die_at) == 0)
        kill(getpid(), SIGKILL);
}

struct op {
    const char *point;
    size_t alloc;         /* allocate this many bytes, or ... */
    void *free;           /* ... free this block */
};

static int run_op(void *arg)
{
    struct op *o = arg;
    die_at = o->point;
    mp__arena_test_hook = die_here;
    if (o->alloc)
        mp_shared_alloc(o->alloc);
    else
        mp_shared_free(o->free);
    return 0;                                       /* the point was never reached */
}

static const char *const alloc_points[] = { "alloc_planned", "alloc_committed", "alloc_unlinked",
                                            "alloc_applied", "alloc_linked" };
static const char *const free_points[] = { "free_planned", "free_committed", "free_unlinked",
                                           "free_applied", "free_linked" };

/* Runs o in a child killed at point; the allocator checks clean before
 * and after. */
static void kill_at(struct op *o, const char *point, struct arena_stats *before,
                    struct arena_stats *after)
{
    assert_true(arena_check(before));
    o->point = point;
    assert_int_equal(tu_wait(tu_fork(run_op, o), 10 * tu_slow()), -SIGKILL);
    assert_true(arena_check(after));
}

/* Kills a child at point inside o; the allocator must check clean after
 * and hold at most the one block in question more than before. */
static void kill_inside(struct op *o, const char *point, size_t block)
{
    struct arena_stats before, after;
    kill_at(o, point, &before, &after);
    if (o->alloc) {
        assert_true(after.used_bytes <= before.used_bytes + block);
    } else {
        assert_true(after.used_bytes <= before.used_bytes);
        mp_shared_free(o->free);                    /* still ours if the kill came first */
        assert_true(arena_check(&after));
        assert_int_equal(after.used_bytes, before.used_bytes - block);
    }
}

/* Every step of alloc (with and without a split) and of free (merging with
 * neither, either or both neighbours), a SIGKILL at each. */
static void test_kill_at_every_step_leaks_at_most_one_block(void **state)
{
    (void)state;
    /* Sizes above the small-block cache's: these go through the lists. */
    for (int i = 0; i < 5; i++) {
        struct op split = { .alloc = 5000 };
        kill_inside(&split, alloc_points[i], 5120);
        char *y = mp_shared_alloc(20000), *pin_y = mp_shared_alloc(5000);
        mp_shared_free(y);                            /* dirty to its end: split high */
        struct op high = { .alloc = 5000 };
        kill_inside(&high, alloc_points[i], 5120);
        mp_shared_free(pin_y);
        char *x = mp_shared_alloc(4200), *pin = mp_shared_alloc(5000);
        mp_shared_free(x);
        struct op exact = { .alloc = 4200 };          /* takes x's block whole */
        kill_inside(&exact, alloc_points[i], 4288);
        mp_shared_free(pin);
    }
    for (int i = 0; i < 5; i++) {
        for (int shape = 0; shape < 4; shape++) {
            char *a = mp_shared_alloc(5000), *b = mp_shared_alloc(5000);
            char *c = mp_shared_alloc(5000), *d = mp_shared_alloc(5000);
            if (shape & 1)
                mp_shared_free(a);                    /* a free predecessor */
            if (shape & 2)
                mp_shared_free(c);                    /* a free successor */
            struct op f = { .free = b };
            kill_inside(&f, free_points[i], 5120);
            mp_shared_free(a);
            mp_shared_free(c);
            mp_shared_free(d);
        }
    }
    assert_true(arena_check(NULL));
}

/* The same, in a child with a record of its own (an mp_process): the
 * caller's block is in hand inside mp_shared_alloc and mp_shared_free, so
 * a kill at any of their steps, zeroing a big block included, leaves
 * nothing once the child is reaped. */
static int run_op_as_process(void *arg)
{
    run_op(arg);
    return 0;
}

static void kill_process_inside(struct op *o, const char *point)
{
    struct arena_stats before, after;
    if (!mp_current_process())              /* made on first use: not the child's to free */
        fail();
    assert_true(arena_check(&before));
    o->point = point;
    mp_process *p;
    TU_OK(mp_process_new(&p, run_op_as_process, o, &(mp_process_opts){ .arg_size = sizeof *o }));
    TU_OK(mp_process_start(p));
    TU_OK(mp_process_join(p, 10 * tu_slow()));
    int code;
    TU_OK(mp_process_exitcode(p, &code));
    assert_int_equal(code, -SIGKILL);
    TU_OK(mp_process_free(p));
    assert_true(arena_check(&after));
    if (!o->alloc)                          /* the child's free, done by its reaper */
        assert_false(arena_is_block(o->free));
    assert_int_equal(after.used_bytes, before.used_bytes - (o->alloc ? 0 : 5120));
}

static void test_process_killed_inside_shared_alloc_or_free_leaks_nothing(void **state)
{
    (void)state;
    static const char *const big_points[] = { "alloc_planned", "alloc_committed",
                                              "alloc_taken", "alloc_applied" };
    for (int i = 0; i < 5; i++) {
        struct op a = { .alloc = 5000 };
        kill_process_inside(&a, alloc_points[i]);
        struct op f = { .free = mp_shared_alloc(5000) };
        kill_process_inside(&f, free_points[i]);
    }
    for (int i = 0; i < 4; i++) {           /* reserved and zeroed after it is taken */
        struct op a = { .alloc = 300000 };
        kill_process_inside(&a, big_points[i]);
    }
    assert_true(arena_check(NULL));
}

/* ------------------------------------------------------------------ a stopped holder */

static void stop_here(const char *point)
{
    if (die_at && strcmp(point, die_at) == 0)
        raise(SIGSTOP);
}

static int stops_inside_alloc(void *arg)
{
    (void)arg;
    die_at = "alloc_linked";
    mp__arena_test_hook = stop_here;
    mp_shared_alloc(5 * MIB);
    return 0;
}

static int sleeps_long(const void *in, size_t len, mp_buf *out)
{
    (void)in, (void)len, (void)out;
    sleep(30);
    return 0;
}

static struct {
    mp_queue *q, *big, *small;
    mp_condition *cond;
    mp_listener *listener;
    void *block;
    mp_mqueue *mq;
} held;

/* Each a timed call that allocates from the arena: 0 if it returned its
 * timeout's code within its timeout (0.2 s) and 0.2 s more. */
static int timed_call(void *arg)
{
    static char big[MIB];
    int which = (int)(intptr_t)arg, rc = -1;
    double t0 = tu_now();
    mp_conn *c = NULL;
    void *p;
    size_t len;
    switch (which) {
    case 0:
        rc = mp_queue_put(held.q, big, sizeof big, 0.2) == MP_EFULL ? 0 : 1;
        break;
    case 1:
        rc = mp_queue_put(held.q, big, sizeof big, 0) == MP_EFULL ? 0 : 1;
        break;
    case 2:
        rc = mp_queue_get_shared(held.q, &p, &len, 0.2) == MP_EEMPTY ? 0 : 2;
        break;
    case 3:
        if (mp_condition_acquire(held.cond, 0) != 0)
            return 3;
        rc = mp_condition_wait(held.cond, 0.2) == MP_ETIMEDOUT ? 0 : 4;
        break;
    case 4:
        rc = mp_client(&c, mp_listener_address(held.listener), NULL, 0, 0.2) == MP_ETIMEDOUT ? 0 : 5;
        break;
    case 5:
        rc = mp_listener_accept(held.listener, &c, 0.2) == MP_ETIMEDOUT ? 0 : 6;
        break;
    case 6: {                      /* gets it, and its block's free waits for no one */
        mp_buf b = { 0 };
        rc = mp_queue_get_buf(held.big, &b, 0.2) == 0 && b.len == MIB ? 0 : 7;
        mp_buf_free(&b);
        break;
    }
    case 7:
        rc = mp_queue_put_shared(held.q, held.block, 100, 0.2) == MP_EFULL ? 0 : 8;
        break;
    case 9: {                      /* small items, until the queue needs a new segment */
        int put = 0;
        for (int i = 0; i < 1000000 && (put = mp_queue_put(held.small, "0123456789abcdef", 16,
                                                           0.2)) == 0; i++)
            ;
        rc = put == MP_EFULL ? 0 : 10;
        break;
    }
    case 8: {                      /* this process's first call: it connects */
        mp_buf b = { 0 };
        rc = mp_mqueue_get(held.mq, &b, 0.2) == MP_EEMPTY ? 0 : 9;
        mp_buf_free(&b);
        break;
    }
    }
    return rc == 0 && tu_now() - t0 > 0.4 * tu_slow() ? 10 + which : rc;
}

/* Empties every small size's cache stack into kept (cap entries; *nkept
 * filled), so that small allocations too need the arena's lock. */
static void drain_small_caches(void **kept, size_t cap, size_t *nkept)
{
    struct arena_stats st;
    *nkept = 0;
    while (arena_check(&st) && st.cached_blocks > 0 && *nkept + 64 <= cap)
        for (size_t size = 1; size <= 4096; size += 64)
            kept[(*nkept)++] = mp_shared_alloc(size);   /* each size's stack, popped */
    assert_int_equal(st.cached_blocks, 0);
}

/* A child stopped inside an allocation, holding the arena's lock: its pid,
 * also in *stopped, which *resumer resumes after 10 s unless *stopped is
 * cleared first (then the caller resumes it, and joins *resumer). */
static pid_t fork_stopped_inside_alloc(_Atomic pid_t *stopped, pthread_t *resumer)
{
    pid_t pid = tu_fork(stops_inside_alloc, NULL);
    atomic_store(stopped, pid);
    TU_OK(pthread_create(resumer, NULL, tu_resume_later, stopped));
    bool is_stopped = false;
    for (int i = 0; i < 5000 && !is_stopped; i++) {
        is_stopped = tu_proc_state(pid) == 'T';
        if (!is_stopped)
            usleep(1000);
    }
    assert_true(is_stopped);
    return pid;
}

/* A process stopped (SIGSTOP, a debugger) inside an allocation holds the
 * arena's lock. A timed call that needs a block waits for that lock only
 * until its deadline (at least LOCK_GRACE_S) and returns its timeout's code,
 * and one that frees a block leaves it to the lock's next holder: before,
 * mp_queue_put of a big item, mp_queue_get_shared of a small one,
 * mp_condition_wait, mp_client, mp_listener_accept, mp_queue_get_buf of a
 * big item, mp_queue_put_shared, mp_queue_put of a small item that needs
 * a new segment, a process's first mp_mqueue_get (its
 * connection's channel) and mp_iter_next on an mp_as_completed iterator,
 * each with a 0.2 s timeout, waited until the stopped process went on. The
 * small-block cache is emptied first, so the small blocks come from the
 * lists too. */
static void test_timed_calls_keep_their_timeout_while_a_stopped_process_holds_the_arena(void **state)
{
    (void)state;
    mp_manager *m;                 /* first: its server is forked before the pool's threads */
    TU_OK(mp_manager_start(&m, NULL));
    TU_OK(mp_manager_queue(m, "q", 0, &held.mq));
    mp_pool *pool;                 /* an iterator is its creator's: this process's */
    mp_future *pending;
    mp_iter *it;
    TU_OK(mp_pool_new(&pool, &(mp_pool_opts){ .processes = 1 }));
    TU_OK(mp_pool_apply_async(pool, sleeps_long, NULL, 0, &pending));
    TU_OK(mp_as_completed(&pending, 1, &it));
    TU_OK(mp_queue_new(&held.q, NULL));
    TU_OK(mp_queue_put(held.q, "x", 1, 0));
    TU_OK(mp_condition_new(&held.cond, NULL));
    TU_OK(mp_listener_new(&held.listener, "unix:@mproc-test-arena-stopped", NULL, 0));
    TU_OK(mp_queue_new(&held.big, NULL));
    TU_OK(mp_queue_new(&held.small, NULL));
    static char big[MIB];
    TU_OK(mp_queue_put(held.big, big, sizeof big, 0));
    assert_non_null(held.block = mp_shared_alloc(100));
    static void *kept[4096];
    size_t nkept;
    drain_small_caches(kept, 4096, &nkept);
    struct arena_stats before;
    assert_true(arena_check(&before));
    static _Atomic pid_t stopped;
    pthread_t resumer;
    pid_t pid = fork_stopped_inside_alloc(&stopped, &resumer);
    int failures = 0;
    enum { CALLS = 10 };
    pid_t calls[CALLS];
    double until = tu_now() + 3.0 * tu_slow();
    for (int which = 0; which < CALLS; which++)    /* at once: the resumer comes after 10 s */
        calls[which] = tu_fork(timed_call, (void *)(intptr_t)which);
    for (int which = 0; which < CALLS; which++) {
        double left = until - tu_now();
        int rc = tu_wait(calls[which], left > 0.1 ? left : 0.1);
        if (rc != 0)
            fprintf(stderr, "call %d: %s (%d)\n", which,
                    rc == TU_TIMEOUT ? "still waiting after 3 s" : "wrong code or late", rc);
        failures += rc != 0;
    }
    double t0 = tu_now();
    TU_ASSERT_RC(mp_iter_next(it, NULL, NULL, 0.2), MP_ETIMEDOUT);
    double iter_took = tu_now() - t0;
    if (iter_took > 0.4 * tu_slow())
        fprintf(stderr, "mp_iter_next (as_completed): %.2f s\n", iter_took);
    failures += iter_took > 0.4 * tu_slow();
    atomic_store(&stopped, 0);
    kill(pid, SIGCONT);
    pthread_join(resumer, NULL);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);
    void *p;
    size_t len;
    TU_OK(mp_queue_get_shared(held.q, &p, &len, 0));   /* the queue and the arena work on */
    mp_shared_free(p);
    struct arena_stats after;
    assert_true(arena_check(&after));
    /* The got item's block was freed by the lock's next holder: in use now
     * is what was before, less that MiB, plus the 5 MiB the stopped child
     * took (and kept: it is gone, its block not). */
    assert_true(after.used_bytes <= before.used_bytes + 4 * MIB + 4096);
    assert_int_equal(after.deferred_blocks, 0);
    assert_int_equal(after.stray_blocks, before.stray_blocks);
    mp_shared_free(held.block);
    for (size_t i = 0; i < nkept; i++)
        mp_shared_free(kept[i]);
    mp_queue_free(held.big);
    mp_queue_free(held.small);
    mp_iter_free(it);
    TU_OK(mp_pool_terminate(pool));
    mp_future_free(pending);
    mp_pool_free(pool);
    mp_listener_free(held.listener);
    mp_condition_free(held.cond);
    mp_queue_free(held.q);
    mp_mqueue_free(held.mq);
    TU_OK(mp_manager_shutdown(m));
    mp_manager_free(m);
    assert_int_equal(failures, 0);
}

/* A child whose lease is full (a slot for every handle it holds) makes one
 * more handle with a timed call, mp_client, and another process takes the
 * arena's lock and is stopped holding it just after the call got its conn:
 * the call keeps its timeout. Recording the new conn in the lease needs a
 * chunk chained from it, and that allocation waited for the lock with no
 * deadline (under the registry's lock, so every other thread of the child
 * that forked or closed a handle waited too), for as long as the other
 * process stayed stopped. The child is held at its first fstat after the
 * conn's allocation (a seccomp trap) while the other process stops. */
static struct { int ready_w, go_r; _Atomic int trapped; double resumed; } full_lease;

static void full_lease_trap(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)si, (void)uc;
    if (atomic_exchange(&full_lease.trapped, 1))
        return;                       /* later ones fail with ENOSYS: harmless here */
    char x = 's';
    if (write(full_lease.ready_w, &x, 1) != 1 || read(full_lease.go_r, &x, 1) != 1)
        _exit(5);
    full_lease.resumed = tu_now();
}

static bool trap_fstat(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_fstat, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_newfstatat, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    struct sigaction sa = { .sa_sigaction = full_lease_trap, .sa_flags = SA_SIGINFO };
    return sigaction(SIGSYS, &sa, NULL) == 0 && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
           prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

static int client_with_a_full_lease(void *arg)
{
    const char *addr = arg;
    mp_conn *mine[16];
    for (int i = 0; i < 16; i += 2) {     /* the lease's 16 spare slots, one conn each */
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0 ||
            mp_conn_from_fd(&mine[i], sv[0]) != 0 || mp_conn_from_fd(&mine[i + 1], sv[1]) != 0)
            return 2;
    }
    if (!trap_fstat())
        return 3;
    mp_conn *c = NULL;
    int rc = mp_client(&c, addr, NULL, 0, 0.2);
    double took = tu_now() - full_lease.resumed;
    if (!atomic_load(&full_lease.trapped))
        return 6;
    if (took > 0.4 * tu_slow()) {
        fprintf(stderr, "mp_client with a full lease: %.2f s after the arena was held (rc %d)\n",
                took, rc);
        return 4;
    }
    return 0;
}

static void test_timed_call_of_a_child_with_a_full_lease_keeps_its_timeout(void **state)
{
    (void)state;
    char addr[64];
    snprintf(addr, sizeof addr, "unix:@mproc-test-full-lease-%d", (int)getpid());
    mp_listener *l;
    TU_OK(mp_listener_new(&l, addr, NULL, 0));
    int ready[2], go[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(go), 0);
    full_lease.ready_w = ready[1];
    full_lease.go_r = go[0];
    mp_process *p;
    mp_process_opts o = { .method = MP_FORK, .arg_size = sizeof addr };
    TU_OK(mp_process_new(&p, client_with_a_full_lease, addr, &o));
    TU_OK(mp_process_start(p));
    struct pollfd pf = { ready[0], POLLIN, 0 };
    assert_int_equal(poll(&pf, 1, (int)(30000 * tu_slow())), 1);
    char x;
    assert_int_equal(read(ready[0], &x, 1), 1);
    /* The child has its conn. Every small size's stack emptied, so the
     * lease's chunk needs the lock; then another process takes it and stops. */
    static void *kept[4096];
    size_t nkept;
    drain_small_caches(kept, 4096, &nkept);
    static _Atomic pid_t stopped;
    pthread_t resumer;
    pid_t pid = fork_stopped_inside_alloc(&stopped, &resumer);
    assert_int_equal(write(go[1], "g", 1), 1);
    int rc = mp_process_join(p, 3 * tu_slow());
    atomic_store(&stopped, 0);
    kill(pid, SIGCONT);
    pthread_join(resumer, NULL);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);
    if (rc != 0)
        fprintf(stderr, "the child was still in its timed call after 3 s\n");
    TU_OK(mp_process_join(p, 30 * tu_slow()));
    int code = -1;
    TU_OK(mp_process_exitcode(p, &code));
    TU_OK(mp_process_free(p));
    for (size_t i = 0; i < nkept; i++)
        mp_shared_free(kept[i]);
    mp_listener_free(l);
    close(ready[0]);
    close(ready[1]);
    close(go[0]);
    close(go[1]);
    assert_int_equal(rc, 0);
    assert_int_equal(code, 0);
}

/* ------------------------------------------------------------------ the small-block cache */

/* Kills a child at a step of the cache's lock-free paths: the allocator
 * checks clean after, no free byte is lost, and at most one block went
 * astray (marked cached in no stack, or taken and never used). */
static void kill_in_cache(struct op *o, const char *point, size_t block)
{
    struct arena_stats before, after;
    kill_at(o, point, &before, &after);
    assert_true(after.stray_blocks <= before.stray_blocks + 1);
    size_t was = before.used_bytes + before.cached_bytes + before.stray_blocks * block;
    size_t is = after.used_bytes + after.cached_bytes + after.stray_blocks * block;
    assert_true(is <= was + block);
    assert_true(after.free_bytes >= before.free_bytes);
}

static void test_kill_in_the_cache_leaks_at_most_one_block(void **state)
{
    (void)state;
    enum { SIZE = 1000, BLOCK = 1088 };
    /* Taking: a cached block of the size is there. */
    mp_shared_free(mp_shared_alloc(SIZE));
    struct op take = { .alloc = SIZE };
    kill_in_cache(&take, "cache_popped", BLOCK);
    /* Giving back: marked, then pushed. */
    const char *push_points[] = { "cache_marked", "cache_pushed" };
    for (int i = 0; i < 2; i++) {
        struct op give = { .free = mp_shared_alloc(SIZE) };
        kill_in_cache(&give, push_points[i], BLOCK);
        struct arena_stats before, after;
        assert_true(arena_check(&before));
        mp_shared_free(give.free);                   /* the child's: refused either way */
        assert_true(arena_check(&after));
        assert_int_equal(after.used_bytes, before.used_bytes);
        assert_int_equal(after.cached_blocks, before.cached_blocks);
    }
    /* Draining: a request the lists cannot serve gives the cache back. */
    mp_shared_free(mp_shared_alloc(SIZE));
    struct op drain = { .alloc = arena_size() - 4096 };
    kill_in_cache(&drain, "cache_drained", BLOCK);
    assert_true(arena_check(NULL));
}

/* The cache hands a freed block to the next request of its size (the last
 * freed first), holds a bounded number, refuses a double free, and gives
 * its blocks back to the lists when they are needed: the lists then serve
 * a request that only the cached blocks, merged, can. */
static void test_cache_is_bounded_and_drained_when_needed(void **state)
{
    (void)state;
    enum { N = 200, SIZE = 4096, BLOCK = 4160 };
    struct arena_stats st;
    char *p = mp_shared_alloc(SIZE);
    mp_shared_free(p);
    assert_ptr_equal(mp_shared_alloc(SIZE), p);        /* taken again, warm */
    mp_shared_free(p);
    mp_shared_free(p);                                 /* twice: refused */
    assert_true(arena_check(&st));
    size_t cached = st.cached_blocks, stray = st.stray_blocks;   /* earlier tests' kills */
    assert_ptr_equal(mp_shared_alloc(SIZE), p);
    assert_ptr_not_equal(mp_shared_alloc(SIZE), p);    /* it was in the stack once */
    assert_true(arena_check(&st));
    assert_int_equal(st.cached_blocks, cached - 1);

    /* Fill the arena with small blocks, then free a run of them: the cache
     * keeps a bounded number, the rest go back to the lists. */
    size_t cap = arena_size() / BLOCK + 16, n = 0;
    char **ps = malloc(cap * sizeof *ps);
    assert_non_null(ps);
    while (n < cap && (ps[n] = arena_alloc_nozero(SIZE)) != NULL)
        n++;
    assert_true(n > N && n < cap);
    size_t start = n / 2;
    for (size_t i = start; i < start + N; i++)
        mp_shared_free(ps[i]);
    assert_true(arena_check(&st));
    assert_true(st.cached_blocks >= 1 && st.cached_blocks < N / 2);
    assert_int_equal(st.stray_blocks, stray);
    /* The run's bytes in one block: only with the cached blocks merged in. */
    void *whole = mp_shared_alloc((size_t)N * BLOCK - 64);
    assert_non_null(whole);
    assert_true(arena_check(&st));
    assert_int_equal(st.cached_blocks, 0);
    mp_shared_free(whole);
    for (size_t i = 0; i < n; i++)
        if (i < start || i >= start + N)
            mp_shared_free(ps[i]);
    free(ps);
    assert_true(arena_check(&st));
}

/* Threads or processes allocating and freeing small blocks at once, each
 * writing its mark into every byte and finding it intact before the free:
 * no block is ever handed to two owners. A job churns `live` slots over
 * the first `sizes` of the sizes below; one size and two slots hammer one
 * stack, where a taker that read a stale top (ABA) would hand a block out
 * twice. */
struct churn_job {
    unsigned id;
    int sizes, live;
    long ops;
};

#define CHURN_LIVE_MAX 16

static int churn(void *arg)
{
    const struct churn_job *j = arg;
    unsigned rng = j->id * 2654435761u + 1;
    static const size_t sizes[] = { 64, 1, 200, 1000, 4000, 4096, 5000 };
    unsigned char *live[CHURN_LIVE_MAX] = { 0 };
    size_t len[CHURN_LIVE_MAX] = { 0 };
    int bad = 0;
    for (long i = 0; i < j->ops; i++) {
        rng = rng * 1103515245u + 12345u;
        int k = (int)((rng >> 8) % (unsigned)j->live);
        unsigned char mark = (unsigned char)(j->id + (unsigned)k);
        if (live[k]) {
            for (size_t b = 0; b < len[k]; b++)
                bad |= live[k][b] != mark;
            mp_shared_free(live[k]);
            live[k] = NULL;
        } else {
            len[k] = sizes[(rng >> 16) % (unsigned)j->sizes];
            live[k] = mp_shared_alloc(len[k]);
            if (!live[k])
                return 2;
            memset(live[k], mark, len[k]);
        }
    }
    for (int k = 0; k < j->live; k++)
        mp_shared_free(live[k]);
    return bad;
}

static void *churn_thread(void *arg)
{
    return (void *)(intptr_t)churn(arg);
}

/* T threads, then T processes, each running the job with its own marks. */
static void churn_all(int sizes, int live, long ops)
{
    enum { T = 4 };
    struct arena_stats before, after;
    assert_true(arena_check(&before));
    struct churn_job jobs[2 * T];
    pthread_t th[T];
    pid_t kids[T];
    for (int i = 0; i < 2 * T; i++)
        jobs[i] = (struct churn_job){ (unsigned)(i * CHURN_LIVE_MAX), sizes, live, ops };
    for (int i = 0; i < T; i++)
        assert_int_equal(pthread_create(&th[i], NULL, churn_thread, &jobs[i]), 0);
    for (int i = 0; i < T; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        assert_int_equal((intptr_t)rc, 0);
    }
    for (int i = 0; i < T; i++)
        kids[i] = tu_fork(churn, &jobs[T + i]);
    for (int i = 0; i < T; i++)
        assert_int_equal(tu_wait(kids[i], 120 * tu_slow()), 0);
    assert_true(arena_check(&after));
    assert_int_equal(after.stray_blocks, before.stray_blocks);
    assert_int_equal(after.used_bytes, before.used_bytes);
}

static void test_concurrent_small_blocks_never_shared(void **state)
{
    (void)state;
    churn_all(7, CHURN_LIVE_MAX, 20000);
}

static void test_one_stack_hammered_never_hands_a_block_out_twice(void **state)
{
    (void)state;
    churn_all(1, 2, RUNNING_ON_VALGRIND ? 20000 : 500000);
}

/* ------------------------------------------------------------------ out of memory */

/* The memory cgroup (v1) this process is in, as a directory; "" if none. */
static bool memcg_dir(char *out, size_t cap)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    char line[512];
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f)) {
        char *m = strstr(line, ":memory:");
        if (m) {
            m[strcspn(m, "\n")] = '\0';
            snprintf(out, cap, "/sys/fs/cgroup/memory%s", m + 8);
            found = access(out, W_OK) == 0;
        }
    }
    if (f)
        fclose(f);
    return found;
}

static bool write_file(const char *dir, const char *name, const char *text)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        return false;
    bool ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

/* In a child limited to 32 MiB, with the kernel's OOM killer off for its
 * group (so only an allocation outside a fault can fail, and a fault beyond
 * the limit would hang, not kill): big allocations and puts fail with an
 * error, small ones still work, and the child lives. */
static int allocate_beyond_the_limit(void *dir)
{
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (!write_file(dir, "cgroup.procs", pid))
        return 10;
    if (mp_shared_alloc(128 * MIB) != NULL)
        return 11;
    mp_queue *q;
    if (mp_queue_new(&q, NULL) != 0)
        return 12;
    /* A source that costs no memory: untouched private pages read as zero. */
    void *src = mmap(NULL, 100 * MIB, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src == MAP_FAILED)
        return 13;
    int rc = mp_queue_put(q, src, 100 * MIB, 0);
    if (rc != MP_ENOMEM)
        return 14;
    char small[100] = "still fine";
    if (mp_queue_put(q, small, sizeof small, 0) != 0)
        return 15;
    void *p = mp_shared_alloc(4 * MIB);             /* within the limit */
    if (!p)
        return 16;
    memset(p, 1, 4 * MIB);
    mp_shared_free(p);
    return arena_check(NULL) ? 0 : 17;
}

static void test_out_of_memory_is_an_error(void **state)
{
    (void)state;
    char dir[512], sub[600];
    /* Under valgrind the child's own memory would pass the limit, and with
     * the OOM killer off a fault beyond it waits for ever. */
    if (RUNNING_ON_VALGRIND || !memcg_dir(dir, sizeof dir)) {
        skip();
        return;
    }
    snprintf(sub, sizeof sub, "%s/mproc_enomem_%d", dir, (int)getpid());
    if (mkdir(sub, 0755) != 0) {
        skip();
        return;
    }
    bool limited = write_file(sub, "memory.limit_in_bytes", "33554432") &&
                   write_file(sub, "memory.oom_control", "1");
    if (limited)
        assert_int_equal(tu_wait(tu_fork(allocate_beyond_the_limit, sub), 60), 0);
    rmdir(sub);
    if (!limited)
        skip();
    assert_true(arena_check(NULL));
}

/* ------------------------------------------------------------------ fragmentation */

/* Rounds that cycle sizes from 1 B to 64 MiB, a window of live blocks at a
 * time, every byte written: every allocation succeeds, and once all is
 * freed the arena holds at most 64 MiB more than before. MPROC_ARENA_ROUNDS
 * raises the count (1000 for the long check). */
static void test_cycling_sizes_keeps_shared_memory_bounded(void **state)
{
    (void)state;
    const char *env = getenv("MPROC_ARENA_ROUNDS");
    int rounds = env && atoi(env) > 0 ? atoi(env) : RUNNING_ON_VALGRIND ? 2 : 12;
    size_t before = held_bytes();
    enum { WINDOW = 6 };
    void *live[WINDOW] = { 0 };
    size_t live_len[WINDOW] = { 0 };
    unsigned rng = 12345;
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k <= 26; k++) {
            rng = rng * 1103515245u + 12345u;
            size_t len = ((size_t)1 << k) + (k > 2 ? (rng >> 8) % ((size_t)1 << (k - 2)) : 0);
            if (len > 64 * MIB)
                len = 64 * MIB;
            int slot = (int)((rng >> 4) % WINDOW);
            mp_shared_free(live[slot]);
            live[slot] = mp_shared_alloc(len);
            assert_non_null(live[slot]);
            live_len[slot] = len;
            memset(live[slot], (int)r, len);
        }
    }
    for (int i = 0; i < WINDOW; i++)
        mp_shared_free(live[i]);
    (void)live_len;
    size_t after = held_bytes();
    print_message("shared memory: %zu MiB before, %zu MiB after %d rounds\n",
                  before >> 20, after >> 20, rounds);
    assert_true(after <= before + 64 * MIB);
}

/* Python's Pipe() and Process pattern: a pipe made before a forked child
 * starts is the child's too (a fork counts it as one more holder). A child
 * that returns without closing its copies closes them as it exits, so the
 * pipe's rings go back to the arena once the parent closes its ends. Before,
 * each round kept 529 KiB for good, until mp_pipe failed. */
static int child_returns(void *arg)
{
    mp_conn **ends = arg;
    return ends[0] ? 0 : 1;
}

static int child_sends_and_returns(void *arg)
{
    mp_conn **ends = arg;
    return mp_conn_send_bytes(ends[1], "hi", 2) == 0 ? 0 : 1;
}

static void test_pipe_shared_with_forked_children_is_freed_after_them(void **state)
{
    (void)state;
    struct arena_stats before, after;
    for (int round = 0; round < 9; round++) {
        if (round == 1)                /* after the first: what processes keep for good */
            assert_true(arena_check(&before));
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        mp_process_opts o = { .method = MP_FORK };
        TU_OK(mp_process_new(&p, round % 2 ? child_sends_and_returns : child_returns, ends, &o));
        TU_OK(mp_process_start(p));
        TU_OK(mp_process_join(p, 10 * tu_slow()));
        int code;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, 0);
        TU_OK(mp_process_free(p));
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
    }
    assert_true(arena_check(&after));
    assert_int_equal(after.used_bytes, before.used_bytes);
}

/* Children that give nothing back themselves: killed while they wait
 * (after closing one end, or none), or gone by _exit. Their reaper gives
 * back their holds, exactly once: the pipe still works for the parent after
 * the reap, and its rings go back once the parent closes its ends, whether
 * it closed them before the child ended or after. Before, each round kept
 * 529 KiB for good. */
static int child_waits(void *arg)
{
    mp_conn **ends = arg;
    if (mp_conn_send_bytes(ends[1], "r", 1) != 0)
        return 1;
    for (;;)
        pause();
}

static int child_closes_one_and_waits(void *arg)
{
    mp_conn **ends = arg;
    mp_conn_close(ends[0]);
    return child_waits(arg);
}

static int child_exits_at_once(void *arg)
{
    (void)arg;
    _exit(0);
}

/* Rounds of a pipe shared with a child of method running kinds[round % 3]:
 * each child but `quiet` first sends a byte on ends[1]; each but `returns`
 * is then killed; the parent closes its ends before the child ends in odd
 * rounds, after it (and then uses the pipe first) in even ones. The arena
 * must hold as much after the last round as after the first. */
static void pipe_rounds_leave_the_arena_as_it_was(mp_start_method method, const mp_target *kinds,
                                                  int rounds, mp_target quiet, mp_target returns)
{
    struct arena_stats before, after;
    for (int round = 0; round < rounds; round++) {
        if (round == 1)
            assert_true(arena_check(&before));
        mp_target target = kinds[round % 3];
        bool close_first = round % 2;
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        mp_process_opts o = { .method = method, .arg_size = sizeof ends };
        TU_OK(mp_process_new(&p, target, ends, &o));
        TU_OK(mp_process_start(p));
        char buf[8];
        size_t len;
        if (target != quiet) {                  /* it is waiting, or about to return */
            assert_int_equal(mp_conn_poll(ends[0], 30 * tu_slow()), 1);
            TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
            assert_int_equal(len, 1);
        }
        if (close_first) {
            mp_conn_close(ends[0]);
            mp_conn_close(ends[1]);
        }
        if (target != returns)
            TU_OK(mp_process_kill(p));
        TU_OK(mp_process_join(p, 30 * tu_slow()));
        TU_OK(mp_process_free(p));
        if (!close_first) {                     /* nothing was freed under the parent */
            TU_OK(mp_conn_send_bytes(ends[1], "after", 5));
            TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
            assert_memory_equal(buf, "after", 5);
            mp_conn_close(ends[0]);
            mp_conn_close(ends[1]);
        }
    }
    assert_true(arena_check(&after));
    print_message("arena used: %zu bytes before, %zu after\n", (size_t)before.used_bytes,
                  (size_t)after.used_bytes);
    assert_int_equal(after.used_bytes, before.used_bytes);
}

static void test_pipe_held_by_killed_children_is_freed_after_them(void **state)
{
    (void)state;
    mp_target kinds[] = { child_waits, child_closes_one_and_waits, child_exits_at_once };
    pipe_rounds_leave_the_arena_as_it_was(MP_FORK, kinds, 13, child_exits_at_once,
                                          child_exits_at_once);
}

/* ------------------------------------------------------------------ leases */

/* A child frees an inherited pipe (the parent closed first: the child's
 * close is the last), then makes a new pipe, which the arena places at the
 * freed addresses; the child's close of the new pipe must free it. */
static int reuse_sync[2];

static int child_frees_then_reuses(void *arg)
{
    mp_conn **ends = arg;
    char b;
    if (read(reuse_sync[0], &b, 1) != 1)      /* the parent has closed its ends */
        return 2;
    mp_conn_close(ends[0]);
    mp_conn_close(ends[1]);                   /* last holder: freed */
    for (int i = 0; i < 4; i++) {
        mp_conn *a, *c;
        if (mp_pipe(&a, &c, true) != 0)
            return 3;
        mp_conn_close(a);
        mp_conn_close(c);
    }
    return 0;
}

static void test_child_pipe_at_the_address_of_a_freed_inherited_one_is_freed(void **state)
{
    (void)state;
    struct arena_stats before, after;
    for (int round = 0; round < 4; round++) {
        if (round == 1)
            assert_true(arena_check(&before));
        assert_int_equal(pipe(reuse_sync), 0);
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        mp_process_opts o = { .method = MP_FORK };
        TU_OK(mp_process_new(&p, child_frees_then_reuses, ends, &o));
        TU_OK(mp_process_start(p));
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
        assert_int_equal(write(reuse_sync[1], "g", 1), 1);
        TU_OK(mp_process_join(p, 10 * tu_slow()));
        int code;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, 0);
        TU_OK(mp_process_free(p));
        close(reuse_sync[0]);
        close(reuse_sync[1]);
    }
    assert_true(arena_check(&after));
    print_message("arena used: %zu before, %zu after\n", (size_t)before.used_bytes,
                  (size_t)after.used_bytes);
    assert_int_equal(after.used_bytes, before.used_bytes);
}

static size_t used_now(void)
{
    struct arena_stats st;
    assert_true(arena_check(&st));
    return (size_t)st.used_bytes;
}

static void pipe_still_works(mp_conn **ends)
{
    char buf[8];
    size_t len;
    TU_OK(mp_conn_send_bytes(ends[1], "after", 5));
    TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
    assert_int_equal(len, 5);
    assert_memory_equal(buf, "after", 5);
}

/* A child that forks its own child with the pipe, kills and reaps it. */
static int child_nests(void *arg)
{
    mp_conn **ends = arg;
    mp_process *g;
    mp_process_opts o = { .method = MP_FORK };
    if (mp_process_new(&g, child_closes_one_and_waits, ends, &o) || mp_process_start(g))
        return 2;
    char buf[8];
    size_t len;
    if (mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len) != 0)
        return 3;
    mp_process_kill(g);
    if (mp_process_join(g, 10) != 0)
        return 4;
    mp_process_free(g);
    if (mp_conn_send_bytes(ends[1], "c", 1) != 0)
        return 5;
    return 0;
}

static void test_pipe_held_by_nested_killed_children_is_freed(void **state)
{
    (void)state;
    size_t before = 0;
    for (int round = 0; round < 6; round++) {
        if (round == 1)
            before = used_now();
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        mp_process_opts o = { .method = MP_FORK };
        TU_OK(mp_process_new(&p, child_nests, ends, &o));
        TU_OK(mp_process_start(p));
        TU_OK(mp_process_join(p, 10 * tu_slow()));
        int code;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, 0);
        char buf[8];
        size_t len;
        TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
        assert_int_equal(buf[0], 'c');
        TU_OK(mp_process_free(p));
        pipe_still_works(ends);
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
    }
    size_t after = used_now();
    print_message("nested: %zu before, %zu after\n", before, after);
    assert_int_equal(after, before);
}

static int task_dies(const void *in, size_t len, mp_buf *out)
{
    (void)len; (void)out;
    if (*(const char *)in == 'k')
        raise(SIGKILL);
    return 0;
}

/* A child runs a pool whose workers die. */
static int child_runs_pool(void *arg)
{
    mp_conn **ends = arg;
    mp_pool *pool;
    if (mp_pool_new(&pool, &(mp_pool_opts){ .processes = 2, .method = MP_FORK }) != 0)
        return 2;
    mp_buf out = { 0 };
    for (int i = 0; i < 4; i++)
        mp_pool_apply(pool, task_dies, i % 2 ? "k" : "o", 1, &out);
    mp_buf_free(&out);
    mp_pool_terminate(pool);
    mp_pool_free(pool);
    return mp_conn_send_bytes(ends[1], "c", 1) ? 3 : 0;
}

static void test_pipe_held_by_a_child_running_a_pool_is_freed(void **state)
{
    (void)state;
#if TU_TSAN
    /* TSan keeps the fork lock the parent held across the fork as locked in
     * the child (which re-creates it), and the child's pool monitor takes it. */
    skip();
#endif
    size_t before = 0;
    for (int round = 0; round < 4; round++) {
        if (round == 1)
            before = used_now();
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        mp_process_opts o = { .method = MP_FORK };
        TU_OK(mp_process_new(&p, child_runs_pool, ends, &o));
        TU_OK(mp_process_start(p));
        char buf[8];
        size_t len;
        TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
        TU_OK(mp_process_join(p, 30 * tu_slow()));
        int code;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, 0);
        TU_OK(mp_process_free(p));
        pipe_still_works(ends);
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
    }
    size_t after = used_now();
    print_message("pool in child: %zu before, %zu after\n", before, after);
    assert_int_equal(after, before);
}

/* A pool in the parent, made after a pipe; its workers die in storms. */
static void test_pipe_made_before_a_pool_outlives_killed_workers_and_is_freed(void **state)
{
    (void)state;
    size_t before = 0;
    for (int round = 0; round < 3; round++) {
        if (round == 1)
            before = used_now();
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_pool *pool;
        TU_OK(mp_pool_new(&pool, &(mp_pool_opts){ .processes = 2, .method = MP_FORK }));
        mp_future *f[24];
        for (int i = 0; i < 24; i++)
            TU_OK(mp_pool_apply_async(pool, task_dies, i % 3 ? "k" : "o", 1, &f[i]));
        for (int i = 0; i < 24; i++) {
            mp_future_wait(f[i], MP_FOREVER);
            mp_future_free(f[i]);
            if (i == 10)
                pipe_still_works(ends);
        }
        pipe_still_works(ends);
        if (round % 2) {
            mp_conn_close(ends[0]);
            mp_conn_close(ends[1]);
        }
        TU_OK(mp_pool_terminate(pool));
        mp_pool_free(pool);
        if (!(round % 2)) {
            pipe_still_works(ends);
            mp_conn_close(ends[0]);
            mp_conn_close(ends[1]);
        }
    }
    size_t after = used_now();
    print_message("pool storm: %zu before, %zu after\n", before, after);
    assert_int_equal(after, before);
}

/* 200 rounds of Pipe + Process + terminate/kill + reap by many paths. */
static void test_200_killed_children_over_every_reaping_path_keep_the_arena_flat(void **state)
{
    (void)state;
    size_t before = 0;
    int rounds = 200;
    for (int round = 0; round < rounds; round++) {
        if (round == 1)
            before = used_now();
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        mp_process_opts o = { .method = MP_FORK };
        TU_OK(mp_process_new(&p, round % 5 == 4 ? child_closes_one_and_waits : child_waits,
                             ends, &o));
        TU_OK(mp_process_start(p));
        char buf[8];
        size_t len;
        TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
        if (round % 3 == 0) {
            mp_conn_close(ends[0]);
            mp_conn_close(ends[1]);
        }
        TU_OK(round % 2 ? mp_process_kill(p) : mp_process_terminate(p));
        switch (round % 4) {
        case 0: TU_OK(mp_process_join(p, 10 * tu_slow())); break;
        case 1: while (mp_process_is_alive(p)) usleep(200); break;
        case 2: while (mp_active_children(NULL, 0) > 0) usleep(200); break;
        case 3: { int code; while (mp_process_exitcode(p, &code) != 0) usleep(200); } break;
        }
        TU_OK(mp_process_free(p));
        if (round % 3 != 0) {
            pipe_still_works(ends);
            mp_conn_close(ends[0]);
            mp_conn_close(ends[1]);
        }
    }
    size_t after = used_now();
    print_message("200 rounds: %zu before, %zu after\n", before, after);
    assert_int_equal(after, before);
}

/* A start whose child cannot be watched (pidfd_open fails) is undone: the
 * child is killed and reaped at once; its holds must go back too. */
static void undone_starts(void)
{
    mp_process *warm;
    mp_process_opts o = { .method = MP_FORK };
    TU_OK(mp_process_new(&warm, child_returns, (mp_conn *[2]){ (mp_conn *)1, NULL }, &o));
    TU_OK(mp_process_start(warm));             /* pidfds are probed while they work */
    TU_OK(mp_process_join(warm, 10 * tu_slow()));
    TU_OK(mp_process_free(warm));
    size_t before = used_now();
    assert_true(tu_fail_pidfd_open());
    for (int round = 0; round < 3; round++) {
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        TU_OK(mp_process_new(&p, child_waits, ends, &o));
        assert_int_equal(mp_process_start(p), MP_ENOMEM);
        TU_OK(mp_process_free(p));
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
    }
    size_t after = used_now();
    print_message("undone starts: %zu before, %zu after\n", before, after);
    assert_int_equal(after, before);
}

static void test_undone_start_gives_the_child_holds_back(void **state)
{
    (void)state;
    fflush(NULL);
    pid_t pid = fork();                        /* the filter stays in there */
    assert_true(pid >= 0);
    if (pid == 0) {
        undone_starts();
        fflush(NULL);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* A forked child spawns (and so marks the pipe shared for good), then is
 * killed; its reaper must not give back a hold on the immortal pipe. */
static int child_spawns_waits(void *arg)
{
    mp_conn **ends = arg;
    /* Should the test fail before it kills us, we do not outlive it (we
     * would hold ctest's output pipe for good); a daemon could not spawn. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    mp_process *g;
    mp_process_opts o = { .method = MP_SPAWN, .arg_size = 2 * sizeof(mp_conn *) };
    if (mp_process_new(&g, child_closes_one_and_waits, ends, &o) || mp_process_start(g))
        return 2;
    if (mp_process_kill(g) || mp_process_join(g, 10) != 0)
        return 3;
    mp_process_free(g);
    if (mp_conn_send_bytes(ends[1], "c", 1) != 0)
        return 4;
    for (;;)
        pause();
}


static void test_pipe_held_by_a_killed_child_that_spawned_still_works(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++) {
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        mp_process_opts o = { .method = MP_FORK };
        TU_OK(mp_process_new(&p, child_spawns_waits, ends, &o));
        TU_OK(mp_process_start(p));
        char buf[8];
        size_t len;
        TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
        if (buf[0] == 'r')          /* the grandchild's, when it ran before its kill */
            TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
        assert_int_equal(buf[0], 'c');
        TU_OK(mp_process_kill(p));
        TU_OK(mp_process_join(p, 10 * tu_slow()));
        TU_OK(mp_process_free(p));
        pipe_still_works(ends);
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
    }
}

/* The same for spawned children, whose ends reach them across an exec:
 * a child that returns, one killed while it waits, and one killed after
 * closing an end. Their holds are leased as a forked child's are, so the
 * rings go back once the parent has closed its ends and reaped them.
 * Before, every such pipe was held for good. */
static int spawned_sends(void *arg)
{
    mp_conn **ends = arg;
    return mp_conn_send_bytes(ends[1], "r", 1) == 0 ? 0 : 1;
}

static int spawned_closes_one_and_waits(void *arg)
{
    mp_conn **ends = arg;
    mp_conn_close(ends[0]);
    return child_waits(arg);
}

static void test_pipe_held_by_spawned_children_is_freed_after_them(void **state)
{
    (void)state;
    mp_target kinds[] = { spawned_sends, child_waits, spawned_closes_one_and_waits };
    pipe_rounds_leave_the_arena_as_it_was(MP_SPAWN, kinds, 7, NULL, spawned_sends);
}

/* A spawned child whose parent was killed (nobody will reap it, so no
 * lease end gives its holds back) and that then returns: it gives its
 * holds back itself as it exits, as a forked child does, so the pipe goes
 * back to the arena once the first process closes its ends. Before, each
 * round kept the pipe's 529 KiB for good. */
static int orphan_returns_after_the_go(void *arg)
{
    mp_conn **ends = arg;
    char buf[8];
    size_t len;
    pid_t me = getpid();
    if (mp_conn_send_bytes(ends[1], &me, sizeof me) != 0 ||
        mp_conn_recv_bytes(ends[1], buf, sizeof buf, &len) != 0)
        return 1;
    return mp_conn_send_bytes(ends[1], "done", 4) == 0 ? 0 : 2;
}

/* The middle child: starts the orphan-to-be with orphan_method, then waits
 * to be killed. */
static mp_start_method orphan_method;

static int child_starts_an_orphan_and_waits(void *arg)
{
    mp_conn **ends = arg;
    mp_process *g;
    mp_process_opts o = { .method = orphan_method, .arg_size = 2 * sizeof(mp_conn *) };
    if (mp_process_new(&g, orphan_returns_after_the_go, ends, &o) || mp_process_start(g))
        return 2;
    for (;;)
        pause();
}

/* Rounds of: a forked child starts a grandchild of method holding the
 * pipe, and is killed; the grandchild then returns. The killed middle
 * child's record of the orphan stays (a few hundred bytes a round); a pipe
 * would be 529 KiB. */
static void orphan_rounds_leave_the_pipes_back(mp_start_method method)
{
    orphan_method = method;
    size_t before = 0;
    int rounds = 4;
    for (int round = 0; round < rounds; round++) {
        if (round == 1)
            before = used_now();
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        mp_process_opts o = { .method = MP_FORK };
        TU_OK(mp_process_new(&p, child_starts_an_orphan_and_waits, ends, &o));
        TU_OK(mp_process_start(p));
        pid_t orphan;
        size_t len;
        TU_OK(mp_conn_recv_bytes(ends[0], &orphan, sizeof orphan, &len));
        TU_OK(mp_process_kill(p));
        TU_OK(mp_process_join(p, 10 * tu_slow()));
        TU_OK(mp_process_free(p));
        char buf[8];
        TU_OK(mp_conn_send_bytes(ends[0], "go", 2));
        TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
        assert_memory_equal(buf, "done", 4);
        double end = tu_now() + 10 * tu_slow();
        while (tu_proc_state(orphan) != 0 && tu_proc_state(orphan) != 'Z' && tu_now() < end)
            usleep(1000);
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
    }
    size_t after = used_now();
    print_message("orphans: %zu before, %zu after %d rounds\n", before, after, rounds);
    assert_true(after - before < (size_t)(rounds - 1) * 16384);
}

static void test_pipe_held_by_an_orphaned_spawned_child_is_freed_once_it_returns(void **state)
{
    (void)state;
    orphan_rounds_leave_the_pipes_back(MP_SPAWN);
}

/* And for fork-server children, whose ends come with the start request:
 * the requester leases their holds, the child adopts them, and the
 * requester gives back the rest once the server has published the end.
 * Before, every handle sent to the server was held for good. */
static void test_pipe_held_by_fork_server_children_is_freed_after_them(void **state)
{
    (void)state;
    mp_target kinds[] = { spawned_sends, child_waits, spawned_closes_one_and_waits };
    pipe_rounds_leave_the_arena_as_it_was(MP_FORKSERVER, kinds, 7, NULL, spawned_sends);
}

/* A fork-server child that has ended (its server published it) and is freed
 * without a join, exitcode or is_alive first (mp_active_children has
 * forgotten it): its holds still go back, so the pipe's rings go back once
 * the parent closes its ends. */
static bool no_active_children(void *arg)
{
    (void)arg;
    return mp_active_children(NULL, 0) == 0;
}

static void test_pipe_held_by_a_fork_server_child_freed_unjoined_is_freed(void **state)
{
    (void)state;
    size_t before = 0;
    int rounds = 5;
    for (int round = 0; round < rounds; round++) {
        if (round == 1)
            before = used_now();
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        mp_process_opts o = { .method = MP_FORKSERVER, .arg_size = sizeof ends };
        TU_OK(mp_process_new(&p, spawned_sends, ends, &o));
        TU_OK(mp_process_start(p));
        char buf[8];
        size_t len;
        TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
        assert_true(tu_wait_for(no_active_children, NULL, 10 * tu_slow()));
        TU_OK(mp_process_free(p));
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
    }
    size_t after = used_now();
    print_message("arena used: %zu before, %zu after %d rounds\n", before, after, rounds);
    assert_true(after - before < 16384);
}

/* A fork-server child whose creator (a forked child) was killed, so no
 * creator gives back its holds at its end, and that then returns: it gives
 * them back itself as it exits, as forked and spawned children do. */
static void test_pipe_held_by_an_orphaned_fork_server_child_is_freed_once_it_returns(void **state)
{
    (void)state;
    orphan_rounds_leave_the_pipes_back(MP_FORKSERVER);
}

/* A child killed inside its own mp_process_start, after the start counted
 * the grandchild-to-be as one more holder of each handle and before any
 * grandchild could give those holds back: at the fork itself (a fork
 * child, a spawned one, the fork server's launch), or as it sends the
 * fork server its request. No grandchild exists, and the starter's reaper
 * must give the holds back with the starter's own. Before, each such
 * death kept the pipe's 529 KiB for good, so a kill storm of processes
 * that start processes filled the arena. */
static mp_start_method starter_method;
static long starter_dies_at;

static int child_dies_inside_its_start(void *arg)
{
    mp_conn **ends = arg;
    mp_process_opts o = { .method = starter_method, .arg_size = 2 * sizeof(mp_conn *) };
    mp_process *g;
    if (starter_dies_at == SYS_sendmsg) {       /* the server runs: the request is next */
        if (mp_process_new(&g, child_returns, ends, &o) || mp_process_start(g) ||
            mp_process_join(g, 10) || mp_process_free(g))
            return 2;
    }
    if (!tu_die_at_syscall(starter_dies_at))
        return 3;
    if (mp_process_new(&g, child_returns, ends, &o))
        return 4;
    mp_process_start(g);
    return 5;                                   /* not reached */
}

static void starter_deaths_leave_the_arena_as_it_was(mp_start_method method, long nr)
{
    starter_method = method;
    starter_dies_at = nr;
    size_t before = 0;
    int rounds = 5;
    for (int round = 0; round < rounds; round++) {
        if (round == 1)
            before = used_now();
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process *p;
        mp_process_opts o = { .method = MP_FORK };
        TU_OK(mp_process_new(&p, child_dies_inside_its_start, ends, &o));
        TU_OK(mp_process_start(p));
        TU_OK(mp_process_join(p, 10 * tu_slow()));
        int code;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, -SIGSYS);
        TU_OK(mp_process_free(p));
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
    }
    size_t after = used_now();
    print_message("starters killed in their start: %zu before, %zu after %d rounds\n", before,
                  after, rounds);
    assert_true(after - before < (size_t)(rounds - 1) * 16384);
}

static void test_pipe_held_by_a_child_killed_inside_its_start_is_freed(void **state)
{
    (void)state;
    starter_deaths_leave_the_arena_as_it_was(MP_FORK, SYS_clone);
    starter_deaths_leave_the_arena_as_it_was(MP_SPAWN, SYS_clone);
    starter_deaths_leave_the_arena_as_it_was(MP_FORKSERVER, SYS_clone);
    starter_deaths_leave_the_arena_as_it_was(MP_FORKSERVER, SYS_sendmsg);
}

/* A child that makes handles of its own (a pipe, a listener, the conn an
 * accept gives) and is killed before it closes them: no other process
 * holds them, and its reaper gives them back with the holds its lease
 * names, under every start method. Before, only inherited handles were
 * leased, so each such death kept a pipe's 529 KiB (a listener's or an
 * accepted conn's 8 KiB) for good: a supervisor restarting crashed
 * workers that each opened a pipe filled the arena. */
static int child_makes_handles_and_is_killed(void *arg)
{
    mp_conn **ends = arg;
    mp_conn *a, *b;
    mp_listener *l;
    char addr[64];
    snprintf(addr, sizeof addr, "unix:@mproc-test-made-%d", (int)getpid());
    if (mp_pipe(&a, &b, true) != 0 || mp_listener_new(&l, addr, NULL, 0) != 0)
        return 2;
    mp_conn *c, *s;
    if (mp_client(&c, addr, NULL, 0, 10) != 0 || mp_listener_accept(l, &s, 10) != 0)
        return 3;
    if (mp_conn_send_bytes(ends[1], "m", 1) != 0)     /* they are made: kill me */
        return 4;
    for (;;)
        pause();
}

static void test_handles_made_by_a_killed_child_are_freed(void **state)
{
    (void)state;
    mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    for (int m = 0; m < 3; m++) {
        size_t before = 0;
        int rounds = 5;
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        for (int round = 0; round < rounds; round++) {
            if (round == 1)
                before = used_now();
            mp_process *p;
            mp_process_opts o = { .method = methods[m], .arg_size = sizeof ends };
            TU_OK(mp_process_new(&p, child_makes_handles_and_is_killed, ends, &o));
            TU_OK(mp_process_start(p));
            assert_int_equal(mp_conn_poll(ends[0], 30 * tu_slow()), 1);
            char buf[8];
            size_t len;
            TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
            TU_OK(mp_process_kill(p));
            TU_OK(mp_process_join(p, 30 * tu_slow()));
            TU_OK(mp_process_free(p));
        }
        size_t after = used_now();
        print_message("method %d: %zu before, %zu after %d rounds\n", (int)methods[m], before,
                      after, rounds);
        assert_int_equal(after, before);
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
    }
}

/* A child killed while it makes a pipe, at each block the pipe takes (its
 * shared part, then each ring, killed as soon as the block is its own,
 * before the ring's pages are reserved): its reaper frees what it held.
 * Before, each such death kept the blocks taken so far (up to 529 KiB). */
static unsigned held_countdown;

static void die_at_held(const char *point)
{
    if (strcmp(point, "alloc_taken") == 0 && held_countdown-- == 0)
        kill(getpid(), SIGKILL);
}

static int child_makes_a_pipe_and_dies(void *arg)
{
    held_countdown = *(unsigned *)arg;
    mp__arena_test_hook = die_at_held;
    mp_conn *a, *b;
    int rc = mp_pipe(&a, &b, true);
    mp__arena_test_hook = NULL;
    return rc == 0 ? 9 : 2;                 /* no such block */
}

/* Runs child(&at) for at = 0 .. points-1, each killed at its point at:
 * the arena's bytes in use are what they were before each. */
static void killed_children_leave_the_arena_as_it_was(mp_target child, unsigned points)
{
    /* our own record is made once, here */
    assert_int_equal(tu_join_free(tu_start_fork(child_exits_at_once, NULL, 0), 10), 0);
    for (unsigned at = 0; at < points; at++) {
        size_t before = used_now();
        assert_int_equal(tu_join_free(tu_start_fork(child, &at, sizeof at), 30), -SIGKILL);
        size_t after = used_now();
        print_message("killed at its point %u: %zu bytes in use before, %zu after\n", at, before,
                      after);
        assert_int_equal(after, before);
    }
}

static void test_pipe_of_a_child_killed_while_it_makes_it_is_freed(void **state)
{
    (void)state;
    killed_children_leave_the_arena_as_it_was(child_makes_a_pipe_and_dies, 3);
}

/* A child killed while it closes the last end of its pipe, right after
 * each block that close frees but the last (the rings, the shared part,
 * the conn): what it had not freed yet is in its hand, and its reaper
 * frees it. Before, a kill there kept what was left: up to a ring, the
 * shared part and the conn, 272 KiB. (Killed inside a free, it leaks that
 * block, as docs/arena.md says.) */
static unsigned free_countdown;

static void die_at_free(const char *point)
{
    bool freed = strcmp(point, "free_linked") == 0 || strcmp(point, "cache_pushed") == 0;
    if (freed && free_countdown-- == 0)
        kill(getpid(), SIGKILL);
}

static int child_closes_a_pipe_and_dies(void *arg)
{
    mp_conn *a, *b;
    if (mp_pipe(&a, &b, true) != 0)
        return 2;
    mp_conn_close(a);
    free_countdown = *(unsigned *)arg;
    mp__arena_test_hook = die_at_free;
    mp_conn_close(b);
    mp__arena_test_hook = NULL;
    return 9;                               /* no such block */
}

static void test_pipe_of_a_child_killed_while_it_closes_it_is_freed(void **state)
{
    (void)state;
    killed_children_leave_the_arena_as_it_was(child_closes_a_pipe_and_dies, 3);
}

/* A fork-server start whose server dies after it got the request and
 * before it answered (stopped, then killed): the start fails. A child the
 * server may have forked with the request reads and writes the process's
 * record, its argument copy and its lease, so the record is spent (a new
 * start is MP_ESTATE) and never handed out again, not even after
 * mp_process_free. And since no child took the lease here, the holds the
 * request counted go back at once: the pipe is freed once its ends are
 * closed. Before, the record and argument were freed at once and the next
 * mp_process_new got the same record, into which such a child then wrote
 * its pid (and read a reused lease pointer); and the holds stayed for
 * good, a pipe's 529 KiB for each server death under a start. */
static void *start_in_thread(void *arg)
{
    mp_process *p = arg;
    return (void *)(intptr_t)mp_process_start(p);
}

/* Starts a fork-server child that waits (child_waits, on ends), learns its
 * server's pid, kills and frees the child, and stops the server (SIGSTOP):
 * the server's pid, or -1 if a step failed. For tests and their children. */
static pid_t stop_a_fork_server(mp_conn **ends, const mp_process_opts *fs)
{
    mp_process *q;
    char buf[8];
    size_t len;
    if (mp_process_new(&q, child_waits, ends, fs) != 0 || mp_process_start(q) != 0 ||
        mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len) != 0)
        return -1;
    pid_t server = tu_proc_ppid(mp_process_pid(q));
    if (server <= 0 || mp_process_kill(q) != 0 || mp_process_join(q, 10 * tu_slow()) != 0 ||
        mp_process_free(q) != 0 || kill(server, SIGSTOP) != 0)
        return -1;
    return server;
}

static void test_pipe_sent_to_a_fork_server_that_died_before_answering_is_freed(void **state)
{
    (void)state;
    size_t before = 0;
    int rounds = 4;
    for (int round = 0; round < rounds; round++) {
        if (round == 1)
            before = used_now();
        mp_conn *ends[2];
        TU_OK(mp_pipe(&ends[0], &ends[1], true));
        mp_process_opts o = { .method = MP_FORKSERVER, .arg_size = sizeof ends };
        mp_process *q, *p;
        pid_t server = stop_a_fork_server(ends, &o);
        assert_true(server > 0 && server != getpid());
        TU_OK(mp_process_new(&p, child_returns, ends, &o));
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, start_in_thread, p), 0);
        assert_true(tu_wait_threads_asleep(10));   /* the request is sent: it waits */
        TU_OK(kill(server, SIGKILL));
        void *rc;
        assert_int_equal(pthread_join(t, &rc), 0);
        assert_true((intptr_t)rc != 0);
        TU_ASSERT_RC(mp_process_start(p), MP_ESTATE);
        TU_OK(mp_process_free(p));
        for (int i = 0; i < 4; i++) {           /* its record is nobody else's */
            TU_OK(mp_process_new(&q, child_returns, ends, &o));
            assert_ptr_not_equal(q, p);
            TU_OK(mp_process_free(q));
        }
        mp_conn_close(ends[0]);
        mp_conn_close(ends[1]);
    }
    size_t after = used_now();
    print_message("server deaths under a start: %zu before, %zu after %d rounds\n", before,
                  after, rounds);
    assert_true(after - before < (size_t)(rounds - 1) * 4096);
}

/* A process with two starts under way at once, in two threads, killed
 * while one of them still waits: the holds that start counted for its
 * child go back when the process is reaped. Here one thread's fork-server
 * request waits for a stopped server while the main thread forks and
 * joins a child; then the process is killed and its server too, so no
 * child ever takes the request's lease. Before, the record named only
 * one start under way, and the second start's end cleared it, so the
 * waiting start's holds (the pipe) were kept for good. */
struct two_starts { mp_conn *ends[2]; int report_w; };

static void *start_in_thread(void *arg);

static int starts_twice_and_waits(void *arg)
{
    struct two_starts *a = arg;
    mp_process_opts fs = { .method = MP_FORKSERVER, .arg_size = sizeof a->ends };
    mp_process *p, *f;
    pid_t server = stop_a_fork_server(a->ends, &fs);
    if (server <= 0)
        return 3;
    pthread_t t;
    if (mp_process_new(&p, child_returns, a->ends, &fs) != 0 ||
        pthread_create(&t, NULL, start_in_thread, p) != 0 || !tu_wait_threads_asleep(10))
        return 4;                     /* the request is sent: it waits */
    mp_process_opts fo = { .method = MP_FORK };
    if (mp_process_new(&f, child_returns, a->ends, &fo) != 0 || mp_process_start(f) != 0 ||
        mp_process_join(f, 10 * tu_slow()) != 0 || mp_process_free(f) != 0)
        return 5;
    if (write(a->report_w, &server, sizeof server) != sizeof server)
        return 6;
    for (;;)
        pause();
}

/* Makes a's pipe and report pipe, starts target (forked) with a, waits
 * for it to report the pid of the fork server its request waits on, then
 * kills and reaps it (its reaper ends its lease): that pid. */
static pid_t run_starter_until_its_request_waits(int (*target)(void *), struct two_starts *a,
                                                 int report[2])
{
    assert_int_equal(pipe(report), 0);
    a->report_w = report[1];
    TU_OK(mp_pipe(&a->ends[0], &a->ends[1], true));
    mp_process *s;
    mp_process_opts o = { .method = MP_FORK, .arg_size = sizeof *a };
    TU_OK(mp_process_new(&s, target, a, &o));
    TU_OK(mp_process_start(s));
    struct pollfd pf = { report[0], POLLIN, 0 };
    assert_int_equal(poll(&pf, 1, (int)(30000 * tu_slow())), 1);
    pid_t server = 0;
    assert_int_equal(read(report[0], &server, sizeof server), (ssize_t)sizeof server);
    TU_OK(mp_process_kill(s));
    TU_OK(mp_process_join(s, 10 * tu_slow()));
    TU_OK(mp_process_free(s));
    return server;
}

static void test_holds_of_a_start_under_way_go_back_when_another_start_ended_first(void **state)
{
    (void)state;
    size_t before = used_now();
    struct two_starts a;
    int report[2];
    pid_t server = run_starter_until_its_request_waits(starts_twice_and_waits, &a, report);
    kill(server, SIGKILL);
    kill(server, SIGCONT);
    mp_conn_close(a.ends[0]);
    mp_conn_close(a.ends[1]);
    close(report[0]);
    close(report[1]);
    size_t after = used_now();
    print_message("two starts, the starter killed: %zu before, %zu after\n", before, after);
    assert_true(after < before + 64 * 1024);
}

/* A raw fork()'s child of a process still has its parent's record as its
 * current one. Its own starts must not be named there: when the parent
 * dies, the parent's reaper abandons the starts named in its record, and a
 * child of the raw child that had not taken its lease yet would then exit
 * 127 before its target, though its starter lives. Here the raw child's
 * fork-server request waits on its stopped server while the parent is
 * killed and reaped; then the server goes on and the child must run. */
static int raw_child_starts_while_parent_dies(void *arg)
{
    struct two_starts *a = arg;
    pid_t r = fork();
    if (r != 0)
        return r > 0 ? (pause(), 0) : 2;          /* S: waits to be killed */
    mp_process_opts fs = { .method = MP_FORKSERVER, .arg_size = sizeof a->ends };
    mp_process *p;
    int code = -1;
    pid_t server = stop_a_fork_server(a->ends, &fs);
    if (server <= 0)
        _exit(4);
    pthread_t t;
    if (mp_process_new(&p, child_returns, a->ends, &fs) != 0 ||
        pthread_create(&t, NULL, start_in_thread, p) != 0 || !tu_wait_threads_asleep(10))
        _exit(5);                     /* the request is sent: it waits */
    if (write(a->report_w, &server, sizeof server) != sizeof server)
        _exit(6);
    /* The test kills and reaps our parent, then resumes our server. */
    void *rc;
    if (pthread_join(t, &rc) != 0 || rc != NULL || mp_process_join(p, 20 * tu_slow()) != 0)
        _exit(7);
    if (mp_process_exitcode(p, &code) != 0)
        _exit(9);
    if (write(a->report_w, &code, sizeof code) != sizeof code)
        _exit(8);
    _exit(0);
}

static void test_start_of_a_raw_fork_child_survives_its_parent_reaped(void **state)
{
    (void)state;
    struct two_starts a;
    int report[2];
    pid_t server = run_starter_until_its_request_waits(raw_child_starts_while_parent_dies, &a,
                                                       report);
    kill(server, SIGCONT);
    struct pollfd pf = { report[0], POLLIN, 0 };
    assert_int_equal(poll(&pf, 1, (int)(30000 * tu_slow())), 1);
    int code = -1;
    assert_int_equal(read(report[0], &code, sizeof code), (ssize_t)sizeof code);
    assert_int_equal(code, 0);        /* child_returns ran: 127 if it found its lease void */
    mp_conn_close(a.ends[0]);
    mp_conn_close(a.ends[1]);
    close(report[0]);
    close(report[1]);
}

/* A spawned target runs in a constructor, before main: every fork hook the
 * library's constructors set must be set by then, or a spawned target that
 * forks while another of its threads holds the arena's local locks gives
 * its child those locks taken. */
static int spawned_finds_the_fork_hooks_set(void *arg)
{
    (void)arg;
    uint32_t want = 1u << FORK_LISTENER | 1u << FORK_POOL | 1u << FORK_SHM | 1u << FORK_CONN |
                    1u << FORK_FDREG | 1u << FORK_PROCESS | 1u << FORK_ARENA | 1u << FORK_TID;
    uint32_t set = fork_hooks_set();
    return (set & want) == want ? 0 : 100 + (int)__builtin_ctz(want & ~set);
}

static void test_spawned_target_runs_with_every_fork_hook_set(void **state)
{
    (void)state;
    mp_process *p;
    TU_OK(mp_process_new(&p, spawned_finds_the_fork_hooks_set, NULL,
                         &(mp_process_opts){ .method = MP_SPAWN }));
    TU_OK(mp_process_start(p));
    TU_OK(mp_process_join(p, 30 * tu_slow()));
    int code = -1;
    TU_OK(mp_process_exitcode(p, &code));
    assert_int_equal(code, 0);              /* 100 + the first slot missing */
    TU_OK(mp_process_free(p));
}

/* ------------------------------------------------------------------ size */

/* Reads fd to its end (at most cap bytes): how many it read. */
static ssize_t read_to_end(int fd, char *buf, size_t cap)
{
    size_t done = 0;
    ssize_t n;
    while (done < cap && (n = read(fd, buf + done, cap - done)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

/* What a fresh process with MPROC_ARENA_SIZE=value (unset when NULL) takes
 * as its arena's size, and what it wrote on stderr (into err). */
static size_t arena_size_with(const char *value, char *err, size_t cap)
{
    int out[2], errp[2];
    assert_int_equal(pipe(out), 0);
    assert_int_equal(pipe(errp), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(errp[1], 2);
        if (value)
            setenv("MPROC_ARENA_SIZE", value, 1);
        else
            unsetenv("MPROC_ARENA_SIZE");
        execl("/proc/self/exe", "test_arena", "arena_size_helper", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    close(errp[1]);
    char buf[64] = { 0 };
    ssize_t n = read_to_end(out[0], buf, sizeof buf - 1);
    ssize_t m = read_to_end(errp[0], err, cap - 1);
    err[m > 0 ? m : 0] = '\0';
    close(out[0]);
    close(errp[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(n > 0);
    return (size_t)strtoull(buf, NULL, 10);
}

/* Sizes take K, M or G in either case; what is no size (a unit it does not
 * know, nothing, below 1 MiB or above the default) is said on stderr and
 * the default is used, where it was once ignored in silence. */
static void test_arena_size_from_the_environment(void **state)
{
    (void)state;
    char err[512];
    size_t fallback = arena_size_with(NULL, err, sizeof err);
    assert_string_equal(err, "");
    assert_int_equal(arena_size_with("64M", err, sizeof err), 64 * MIB);
    assert_string_equal(err, "");
    assert_int_equal(arena_size_with("65536k", err, sizeof err), 64 * MIB);
    assert_string_equal(err, "");
    assert_int_equal(arena_size_with("33554432", err, sizeof err), 32 * MIB);
    assert_string_equal(err, "");
    const char *bad[] = { "256MB", "M", "-1", " 64M", "0", "1K", "1000000G",
                          "99999999999999999999" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(arena_size_with(bad[i], err, sizeof err), fallback);
        print_message("MPROC_ARENA_SIZE=%s: %s", bad[i], err);
        assert_non_null(strstr(err, "MPROC_ARENA_SIZE="));
        assert_non_null(strstr(err, "is not a size"));
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "arena_size_helper") == 0) {
        printf("%zu\n", arena_size());
        return 0;
    }
    setenv("MPROC_ARENA_SIZE", "256M", 1);
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_64mib_fits_an_empty_arena_and_so_does_three_quarters),
        cmocka_unit_test(test_drained_1mib_items_leave_room_for_three_quarters),
        cmocka_unit_test(test_neighbours_coalesce),
        cmocka_unit_test(test_impossible_sizes_say_why),
        cmocka_unit_test(test_bad_frees_are_refused),
        cmocka_unit_test(test_kill_at_every_step_leaks_at_most_one_block),
        cmocka_unit_test(test_process_killed_inside_shared_alloc_or_free_leaks_nothing),
        cmocka_unit_test(test_timed_calls_keep_their_timeout_while_a_stopped_process_holds_the_arena),
        cmocka_unit_test(test_kill_in_the_cache_leaks_at_most_one_block),
        cmocka_unit_test(test_cache_is_bounded_and_drained_when_needed),
        cmocka_unit_test(test_concurrent_small_blocks_never_shared),
        cmocka_unit_test(test_one_stack_hammered_never_hands_a_block_out_twice),
        cmocka_unit_test(test_out_of_memory_is_an_error),
        cmocka_unit_test(test_cycling_sizes_keeps_shared_memory_bounded),
        cmocka_unit_test(test_pipe_shared_with_forked_children_is_freed_after_them),
        cmocka_unit_test(test_pipe_held_by_killed_children_is_freed_after_them),
        cmocka_unit_test(test_pipe_held_by_spawned_children_is_freed_after_them),
        cmocka_unit_test(test_pipe_held_by_fork_server_children_is_freed_after_them),
        cmocka_unit_test(test_pipe_held_by_a_fork_server_child_freed_unjoined_is_freed),
        cmocka_unit_test(test_pipe_held_by_an_orphaned_fork_server_child_is_freed_once_it_returns),
        cmocka_unit_test(test_spawned_target_runs_with_every_fork_hook_set),
        cmocka_unit_test(test_arena_size_from_the_environment),
        cmocka_unit_test(test_child_pipe_at_the_address_of_a_freed_inherited_one_is_freed),
        cmocka_unit_test(test_pipe_held_by_nested_killed_children_is_freed),
        cmocka_unit_test(test_pipe_held_by_a_child_running_a_pool_is_freed),
        cmocka_unit_test(test_pipe_made_before_a_pool_outlives_killed_workers_and_is_freed),
        cmocka_unit_test(test_200_killed_children_over_every_reaping_path_keep_the_arena_flat),
        cmocka_unit_test(test_pipe_held_by_a_killed_child_that_spawned_still_works),
        cmocka_unit_test(test_undone_start_gives_the_child_holds_back),
        cmocka_unit_test(test_pipe_held_by_an_orphaned_spawned_child_is_freed_once_it_returns),
        cmocka_unit_test(test_pipe_held_by_a_child_killed_inside_its_start_is_freed),
        cmocka_unit_test(test_handles_made_by_a_killed_child_are_freed),
        cmocka_unit_test(test_pipe_of_a_child_killed_while_it_makes_it_is_freed),
        cmocka_unit_test(test_pipe_of_a_child_killed_while_it_closes_it_is_freed),
        cmocka_unit_test(test_pipe_sent_to_a_fork_server_that_died_before_answering_is_freed),
        cmocka_unit_test(test_holds_of_a_start_under_way_go_back_when_another_start_ended_first),
        cmocka_unit_test(test_start_of_a_raw_fork_child_survives_its_parent_reaped),
        cmocka_unit_test(test_timed_call_of_a_child_with_a_full_lease_keeps_its_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
