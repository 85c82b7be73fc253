/* conn_socketpair.c - the pipe workloads of bench/conn.c over a plain
 * SOCK_STREAM socketpair (contender "socketpair"), framed as mp_conn frames
 * its messages: an 8-byte length and the bytes, written with one writev and
 * read until complete.
 *
 * pipe_64B and pipe_1MiB stream n messages one way and wait for the
 * reader's "done"; pipe_rtt_64B echoes each. The clock starts once the
 * child is running, as bench/conn.c's does after mp_process_start. Each
 * message carries its number, checked on arrival.
 */
#include "peer.h"

#include <signal.h>
#include <sys/socket.h>

#define NAME "socketpair"

struct workload { size_t size; long n; bool echo; };

/* The child's side: receives n messages (echoing each, for ping-pong),
 * then says "done". */
static int reader(int fd, const struct workload *w)
{
    char *in = malloc(w->size);
    for (long i = 0; i < w->n; i++) {
        ssize_t len = peer_recv_frame(fd, in, w->size);
        if (len != (ssize_t)w->size || !peer_check(in, w->size, i))
            return 1;
        if (w->echo && !peer_send_frame(fd, in, w->size))
            return 1;
    }
    free(in);
    return w->echo ? 0 : !peer_send_frame(fd, "done", 4);
}

/* Messages (or round trips) per second; for 1 MiB that is MiB/s, the
 * figure bench/conn.c reports as MB/s. */
static double one_rep(void *arg)
{
    const struct workload *w = arg;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return NAN;
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        _exit(reader(sv[1], w));
    }
    close(sv[1]);
    char *msg = calloc(1, w->size), *in = malloc(w->size);
    bool ok = pid > 0;
    double t0 = bench_now();
    for (long i = 0; i < w->n && ok; i++) {
        peer_stamp(msg, w->size, i);
        ok = peer_send_frame(sv[0], msg, w->size);
        if (ok && w->echo)
            ok = peer_recv_frame(sv[0], in, w->size) == (ssize_t)w->size &&
                 peer_check(in, w->size, i);
    }
    if (ok && !w->echo)
        ok = peer_recv_frame(sv[0], in, w->size) == 4;
    double rate = bench_rate(t0, (double)w->n);
    if (!ok && pid > 0)
        kill(pid, SIGKILL);
    ok = pid > 0 && peer_reap(pid) == 0 && ok;
    close(sv[0]);
    free(msg);
    free(in);
    return ok ? rate : NAN;
}

int main(int argc, char **argv)
{
    struct workload small = { 64, C_SMALL_N, false }, rtt = { 64, C_RTT_N, true },
                    big = { Q_MIB, C_MIB_N, false };
    peer_row(argc, argv, "pipe_64B", 5, one_rep, &small, "msgs/s", BENCH_HIGHER, NAME);
    peer_row(argc, argv, "pipe_rtt_64B", 5, one_rep, &rtt, "roundtrips/s", BENCH_HIGHER, NAME);
    peer_row(argc, argv, "pipe_1MiB", 5, one_rep, &big, "MB/s", BENCH_HIGHER, NAME);
    return 0;
}
