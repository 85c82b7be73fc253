/* arena.c - big items and the arena's memory: 1 MiB items through the queue
 * beside the same bytes through a plain socketpair, and a 64 MiB item
 * handed over with put_shared + get_shared (bench/arena.py runs the Python
 * peers: multiprocessing.Queue, a socketpair, Queue.put + get of 64 MiB).
 *
 * arena_queue_1MiB and arena_socketpair_1MiB time one producer process and this
 * one from the first item's arrival to the last's, as bench/queue.c does;
 * the consumer reads each item into one buffer (mp_queue_get into it, recv
 * of the whole item). shared_64MiB is one process: put_shared of a block
 * already filled, then get_shared, the price of passing 64 MiB.
 */
#include <mproc.h>

#include "bench.h"

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)
#define ITEMS 2000

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_arena: %s: %s\n", what, mp_strerror(rc));
    exit(1);
}

static double queue_1mib(void *arg)
{
    (void)arg;
    mp_queue *q;
    int rc = mp_queue_new(&q, &(mp_queue_opts){ .maxsize = 64 });
    if (rc)
        die("new", rc);
    pid_t pid = fork();
    if (pid == 0) {
        char *item = malloc(MIB);
        memset(item, 'x', MIB);
        for (long i = 0; i < ITEMS; i++)
            if (mp_queue_put(q, item, MIB, MP_FOREVER) != 0)
                _exit(1);
        _exit(0);
    }
    char *buf = malloc(MIB);
    memset(buf, 0, MIB);
    double t0 = 0;
    size_t len;
    for (long i = 0; i < ITEMS; i++) {
        if ((rc = mp_queue_get(q, buf, MIB, &len, MP_FOREVER)) != 0)
            die("get", rc);
        if (i == 0)
            t0 = bench_now();
    }
    double t = bench_now() - t0;
    waitpid(pid, NULL, 0);
    free(buf);
    mp_queue_free(q);
    return (double)MIB * (ITEMS - 1) / t / 1e9;
}

static bool recv_all(int fd, char *p, size_t n)
{
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r <= 0)
            return false;
        p += r, n -= (size_t)r;
    }
    return true;
}

static double socketpair_1mib(void *arg)
{
    (void)arg;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        die("socketpair", -errno);
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        char *item = malloc(MIB);
        memset(item, 'x', MIB);
        for (long i = 0; i < ITEMS; i++)
            for (size_t off = 0; off < MIB;) {
                ssize_t w = send(sv[1], item + off, MIB - off, 0);
                if (w <= 0)
                    _exit(1);
                off += (size_t)w;
            }
        _exit(0);
    }
    close(sv[1]);
    char *buf = malloc(MIB);
    memset(buf, 0, MIB);
    double t0 = 0;
    for (long i = 0; i < ITEMS; i++) {
        if (!recv_all(sv[0], buf, MIB))
            die("recv", MP_EEOF);
        if (i == 0)
            t0 = bench_now();
    }
    double t = bench_now() - t0;
    waitpid(pid, NULL, 0);
    close(sv[0]);
    free(buf);
    return (double)MIB * (ITEMS - 1) / t / 1e9;
}

static double shared_64mib_us(void *arg)
{
    (void)arg;
    enum { N = 2000 };
    mp_queue *q;
    int rc = mp_queue_new(&q, NULL);
    if (rc)
        die("new", rc);
    void *p = mp_shared_alloc(64 * MIB);
    if (!p)
        die("alloc", MP_ENOMEM);
    memset(p, 'x', 64 * MIB);
    size_t len;
    double t0 = bench_now();
    for (int i = 0; i < N; i++) {
        if ((rc = mp_queue_put_shared(q, p, 64 * MIB, MP_FOREVER)) != 0 ||
            (rc = mp_queue_get_shared(q, &p, &len, MP_FOREVER)) != 0)
            die("put_shared/get_shared", rc);
    }
    double us = (bench_now() - t0) / N * 1e6;
    mp_shared_free(p);
    mp_queue_free(q);
    return us;
}

int main(int argc, char **argv)
{
    if (bench_selected(argc, argv, "arena_queue_1MiB"))
        bench_row("arena_queue_1MiB", bench_median_of(bench_reps(5), queue_1mib, NULL), "GB/s",
                  BENCH_HIGHER);
    if (bench_selected(argc, argv, "arena_socketpair_1MiB"))
        bench_row("arena_socketpair_1MiB", bench_median_of(bench_reps(5), socketpair_1mib, NULL),
                  "GB/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "shared_64MiB"))
        bench_row("shared_64MiB", bench_median_of(bench_reps(5), shared_64mib_us, NULL), "us",
                  BENCH_LOWER);
    return 0;
}
