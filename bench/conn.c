/* conn.c - pipes: the workloads of bench/conn.py, with mproc.
 *
 * pipe_64B      64-byte messages streamed from one process to another over
 *               mp_pipe (duplex): messages/s
 * pipe_rtt_64B  64-byte ping-pong between two processes: round trips/s
 * pipe_1MiB     1 MiB messages streamed one way: MB/s
 * tcp_rtt_20KB_pyclient
 *               a Python Client's 20,000-byte ping-pong over TCP with an
 *               mp_listener's echo (bench/conn.py --client): round trips/s.
 *               Python sends a message over 16 KiB as two sends, the
 *               second held by Nagle's algorithm until the first is acked;
 *               Python's Listener acks late (40 ms) and splits its echo
 *               too, mproc acks at once and sends each frame in one write.
 * The peer is an mp_process (fork, like Python's default on Linux).
 */
#include "bench.h"

#include <mproc.h>

struct workload { size_t size; long n; bool echo; };
struct peer_arg { mp_conn *c; struct workload w; };

/* Receives n messages (echoing each, for ping-pong), then says "done". */
static int peer(void *arg)
{
    struct peer_arg *a = arg;
    mp_buf in = { 0 };
    for (long i = 0; i < a->w.n; i++) {
        if (mp_conn_recv_buf(a->c, &in, 0) != 0)
            return 1;
        if (a->w.echo && mp_conn_send_bytes(a->c, in.data, in.len) != 0)
            return 1;
    }
    mp_buf_free(&in);
    return a->w.echo ? 0 : mp_conn_send_bytes(a->c, "done", 4) != 0;
}

/* One repetition: messages (or round trips) per second; MB/s for 1 MiB. */
static double one_rep(void *arg)
{
    struct workload *w = arg;
    struct peer_arg pa = { NULL, *w };
    mp_conn *a;
    mp_process *p;
    if (mp_pipe(&a, &pa.c, true) != 0 ||
        mp_process_new(&p, peer, &pa, &(mp_process_opts){ .arg_size = sizeof pa }) != 0 ||
        mp_process_start(p) != 0)
        return NAN;
    char *msg = calloc(1, w->size);
    mp_buf in = { 0 };
    int rc = 0;
    double t0 = bench_now();
    for (long i = 0; i < w->n && rc == 0; i++) {
        rc = mp_conn_send_bytes(a, msg, w->size);
        if (rc == 0 && w->echo)
            rc = mp_conn_recv_buf(a, &in, 0);
    }
    if (rc == 0 && !w->echo)
        rc = mp_conn_recv_buf(a, &in, 0);
    double rate = bench_rate(t0, (double)w->n);
    mp_process_join(p, MP_FOREVER);
    mp_process_free(p);
    free(msg);
    mp_buf_free(&in);
    mp_conn_close(a);
    mp_conn_close(pa.c);
    return rc == 0 ? rate : NAN;
}

/* Bench/conn.py's: the key, the size, the timed round trips (one more first). */
#define RTT_KEY "conn-bench-key"
enum { RTT_SIZE = 20000, RTT_N = 20 };

/* Accepts one client and echoes RTT_N + 1 messages. */
static int echo(void *arg)
{
    mp_listener *l = arg;
    mp_conn *c;
    if (mp_listener_accept(l, &c, 60) != 0)
        return 1;
    mp_buf in = { 0 };
    int rc = 0;
    for (int i = 0; i < RTT_N + 1 && rc == 0; i++) {
        rc = mp_conn_recv_buf(c, &in, 0);
        if (rc == 0)
            rc = mp_conn_send_bytes(c, in.data, in.len);
    }
    mp_buf_free(&in);
    mp_conn_close(c);
    return rc != 0;
}

/* One repetition: the Python client's round trips/s with our listener. */
static double one_rep_pyclient(void *arg)
{
    (void)arg;
    mp_listener *l;
    mp_process *p;
    if (mp_listener_new(&l, "tcp:127.0.0.1:0", RTT_KEY, sizeof RTT_KEY - 1) != 0)
        return NAN;
    if (mp_process_new(&p, echo, l, NULL) != 0 || mp_process_start(p) != 0) {
        mp_listener_free(l);
        return NAN;
    }
    char script[4200], cmd[8600];
    bench_script_path("conn.py", script, sizeof script);
    const char *py = getenv("PYTHON");
    snprintf(cmd, sizeof cmd, "%s '%s' --client '%s'", py ? py : "python3", script,
             mp_listener_address(l));
    double rate = NAN;
    FILE *f = popen(cmd, "r");
    if (!f || fscanf(f, "%lf", &rate) != 1)
        rate = NAN;
    if (f)
        pclose(f);
    mp_process_join(p, 60);
    mp_process_free(p);
    mp_listener_free(l);
    return rate;
}

int main(int argc, char **argv)
{
    struct workload small = { 64, 200000, false }, rtt = { 64, 20000, true }, big = { 1 << 20, 500, false };
    if (bench_selected(argc, argv, "tcp_rtt_20KB_pyclient"))
        bench_row("tcp_rtt_20KB_pyclient", bench_median_of(bench_reps(5), one_rep_pyclient, NULL),
                  "roundtrips/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "pipe_64B"))
        bench_row("pipe_64B", bench_median_of(bench_reps(5), one_rep, &small), "msgs/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "pipe_rtt_64B"))
        bench_row("pipe_rtt_64B", bench_median_of(bench_reps(5), one_rep, &rtt), "roundtrips/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "pipe_1MiB"))
        bench_row("pipe_1MiB", bench_median_of(bench_reps(5), one_rep, &big), "MB/s", BENCH_HIGHER);
    return 0;
}
