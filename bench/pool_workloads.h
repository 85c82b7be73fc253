/* pool_workloads.h - the pool workloads that bench/pool.c and bench/mpi.c
 * (the same pool on MPI ranks) both time: N trivial tasks, and a map of
 * x*x over 10^6 ints. Include after bench.h and mproc.h. */
#ifndef MPROC_BENCH_POOL_WORKLOADS_H
#define MPROC_BENCH_POOL_WORKLOADS_H

#define POOL_APPLY_MAX 200000
#define POOL_MAP_N 1000000

static int trivial(const void *in, size_t len, mp_buf *out)
{
    (void)in, (void)len, (void)out;
    return 0;
}

static int square(const void *in, size_t len, mp_buf *out)
{
    (void)len;
    int x;
    memcpy(&x, in, sizeof x);
    x *= x;
    return mp_buf_append(out, &x, sizeof x);
}

/* n (at most POOL_APPLY_MAX) no-op tasks submitted, then waited for: tasks/s. */
static inline double pool_apply_rate(mp_pool *p, int n)
{
    static mp_future *fs[POOL_APPLY_MAX];
    if (n > POOL_APPLY_MAX)
        return NAN;
    double t0 = bench_now();
    for (int i = 0; i < n; i++)
        if (mp_pool_apply_async(p, trivial, NULL, 0, &fs[i]) != 0)
            return NAN;
    for (int i = 0; i < n; i++) {
        if (mp_future_result(fs[i], NULL, MP_FOREVER) != 0)
            return NAN;
        mp_future_free(fs[i]);
    }
    return bench_rate(t0, n);
}

/* x*x over 10^6 ints, automatic chunks: items/s. The inputs repeat below
 * 10^4 so no square overflows an int. */
static inline double pool_map_rate(mp_pool *p)
{
    static int in[POOL_MAP_N], out[POOL_MAP_N];
    for (int i = 0; i < POOL_MAP_N; i++)
        in[i] = i % 10000;
    double t0 = bench_now();
    if (mp_pool_map(p, square, in, POOL_MAP_N, sizeof *in, out, sizeof *out, 0) != 0)
        return NAN;
    double r = bench_rate(t0, POOL_MAP_N);
    return out[1000] == 1000 * 1000 ? r : NAN;
}

#endif
