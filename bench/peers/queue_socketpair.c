/* queue_socketpair.c - the workloads of bench/queue.c over a Unix socketpair, the
 * kernel's own queue between processes (contender "socketpair").
 *
 * Items up to 4 KiB go as SOCK_SEQPACKET messages (one write, one read, the
 * boundaries kept; 4x4 shares one pair among all eight processes, which
 * SEQPACKET allows: each read takes one whole message). 1 MiB items go over
 * SOCK_STREAM behind an 8-byte length (one writev), read until complete. The kernel
 * copies each item in on write and out on read; the socket's buffer is the
 * default one, so a fast producer blocks as on a bounded queue.
 */
#include "peer.h"

#include <sys/socket.h>

#define NAME "socketpair"

/* One item: a message on SEQPACKET, a frame on STREAM. */
static bool send_item(int fd, bool stream, const char *item, size_t size)
{
    return stream ? peer_send_frame(fd, item, size) : write(fd, item, size) == (ssize_t)size;
}

/* Reads one item into buf (cap bytes); its length, or -1. */
static ssize_t recv_item(int fd, bool stream, char *buf, size_t cap)
{
    return stream ? peer_recv_frame(fd, buf, cap) : read(fd, buf, cap);
}

/* ------------------------------------------------------------------ 1 -> 1 */

/* Seconds from the first item's arrival to the last's, n items of size
 * bytes from a child process; NAN when an item is lost or wrong. */
static double one_to_one_secs(const struct peer_job *w)
{
    bool stream = w->size > Q_PAGE;
    int sv[2];
    if (socketpair(AF_UNIX, stream ? SOCK_STREAM : SOCK_SEQPACKET, 0, sv) != 0)
        return NAN;
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[1]);
        char *item = malloc(w->size);
        memset(item, 'x', w->size);
        for (long i = 0; i < w->n; i++) {
            peer_stamp(item, w->size, i);
            if (!send_item(sv[0], stream, item, w->size))
                _exit(1);
        }
        _exit(0);
    }
    close(sv[0]);
    char *buf = malloc(w->size);            /* after the fork, as bench/queue.c */
    memset(buf, 0, w->size);
    double t0 = 0;
    bool ok = pid > 0;
    for (long i = 0; i < w->n && ok; i++) {
        ok = recv_item(sv[1], stream, buf, w->size) == (ssize_t)w->size &&
             peer_check(buf, w->size, i);
        if (i == 0)
            t0 = bench_now();
    }
    double t = bench_now() - t0;
    close(sv[1]);
    free(buf);
    ok = pid > 0 && peer_reap(pid) == 0 && ok;
    return ok ? t : NAN;
}

/* ------------------------------------------------------------------ round trip */

static double roundtrip_us(void *arg)
{
    long n = *(long *)arg;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0)
        return NAN;
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[1]);
        char b[Q_SMALL];
        ssize_t len;
        while ((len = read(sv[0], b, sizeof b)) > 0)
            if (write(sv[0], b, (size_t)len) != len)
                _exit(1);
        _exit(len == 0 ? 0 : 1);
    }
    close(sv[0]);
    char msg[Q_SMALL] = "ping";
    bool ok = pid > 0;
    double t0 = 0;
    for (long i = -Q_WARMUP; i < n && ok; i++) {
        if (i == 0)
            t0 = bench_now();
        peer_stamp(msg, sizeof msg, i);
        ok = write(sv[1], msg, sizeof msg) == sizeof msg &&
             read(sv[1], msg, sizeof msg) == sizeof msg && peer_check(msg, sizeof msg, i);
    }
    double us = bench_per_op_ns(t0, n) / 1e3;
    close(sv[1]);                           /* the echo reads 0 and exits */
    ok = pid > 0 && peer_reap(pid) == 0 && ok;
    return ok ? us : NAN;
}

/* ------------------------------------------------------------------ 4 x 4 */

enum { P = 4, C = 4 };

/* Reads 8-byte item numbers until a 1-byte end mark. */
static int consume_all(int fd, struct peer_tally *t)
{
    uint64_t x;
    ssize_t len;
    while ((len = read(fd, &x, sizeof x)) == sizeof x) {
        t->count++;
        t->sum += x;
    }
    return len == 1 ? 0 : 1;
}

static double many_to_many(void *arg)
{
    long per = *(long *)arg;
    int sv[2];
    struct peer_tally *t = peer_shared(C * sizeof *t);
    if (!t || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0)
        return NAN;
    pid_t prod[P], cons[C];
    double t0 = bench_now();
    for (int c = 0; c < C; c++)
        if ((cons[c] = fork()) == 0)
            _exit(consume_all(sv[1], &t[c]));
    for (int p = 0; p < P; p++)
        if ((prod[p] = fork()) == 0) {
            for (uint64_t x = (uint64_t)p * (uint64_t)per + 1; x <= (uint64_t)(p + 1) * (uint64_t)per; x++)
                if (write(sv[0], &x, sizeof x) != sizeof x)
                    _exit(1);
            _exit(0);
        }
    int bad = 0;
    for (int p = 0; p < P; p++)
        bad |= peer_reap(prod[p]);
    for (int c = 0; c < C; c++)             /* after every item: one end mark each */
        bad |= write(sv[0], "", 1) != 1;
    for (int c = 0; c < C; c++)
        bad |= peer_reap(cons[c]);
    uint64_t n = (uint64_t)P * (uint64_t)per;
    double rate = bench_rate(t0, (double)n);
    bad |= !peer_tally_ok(t, C, n);
    close(sv[0]);
    close(sv[1]);
    munmap(t, C * sizeof *t);
    if (bad) {
        fprintf(stderr, "peer socketpair: 4x4 lost or duplicated items\n");
        return NAN;
    }
    return rate;
}

int main(int argc, char **argv)
{
    struct peer_queue q = { NAME, one_to_one_secs, roundtrip_us, many_to_many };
    peer_queue_rows(argc, argv, &q);
    return 0;
}
