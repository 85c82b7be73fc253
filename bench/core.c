/* core.c - benchmarks of the foundation: the shared arena's allocator.
 *
 * arena_alloc_free: one mp_shared_alloc(64) + mp_shared_free, the price of a
 * C "Value"/"Array". Python's analogue is multiprocessing.RawArray('b', 64)
 * and dropping it (bench/core.py), which allocates from multiprocessing.heap.
 */
#include "bench.h"
#include "mproc.h"

#define ALLOCS 200000

static double alloc_free_64(void *arg)
{
    (void)arg;
    double t0 = bench_now();
    for (long i = 0; i < ALLOCS; i++) {
        void *p = mp_shared_alloc(64);
        if (!p)
            return NAN;
        mp_shared_free(p);
    }
    return bench_per_op_ns(t0, ALLOCS);
}

int main(int argc, char **argv)
{
    mp_shared_free(mp_shared_alloc(64));         /* create the arena outside the clock */
    if (bench_selected(argc, argv, "arena_alloc_free"))
        bench_row("arena_alloc_free", bench_median_of(bench_reps(5), alloc_free_64, NULL),
                  "ns", BENCH_LOWER);
    return 0;
}
