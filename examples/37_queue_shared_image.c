/* 37_queue_shared_image.c - a 256 MiB image between processes without a copy */
/*
 * Python pickles a NumPy array into the queue's pipe and unpickles it on the
 * other side: two copies and a pipe for every byte. Here the producer makes
 * the image in shared memory (mp_shared_alloc) and puts the block itself
 * (mp_queue_put_shared); the consumer takes the block (mp_queue_get_shared),
 * reads it where it lies and frees it. Passing it costs microseconds,
 * whatever its size.
 */
#include <mproc.h>

#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define W 8192
#define H 8192                       /* 8192 x 8192 x 4 bytes = 256 MiB */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int painter(void *arg)
{
    mp_queue *q = arg;
    uint32_t *img = mp_shared_alloc((size_t)W * H * sizeof *img);
    if (!img)
        return 1;                    /* MP_ENOMEM: the machine has no 256 MiB to spare */
    for (size_t y = 0; y < H; y++)
        for (size_t x = 0; x < W; x++)
            img[y * W + x] = (uint32_t)(x ^ y);
    double t = now();
    int rc = mp_queue_put_shared(q, img, (size_t)W * H * sizeof *img, MP_FOREVER);
    printf("painter: put 256 MiB in %.1f us\n", (now() - t) * 1e6);
    if (rc != 0)
        mp_shared_free(img);         /* not put: still ours */
    return rc != 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_queue *q;
    mp_process *p;
    if (mp_queue_new(&q, NULL) != 0 || mp_process_new(&p, painter, q, NULL) != 0 ||
        mp_process_start(p) != 0)
        return 1;
    void *got;
    size_t len;
    int rc = mp_queue_get_shared(q, &got, &len, 60);
    double t = now();
    mp_process_join(p, MP_FOREVER);
    if (rc != 0) {
        printf("no image: %s\n", mp_strerror(rc));
        return 1;
    }
    const uint32_t *img = got;
    uint64_t sum = 0;
    for (size_t i = 0; i < len / sizeof *img; i++)
        sum += img[i];
    printf("viewer: got %zu MiB at %p, checksum %llu (summed in %.0f ms, in place)\n",
           len >> 20, got, (unsigned long long)sum, (now() - t) * 1e3);
    mp_shared_free(got);             /* ours now: give it back */
    mp_process_free(p);
    mp_queue_free(q);
    return 0;
}
