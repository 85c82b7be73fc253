/* 50_pool_executor.c - ProcessPoolExecutor(5): ten half-second tasks take two rounds, not ten */
#include <mproc.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double t0;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The Python version's task(arg): sleep, then say which one it was. */
static int task(const void *in, size_t len, mp_buf *out)
{
    int arg;
    memcpy(&arg, in, len);
    usleep(500000);
    printf("  task %d done in worker %d at %.1f s\n", arg, (int)getpid(), now() - t0);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_pool *pool;
    t0 = now();                                               /* before the workers copy it */
    mp_pool_new(&pool, &(mp_pool_opts){ .processes = 5 });   /* pool = ProcessPoolExecutor(5) */
    printf("5 workers; submitting 10 tasks of 0.5 s each\n");
    mp_future *fs[10];
    for (int i = 0; i < 10; i++)                              /* pool.submit(task, i) */
        mp_pool_apply_async(pool, task, &i, sizeof i, &fs[i]);
    printf("submit returned at once (%.2f s): each gives a future\n", now() - t0);
    mp_futures_wait(fs, 10, MP_ALL_COMPLETED, MP_FOREVER);
    printf("all done in %.1f s: two rounds of five, not 10 x 0.5 s = 5 s\n", now() - t0);
    for (int i = 0; i < 10; i++)
        mp_future_free(fs[i]);
    mp_pool_close(pool);                                      /* pool.shutdown(wait=True) */
    mp_pool_join(pool, MP_FOREVER);
    mp_pool_free(pool);
    return 0;
}
