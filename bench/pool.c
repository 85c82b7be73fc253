/* pool.c - the pool's speed: trivial tasks, a big map, CPU-bound speed-up.
 *
 * pool_apply_async_trivial  tasks/s: submit N no-op tasks, then wait for each
 * pool_map_1e6_ints         items/s: map x*x over 10^6 ints, automatic chunks
 * pool_cpu_speedup          x: a map of ~1 ms CPU tasks on every core, against
 *                           the same map on a one-worker pool
 * Pools are started before the clock starts, as in bench/pool.py.
 */
#include "bench.h"

#include <mproc.h>
#include <string.h>

#include "pool_workloads.h"

static volatile unsigned long spin_iters, sink;

/* ~1 ms of arithmetic (calibrated once in main, before the workers start). */
static unsigned long burn(unsigned long iters)
{
    unsigned long h = 1469598103934665603ul;
    for (unsigned long i = 0; i < iters; i++)
        h = (h ^ i) * 1099511628211ul;
    return h;
}

static int cpu_task(const void *in, size_t len, mp_buf *out)
{
    (void)in, (void)len;
    unsigned long h = burn(spin_iters);
    return mp_buf_append(out, &h, sizeof h);
}

static void calibrate(void)
{
    unsigned long iters = 100000;
    for (;;) {
        double t0 = bench_now();
        sink = burn(iters);
        double dt = bench_now() - t0;
        if (dt > 0.02) {
            spin_iters = (unsigned long)((double)iters * 0.001 / dt);
            return;
        }
        iters *= 2;
    }
}

static double rep_apply(void *arg)
{
    return pool_apply_rate(arg, 200000);
}

static double rep_map(void *arg)
{
    return pool_map_rate(arg);
}

static double map_seconds(mp_pool *p, size_t n)
{
    static int in[4096];
    static unsigned long out[4096];
    double t0 = bench_now();
    if (n > 4096 || mp_pool_map(p, cpu_task, in, n, sizeof *in, out, sizeof *out, 1) != 0)
        return NAN;
    return bench_now() - t0;
}

static double rep_speedup(void *arg)
{
    mp_pool **pools = arg;
    size_t n = 100 * (size_t)mp_cpu_count();
    double one = map_seconds(pools[0], n), all = map_seconds(pools[1], n);
    fprintf(stderr, "pool_cpu_speedup: 1 worker %.3f s, %d workers %.3f s\n", one,
            mp_cpu_count(), all);
    return one / all;
}

static mp_pool *pool_of(int n)
{
    mp_pool *p = NULL;
    if (mp_pool_new(&p, &(mp_pool_opts){ .processes = n }) != 0) {
        fprintf(stderr, "bench_pool: cannot start a pool\n");
        exit(1);
    }
    return p;
}

int main(int argc, char **argv)
{
    int ncpu = mp_cpu_count();
    calibrate();
    mp_pool *p = pool_of(ncpu);
    if (bench_selected(argc, argv, "pool_apply_async_trivial"))
        bench_row("pool_apply_async_trivial", bench_median_of(bench_reps(5), rep_apply, p),
                  "tasks/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "pool_map_1e6_ints"))
        bench_row("pool_map_1e6_ints", bench_median_of(bench_reps(5), rep_map, p),
                  "items/s", BENCH_HIGHER);
    if (bench_selected(argc, argv, "pool_cpu_speedup")) {
        mp_pool *pools[2] = { pool_of(1), p };
        rep_speedup(pools);                  /* warm-up: first touches of the arena */
        bench_row("pool_cpu_speedup", bench_median_of(bench_reps(5), rep_speedup, pools),
                  "x", BENCH_HIGHER);
        mp_pool_free(pools[0]);
    }
    mp_pool_free(p);
    return 0;
}
