/* 54_imap_unordered.c - imap hands out results as they come; in order if you ask */
#include <mproc.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int nap(const void *in, size_t len, mp_buf *out)
{
    int ms;
    memcpy(&ms, in, len);
    usleep((useconds_t)ms * 1000);
    char msg[32];
    int n = snprintf(msg, sizeof msg, "slept %d ms", ms);
    return mp_buf_append(out, msg, (size_t)n + 1);
}

static void show(mp_pool *pool, const int *in, int n, bool unordered)
{
    mp_iter *it;
    mp_pool_imap(pool, nap, in, (size_t)n, sizeof *in, 1, unordered, &it);
    printf("%s:\n", unordered ? "imap_unordered (first finished, first out)" : "imap (input order)");
    size_t index;
    mp_buf b = { 0 };
    while (mp_iter_next(it, &index, &b, MP_FOREVER) == 0)
        printf("  item %zu: %s\n", index, (char *)b.data);
    mp_buf_free(&b);
    mp_iter_free(it);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int in[4] = { 300, 100, 200, 10 };
    mp_pool *pool;
    mp_pool_new(&pool, &(mp_pool_opts){ .processes = 4 });
    show(pool, in, 4, true);
    show(pool, in, 4, false);
    mp_pool_free(pool);
    return 0;
}
