/* test_queue_big.c - big items (256 KiB to 8 MiB) that a consumer copies out
 * while their producer is still copying them in: every item arrives whole and
 * once across several producers and consumers, fast and slow; a producer
 * stopped or killed half-way through never hands out half an item nor holds
 * a getter past its timeout; a consumer killed while copying never stalls
 * the producers (MPROC_WHITEBOX: the queue's test hook and validator). */
#include "testutil.h"

#include "internal.h"
#include "queue_internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define PRODUCERS 2
#define CONSUMERS 2
#define PER_PRODUCER 60

/* Every 8-byte word of an item says which item it is and where it is. */
static uint64_t word_at(uint64_t id, size_t i)
{
    return (id * 0x9E3779B97F4A7C15u) ^ (i * 0x100000001B3u);
}

static void fill(unsigned char *p, size_t n, uint64_t id)
{
    memcpy(p, &id, sizeof id);
    for (size_t i = 1; i < n / 8; i++) {
        uint64_t w = word_at(id, i);
        memcpy(p + i * 8, &w, 8);
    }
    for (size_t i = n & ~(size_t)7; i < n; i++)
        p[i] = (unsigned char)id;
}

/* The item's id, or UINT64_MAX if any byte is wrong. */
static uint64_t check(const unsigned char *p, size_t n)
{
    uint64_t id;
    memcpy(&id, p, sizeof id);
    for (size_t i = 1; i < n / 8; i++) {
        uint64_t w;
        memcpy(&w, p + i * 8, 8);
        if (w != word_at(id, i))
            return UINT64_MAX;
    }
    for (size_t i = n & ~(size_t)7; i < n; i++)
        if (p[i] != (unsigned char)id)
            return UINT64_MAX;
    return id;
}

/* Sizes from below the shown range to the top of it, odd ones included. */
static size_t size_of(uint64_t id)
{
    static const size_t sizes[] = { 200 * KIB, 256 * KIB, 300 * KIB + 3, MIB, 2 * MIB + 5,
                                    4 * MIB, 8 * MIB - 1 };
    return sizes[id % (sizeof sizes / sizeof sizes[0])];
}

struct run {
    mp_queue *q;
    int who;
    _Atomic uint32_t *seen;   /* per item id: times delivered (in the arena) */
    _Atomic uint32_t *bad;    /* torn or wrong-sized items */
};

static int produce(void *arg)
{
    struct run *r = arg;
    unsigned char *item = malloc(8 * MIB);
    for (uint64_t k = 0; k < PER_PRODUCER; k++) {
        uint64_t id = (uint64_t)r->who * PER_PRODUCER + k;
        fill(item, size_of(id), id);
        if (mp_queue_put(r->q, item, size_of(id), 30) != 0)
            return 1;
    }
    free(item);
    return 0;
}

/* Consumer 0 takes into a buffer, and dawdles now and then so that the
 * producers get ahead; consumer 1 takes into an mp_buf. */
static int consume(void *arg)
{
    struct run *r = arg;
    unsigned char *buf = malloc(8 * MIB);
    mp_buf b = { 0 };
    for (unsigned k = 0;; k++) {
        size_t len;
        const unsigned char *p = buf;
        int rc = r->who == 0 ? mp_queue_get(r->q, buf, 8 * MIB, &len, 30)
                             : mp_queue_get_buf(r->q, &b, 30);
        if (rc == MP_EEOF)
            break;
        if (rc != 0) {
            fprintf(stderr, "consumer %d: %s: %s\n", r->who, mp_errname(rc), mp_last_error());
            return 1;
        }
        if (r->who == 1)
            p = b.data, len = b.len;
        uint64_t id = check(p, len);
        if (id >= PRODUCERS * PER_PRODUCER || len != size_of(id))
            atomic_fetch_add(r->bad, 1);
        else
            atomic_fetch_add(&r->seen[id], 1);
        if (r->who == 0 && k % 7 == 3)
            usleep(2000);
    }
    free(buf);
    mp_buf_free(&b);
    return 0;
}

