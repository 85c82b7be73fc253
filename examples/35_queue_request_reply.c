/* 35_queue_request_reply.c - a server process answering requests over two queues, in about a microsecond */
/*
 * One queue carries requests to a server process, another carries replies
 * back. A Python program doing this over multiprocessing pipes or queues pays
 * tens to hundreds of microseconds per round trip: every hand-off puts one
 * process to sleep and wakes the other. An mproc waiter spins for a few
 * microseconds before it sleeps, so while the two sides are busy a request
 * and its reply cross in about a microsecond, and an idle server costs no CPU.
 */
#include <mproc.h>

#include <stdio.h>
#include <time.h>

struct pair { mp_queue *requests, *replies; };

static int square_server(void *arg)
{
    struct pair *p = arg;
    long x;
    size_t len;
    while (mp_queue_get(p->requests, &x, sizeof x, &len, MP_FOREVER) == 0) {
        long y = x * x;
        mp_queue_put(p->replies, &y, sizeof y, MP_FOREVER);
    }
    return 0;                                         /* MP_EEOF: the client shut down */
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct pair p;
    mp_queue_new(&p.requests, NULL);
    mp_queue_new(&p.replies, NULL);
    mp_process *server;
    mp_process_new(&server, square_server, &p, NULL);
    mp_process_start(server);

    long x = 12, y = 0;
    size_t len;
    mp_queue_put(p.requests, &x, sizeof x, MP_FOREVER);
    mp_queue_get(p.replies, &y, sizeof y, &len, MP_FOREVER);
    printf("asked the server for 12 squared: %ld\n", y);

    enum { N = 100000 };
    long sum = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (x = 1; x <= N; x++) {
        mp_queue_put(p.requests, &x, sizeof x, MP_FOREVER);
        mp_queue_get(p.replies, &y, sizeof y, &len, MP_FOREVER);
        sum += y;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / N / 1e3;
    printf("%d more requests: sum of squares %ld (expected %ld)\n", N, sum,
           (long)N * (N + 1) * (2L * N + 1) / 6);
    printf("%.2f us per round trip\n", us);
    printf("  (about 1 us needs a free core for each side, so both can spin; with %d\n"
           "  cores and other programs running, a side sleeps and each hand-off costs\n"
           "  a wake-up, tens of us: what a Python program pays on every hand-off)\n", mp_cpu_count());

    mp_queue_shutdown(p.requests);                    /* the server's get returns MP_EEOF */
    mp_process_join(server, MP_FOREVER);
    mp_process_free(server);
    mp_queue_free(p.requests);
    mp_queue_free(p.replies);
    return 0;
}
