/* 55_task_timeout.c - a task that hangs is killed after task_timeout; the others finish */
#include <mproc.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int maybe_hang(const void *in, size_t len, mp_buf *out)
{
    int x;
    memcpy(&x, in, len);
    if (x == 2)
        for (;;)
            pause();                     /* a deadlock, an endless loop, a dead server... */
    return mp_buf_append(out, &x, sizeof x);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_pool *pool;
    mp_pool_new(&pool, &(mp_pool_opts){ .processes = 2, .task_timeout = 0.5 });
    printf("task_timeout 0.5 s; task 2 never returns\n");
    mp_future *fs[5];
    for (int i = 0; i < 5; i++)
        mp_pool_apply_async(pool, maybe_hang, &i, sizeof i, &fs[i]);
    for (int i = 0; i < 5; i++) {
        int rc = mp_future_result(fs[i], NULL, MP_FOREVER);
        printf("  task %d: %s\n", i, rc == 0 ? "ok" : mp_strerror(rc));
        mp_future_free(fs[i]);
    }
    mp_pool_free(pool);
    return 0;
}
