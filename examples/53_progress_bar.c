/* 53_progress_bar.c - a progress bar driven by the pool's progress callback */
#include <mproc.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int slow_square(const void *in, size_t len, mp_buf *out)
{
    int x;
    memcpy(&x, in, len);
    usleep(2000);                        /* 2 ms of "work" per item */
    x *= x;
    return mp_buf_append(out, &x, sizeof x);
}

/* Runs on the pool's result thread, at most every 100 ms, and once at the end.
 * On a terminal the bar redraws in place (\r); into a file or a pipe each
 * call is a line of its own. */
static void bar(size_t done, size_t total, void *ctx)
{
    bool tty = *(const bool *)ctx;
    int width = 40, filled = total ? (int)(done * (size_t)width / total) : width;
    printf("%s  [%.*s%*s] %zu/%zu%s", tty ? "\r" : "", filled,
           "########################################", width - filled, "", done, total,
           tty ? "" : "\n");
    fflush(stdout);
}

int main(void)
{
    enum { N = 1000 };
    static int in[N], out[N];
    for (int i = 0; i < N; i++)
        in[i] = i;
    mp_pool *pool;
    bool tty = isatty(STDOUT_FILENO);
    mp_pool_new(&pool, &(mp_pool_opts){ .processes = 4, .progress = bar, .progress_ctx = &tty });
    printf("map over %d items, 2 ms each, on 4 workers (the bar shows items done):\n", N);
    mp_pool_map(pool, slow_square, in, N, sizeof *in, out, sizeof *out, 10);
    printf("%s  done: out[%d] = %d (%d squared)\n", tty ? "\n" : "", N - 1, out[N - 1], N - 1);
    mp_pool_free(pool);
    return 0;
}
