/* mpi_world.c - the MPI job: ranks taken aside before main, and the wire.
 *
 * A constructor in this library runs before the program's main. Under mpirun
 * it initialises MPI; on ranks 1..N-1 it never returns: the rank serves rank
 * 0's requests until told to stop, finalises MPI and _exits, so main, the
 * executable's own constructors and every atexit handler run on rank 0 only.
 */
#include "mpi_internal.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SPIN_NS 100000                  /* then sleep, doubling to SLEEP_MAX_NS */
#define SLEEP_MAX_NS 1000000
#define FN_CACHE 8

struct mpi_world mpi_world = { .rank = 0, .size = 1 };
static pthread_mutex_t mpi_lock = PTHREAD_MUTEX_INITIALIZER;

/* Started by mpirun, and not a program that a rank (spawn) ran in turn: its
 * child inherits the environment, not the place in the job. */
static bool under_mpirun(void)
{
    if (!getenv("OMPI_COMM_WORLD_RANK") && !getenv("PMIX_RANK") && !getenv("PMI_RANK"))
        return false;
    const char *owner = getenv("MPROC_MPI_PID");
    return !owner || atol(owner) == (long)getpid();
}

/* ------------------------------------------------------------------ the wire */

static void lock(void)
{
    if (mpi_world.serialize)
        pthread_mutex_lock(&mpi_lock);
}

static void unlock(void)
{
    if (mpi_world.serialize)
        pthread_mutex_unlock(&mpi_lock);
}

uint64_t mpi_clock_ns(void)             /* libmproc's now_ns is not exported */
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Replies are usually there within microseconds; a task may take hours. */
static void backoff(uint64_t start, uint64_t *sleep_ns)
{
    if (mpi_clock_ns() - start < SPIN_NS) {
        sched_yield();
        return;
    }
    *sleep_ns = *sleep_ns ? *sleep_ns * 2 : 20000;
    if (*sleep_ns > SLEEP_MAX_NS)
        *sleep_ns = SLEEP_MAX_NS;
    struct timespec ts = { 0, (long)*sleep_ns };
    nanosleep(&ts, NULL);
}

int mpi_isend(const void *data, size_t len, int dst, int tag, MPI_Request *req)
{
    if (len > INT32_MAX)
        return MP_ETOOBIG;
    lock();
    int e = MPI_Isend(data, (int)len, MPI_BYTE, dst, tag, MPI_COMM_WORLD, req);
    unlock();
    return e == MPI_SUCCESS ? 0 : MP_ECRASHED;
}

static int limit_reached(const struct mpi_limit *lim)
{
    if (lim->abandon && atomic_load(lim->abandon))
        return WORKER_GONE;
    return lim->until_ns && mpi_clock_ns() > lim->until_ns ? MP_ETIMEDOUT : 0;
}

int mpi_wait(MPI_Request *req, struct mpi_limit lim)
{
    uint64_t start = mpi_clock_ns(), sleep_ns = 0;
    for (;;) {
        int done = 0;
        lock();
        int e = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        unlock();
        if (e != MPI_SUCCESS)
            return MP_ECRASHED;
        if (done)
            return 0;
        int stop = limit_reached(&lim);
        if (stop)
            return stop;
        backoff(start, &sleep_ns);
    }
}

