/* conn.c - pipes: the workloads of bench/conn.py, with mproc.
 *
 * pipe_64B      64-byte messages streamed from one process to another over
 *               mp_pipe (duplex): messages/s
 * pipe_rtt_64B  64-byte ping-pong between two processes: round trips/s
 * pipe_1MiB     1 MiB messages streamed one way: MB/s
 * Rows on stdout (id, value, unit, higher|lower), medians of several runs.
 * The peer process is started with fork() (mp_process does the same).
 */
#include <mproc.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int reps(int def)
{
    const char *s = getenv("BENCH_REPS");
    return s && atoi(s) > 0 ? atoi(s) : def;
}

static bool selected(int argc, char **argv, const char *name)
{
    for (int i = 1; i < argc; i++)
        if (strstr(name, argv[i]))
            return true;
    return argc < 2;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef double (*rep_fn)(size_t size, long n);

static void row(const char *name, rep_fn fn, size_t size, long n, int count, const char *unit)
{
    double v[16];
    count = count > 16 ? 16 : count;
    for (int i = 0; i < count; i++)
        v[i] = (double)n / fn(size, n);
    qsort(v, (size_t)count, sizeof v[0], cmp_double);
    printf("%s\t%.6g\t%s\thigher\n", name, v[count / 2], unit);
    fflush(stdout);
}

/* The peer: receives n messages (echoing each if echo), then says "done". */
static void peer(mp_conn *c, long n, bool echo)
{
    mp_buf in = { 0 };
    for (long i = 0; i < n; i++) {
        if (mp_conn_recv_buf(c, &in, 0) != 0)
            _exit(1);
        if (echo && mp_conn_send_bytes(c, in.data, in.len) != 0)
            _exit(1);
    }
    if (!echo)
        mp_conn_send_bytes(c, "done", 4);
    _exit(0);
}

static double run(size_t size, long n, bool echo)
{
    mp_conn *a, *b;
    if (mp_pipe(&a, &b, true) != 0)
        exit(1);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
        peer(b, n, echo);
    char *msg = calloc(1, size);
    mp_buf in = { 0 };
    double t0 = now();
    for (long i = 0; i < n; i++) {
        mp_conn_send_bytes(a, msg, size);
        if (echo)
            mp_conn_recv_buf(a, &in, 0);
    }
    if (!echo)
        mp_conn_recv_buf(a, &in, 0);
    double dt = now() - t0;
    waitpid(pid, NULL, 0);
    free(msg);
    mp_buf_free(&in);
    mp_conn_close(a);
    mp_conn_close(b);
    return dt;
}

static double stream(size_t size, long n)
{
    return run(size, n, false);
}

static double ping_pong(size_t size, long n)
{
    return run(size, n, true);
}

int main(int argc, char **argv)
{
    if (selected(argc, argv, "pipe_64B"))
        row("pipe_64B", stream, 64, 200000, reps(5), "msgs/s");
    if (selected(argc, argv, "pipe_rtt_64B"))
        row("pipe_rtt_64B", ping_pong, 64, 20000, reps(5), "roundtrips/s");
    if (selected(argc, argv, "pipe_1MiB"))
        row("pipe_1MiB", stream, 1 << 20, 500, reps(5), "MB/s");
    return 0;
}
