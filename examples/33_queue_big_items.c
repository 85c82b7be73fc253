/* 33_queue_big_items.c - from 0 bytes to 64 MiB through one queue, at memory speed */
/*
 * A queue item is just bytes, of any size. Small items are copied into a
 * shared ring; big ones travel out of line: the producer copies the item once
 * into shared memory, the consumer copies it once out. No pickling, no pipe,
 * no feeder thread: a 64 MiB item costs two memcpys (plus, the first time,
 * the kernel handing out fresh shared pages). The queue is bounded to two
 * items so the producer stays close behind and freed blocks are reused.
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

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    static const size_t sizes[] = { 0, 1, 64, 4096, (size_t)1 << 20, (size_t)64 << 20 };
    enum { N = sizeof sizes / sizeof *sizes, BIG_REPEAT = 8 };
    mp_queue *q;
    if (mp_queue_new(&q, &(mp_queue_opts){ .maxsize = 2 }) != 0)
        return 1;

    pid_t pid = fork();
    if (pid == 0) {                                   /* the producer */
        unsigned char *item = malloc(sizes[N - 1]);
        for (size_t i = 0; i < sizes[N - 1]; i++)
            item[i] = (unsigned char)(i * 7);
        for (int i = 0; i < N; i++)
            mp_queue_put(q, item, sizes[i], MP_FOREVER);
        for (int i = 0; i < 2 * BIG_REPEAT; i++)
            mp_queue_put(q, item, sizes[N - 1], MP_FOREVER);
        _exit(0);
    }

    mp_buf out = { 0 };
    int bad = 0;
    for (int i = 0; i < N; i++) {
        mp_queue_get_buf(q, &out, MP_FOREVER);
        bool ok = out.len == sizes[i];
        for (size_t k = 0; ok && k < out.len; k += 4093)
            ok = ((unsigned char *)out.data)[k] == (unsigned char)(k * 7);
        printf("got an item of %9zu bytes: %s\n", out.len, ok ? "intact" : "CORRUPT");
        bad |= !ok;
    }
    double t0 = now();
    for (int i = 0; i < BIG_REPEAT; i++)               /* the first ones map fresh pages */
        mp_queue_get_buf(q, &out, MP_FOREVER);
    double cold = now() - t0;
    t0 = now();
    for (int i = 0; i < BIG_REPEAT; i++)               /* these reuse freed blocks */
        mp_queue_get_buf(q, &out, MP_FOREVER);
    double secs = now() - t0;
    printf("%d items of 64 MiB took %.3f s with fresh shared memory, ", BIG_REPEAT, cold);
    printf("%d more %.3f s: %.1f GB/s between two processes\n",
           BIG_REPEAT, secs, (double)BIG_REPEAT * 64 * 1048576 / secs / 1e9);
    waitpid(pid, NULL, 0);
    mp_buf_free(&out);
    mp_queue_free(q);
    return bad;
}
