/* queue_zmq.c - the workloads of bench/queue.c over ZeroMQ's ipc transport
 * (contender "zeromq", libzmq's C API).
 *
 * 1->1 is PUSH -> PULL, the round trip REQ <-> REP, 4x4 four PUSH producers
 * and four PULL consumers: each producer deals its items to the consumers in
 * turn (what one PUSH socket connected to four does) over one socket per
 * consumer, so that an end mark sent after the items arrives after them;
 * a producer keeps its sockets open until every consumer is done, since a
 * PULL socket drops what it holds from a peer that disconnects.
 * zmq_send copies each item in and zmq_recv copies it out; the high-water
 * marks are the library's defaults (1,000 messages a side). Every process
 * makes its own context after the fork (libzmq is not fork-safe).
 */
#include "peer.h"

#include <signal.h>
#include <zmq.h>

#define NAME "zeromq"

static char endpoint_dir[64];

/* ipc endpoint number k of this run. */
static void endpoint(char *buf, size_t cap, int k)
{
    snprintf(buf, cap, "ipc://%s/%d", endpoint_dir, k);
}

static void *socket_at(void *ctx, int type, int k, bool bind)
{
    char ep[128];
    endpoint(ep, sizeof ep, k);
    void *s = zmq_socket(ctx, type);
    if (s && (bind ? zmq_bind(s, ep) : zmq_connect(s, ep)) != 0) {
        fprintf(stderr, "peer zeromq: %s %s: %s\n", bind ? "bind" : "connect", ep,
                zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

/* ------------------------------------------------------------------ 1 -> 1 */

static double one_to_one_secs(const struct peer_job *w)
{
    int *done = peer_shared(sizeof *done);
    void *ctx = zmq_ctx_new();
    void *pull = socket_at(ctx, ZMQ_PULL, 0, true);
    if (!pull || !done)
        return NAN;
    pid_t pid = fork();
    if (pid == 0) {
        void *cctx = zmq_ctx_new();
        void *push = socket_at(cctx, ZMQ_PUSH, 0, false);
        char *item = malloc(w->size);
        memset(item, 'x', w->size);
        for (long i = 0; push && i < w->n; i++) {
            peer_stamp(item, w->size, i);
            if (zmq_send(push, item, w->size, 0) != (int)w->size)
                _exit(1);
        }
        while (!__atomic_load_n(done, __ATOMIC_ACQUIRE))
            usleep(1000);                   /* see the 4x4 below */
        zmq_close(push);
        zmq_ctx_term(cctx);                 /* lingers until every item is out */
        _exit(push ? 0 : 1);
    }
    char *buf = malloc(w->size);
    memset(buf, 0, w->size);
    double t0 = 0;
    bool ok = pid > 0;
    for (long i = 0; i < w->n && ok; i++) {
        ok = zmq_recv(pull, buf, w->size, 0) == (int)w->size && peer_check(buf, w->size, i);
        if (i == 0)
            t0 = bench_now();
    }
    double t = bench_now() - t0;
    __atomic_store_n(done, 1, __ATOMIC_RELEASE);
    if (!ok && pid > 0)
        kill(pid, SIGKILL);
    ok = pid > 0 && peer_reap(pid) == 0 && ok;
    free(buf);
    munmap(done, sizeof *done);
    zmq_close(pull);
    zmq_ctx_term(ctx);
    return ok ? t : NAN;
}

/* ------------------------------------------------------------------ round trip */

static double roundtrip_us(void *arg)
{
    long n = *(long *)arg;
    void *ctx = zmq_ctx_new();
    void *req = socket_at(ctx, ZMQ_REQ, 0, true);
    if (!req)
        return NAN;
    pid_t pid = fork();
    if (pid == 0) {
        void *cctx = zmq_ctx_new();
        void *rep = socket_at(cctx, ZMQ_REP, 0, false);
        char b[Q_SMALL];
        int len;
        while (rep && (len = zmq_recv(rep, b, sizeof b, 0)) > 1)
            if (zmq_send(rep, b, (size_t)len, 0) != len)
                _exit(1);
        if (rep)
            zmq_send(rep, "", 0, 0);        /* answers the end mark */
        zmq_close(rep);
        zmq_ctx_term(cctx);
        _exit(rep ? 0 : 1);
    }
    char msg[Q_SMALL] = "ping";
    bool ok = pid > 0;
    double t0 = 0;
    for (long i = -Q_WARMUP; i < n && ok; i++) {
        if (i == 0)
            t0 = bench_now();
        peer_stamp(msg, sizeof msg, i);
        ok = zmq_send(req, msg, sizeof msg, 0) == sizeof msg &&
             zmq_recv(req, msg, sizeof msg, 0) == sizeof msg && peer_check(msg, sizeof msg, i);
    }
    double us = bench_per_op_ns(t0, n) / 1e3;
    if (ok) {
        char end;
        ok = zmq_send(req, "", 1, 0) == 1 && zmq_recv(req, &end, 1, 0) == 0;
    } else if (pid > 0) {
        kill(pid, SIGKILL);
    }
    ok = pid > 0 && peer_reap(pid) == 0 && ok;
    int zero = 0;
    zmq_setsockopt(req, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(req);
    zmq_ctx_term(ctx);
    return ok ? us : NAN;
}

/* ------------------------------------------------------------------ 4 x 4 */

enum { P = 4, C = 4 };

/* Consumer c: binds endpoint c, reads 8-byte item numbers until an end
 * mark (1 byte) from each of the P producers. */
struct flags { int bound[C], done; };

static int consume_all(int c, struct peer_tally *t, struct flags *f)
{
    void *ctx = zmq_ctx_new();
    void *pull = socket_at(ctx, ZMQ_PULL, c, true);
    __atomic_store_n(&f->bound[c], 1, __ATOMIC_RELEASE);
    if (!pull)
        return 1;
    int ends = 0, len;
    uint64_t x;
    while (ends < P && (len = zmq_recv(pull, &x, sizeof x, 0)) >= 0) {
        if (len == sizeof x) {
            t->count++;
            t->sum += x;
        } else {
            ends++;
        }
    }
    __atomic_add_fetch(&f->done, 1, __ATOMIC_RELEASE);
    zmq_close(pull);
    zmq_ctx_term(ctx);
    return ends == P ? 0 : 1;
}

static int produce_ids(uint64_t first, long n, struct flags *f)
{
    void *ctx = zmq_ctx_new(), *push[C];
    for (int c = 0; c < C; c++)
        if (!(push[c] = socket_at(ctx, ZMQ_PUSH, c, false)))
            return 1;
    int rc = 0;
    for (long i = 0; i < n && rc == 0; i++) {
        uint64_t x = first + (uint64_t)i;
        rc = zmq_send(push[i % C], &x, sizeof x, 0) != sizeof x;
    }
    for (int c = 0; c < C; c++)
        rc |= zmq_send(push[c], "", 1, 0) != 1;
    while (__atomic_load_n(&f->done, __ATOMIC_ACQUIRE) < C)
        usleep(1000);
    for (int c = 0; c < C; c++)
        zmq_close(push[c]);
    zmq_ctx_term(ctx);
    return rc;
}

static double many_to_many(void *arg)
{
    long per = *(long *)arg;
    struct peer_tally *t = peer_shared(C * sizeof *t + sizeof(struct flags));
    if (!t)
        return NAN;
    struct flags *f = (struct flags *)(t + C);
    pid_t prod[P], cons[C];
    double t0 = bench_now();
    for (int c = 0; c < C; c++)
        if ((cons[c] = fork()) == 0)
            _exit(consume_all(c, &t[c], f));
    for (int c = 0; c < C; c++)             /* the producers connect to bound sockets */
        while (!__atomic_load_n(&f->bound[c], __ATOMIC_ACQUIRE))
            usleep(100);
    for (int p = 0; p < P; p++)
        if ((prod[p] = fork()) == 0)
            _exit(produce_ids((uint64_t)p * (uint64_t)per + 1, per, f));
    int bad = 0;
    for (int c = 0; c < C; c++)
        bad |= peer_reap(cons[c]);
    uint64_t n = (uint64_t)P * (uint64_t)per;
    double rate = bench_rate(t0, (double)n);
    for (int p = 0; p < P; p++)
        bad |= peer_reap(prod[p]);
    bad |= !peer_tally_ok(t, C, n);
    munmap(t, C * sizeof *t + sizeof(struct flags));
    if (bad) {
        fprintf(stderr, "peer zeromq: 4x4 lost or duplicated items\n");
        return NAN;
    }
    return rate;
}

int main(int argc, char **argv)
{
    snprintf(endpoint_dir, sizeof endpoint_dir, "/tmp/mproc-bench-zmq-XXXXXX");
    if (!mkdtemp(endpoint_dir)) {
        perror("peer zeromq: mkdtemp");
        return 1;
    }
    struct peer_queue q = { NAME, one_to_one_secs, roundtrip_us, many_to_many };
    peer_queue_rows(argc, argv, &q);
    char ep[128];
    for (int k = 0; k < C; k++) {
        endpoint(ep, sizeof ep, k);
        unlink(ep + strlen("ipc://"));
    }
    rmdir(endpoint_dir);
    return 0;
}
