/* mproc_mpi.h - the MPI backend of mp_pool: libmproc_mpi (pkg-config mproc-mpi).
 *
 * Link it and start the program with `mpirun -np N ./prog`: ranks 1..N-1 are
 * taken aside before main and serve tasks; rank 0 runs main and creates the
 * pool with mp_pool_opts.backend = MP_MPI. See docs/cluster.md.
 */
#ifndef MPROC_MPI_H
#define MPROC_MPI_H

#include "mproc.h"

#ifdef __cplusplus
extern "C" {
#endif

MP_EXTERN int mp_mpi_rank(void);   /* this process's rank; 0 when not under mpirun */
MP_EXTERN int mp_mpi_size(void);   /* ranks in the job; 1 when not under mpirun */
/* Not under mpirun: replaces this process with `mpirun -np nranks argv...`
 * (with --oversubscribe, and --allow-run-as-root as root); returns 0 at once
 * under mpirun, else MP_ESTATE (already relaunched) or the exec's error.
 * The environment variable MPROC_MPIRUN names another mpirun (Open MPI's). */
MP_EXTERN int mp_mpi_relaunch(int nranks, char **argv);

#ifdef __cplusplus
}
#endif
#endif
