/* queue_boost.cpp - the workloads of bench/queue.c with Boost: Interprocess's
 * message_queue (contender "boost message_queue") and Lockfree's spsc_queue
 * placed in shared memory (contender "boost spsc_queue", a bare ring: one
 * producer and one consumer, so 1->1 rows and the round trip only).
 *
 * Both are bounded. The _bounded rows give them 1,024 items, as mproc's;
 * the others give them room for 16 MiB of items (262,144 at most), more than
 * a consumer falls behind by here. message_queue's send copies the item in
 * and receive copies it out, under its process-shared mutex and condition
 * variables; spsc_queue's push and pop copy a fixed-size item in and out,
 * and a side with nothing to do spins, yielding the CPU every 64 looks.
 */
#include "peer.h"

#include <boost/interprocess/ipc/message_queue.hpp>
#include <boost/lockfree/spsc_queue.hpp>

#include <climits>
#include <new>
#include <sched.h>
#include <signal.h>
#include <string>

using boost::interprocess::message_queue;

static const char *const MQ = "boost message_queue";
static const char *const SPSC = "boost spsc_queue";

/* Room for 16 MiB of size-byte items, at least 16 and at most 262,144. */
static size_t roomy(size_t size)
{
    size_t n = ((size_t)16 << 20) / size;
    return n < 16 ? 16 : n > 262144 ? 262144 : n;
}

static std::string mq_name(int k)
{
    return "mproc-bench-mq-" + std::to_string(getpid()) + "-" + std::to_string(k);
}

/* Removes a queue a killed run may have left under name; returns name. */
static const char *fresh(const std::string &name)
{
    message_queue::remove(name.c_str());
    return name.c_str();
}

/* A message_queue made for one repetition and removed after it. */
struct Mq {
    std::string name;
    message_queue q;
    Mq(int k, size_t cap, size_t size)
        : name(mq_name(k)), q(boost::interprocess::create_only, fresh(name), cap, size) {}
    ~Mq() { message_queue::remove(name.c_str()); }
    void put(const char *p, size_t n) { q.send(p, n, 0); }
    size_t get(char *p, size_t cap)
    {
        message_queue::size_type got;
        unsigned prio;
        q.receive(p, cap, got, prio);
        return got;
    }
};

template <size_t S> struct Item { char b[S]; };

static inline void backoff(unsigned &looks)
{
    if (++looks % 64 == 0)
        sched_yield();
    else
        __builtin_ia32_pause();
}

/* A spsc_queue of N items of S bytes in MAP_SHARED memory (its ring is
 * inside the object: no pointer, so it works at any address). */
template <size_t S, size_t N> struct Spsc {
    typedef boost::lockfree::spsc_queue<Item<S>, boost::lockfree::capacity<N>> ring;
    ring *r;
    Spsc(int, size_t, size_t)
    {
        void *mem = peer_shared(sizeof(ring));
        if (!mem)
            throw std::bad_alloc();
        r = new (mem) ring();
    }
    ~Spsc()
    {
        r->~ring();
        munmap(r, sizeof(ring));
    }
    void put(const char *p, size_t)
    {
        unsigned looks = 0;
        while (!r->push(*reinterpret_cast<const Item<S> *>(p)))
            backoff(looks);
    }
    size_t get(char *p, size_t)
    {
        unsigned looks = 0;
        while (!r->pop(*reinterpret_cast<Item<S> *>(p)))
            backoff(looks);
        return S;
    }
};

/* ------------------------------------------------------------------ 1 -> 1 */

/* Seconds from the first item's arrival to the last's, n items from a
 * child process; NAN when an item is lost or wrong. */
template <class Q> static double one_to_one_secs(const peer_job *job)
{
    const peer_job &j = *job;
    Q q(0, j.cap, j.size);
    pid_t pid = fork();
    if (pid == 0) {
        try {
            char *item = (char *)malloc(j.size);
            memset(item, 'x', j.size);
            for (long i = 0; i < j.n; i++) {
                peer_stamp(item, j.size, i);
                q.put(item, j.size);
            }
            _exit(0);
        } catch (...) {
            _exit(1);
        }
    }
    char *buf = (char *)malloc(j.size);     /* after the fork, as bench/queue.c */
    memset(buf, 0, j.size);
    double t0 = 0;
    bool ok = pid > 0;
    for (long i = 0; i < j.n && ok; i++) {
        ok = q.get(buf, j.size) == j.size && peer_check(buf, j.size, i);
        if (i == 0)
            t0 = bench_now();
    }
    double t = bench_now() - t0;
    if (!ok && pid > 0)
        kill(pid, SIGKILL);
    ok = pid > 0 && peer_reap(pid) == 0 && ok;
    free(buf);
    return ok ? t : NAN;
}

/* ------------------------------------------------------------------ round trip */

