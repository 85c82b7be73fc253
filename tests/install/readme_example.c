/* readme_example.c - the example in README.md, kept here so it cannot rot:
 * Python's `Pool(4).map(square, range(10))`. */
#include <mproc.h>
#include <stdio.h>

static int square(const void *in, size_t len, mp_buf *out)   /* runs in a worker */
{
    if (len != sizeof(long))
        return 1;                              /* a task error: MP_ETASK */
    long x = *(const long *)in, y = x * x;
    return mp_buf_append(out, &y, sizeof y);
}

int main(void)
{
    long in[10], out[10];
    for (int i = 0; i < 10; i++)
        in[i] = i;
    mp_pool *pool;
    int rc = mp_pool_new(&pool, &(mp_pool_opts){ .processes = 4 });
    if (rc == 0)
        rc = mp_pool_map(pool, square, in, 10, sizeof in[0], out, sizeof out[0], 0);
    if (rc != 0) {
        fprintf(stderr, "mproc: %s\n", mp_strerror(rc));
        return 1;
    }
    for (int i = 0; i < 10; i++)
        printf("%ld ", out[i]);
    printf("\n");                              /* 0 1 4 9 16 25 36 49 64 81 */
    mp_pool_close(pool);
    mp_pool_join(pool, MP_FOREVER);
    mp_pool_free(pool);
    return 0;
}
