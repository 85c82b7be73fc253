/* queue.c - queue throughput, round trip, 4x4 and idle cost (bench/queue.py
 * runs the same workloads with Python's multiprocessing).
 *
 * Producers and consumers are separate processes (fork); each row is the
 * median of several repetitions and prints "<id>\t<value>\t<unit>\t<better>".
 */
#include <mproc.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REPS 5

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

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

/* Seconds to move n items of size bytes from a child process to this one. */
static double one_to_one(size_t size, long n)
{
    mp_queue *q;
    int rc = mp_queue_new(&q, NULL);
    if (rc)
        die("new", rc);
    mp_buf buf = { 0 };
    mp_buf_reserve(&buf, size);
    memset(buf.data, 0, size);            /* fault the pages in before timing */
    double t0 = now();
    pid_t pid = fork();
    if (pid == 0) {
        produce(q, size, n);
        _exit(0);
    }
    for (long i = 0; i < n; i++)
        if ((rc = mp_queue_get_buf(q, &buf, MP_FOREVER)) != 0)
            die("get", rc);
    double t = now() - t0;
    reap(pid);
    mp_buf_free(&buf);
    mp_queue_free(q);
    return t;
}

static void row_rate(const char *id, size_t size, long n)
{
    double v[REPS];
    for (int r = 0; r < REPS; r++)
        v[r] = (double)n / one_to_one(size, n);
    printf("%s\t%.0f\titems/s\thigher\n", id, median(v, REPS));
    fflush(stdout);
}

static void row_bandwidth(void)
{
    size_t size = (size_t)64 << 20;
    long n = 16;
    double v[3];
    for (int r = 0; r < 3; r++)
        v[r] = (double)size * (double)n / one_to_one(size, n) / 1e9;
    printf("queue_1to1_64MiB\t%.2f\tGB/s\thigher\n", median(v, 3));
    fflush(stdout);
}

/* ------------------------------------------------------------------ round trip */

static void row_roundtrip(void)
{
    long n = 100000;
    double v[REPS];
    for (int r = 0; r < REPS; r++) {
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
        for (int i = 0; i < 1000; i++) {      /* warm up */
            mp_queue_put(ping, msg, sizeof msg, MP_FOREVER);
            mp_queue_get(pong, msg, sizeof msg, &len, MP_FOREVER);
        }
        double t0 = now();
        for (long i = 0; i < n; i++) {
            mp_queue_put(ping, msg, sizeof msg, MP_FOREVER);
            mp_queue_get(pong, msg, sizeof msg, &len, MP_FOREVER);
        }
        v[r] = (now() - t0) / (double)n * 1e6;
        mp_queue_shutdown(ping);
        reap(pid);
        mp_queue_free(ping);
        mp_queue_free(pong);
    }
    printf("queue_roundtrip\t%.2f\tus\tlower\n", median(v, REPS));
    fflush(stdout);
}

/* ------------------------------------------------------------------ 4 x 4 */

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

static void row_4x4(void)
{
    enum { P = 4, C = 4 };
    long per = 250000;
    double v[3];
    for (int r = 0; r < 3; r++) {
        mp_queue *q;
        mp_queue_new(&q, NULL);
        struct tally *t = mp_shared_alloc(C * sizeof *t);
        pid_t prod[P], cons[C];
        double t0 = now();
        for (int c = 0; c < C; c++)
            if ((cons[c] = fork()) == 0)
                _exit(consume_all(q, &t[c]));
        for (int p = 0; p < P; p++) {
            if ((prod[p] = fork()) == 0) {
                for (uint64_t i = 0; i < (uint64_t)per; i++) {
                    uint64_t x = (uint64_t)p * (uint64_t)per + i + 1;
                    mp_queue_put(q, &x, sizeof x, MP_FOREVER);
                }
                _exit(0);
            }
        }
        for (int p = 0; p < P; p++)
            reap(prod[p]);
        mp_queue_shutdown(q);
        int bad = 0;
        for (int c = 0; c < C; c++)
            bad |= reap(cons[c]);
        double el = now() - t0;
        uint64_t n = (uint64_t)P * (uint64_t)per, count = 0, sum = 0;
        for (int c = 0; c < C; c++) {
            count += t[c].count;
            sum += t[c].sum;
        }
        if (bad || count != n || sum != n * (n + 1) / 2) {
            fprintf(stderr, "bench_queue: 4x4 lost or duplicated items\n");
            exit(1);
        }
        v[r] = (double)n / el;
        mp_shared_free(t);
        mp_queue_free(q);
    }
    printf("queue_4x4\t%.0f\titems/s\thigher\n", median(v, 3));
    fflush(stdout);
}

/* ------------------------------------------------------------------ idle */

/* Three consumers block on an empty queue for 2 s at once; the median of
 * their CPU use (getrusage of each child) over the wall time. */
static void row_idle_cpu(void)
{
    mp_queue *q;
    mp_queue_new(&q, NULL);
    double t0 = now(), v[3];
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
        v[i] = cpu / (now() - t0) * 100.0;
    }
    printf("queue_idle_cpu\t%.3f\t%%\tlower\n", median(v, 3));
    mp_queue_free(q);
}

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : "";
    if (!*only || strstr("queue_1to1_64B", only))
        row_rate("queue_1to1_64B", 64, 2000000);
    if (!*only || strstr("queue_1to1_4KiB", only))
        row_rate("queue_1to1_4KiB", 4096, 400000);
    if (!*only || strstr("queue_1to1_64MiB", only))
        row_bandwidth();
    if (!*only || strstr("queue_roundtrip", only))
        row_roundtrip();
    if (!*only || strstr("queue_4x4", only))
        row_4x4();
    if (!*only || strstr("queue_idle_cpu", only))
        row_idle_cpu();
    return 0;
}