int mpi_recv(int src, int tag, mp_buf *b, struct mpi_limit lim)
{
    uint64_t start = mpi_clock_ns(), sleep_ns = 0;
    for (;;) {
        int found = 0, count = 0, e;
        MPI_Status st;
        lock();
        e = MPI_Iprobe(src, tag, MPI_COMM_WORLD, &found, &st);
        if (e == MPI_SUCCESS && found) {
            e = MPI_Get_count(&st, MPI_BYTE, &count);
            if (e == MPI_SUCCESS && mp_buf_reserve(b, count > 0 ? (size_t)count : 1) != 0)
                e = MPI_ERR_NO_MEM;
            if (e == MPI_SUCCESS)
                e = MPI_Recv(b->data, count, MPI_BYTE, src, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        }
        unlock();
        if (e != MPI_SUCCESS)
            return e == MPI_ERR_NO_MEM ? MP_ENOMEM : MP_ECRASHED;
        if (found) {
            b->len = (size_t)count;
            return 0;
        }
        int stop = limit_reached(&lim);
        if (stop)
            return stop;
        backoff(start, &sleep_ns);
    }
}

/* ------------------------------------------------------------------ a serving rank */

struct server {
    struct { fnref ref; void *fn; } cache[FN_CACHE];
    unsigned next;
    void *initarg;                      /* the initializer's copy, kept until the next one */
    mp_buf in, reply, out;
};

/* Resolving walks the loader's lists: remember the last few functions. */
static void *server_resolve(struct server *s, const fnref *ref)
{
    for (unsigned i = 0; i < FN_CACHE; i++)
        if (s->cache[i].fn && memcmp(&s->cache[i].ref, ref, sizeof *ref) == 0)
            return s->cache[i].fn;
    void *fn = mp__fnref_resolve(ref);
    if (fn) {
        unsigned i = s->next++ % FN_CACHE;
        s->cache[i].ref = *ref;
        s->cache[i].fn = fn;
    }
    return fn;
}

static int reply_add(mp_buf *r, int rc, int code, const void *data, size_t len)
{
    size_t at = r->len, size = ITEM_SIZE(len);
    if (mp_buf_reserve(r, at + size) != 0)
        return MP_ENOMEM;
    struct reply_item it = { rc, code, len };
    unsigned char *p = (unsigned char *)r->data + at;
    memset(p, 0, size);
    memcpy(p, &it, sizeof it);
    if (len)
        memcpy(p + sizeof it, data, len);
    r->len = at + size;
    return 0;
}

static void server_init(struct server *s, const struct request *h, const unsigned char *in)
{
    void (*init)(void *) = (void (*)(void *))server_resolve(s, &h->fn);
    free(s->initarg);
    s->initarg = NULL;
    if (init && h->in_size && (s->initarg = malloc(h->in_size)))
        memcpy(s->initarg, in, h->in_size);
    if (init)
        init(s->initarg);
    reply_add(&s->reply, init ? 0 : MP_EINVAL, 0, NULL, 0);
}

static void server_run(struct server *s, const struct request *h, const unsigned char *in)
{
    mp_fn fn = (mp_fn)server_resolve(s, &h->fn);
    for (uint64_t i = 0; i < h->count; i++) {
        int code = 0;
        s->out.len = 0;
        if (fn)
            code = fn(in + i * h->in_size, h->in_size, &s->out);
        if (reply_add(&s->reply, fn ? 0 : MP_EINVAL, code, s->out.data, s->out.len) != 0)
            reply_add(&s->reply, MP_ENOMEM, 0, NULL, 0);
    }
}

static bool request_valid(const mp_buf *b, struct request *h)
{
    if (b->len < sizeof *h)
        return false;
    memcpy(h, b->data, sizeof *h);
    size_t body = b->len - sizeof *h;
    if (h->op == OP_RUN)
        return h->count && h->in_size <= body / h->count && h->in_size * h->count == body;
    return h->op == OP_STOP || (h->op == OP_INIT && h->count == 1 && h->in_size == body);
}

/* The life of ranks 1..N-1: requests in order, one reply each, until STOP. */
static void serve(void)
{
    struct server s = { 0 };
    for (;;) {
        struct request h;
        if (mpi_recv(0, TAG_REQUEST, &s.in, (struct mpi_limit){ 0 }) != 0)
            break;                      /* rank 0 is gone */
        if (!request_valid(&s.in, &h)) {
            fprintf(stderr, "mproc: rank %d: malformed request\n", mpi_world.rank);
            break;
        }
        if (h.op == OP_STOP)
            break;
        const unsigned char *in = (const unsigned char *)s.in.data + sizeof h;
        s.reply.len = 0;
        if (h.op == OP_INIT)
            server_init(&s, &h, in);
        else
            server_run(&s, &h, in);
        MPI_Request req;
        if (mpi_isend(s.reply.data, s.reply.len, 0, TAG_REPLY, &req) != 0 ||
            mpi_wait(&req, (struct mpi_limit){ 0 }) != 0)
            break;
    }
    free(s.initarg);
    mp_buf_free(&s.in);
    mp_buf_free(&s.reply);
    mp_buf_free(&s.out);
}

/* ------------------------------------------------------------------ the job */

static void at_exit(void)
{
    if (getpid() != mpi_world.pid)
        return;                         /* a forked child calling exit: not the job's */
    if (!ranks_shutdown()) {            /* a rank lost or still driven: never hang in Finalize */
        fprintf(stderr, "mproc: a rank could not be stopped cleanly (lost, or still running a "
                        "call abandoned by terminate or task_timeout after 10 s): "
                        "ending the MPI job\n");
        fflush(NULL);
        _exit(1);                       /* mpirun then ends the job (MPI_Abort can wedge it) */
    }
    MPI_Finalize();
}

__attribute__((constructor)) static void take_ranks_aside(void)
{
    if (!under_mpirun())
        return;
    int provided = MPI_THREAD_SINGLE;
    /* Only rank 0 calls MPI from several threads: its proxies. */
    const char *r = getenv("OMPI_COMM_WORLD_RANK");
    int want = r && atoi(r) != 0 ? MPI_THREAD_FUNNELED : MPI_THREAD_MULTIPLE;
    if (MPI_Init_thread(NULL, NULL, want, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "mproc: MPI_Init_thread failed\n");
        _exit(1);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &mpi_world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mpi_world.size);
    mpi_world.active = true;
    mpi_world.pid = getpid();
    char pid[24];
    snprintf(pid, sizeof pid, "%ld", (long)mpi_world.pid);
    setenv("MPROC_MPI_PID", pid, 1);
    if (mpi_world.rank != 0) {
        serve();
        MPI_Finalize();
        _exit(0);
    }
    mpi_world.serialize = provided < MPI_THREAD_MULTIPLE;
    mpi_world.usable = provided >= MPI_THREAD_SERIALIZED;
    ranks_setup(mpi_world.size);
    atexit(at_exit);                    /* before any pool's: runs after they stop */
}

int mp_mpi_rank(void)
{
    return mpi_world.rank;
}

int mp_mpi_size(void)
{
    return mpi_world.size;
}

int mp_mpi_relaunch(int nranks, char **argv)
{
    if (mpi_world.active)
        return 0;
    if (nranks < 1 || !argv || !argv[0])
        return MP_EINVAL;
    if (getenv("MPROC_MPI_RELAUNCHED"))
        return MP_ESTATE;               /* mpirun ran us, yet no rank is set: don't loop */
    int argc = 0;
    while (argv[argc])
        argc++;
    char np[16];
    snprintf(np, sizeof np, "%d", nranks);
    char **args = calloc((size_t)argc + 8, sizeof *args);
    if (!args)
        return MP_ENOMEM;
    char self[4096];                    /* argv[0] may not be a path mpirun can find */
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len > 0)
        self[len] = '\0';
    const char *mpirun = getenv("MPROC_MPIRUN");   /* Open MPI's, elsewhere than PATH */
    int n = 0;
    args[n++] = mpirun && *mpirun ? (char *)mpirun : "mpirun";
    if (geteuid() == 0)
        args[n++] = "--allow-run-as-root";
    args[n++] = "--oversubscribe";
    args[n++] = "-np";
    args[n++] = np;
    for (int i = 0; i < argc; i++)
        args[n++] = i == 0 && len > 0 ? self : argv[i];
    setenv("MPROC_MPI_RELAUNCHED", "1", 1);
    fflush(NULL);
    execvp(args[0], args);
    int rc = -errno;
    unsetenv("MPROC_MPI_RELAUNCHED");
    free(args);
    return rc;
}
