/* 70_mpi_pool.c - the same pool on MPI ranks: mpirun starts the workers, rank 0 runs main */
#include <mproc.h>
#include <mproc_mpi.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* A task: runs on a rank, which says who it is. */
static int square_where(const void *in, size_t len, mp_buf *out)
{
    (void)len;
    int x, r[3];
    memcpy(&x, in, sizeof x);
    r[0] = x * x;
    r[1] = mp_mpi_rank();
    r[2] = (int)getpid();
    return mp_buf_append(out, r, sizeof r);
}

static int fail_on_seven(const void *in, size_t len, mp_buf *out)
{
    (void)len, (void)out;
    int x;
    memcpy(&x, in, sizeof x);
    return x == 7 ? 7 : 0;
}

int main(int argc, char **argv)
{
    (void)argc;
    if (mp_mpi_size() == 1) {
        printf("Not under mpirun: starting myself again as `mpirun -np 3 %s`.\n", argv[0]);
        printf("Ranks 1 and 2 will be taken aside before main and serve tasks.\n");
        int rc = mp_mpi_relaunch(3, argv);   /* returns only if it could not */
        printf("mpirun could not be started (%s): is Open MPI installed?\n", mp_strerror(rc));
        return 1;
    }
    printf("rank 0 of %d (pid %d) runs main; ranks 1..%d wait for tasks.\n", mp_mpi_size(),
           (int)getpid(), mp_mpi_size() - 1);
    mp_pool *pool;
    mp_pool_opts o = { .backend = MP_MPI };       /* processes 0: one worker per other rank */
    if (mp_pool_new(&pool, &o) != 0)
        return 1;

    printf("\napply_async, four tasks; each answer says which rank computed it:\n");
    mp_future *f[4];
    for (int i = 0; i < 4; i++) {
        int x = i + 2;
        mp_pool_apply_async(pool, square_where, &x, sizeof x, &f[i]);
    }
    mp_buf out = { 0 };
    for (int i = 0; i < 4; i++) {
        if (mp_future_result(f[i], &out, MP_FOREVER) == 0) {
            int *r = out.data;
            printf("  %d squared is %d (rank %d, pid %d)\n", i + 2, r[0], r[1], r[2]);
        }
        mp_future_free(f[i]);
    }

    printf("\nmap over 100000 ints: each chunk travels to a rank as one message.\n");
    static int in[100000], sq[100000][3];
    for (int i = 0; i < 100000; i++)
        in[i] = i % 10000;
    int rc = mp_pool_map(pool, square_where, in, 100000, sizeof *in, sq, sizeof sq[0], 0);
    printf("  map: %s; item 99999 is %d, squared %d (computed on rank %d)\n", mp_errname(rc),
           in[99999], sq[99999][0], sq[99999][1]);

    printf("\nErrors come back as with processes: a task returning 7 fails with MP_ETASK.\n");
    int seven = 7;
    rc = mp_pool_apply(pool, fail_on_seven, &seven, sizeof seven, NULL);
    printf("  apply(fail_on_seven, 7) = %s\n", mp_errname(rc));

    mp_pool_close(pool);
    mp_pool_join(pool, MP_FOREVER);
    mp_pool_free(pool);
    mp_buf_free(&out);
    printf("\nmain returns; at exit rank 0 tells each rank to stop, and MPI finalises.\n");
    return 0;
}