static void every_item_once(size_t maxsize)
{
    mp_queue *q;
    TU_OK(mp_queue_new(&q, &(mp_queue_opts){ .maxsize = maxsize }));
    _Atomic uint32_t *seen = mp_shared_alloc((PRODUCERS * PER_PRODUCER + 1) * sizeof *seen);
    assert_non_null(seen);
    memset((void *)seen, 0, (PRODUCERS * PER_PRODUCER + 1) * sizeof *seen);
    _Atomic uint32_t *bad = &seen[PRODUCERS * PER_PRODUCER];
    struct run runs[PRODUCERS + CONSUMERS];
    pid_t pids[PRODUCERS + CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++) {
        runs[i] = (struct run){ q, i, seen, bad };
        pids[i] = tu_fork(consume, &runs[i]);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        runs[CONSUMERS + i] = (struct run){ q, i, seen, bad };
        pids[CONSUMERS + i] = tu_fork(produce, &runs[CONSUMERS + i]);
    }
    for (int i = 0; i < PRODUCERS; i++)
        assert_int_equal(tu_wait(pids[CONSUMERS + i], 60 * tu_slow()), 0);
    TU_OK(mp_queue_shutdown(q));
    for (int i = 0; i < CONSUMERS; i++)
        assert_int_equal(tu_wait(pids[i], 60 * tu_slow()), 0);
    assert_int_equal(atomic_load(bad), 0);
    for (int i = 0; i < PRODUCERS * PER_PRODUCER; i++)
        assert_int_equal(atomic_load(&seen[i]), 1);
    assert_true(mp__queue_valid(q));
    mp_shared_free((void *)seen);
    mp_queue_free(q);
}

static void test_every_item_arrives_whole_and_once(void **state)
{
    (void)state;
    every_item_once(0);
}

static void test_every_item_arrives_whole_and_once_when_bounded(void **state)
{
    (void)state;
    every_item_once(3);
}

static const char *stop_at;
static int stop_signal;

static void stop_here(const char *point)
{
    if (stop_at && strcmp(point, stop_at) == 0)
        kill(getpid(), stop_signal);
}

static unsigned follows;

static void count_follows(const char *point)
{
    if (strcmp(point, "get_followed") == 0)
        follows++;
}

/* Puts item id (4 MiB), stopping itself half-way through the copy in. */
static int put_and_stop(void *arg)
{
    mp_queue *q = arg;
    unsigned char *item = malloc(4 * MIB);
    fill(item, 4 * MIB, 77);
    stop_at = "put_shown_half";
    stop_signal = SIGSTOP;
    mp__queue_test_hook = stop_here;
    return mp_queue_put(q, item, 4 * MIB, MP_FOREVER) == 0 ? 0 : 1;
}

/* A child running fn(q), once it has stopped itself at its hook. */
static pid_t fork_until_stopped(int (*fn)(void *), mp_queue *q)
{
    pid_t pid = tu_fork(fn, q);
    int status;
    assert_int_equal(waitpid(pid, &status, WUNTRACED), pid);   /* bounded by the watchdog */
    assert_true(WIFSTOPPED(status));
    return pid;
}

static pid_t start_stopped_producer(mp_queue *q)
{
    return fork_until_stopped(put_and_stop, q);
}

/* A getter follows a stopped producer's item as far as it got, gives up
 * following, and still returns MP_EEMPTY on time; the item arrives whole
 * once the producer runs again. */
static void test_a_stopped_producer_holds_no_getter_past_its_timeout(void **state)
{
    (void)state;
    if (!several_cpus())
        skip();                   /* one CPU: nothing is shown */
    mp_queue *q;
    TU_OK(mp_queue_new(&q, NULL));
    pid_t pid = start_stopped_producer(q);
    double stopped = tu_now();
    unsigned char *buf = malloc(4 * MIB);
    size_t len;
    follows = 0;
    mp__queue_test_hook = count_follows;
    double t0 = tu_now();
    TU_ASSERT_RC(mp_queue_get(q, buf, 4 * MIB, &len, 0.3), MP_EEMPTY);
    double took = tu_now() - t0;
    mp__queue_test_hook = NULL;
    /* It copied the first half out, unless this machine is so slow that the
     * producer's claim was already a second old (then taken for a dead
     * producer's, and nobody follows it). */
    if (t0 - stopped < 0.5)
        assert_true(follows > 0);
    assert_true(took >= 0.29 && took < 0.3 + 0.5 * tu_slow());
    kill(pid, SIGCONT);
    memset(buf, 0, 4 * MIB);
    TU_OK(mp_queue_get(q, buf, 4 * MIB, &len, 10 * tu_slow()));
    assert_int_equal(len, 4 * MIB);
    assert_int_equal(check(buf, len), 77);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);
    assert_true(mp__queue_valid(q));
    free(buf);
    mp_queue_free(q);
}

static int put_one(void *arg)
{
    mp_queue *q = arg;
    unsigned char *item = malloc(2 * MIB);
    fill(item, 2 * MIB, 78);
    return mp_queue_put(q, item, 2 * MIB, 5) == 0 ? 0 : 1;
}

/* A producer killed half-way: its item was never put, so no getter sees
 * any of it, and the next producer's item arrives whole. */
