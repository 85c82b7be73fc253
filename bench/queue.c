/* queue.c - queue throughput, round trip, 4x4 and idle cost (bench/queue.py
 * runs the same workloads with Python's multiprocessing).
 *
 * Producers and consumers are separate processes (fork); every row is the
 * median of several repetitions (bench.h). The consumer checks each item's
 * first bytes (its number). The _bounded rows cap the queue at 1,024 items. copy_64MiB is no queue: one
 * process copying 64 MiB between two buffers, memcpy on both sides, the
 * bandwidth one core has here and so the scale of queue_1to1_64MiB.
 * queue_roundtrip is the mean of 100,000 round trips of a 64-byte item over
 * two queues; queue_roundtrip_p50 and _p99 time each round trip on its own
 * (a clock read each, ~45 ns) and give, per repetition, their median and
 * 99th percentile. queue_roundtrip_floor is no queue: two processes handing
 * a counter back and forth through two cache lines of shared memory, both
 * spinning, what no round trip can beat on this machine at this moment
 * (where the host places the two virtual CPUs moves it severalfold).
 */
#include <mproc.h>

#include "bench.h"

#include <stdatomic.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_queue: %s: %s\n", what, mp_strerror(rc));
    exit(1);
}

static int reap(pid_t pid)
{
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ------------------------------------------------------------------ 1 -> 1 */

struct one_to_one { size_t size; long n; size_t maxsize; /* 0: unbounded */ };

static void produce(mp_queue *q, size_t size, long n)
{
    char *item = malloc(size ? size : 1);
    memset(item, 'x', size);
    for (long i = 0; i < n; i++) {
        memcpy(item, &i, size < sizeof i ? size : sizeof i);
        int rc = mp_queue_put(q, item, size, MP_FOREVER);
        if (rc)
            die("put", rc);
    }
    free(item);
}

/* Seconds to move n - 1 items of size bytes from a child process to this
 * one: timed from the first item's arrival to the last's, so neither the
 * producer's start nor the building of its item (30 ms for 64 MiB, the
 * time of three items through the queue) counts as queue time. bench/queue.py
 * times Python's queue the same way. */
static double one_to_one_secs(const struct one_to_one *w)
{
    size_t size = w->size;
    long n = w->n;
    mp_queue_opts opts = { .maxsize = w->maxsize };
    mp_queue *q;
    int rc = mp_queue_new(&q, &opts);
    if (rc)
        die("new", rc);
    mp_buf buf = { 0 };
    pid_t pid = fork();
    if (pid == 0) {
        produce(q, size, n);
        _exit(0);
    }
    /* The receive buffer is made after the fork: made before, the fork would
     * leave its pages copy-on-write, a cost of forking, not of the queue. */
    mp_buf_reserve(&buf, size);
    memset(buf.data, 0, size);
    double t0 = 0;
    for (long i = 0; i < n; i++) {
        if ((rc = mp_queue_get_buf(q, &buf, MP_FOREVER)) != 0)
            die("get", rc);
        if (memcmp(buf.data, &i, size < sizeof i ? size : sizeof i) != 0)
            die("get", MP_EINVAL);          /* not the item put */
        if (i == 0)
            t0 = bench_now();
    }
    double t = bench_now() - t0;
    reap(pid);
    mp_buf_free(&buf);
    mp_queue_free(q);
    return t;
}

static double items_per_sec(void *arg)
{
    struct one_to_one *w = arg;
    return (double)(w->n - 1) / one_to_one_secs(w);
}

static double gb_per_sec(void *arg)
{
    struct one_to_one *w = arg;
    return (double)w->size * (double)(w->n - 1) / one_to_one_secs(w) / 1e9;
}

/* The ceiling of the 64 MiB row: one process copying 64 MiB from one buffer
 * to another, the most one core moves here. A queue needs at least one copy
 * (put copies the caller's bytes); mp_queue_get into a buffer makes two, run
 * on two cores at once. */
static double copy_gb_per_sec(void *arg)
{
    size_t size = *(size_t *)arg;
    char *src = malloc(size), *dst = malloc(size);
    if (!src || !dst)
        die("malloc", MP_ENOMEM);
    memset(src, 'x', size);
    memset(dst, 'y', size);   /* not 0: malloc + zeroing may become calloc, pages untouched */
    double t0 = bench_now();
    for (int i = 0; i < 8; i++) {
        memcpy(dst, src, size);
        __asm__ volatile("" : : "r"(dst) : "memory");   /* keep every copy */
    }
    double t = bench_now() - t0;
    free(src);
    free(dst);
    return 8.0 * (double)size / t / 1e9;
}

/* ------------------------------------------------------------------ round trip */

/* Microseconds per round trip, n of them after a thousand to warm up; with
 * lat, each one's own time in ns goes there too (a clock read per round
 * trip, ~45 ns here, so only the percentile rows pay for it). */
static double roundtrip_run(long n, double *lat)
{
    mp_queue *ping, *pong;
    mp_queue_new(&ping, NULL);
    mp_queue_new(&pong, NULL);
    pid_t pid = fork();
    if (pid == 0) {
        char b[64];
        size_t len;
        while (mp_queue_get(ping, b, sizeof b, &len, MP_FOREVER) == 0)
            mp_queue_put(pong, b, len, MP_FOREVER);
        _exit(0);
    }
    char msg[64] = "ping";
    size_t len;
    double t0 = 0, t = 0;
    for (long i = -1000; i < n; i++) {    /* the first thousand warm up */
        if (i == 0)
            t0 = t = bench_now();
        mp_queue_put(ping, msg, sizeof msg, MP_FOREVER);
        mp_queue_get(pong, msg, sizeof msg, &len, MP_FOREVER);
        if (lat && i >= 0) {
            double now = bench_now();
            lat[i] = (now - t) * 1e9;
            t = now;
        }
    }
    double us = bench_per_op_ns(t0, n) / 1e3;
    mp_queue_shutdown(ping);
    reap(pid);
    mp_queue_free(ping);
    mp_queue_free(pong);
    return us;
}

static double roundtrip_us(void *arg)
{
    return roundtrip_run(*(long *)arg, NULL);
}

/* The queue_roundtrip_p50 and _p99 rows: per repetition, the median and
 * the 99th percentile of the single round trips; the medians of those. */
static void rows_roundtrip_percentiles(long n)
{
    double p50[64], p99[64], *lat = malloc((size_t)n * sizeof *lat);
    int reps = bench_reps(5) > 64 ? 64 : bench_reps(5);
    for (int r = 0; r < reps; r++) {
        roundtrip_run(n, lat);
        qsort(lat, (size_t)n, sizeof *lat, bench_cmp_double_);
        p50[r] = lat[n / 2] / 1e3;
        p99[r] = lat[n * 99 / 100] / 1e3;
    }
    free(lat);
    bench_row("queue_roundtrip_p50", bench_median(p50, reps), "us", BENCH_LOWER);
    bench_row("queue_roundtrip_p99", bench_median(p99, reps), "us", BENCH_LOWER);
}

/* The floor: microseconds per round trip of two processes handing a
 * counter back and forth through two cache lines of shared memory, both
 * spinning, nothing else; what no queue can beat here at this moment. */
static double roundtrip_floor_us(void *arg)
{
    long n = *(long *)arg;
    struct line { _Alignas(64) _Atomic long v; };
    struct line *w = mp_shared_alloc(2 * sizeof *w);
    if (!w)
        return NAN;
    atomic_init(&w[0].v, 0);
    atomic_init(&w[1].v, 0);
    pid_t pid = fork();
    if (pid == 0) {
        for (long i = 1; i <= n + 1000; i++) {
            while (atomic_load_explicit(&w[0].v, memory_order_acquire) != i)
                bench_pause();
            atomic_store_explicit(&w[1].v, i, memory_order_release);
        }
        _exit(0);
    }
    double t0 = 0;
    for (long i = 1; pid > 0 && i <= n + 1000; i++) {
        if (i == 1001)
            t0 = bench_now();
        atomic_store_explicit(&w[0].v, i, memory_order_release);
        while (atomic_load_explicit(&w[1].v, memory_order_acquire) != i)
            bench_pause();
    }
    double us = bench_per_op_ns(t0, n) / 1e3;
    bool ok = pid > 0 && reap(pid) == 0;
    mp_shared_free(w);
    return ok ? us : NAN;
}

/* ------------------------------------------------------------------ 4 x 4 */

enum { P = 4, C = 4 };

struct tally { uint64_t count, sum; };

static int consume_all(mp_queue *q, struct tally *t)
{
    uint64_t x;
    size_t len;
    int rc;
    while ((rc = mp_queue_get(q, &x, sizeof x, &len, MP_FOREVER)) == 0) {
        t->count++;
        t->sum += x;
    }
    return rc == MP_EEOF ? 0 : 1;
}

static void produce_ids(mp_queue *q, uint64_t first, long n)
{
    for (uint64_t x = first; x < first + (uint64_t)n; x++)
        mp_queue_put(q, &x, sizeof x, MP_FOREVER);
}

/* Items/s through 4 producer and 4 consumer processes; every item must
 * arrive exactly once (count and checksum), or the run fails. */
static double many_to_many(void *arg)
{
    long per = *(long *)arg;
    mp_queue *q;
    mp_queue_new(&q, NULL);
    struct tally *t = mp_shared_alloc(C * sizeof *t);
    pid_t prod[P], cons[C];
    double t0 = bench_now();
    for (int c = 0; c < C; c++)
        if ((cons[c] = fork()) == 0)
            _exit(consume_all(q, &t[c]));
    for (int p = 0; p < P; p++)
        if ((prod[p] = fork()) == 0) {
            produce_ids(q, (uint64_t)p * (uint64_t)per + 1, per);
            _exit(0);
        }
    for (int p = 0; p < P; p++)
        reap(prod[p]);
    mp_queue_shutdown(q);
    int bad = 0;
    for (int c = 0; c < C; c++)
        bad |= reap(cons[c]);
    uint64_t n = (uint64_t)P * (uint64_t)per, count = 0, sum = 0;
    double rate = bench_rate(t0, (double)n);
    for (int c = 0; c < C; c++) {
        count += t[c].count;
        sum += t[c].sum;
    }
    if (bad || count != n || sum != n * (n + 1) / 2) {
        fprintf(stderr, "bench_queue: 4x4 lost or duplicated items\n");
        exit(1);
    }
    mp_shared_free(t);
    mp_queue_free(q);
    return rate;
}

/* ------------------------------------------------------------------ idle */

/* Three consumers block on an empty queue for 2 s at once: the median of
 * their CPU use (getrusage of each child) over the wall time. */
static void row_idle_cpu(void)
{
    mp_queue *q;
    mp_queue_new(&q, NULL);
    double t0 = bench_now(), v[3];
    pid_t pid[3];
    for (int i = 0; i < 3; i++)
        if ((pid[i] = fork()) == 0) {
            char b[8];
            size_t len;
            _exit(mp_queue_get(q, b, sizeof b, &len, 2.0) == MP_EEMPTY ? 0 : 1);
        }
    for (int i = 0; i < 3; i++) {
        struct rusage ru;
        int st;
        wait4(pid[i], &st, 0, &ru);
        double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
        v[i] = cpu / (bench_now() - t0) * 100.0;
    }
    bench_row("queue_idle_cpu", bench_median(v, 3), "%", BENCH_LOWER);
    mp_queue_free(q);
}

int main(int argc, char **argv)
{
    struct one_to_one small = { 64, 2000000, 0 }, page = { 4096, 400000, 0 },
                      small_max = { 64, 2000000, 1024 }, page_max = { 4096, 400000, 1024 },
                      mib = { (size_t)1 << 20, 1000, 0 }, huge = { (size_t)64 << 20, 16, 0 };
    long roundtrips = 100000, per_producer = 250000;
    if (bench_selected(argc, argv, "queue_1to1_64B"))
        bench_row("queue_1to1_64B", bench_median_of(bench_reps(5), items_per_sec, &small),
                  "items/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "queue_1to1_4KiB"))
        bench_row("queue_1to1_4KiB", bench_median_of(bench_reps(5), items_per_sec, &page),
                  "items/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "queue_1to1_64B_bounded"))
        bench_row("queue_1to1_64B_bounded", bench_median_of(bench_reps(5), items_per_sec, &small_max),
                  "items/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "queue_1to1_4KiB_bounded"))
        bench_row("queue_1to1_4KiB_bounded", bench_median_of(bench_reps(5), items_per_sec, &page_max),
                  "items/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "queue_1to1_1MiB"))
        bench_row("queue_1to1_1MiB", bench_median_of(bench_reps(5), gb_per_sec, &mib),
                  "GB/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "queue_1to1_64MiB"))
        bench_row("queue_1to1_64MiB", bench_median_of(bench_reps(3), gb_per_sec, &huge),
                  "GB/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "copy_64MiB"))
        bench_row("copy_64MiB", bench_median_of(bench_reps(5), copy_gb_per_sec, &huge.size),
                  "GB/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "queue_roundtrip"))
        bench_row("queue_roundtrip", bench_median_of(bench_reps(5), roundtrip_us, &roundtrips),
                  "us", BENCH_LOWER);
    if (bench_selected(argc, argv, "queue_roundtrip_p50") ||
        bench_selected(argc, argv, "queue_roundtrip_p99"))
        rows_roundtrip_percentiles(roundtrips);
    if (bench_selected(argc, argv, "queue_roundtrip_floor"))
        bench_row("queue_roundtrip_floor", bench_median_of(bench_reps(5), roundtrip_floor_us,
                                                           &roundtrips), "us", BENCH_LOWER);
    if (bench_selected(argc, argv, "queue_4x4"))
        bench_row("queue_4x4", bench_median_of(bench_reps(3), many_to_many, &per_producer),
                  "items/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "queue_idle_cpu"))
        row_idle_cpu();
    return 0;
}
