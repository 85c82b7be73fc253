/* mpi_internal.h - what the two halves of libmproc_mpi share: the wire and
 * the world.
 *
 * Rank 0 sends a request (a function as an fnref, count inputs of in_size
 * bytes) to a rank, which answers with count items (rc, code, output). Each
 * rank talks only to rank 0, one request at a time, so MPI's ordering
 * between two ranks on one tag is the whole protocol.
 */
#ifndef MPROC_MPI_INTERNAL_H
#define MPROC_MPI_INTERNAL_H

#include "../pool_internal.h"
#include "mproc_mpi.h"

#include <mpi.h>
#include <sys/types.h>

enum { TAG_REQUEST = 0x6d70, TAG_REPLY };
enum { OP_RUN = 1, OP_INIT, OP_STOP };

struct request {                        /* followed by count * in_size bytes */
    uint32_t op, pad;
    fnref fn;
    uint64_t in_size, count;
};

struct reply_item {                     /* followed by len bytes, padded to 8 */
    int32_t rc, code;
    uint64_t len;
};
#define ITEM_SIZE(len) ((sizeof(struct reply_item) + (len) + 7) & ~(size_t)7)

/* The one per-process record of the MPI job: set before main, then read. */
struct mpi_world {
    bool active;                        /* started by mpirun, MPI initialised */
    bool serialize;                     /* thread level below MULTIPLE: one call at a time */
    bool usable;                        /* rank 0 can run proxies (level SERIALIZED or more) */
    int rank, size;
    pid_t pid;                          /* the process that initialised MPI: not its forks */
};
extern struct mpi_world mpi_world;

/* How long a wait may last: until *abandon is set (WORKER_GONE) or the
 * CLOCK_MONOTONIC time until_ns passes (MP_ETIMEDOUT); NULL/0: no limit. */
struct mpi_limit { _Atomic bool *abandon; uint64_t until_ns; };
/* Waits for a request with backoff; MP_ECRASHED if MPI reports the peer
 * lost, or what the limit says. */
int mpi_wait(MPI_Request *req, struct mpi_limit lim);
/* Receives one message of any size from src on tag into b, same returns. */
int mpi_recv(int src, int tag, mp_buf *b, struct mpi_limit lim);
uint64_t mpi_clock_ns(void);
int mpi_isend(const void *data, size_t len, int dst, int tag, MPI_Request *req);

/* mpi_pool.c: rank 0's side of the job. */
void ranks_setup(int size);
bool ranks_shutdown(void);              /* at exit: settle every rank, then stop it */

#endif
