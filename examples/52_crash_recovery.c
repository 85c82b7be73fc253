/* 52_crash_recovery.c - a task kills its worker: only that task fails, the pool carries on */
#include <mproc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int work(const void *in, size_t len, mp_buf *out)
{
    int x;
    memcpy(&x, in, len);
    if (x == 3) {
        printf("  task 3: worker %d kills itself (think: segfault, OOM killer)\n", (int)getpid());
        raise(SIGKILL);
    }
    x *= 10;
    return mp_buf_append(out, &x, sizeof x);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_pool *pool;
    mp_pool_new(&pool, &(mp_pool_opts){ .processes = 2 });
    mp_future *fs[8];
    for (int i = 0; i < 8; i++)
        mp_pool_apply_async(pool, work, &i, sizeof i, &fs[i]);
    for (int i = 0; i < 8; i++) {
        mp_buf b = { 0 };
        int rc = mp_future_result(fs[i], &b, MP_FOREVER), v = 0;
        if (rc == 0) {
            memcpy(&v, b.data, sizeof v);
            printf("task %d -> %d\n", i, v);
        } else {
            printf("task %d -> %s (signal %d); the pool started a new worker\n", i,
                   mp_errname(rc), mp_future_code(fs[i]));
        }
        mp_buf_free(&b);
        mp_future_free(fs[i]);
    }
    int x = 5;
    mp_buf b = { 0 };
    int rc = mp_pool_apply(pool, work, &x, sizeof x, &b);
    printf("and it keeps working: apply(5) -> %s, %d\n", mp_errname(rc), *(int *)b.data);
    printf("(Python's Pool would hang forever here, and its executor would be broken for good)\n");
    mp_buf_free(&b);
    mp_pool_free(pool);
    return 0;
}
