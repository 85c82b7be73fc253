/* 56_pool_big_result.c - pool tasks return big results without a copy */
/*
 * A pool task's result comes back through its future by copy, fine for a
 * number or a short record. For a big one (here a 64 MiB table per task)
 * the task makes it in shared memory and puts the block on a queue with
 * mp_queue_put_shared, tagged by a small header; the main process takes
 * each block with mp_queue_get_shared and owns it. Python would pickle each
 * result through the pool's result pipe.
 */
#include <mproc.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define N ((size_t)8 << 20)          /* 8 Mi doubles = 64 MiB per result */

struct result {
    int task;
    double table[];
};

static mp_queue *results;            /* made before the pool: the workers see it */

static int make_table(const void *in, size_t len, mp_buf *out)
{
    (void)out;
    int task;
    memcpy(&task, in, len);
    struct result *r = mp_shared_alloc(sizeof *r + N * sizeof(double));
    if (!r)
        return 1;
    r->task = task;
    for (size_t i = 0; i < N; i++)
        r->table[i] = (double)task * (double)i;
    int rc = mp_queue_put_shared(results, r, sizeof *r + N * sizeof(double), MP_FOREVER);
    if (rc != 0)
        mp_shared_free(r);
    return rc != 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_pool *pool;
    if (mp_queue_new(&results, NULL) != 0 ||
        mp_pool_new(&pool, &(mp_pool_opts){ .processes = 2 }) != 0)
        return 1;
    enum { TASKS = 4 };
    mp_future *fs[TASKS];
    for (int i = 0; i < TASKS; i++)
        mp_pool_apply_async(pool, make_table, &i, sizeof i, &fs[i]);
    for (int i = 0; i < TASKS; i++) {
        void *p;
        size_t len;
        if (mp_queue_get_shared(results, &p, &len, 60) != 0)
            return 1;
        struct result *r = p;
        printf("result of task %d: %zu MiB, last entry %.0f\n", r->task, len >> 20,
               r->table[N - 1]);
        mp_shared_free(r);
    }
    for (int i = 0; i < TASKS; i++) {
        printf("task %d: %s\n", i, mp_future_result(fs[i], NULL, MP_FOREVER) == 0 ? "ok" : "failed");
        mp_future_free(fs[i]);
    }
    mp_pool_free(pool);
    mp_queue_free(results);
    return 0;
}