static void test_a_producer_killed_half_way_hands_out_nothing(void **state)
{
    (void)state;
    mp_queue *q;
    TU_OK(mp_queue_new(&q, NULL));
    pid_t pid = start_stopped_producer(q);
    unsigned char *buf = malloc(4 * MIB);
    size_t len;
    TU_ASSERT_RC(mp_queue_get(q, buf, 4 * MIB, &len, 0.05), MP_EEMPTY);  /* follows half */
    kill(pid, SIGKILL);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), -SIGKILL);
    TU_ASSERT_RC(mp_queue_get(q, buf, 4 * MIB, &len, 0.05), MP_EEMPTY);
    assert_true(mp__queue_valid(q));
    assert_int_equal(tu_wait(tu_fork(put_one, q), 10 * tu_slow()), 0);
    memset(buf, 0, 4 * MIB);
    TU_OK(mp_queue_get(q, buf, 4 * MIB, &len, 5 * tu_slow()));
    assert_int_equal(len, 2 * MIB);
    assert_int_equal(check(buf, len), 78);
    TU_ASSERT_RC(mp_queue_get(q, buf, 4 * MIB, &len, 0), MP_EEMPTY);
    assert_true(mp__queue_valid(q));
    free(buf);
    mp_queue_free(q);
}

/* A getter that follows an item too big for its buffer leaves it queued. */
static void test_a_follower_with_a_small_buffer_leaves_the_item(void **state)
{
    (void)state;
    mp_queue *q;
    TU_OK(mp_queue_new(&q, NULL));
    pid_t pid = start_stopped_producer(q);
    unsigned char *small = malloc(MIB), *buf = malloc(4 * MIB);
    size_t len;
    TU_ASSERT_RC(mp_queue_get(q, small, MIB, &len, 0.05), MP_EEMPTY);
    kill(pid, SIGCONT);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);
    TU_ASSERT_RC(mp_queue_get(q, small, MIB, &len, 1), MP_ETOOBIG);
    assert_int_equal(len, 4 * MIB);
    TU_OK(mp_queue_get(q, buf, 4 * MIB, &len, 1));
    assert_int_equal(check(buf, len), 77);
    free(small);
    free(buf);
    mp_queue_free(q);
}

/* Gets one item, sending itself sig while it copies it out (with the
 * consumers' lock held): 0 if it then got item 5 whole. */
static int get_signalled_copying(mp_queue *q, int sig)
{
    unsigned char *buf = malloc(4 * MIB);
    size_t len;
    stop_at = "get_copying";
    stop_signal = sig;
    mp__queue_test_hook = stop_here;
    int rc = mp_queue_get(q, buf, 4 * MIB, &len, sig == SIGKILL ? 5 : MP_FOREVER);
    return rc == 0 && len == 4 * MIB && check(buf, len) == 5 ? 0 : 1;
}

static int get_and_die(void *arg)
{
    return get_signalled_copying(arg, SIGKILL);
}

/* A consumer killed while it copied a big item out leaves the item queued
 * and never slows the producers for long: the next puts, with several
 * items waiting, still go through within their timeouts. */
static void test_a_consumer_killed_copying_stalls_no_producer(void **state)
{
    (void)state;
    mp_queue *q;
    TU_OK(mp_queue_new(&q, NULL));
    unsigned char *item = malloc(MIB), *buf = malloc(MIB);
    size_t len;
    /* Blocks the puts below will reuse: a first touch of shared memory can
     * take milliseconds a page on a loaded machine. */
    for (int i = 0; i < 40; i++)
        TU_OK(mp_queue_put(q, item, MIB, 1));
    for (int i = 0; i < 40; i++)
        TU_OK(mp_queue_get(q, buf, MIB, &len, 1));
    for (uint64_t id = 0; id < 3; id++) {
        fill(item, MIB, id);
        TU_OK(mp_queue_put(q, item, MIB, 1));
    }
    assert_int_equal(tu_wait(tu_fork(get_and_die, q), 10 * tu_slow()), -SIGKILL);
    double putting = 0;
    for (uint64_t id = 3; id < 40; id++) {
        fill(item, MIB, id);
        double t0 = tu_now();
        TU_OK(mp_queue_put(q, item, MIB, 1));
        putting += tu_now() - t0;
    }
    assert_true(putting < 2 * tu_slow());
    /* A _nowait get takes the dead consumer's lock over, though its time
     * (the 10 ms grace) is not longer than the lock's slice. */
    TU_OK(mp_queue_get_nowait(q, buf, MIB, &len));
    assert_int_equal(check(buf, len), 0);
    for (uint64_t id = 1; id < 40; id++) {
        TU_OK(mp_queue_get(q, buf, MIB, &len, 1));
        assert_int_equal(check(buf, len), id);
    }
    assert_true(mp__queue_valid(q));
    free(buf);
    free(item);
    mp_queue_free(q);
}

