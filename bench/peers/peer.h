/* peer.h - what the contender programs in bench/peers/ share: the workload
 * shapes of bench/queue.c, bench/conn.c and bench/sync.c, memory shared
 * across fork, reaping, framing on a stream, and the rows. C and C++ (the
 * Boost contender includes it too).
 *
 * A contender does the work mproc's row does: the same item sizes and
 * counts, processes made by fork (never threads), every item copied in on
 * the producer's side and out on the consumer's, its first bytes (the item's
 * number) checked, and the same clock (bench.h): 1->1 rows time from the
 * first item's arrival to the last's; round trips warm up with a thousand
 * before the clock starts; 4x4 counts and sums every item. Rows go out with
 * bench_peer_row, the contender's name in the fifth field.
 */
#ifndef MPROC_BENCH_PEER_H
#define MPROC_BENCH_PEER_H

#include "bench.h"

#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* bench/queue.c's workloads: item size and count per row. */
#define Q_SMALL 64
#define Q_SMALL_N 2000000L
#define Q_PAGE 4096
#define Q_PAGE_N 400000L
#define Q_MIB ((size_t)1 << 20)
#define Q_MIB_N 1000L
#define Q_BOUND 1024                  /* items, the _bounded rows */
#define Q_ROUNDTRIPS 100000L
#define Q_WARMUP 1000L
#define Q_4X4_PER_PRODUCER 250000L    /* 8-byte item numbers, 4 producers, 4 consumers */

/* bench/conn.c's workloads: messages per row. */
#define C_SMALL_N 200000L              /* 64 B one way */
#define C_RTT_N 20000L                 /* 64 B round trips */
#define C_MIB_N 500L                   /* 1 MiB one way */

/* bench/sync.c's workloads. */
#define S_UNCONTENDED 2000000L
#define S_CONTENDED 1000000L          /* acquires per process, two processes */

/* Zeroed memory shared with the children forked after the call; NULL when
 * there is none. */
static inline void *peer_shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Waits for pid; 0 when it exited with status 0. */
static inline int peer_reap(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* Writes item number i into the item's first bytes. */
static inline void peer_stamp(char *item, size_t size, long i)
{
    memcpy(item, &i, size < sizeof i ? size : sizeof i);
}

/* True when the item's first bytes hold number i. */
static inline bool peer_check(const char *item, size_t size, long i)
{
    return memcmp(item, &i, size < sizeof i ? size : sizeof i) == 0;
}

/* Reads exactly n bytes from a stream; false on EOF or error. */
static inline bool peer_read_all(int fd, void *p, size_t n)
{
    char *c = (char *)p;
    while (n > 0) {
        ssize_t k = read(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        c += k;
        n -= (size_t)k;
    }
    return true;
}

/* Writes one framed message on a stream: an 8-byte length, then the bytes,
 * in one writev where the socket takes it all. */
static inline bool peer_send_frame(int fd, const void *msg, size_t size)
{
    uint64_t len = size;
    struct iovec iov[2] = { { &len, sizeof len }, { (void *)msg, size } };
    int first = 0;
    while (first < 2) {
        ssize_t k = writev(fd, iov + first, 2 - first);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        size_t done = (size_t)k;
        while (first < 2 && done >= iov[first].iov_len)
            done -= iov[first++].iov_len;
        if (first < 2) {
            iov[first].iov_base = (char *)iov[first].iov_base + done;
            iov[first].iov_len -= done;
        }
    }
    return true;
}

/* Reads one framed message into buf (cap bytes): its length, or -1. */
static inline ssize_t peer_recv_frame(int fd, void *buf, size_t cap)
{
    uint64_t len;
    if (!peer_read_all(fd, &len, sizeof len) || len > cap || !peer_read_all(fd, buf, (size_t)len))
        return -1;
    return (ssize_t)len;
}

/* One 1->1 workload; secs is the contender's run of it: seconds from the
 * first item's arrival to the last's, NAN on failure. */
struct peer_job {
    size_t size;
    long n;
    size_t cap;                       /* for a bounded contender: items */
    double (*secs)(const struct peer_job *j);
};

static inline double peer_items_per_sec(void *arg)
{
    const struct peer_job *j = (const struct peer_job *)arg;
    return (double)(j->n - 1) / j->secs(j);
}

static inline double peer_gb_per_sec(void *arg)
{
    const struct peer_job *j = (const struct peer_job *)arg;
    return (double)j->size * (double)(j->n - 1) / j->secs(j) / 1e9;
}

/* One row, when selected: the median of reps runs of rep(arg). */
static inline void peer_row(int argc, char **argv, const char *id, int reps,
                            double (*rep)(void *), void *arg, const char *unit, bool higher,
                            const char *peer)
{
    if (bench_selected(argc, argv, id))
        bench_peer_row(id, bench_median_of(bench_reps(reps), rep, arg), unit, higher, peer);
}

/* 4x4's count and checksum: items 1..n, each exactly once, over the
 * consumers' tallies. */
struct peer_tally { uint64_t count, sum; };

static inline bool peer_tally_ok(const struct peer_tally *t, int consumers, uint64_t n)
{
    uint64_t count = 0, sum = 0;
    for (int c = 0; c < consumers; c++) {
        count += t[c].count;
        sum += t[c].sum;
    }
    return count == n && sum == n * (n + 1) / 2;
}

/* The rows of a contender that does every unbounded queue workload. */
struct peer_queue {
    const char *name;
    double (*secs)(const struct peer_job *j);  /* 1->1 */
    double (*roundtrip_us)(void *n);           /* long *: round trips */
    double (*many_to_many)(void *per);         /* long *: items per producer */
};

static inline void peer_queue_rows(int argc, char **argv, const struct peer_queue *q)
{
    struct peer_job small = { Q_SMALL, Q_SMALL_N, 0, q->secs },
                    page = { Q_PAGE, Q_PAGE_N, 0, q->secs }, mib = { Q_MIB, Q_MIB_N, 0, q->secs };
    long roundtrips = Q_ROUNDTRIPS, per_producer = Q_4X4_PER_PRODUCER;
    peer_row(argc, argv, "queue_1to1_64B", 5, peer_items_per_sec, &small, "items/s", BENCH_HIGHER,
             q->name);
    peer_row(argc, argv, "queue_1to1_4KiB", 5, peer_items_per_sec, &page, "items/s", BENCH_HIGHER,
             q->name);
    peer_row(argc, argv, "queue_1to1_1MiB", 5, peer_gb_per_sec, &mib, "GB/s", BENCH_HIGHER, q->name);
    peer_row(argc, argv, "queue_roundtrip", 5, q->roundtrip_us, &roundtrips, "us", BENCH_LOWER,
             q->name);
    peer_row(argc, argv, "queue_4x4", 3, q->many_to_many, &per_producer, "items/s", BENCH_HIGHER,
             q->name);
}

#endif