template <class Q> static double roundtrip_us(void *arg)
{
    long n = *(long *)arg;
    Q ping(0, Q_BOUND, Q_SMALL), pong(1, Q_BOUND, Q_SMALL);
    const long end = LONG_MIN;
    pid_t pid = fork();
    if (pid == 0) {
        try {
            char b[Q_SMALL];
            for (;;) {
                size_t len = ping.get(b, sizeof b);
                if (peer_check(b, len, end))
                    _exit(0);
                pong.put(b, len);
            }
        } catch (...) {
            _exit(1);
        }
    }
    char msg[Q_SMALL] = "ping";
    bool ok = pid > 0;
    double t0 = 0;
    for (long i = -Q_WARMUP; i < n && ok; i++) {
        if (i == 0)
            t0 = bench_now();
        peer_stamp(msg, sizeof msg, i);
        ping.put(msg, sizeof msg);
        ok = pong.get(msg, sizeof msg) == sizeof msg && peer_check(msg, sizeof msg, i);
    }
    double us = bench_per_op_ns(t0, n) / 1e3;
    if (ok) {
        peer_stamp(msg, sizeof msg, end);
        ping.put(msg, sizeof msg);
    } else if (pid > 0) {
        kill(pid, SIGKILL);
    }
    ok = pid > 0 && peer_reap(pid) == 0 && ok;
    return ok ? us : NAN;
}

/* ------------------------------------------------------------------ 4 x 4 */

enum { P = 4, C = 4 };

/* Four producers and four consumers on one message_queue; a 1-byte end mark
 * per consumer, sent after every producer has finished. */
static double mq_many_to_many(void *arg)
{
    long per = *(long *)arg;
    Mq q(0, roomy(sizeof(uint64_t)), sizeof(uint64_t));
    peer_tally *t = (peer_tally *)peer_shared(C * sizeof *t);
    if (!t)
        return NAN;
    pid_t prod[P], cons[C];
    double t0 = bench_now();
    for (int c = 0; c < C; c++)
        if ((cons[c] = fork()) == 0) {
            try {
                uint64_t x;
                while (q.get((char *)&x, sizeof x) == sizeof x) {
                    t[c].count++;
                    t[c].sum += x;
                }
                _exit(0);
            } catch (...) {
                _exit(1);
            }
        }
    for (int p = 0; p < P; p++)
        if ((prod[p] = fork()) == 0) {
            try {
                uint64_t first = (uint64_t)p * (uint64_t)per + 1;
                for (uint64_t x = first; x < first + (uint64_t)per; x++)
                    q.put((const char *)&x, sizeof x);
                _exit(0);
            } catch (...) {
                _exit(1);
            }
        }
    int bad = 0;
    for (int p = 0; p < P; p++)
        bad |= peer_reap(prod[p]);
    for (int c = 0; c < C; c++)
        q.put("", 1);
    for (int c = 0; c < C; c++)
        bad |= peer_reap(cons[c]);
    uint64_t n = (uint64_t)P * (uint64_t)per;
    double rate = bench_rate(t0, (double)n);
    bad |= !peer_tally_ok(t, C, n);
    munmap(t, C * sizeof *t);
    if (bad) {
        fprintf(stderr, "peer boost: 4x4 lost or duplicated items\n");
        return NAN;
    }
    return rate;
}

/* ------------------------------------------------------------------ main */

/* The 1->1 rows of contender Q: unbounded (room for 16 MiB) and bounded. */
template <class Q, class Qmax> static void one_to_one_rows(int argc, char **argv, size_t size,
                                                           long n, const char *id,
                                                           const char *id_max, const char *peer)
{
    peer_job roomy_job = { size, n, roomy(size), one_to_one_secs<Q> },
             bounded = { size, n, Q_BOUND, one_to_one_secs<Qmax> };
    peer_row(argc, argv, id, 5, peer_items_per_sec, &roomy_job, "items/s", BENCH_HIGHER, peer);
    peer_row(argc, argv, id_max, 5, peer_items_per_sec, &bounded, "items/s", BENCH_HIGHER, peer);
}

int main(int argc, char **argv)
{
    peer_job mib = { Q_MIB, Q_MIB_N, roomy(Q_MIB), one_to_one_secs<Mq> };
    long roundtrips = Q_ROUNDTRIPS, per_producer = Q_4X4_PER_PRODUCER;
    const char *b64 = "queue_1to1_64B_bounded", *b4k = "queue_1to1_4KiB_bounded";
    try {
        one_to_one_rows<Mq, Mq>(argc, argv, Q_SMALL, Q_SMALL_N, "queue_1to1_64B", b64, MQ);
        one_to_one_rows<Spsc<Q_SMALL, 262144>, Spsc<Q_SMALL, Q_BOUND>>(
            argc, argv, Q_SMALL, Q_SMALL_N, "queue_1to1_64B", b64, SPSC);
        one_to_one_rows<Mq, Mq>(argc, argv, Q_PAGE, Q_PAGE_N, "queue_1to1_4KiB", b4k, MQ);
        one_to_one_rows<Spsc<Q_PAGE, 4096>, Spsc<Q_PAGE, Q_BOUND>>(
            argc, argv, Q_PAGE, Q_PAGE_N, "queue_1to1_4KiB", b4k, SPSC);
        peer_row(argc, argv, "queue_1to1_1MiB", 5, peer_gb_per_sec, &mib, "GB/s", BENCH_HIGHER, MQ);
        peer_row(argc, argv, "queue_roundtrip", 5, roundtrip_us<Mq>, &roundtrips, "us",
                 BENCH_LOWER, MQ);
        peer_row(argc, argv, "queue_roundtrip", 5, roundtrip_us<Spsc<Q_SMALL, Q_BOUND>>,
                 &roundtrips, "us", BENCH_LOWER, SPSC);
        peer_row(argc, argv, "queue_4x4", 3, mq_many_to_many, &per_producer, "items/s",
                 BENCH_HIGHER, MQ);
    } catch (const std::exception &e) {
        fprintf(stderr, "peer boost: %s\n", e.what());
        return 1;
    }
    return 0;
}