static int get_and_stop(void *arg)
{
    return get_signalled_copying(arg, SIGSTOP);
}

/* A new queue holding one 4 MiB item (filled with id 5), and the item's
 * bytes, for the caller to free. */
static unsigned char *queue_with_a_big_item(mp_queue **q)
{
    TU_OK(mp_queue_new(q, NULL));
    unsigned char *item = malloc(4 * MIB);
    fill(item, 4 * MIB, 5);
    TU_OK(mp_queue_put(*q, item, 4 * MIB, 1));
    return item;
}

/* A child that stopped while copying out the 4 MiB item at the head of q,
 * holding the consumers' lock. */
static pid_t consumer_stopped_copying(mp_queue *q)
{
    return fork_until_stopped(get_and_stop, q);
}

static void *continue_later(void *arg)
{
    usleep(900 * 1000);
    kill(*(pid_t *)arg, SIGCONT);
    return NULL;
}

/* A getter that waited for the consumers' lock for most of its timeout,
 * and then found the queue empty, waits out the rest of that timeout, not
 * a whole timeout more (1.9 s for a 1 s get, the lock's wait and then the
 * general path's). */
static void test_a_getter_held_for_most_of_its_timeout_waits_no_longer(void **state)
{
    (void)state;
    mp_queue *q;
    unsigned char *item = queue_with_a_big_item(&q);
    pid_t pid = consumer_stopped_copying(q);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, continue_later, &pid), 0);
    mp_buf b = { 0 };
    double t0 = tu_now();
    TU_ASSERT_RC(mp_queue_get_buf(q, &b, 1.0), MP_EEMPTY);     /* the stopped one took it */
    double took = tu_now() - t0;
    print_message("took %.3f s\n", took);
    assert_true(took >= 0.99 && took < 1.0 + 0.5 * tu_slow());
    pthread_join(t, NULL);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);
    assert_true(mp__queue_valid(q));
    mp_buf_free(&b);
    free(item);
    mp_queue_free(q);
}

/* A consumer stopped with the consumers' lock held (a debugger, a job
 * control stop, a frozen cgroup) holds no other consumer past its timeout:
 * a timed get returns MP_EEMPTY on time and a get_nowait at once, as
 * Python's get does when it cannot take its lock. Producers are not held
 * at all. Once it runs again, every item arrives whole and once. */
static void test_a_stopped_consumer_holds_no_getter_past_its_timeout(void **state)
{
    (void)state;
    mp_queue *q;
    unsigned char *item = queue_with_a_big_item(&q);
    TU_OK(mp_queue_put(q, "small", 5, 1));
    pid_t pid = consumer_stopped_copying(q);
    mp_buf b = { 0 };
    double t0 = tu_now();
    TU_ASSERT_RC(mp_queue_get_buf(q, &b, 0.2), MP_EEMPTY);
    double took = tu_now() - t0;
    assert_true(took >= 0.19 && took < 0.2 + 0.5 * tu_slow());
    tu_last_error_has("another consumer held the queue until the timeout", NULL);
    size_t len;
    char small[8];
    t0 = tu_now();
    TU_ASSERT_RC(mp_queue_get_nowait(q, small, sizeof small, &len), MP_EEMPTY);
    assert_true(tu_now() - t0 < 0.01 + 0.5 * tu_slow());
    TU_OK(mp_queue_put(q, "after", 5, 1));                     /* producers go on */
    kill(pid, SIGCONT);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);
    TU_OK(mp_queue_get(q, small, sizeof small, &len, 10 * tu_slow()));
    assert_memory_equal(small, "small", 5);
    TU_OK(mp_queue_get(q, small, sizeof small, &len, 10 * tu_slow()));
    assert_memory_equal(small, "after", 5);
    assert_true(mp_queue_empty(q));
    assert_true(mp__queue_valid(q));
    mp_buf_free(&b);
    free(item);
    mp_queue_free(q);
}

int main(void)
{
    tu_watchdog(300);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_item_arrives_whole_and_once),
        cmocka_unit_test(test_every_item_arrives_whole_and_once_when_bounded),
        cmocka_unit_test(test_a_stopped_producer_holds_no_getter_past_its_timeout),
        cmocka_unit_test(test_a_producer_killed_half_way_hands_out_nothing),
        cmocka_unit_test(test_a_follower_with_a_small_buffer_leaves_the_item),
        cmocka_unit_test(test_a_consumer_killed_copying_stalls_no_producer),
        cmocka_unit_test(test_a_stopped_consumer_holds_no_getter_past_its_timeout),
        cmocka_unit_test(test_a_getter_held_for_most_of_its_timeout_waits_no_longer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
