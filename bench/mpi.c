/* mpi.c - the pool on MPI ranks (3 ranks: 2 serving), beside 2 worker processes.
 *
 * mpi_apply_async_trivial             tasks/s: N no-op tasks, each a round trip to a rank
 * mpi_map_1e6_ints                    items/s: map x*x over 10^6 ints, automatic chunks
 * mpi_processes_apply_async_trivial   the same two with MP_PROCESSES and as many
 * mpi_processes_map_1e6_ints          workers (2), in the same run, for comparison
 * Run directly, the program relaunches itself under `mpirun -np 3`.
 */
#include "bench.h"

#include <mproc.h>
#include <mproc_mpi.h>
#include <string.h>

#include "pool_workloads.h"

#define RANKS 3

static double rep_apply(void *arg)
{
    return pool_apply_rate(arg, 20000);
}

static double rep_map(void *arg)
{
    return pool_map_rate(arg);
}

static void run(int argc, char **argv, const char *prefix, mp_backend backend)
{
    mp_pool *p = NULL;
    if (mp_pool_new(&p, &(mp_pool_opts){ .processes = RANKS - 1, .backend = backend }) != 0) {
        fprintf(stderr, "bench_mpi: cannot start a %s pool\n", prefix);
        exit(1);
    }
    char id[64];
    snprintf(id, sizeof id, "%s_apply_async_trivial", prefix);
    if (bench_selected(argc, argv, id))
        bench_row(id, bench_median_of(bench_reps(5), rep_apply, p), "tasks/s", BENCH_HIGHER);
    snprintf(id, sizeof id, "%s_map_1e6_ints", prefix);
    if (bench_selected(argc, argv, id))
        bench_row(id, bench_median_of(bench_reps(5), rep_map, p), "items/s", BENCH_HIGHER);
    mp_pool_free(p);
}

int main(int argc, char **argv)
{
    int rc = mp_mpi_relaunch(RANKS, argv);
    if (rc != 0) {
        fprintf(stderr, "bench_mpi: cannot start under mpirun: %s\n", mp_strerror(rc));
        return 1;
    }
    run(argc, argv, "mpi", MP_MPI);
    run(argc, argv, "mpi_processes", MP_PROCESSES);
    return 0;
}
