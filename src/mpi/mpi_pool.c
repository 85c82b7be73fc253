/* mpi_pool.c - the pool's MPI backend: one proxy thread on rank 0 per rank.
 *
 * A proxy is a pool worker like any other (pool_worker_main claims and
 * finishes its tasks in the arena) whose runner ships each call, or a whole
 * map chunk at once, to its rank and waits for the answer. A proxy the pool
 * kills (terminate, task_timeout) stops waiting and ends as if its process
 * died; the rank still finishes that call, so its reply is owed and is read
 * and dropped before the rank gets anything else.
 */
#include "mpi_internal.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define STATUS_LOST 255                 /* the rank's MPI calls failed: MP_ECRASHED */
#define EXIT_WAIT_NS 10000000000ull     /* at exit, for calls abandoned on ranks */

struct proxy {
    mp_pool *pool;
    int slot, rank;
    struct task_runner runner;
    pthread_t thread;
    int efd;                            /* the pool's monitor polls it: readable at the end */
    _Atomic bool abandon;               /* killed: stop waiting */
    _Atomic bool exited;
    int status;                         /* pool_worker_main's, or -SIGKILL, STATUS_LOST */
    bool gone;                          /* a call said WORKER_GONE: every later one does */
    mp_buf req, reply;
    size_t pos, left;                   /* next item in reply, items not yet taken */
    const unsigned char *next_in;       /* prefetched: the input the next call must bring */
    size_t in_size;
};

struct rank_state {                     /* in rank 0, one per remote rank */
    mp_pool *owner;
    bool fault;                         /* fault injection: MPI "reports it lost" */
    struct proxy *proxy;
    bool lost;
    int owed;                           /* replies to requests whose proxy left */
    MPI_Request send;                   /* a send its proxy left unfinished */
    void *send_buf;
};

static struct {
    pthread_mutex_t lock;               /* owner, proxy */
    struct rank_state *ranks;
    int n;
} R = { PTHREAD_MUTEX_INITIALIZER, NULL, 0 };

/* MPROC_MPI_FAULT_LOSE_RANK=r makes every call to rank r fail as an MPI
 * that survives a dead rank would (ULFM): Open MPI 4 cannot, so the tests
 * reach the MP_ECRASHED path this way. */
void ranks_setup(int size)
{
    R.ranks = calloc((size_t)size, sizeof *R.ranks);
    R.n = R.ranks ? size : 0;
    const char *lose = getenv("MPROC_MPI_FAULT_LOSE_RANK");
    int r = lose ? atoi(lose) : 0;
    if (r > 0 && r < R.n)
        R.ranks[r].fault = true;
}

/* ------------------------------------------------------------------ the exchange */

/* Reads and drops what the rank still owes from abandoned requests. */
static int settle(struct rank_state *st, struct mpi_limit lim)
{
    int rc = 0;
    if (st->send_buf) {
        if ((rc = mpi_wait(&st->send, lim)) != 0)
            return rc;
        free(st->send_buf);
        st->send_buf = NULL;
    }
    mp_buf scratch = { 0 };
    while (st->owed > 0 && (rc = mpi_recv((int)(st - R.ranks), TAG_REPLY, &scratch, lim)) == 0)
        st->owed--;
    mp_buf_free(&scratch);
    return rc;
}

static bool reply_valid(const mp_buf *b, size_t count)
{
    size_t at = 0;
    for (size_t i = 0; i < count; i++) {
        struct reply_item it;
        if (b->len - at < sizeof it)
            return false;
        memcpy(&it, (unsigned char *)b->data + at, sizeof it);
        if (it.len > b->len - at - sizeof it)
            return false;
        at += ITEM_SIZE(it.len);
    }
    return at == b->len;
}

/* Sends one request and waits for its reply: 0, WORKER_GONE (killed or the
 * rank lost; then x->status says which). */
static int exchange(struct proxy *x, uint32_t op, const fnref *fn, const void *in,
                    size_t in_size, size_t count)
{
    struct rank_state *st = &R.ranks[x->rank];
    struct request h = { .op = op, .fn = *fn, .in_size = in_size, .count = count };
    size_t body = in_size * count;
    x->left = 0;
    if (mp_buf_reserve(&x->req, sizeof h + body) != 0)
        return MP_ENOMEM;
    memcpy(x->req.data, &h, sizeof h);
    if (body)
        memcpy((unsigned char *)x->req.data + sizeof h, in, body);
    MPI_Request send;
    int rc = st->fault ? MP_ECRASHED
                       : mpi_isend(x->req.data, sizeof h + body, x->rank, TAG_REQUEST, &send);
    if (rc == MP_ETOOBIG || rc == MP_ENOMEM)
        return rc;
    if (rc == 0) {
        st->owed++;
        rc = mpi_wait(&send, (struct mpi_limit){ &x->abandon, 0 });
        if (rc == WORKER_GONE) {         /* MPI may still read the buffer: the rank keeps it */
            st->send = send;
            st->send_buf = x->req.data;
            x->req = (mp_buf){ 0 };
        }
    }
    if (rc == 0)
        rc = mpi_recv(x->rank, TAG_REPLY, &x->reply, (struct mpi_limit){ &x->abandon, 0 });
    if (rc == 0 && !reply_valid(&x->reply, count))
        rc = MP_EPROTO;
    if (rc == 0) {
        st->owed--;
        x->pos = 0;
        x->left = count;
        return 0;
    }
    if (rc != WORKER_GONE) {
        st->lost = true;
        x->status = STATUS_LOST;
    } else {
        x->status = -SIGKILL;
    }
    x->gone = true;
    return WORKER_GONE;
}

static int take_item(struct proxy *x, mp_buf *out, int *code)
{
    struct reply_item it;
    const unsigned char *p = (const unsigned char *)x->reply.data + x->pos;
    memcpy(&it, p, sizeof it);
    x->pos += ITEM_SIZE(it.len);
    x->left--;
    *code = it.code;
    if (it.len && mp_buf_reserve(out, it.len) != 0)
        return MP_ENOMEM;
    if (it.len)
        memcpy(out->data, p + sizeof it, it.len);
    out->len = it.len;
    return it.rc;
}

static int proxy_call(void *ctx, const struct fnentry *e, const void *in, size_t len, mp_buf *out,
                      int *code)
{
    struct proxy *x = ctx;
    if (x->gone)
        return WORKER_GONE;
    if (x->left && (in != x->next_in || len != x->in_size))
        x->left = 0;                    /* a chunk ended early: its prefetch is stale */
    if (x->left) {
        x->next_in = x->next_in ? x->next_in + len : NULL;   /* in_size 0: no input */
    } else {
        int rc = exchange(x, OP_RUN, &e->ref, in, len, 1);
        if (rc != 0)
            return rc;
    }
    return take_item(x, out, code);
}

static void proxy_prefetch(void *ctx, const struct job *job, size_t from, size_t to)
{
    struct proxy *x = ctx;
    if (x->gone || from >= to)
        return;
    const unsigned char *in = job->in ? job->in + from * job->in_size : NULL;   /* in_size 0 */
    if (exchange(x, OP_RUN, &job->fn->ref, in, job->in_size, to - from) == 0) {
        x->next_in = in;
        x->in_size = job->in_size;
    }
}

/* ------------------------------------------------------------------ a proxy's life */

static int proxy_initializer(struct proxy *x, struct pool_shared *sh)
{
    int code;
    mp_buf none = { 0 };
    int rc = exchange(x, OP_INIT, &sh->init_ref, sh->initarg, sh->initarg_size, 1);
    if (rc != 0)
        return rc == WORKER_GONE ? x->status : 127;
    rc = take_item(x, &none, &code);
    mp_buf_free(&none);
    return rc == 0 ? 0 : 127;           /* not found on the rank: a failed start */
}

static void *proxy_main(void *arg)
{
    struct proxy *x = arg;
    struct pool_shared *sh = mp__pool_shared_of(x->pool);
    int rc = settle(&R.ranks[x->rank], (struct mpi_limit){ &x->abandon, 0 });
    if (rc != 0)
        x->status = rc == WORKER_GONE ? -SIGKILL : STATUS_LOST;
    else if (!sh->has_init || (x->status = proxy_initializer(x, sh)) == 0) {
        struct worker_arg a = { sh, x->slot, &x->runner };
        if (mp__pool_worker_main(&a) == 0)
            x->status = 0;              /* else exchange set it */
    }
    atomic_store(&x->exited, true);
    uint64_t one = 1;
    ssize_t w = write(x->efd, &one, sizeof one);
    (void)w;
    return NULL;
}

/* ------------------------------------------------------------------ the backend */

static struct rank_state *rank_of(int slot)
{
    return slot + 1 < R.n ? &R.ranks[slot + 1] : NULL;
}

static void proxy_free(struct proxy *x)
{
    if (x->efd >= 0)
        close(x->efd);
    mp_buf_free(&x->req);
    mp_buf_free(&x->reply);
    free(x);
}

static int mpi_start(mp_pool *p, int slot)
{
    struct pool_shared *sh = mp__pool_shared_of(p);
    struct rank_state *st = rank_of(slot);
    if (!st || (sh->initarg && !sh->initarg_size))
        return MP_EINVAL;               /* a pointer means nothing on another rank */
    pthread_mutex_lock(&R.lock);
    int rc = st->lost ? MP_EBROKEN : st->owner && st->owner != p ? MP_ESTATE : 0;
    if (rc == 0)
        st->owner = p;                  /* one MPI pool at a time owns a rank */
    pthread_mutex_unlock(&R.lock);
    if (rc != 0)
        return rc;
    struct proxy *x = calloc(1, sizeof *x);
    if (!x)
        return MP_ENOMEM;
    *x = (struct proxy){ .pool = p, .slot = slot, .rank = slot + 1 };
    x->runner = (struct task_runner){ proxy_call, proxy_prefetch, x };
    x->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (x->efd < 0 || (rc = -pthread_create(&x->thread, NULL, proxy_main, x)) != 0) {
        proxy_free(x);
        return rc ? rc : MP_ENOMEM;
    }
    st->proxy = x;
    return 0;
}

static bool mpi_ended(mp_pool *p, int slot, int *status)
{
    struct proxy *x = rank_of(slot)->proxy;
    if (!atomic_load(&x->exited))
        return false;
    pthread_join(x->thread, NULL);
    *status = x->status;
    return true;
}

static int mpi_kill(mp_pool *p, int slot)
{
    atomic_store(&rank_of(slot)->proxy->abandon, true);
    return 0;
}

static int mpi_sentinel(mp_pool *p, int slot)
{
    return rank_of(slot)->proxy->efd;
}

static void mpi_release(mp_pool *p, int slot)
{
    struct rank_state *st = rank_of(slot);
    pthread_mutex_lock(&R.lock);
    proxy_free(st->proxy);
    st->proxy = NULL;
    st->owner = NULL;
    pthread_mutex_unlock(&R.lock);
}

static void mpi_stop(mp_pool *p, int slot)
{
    mpi_kill(p, slot);
    pthread_join(rank_of(slot)->proxy->thread, NULL);
    mpi_release(p, slot);
}

/* All ranks but rank 0 by default; more than there are is an error. */
static int mpi_workers(int processes)
{
    if (!mpi_world.active || !mpi_world.usable || mpi_world.size < 2 || !R.ranks ||
        getpid() != mpi_world.pid)
        return MP_ESTATE;
    if (processes > mpi_world.size - 1)
        return MP_EINVAL;
    return processes ? processes : mpi_world.size - 1;
}

static const struct pool_backend mpi_backend = {
    "mpi", mpi_start, mpi_ended, mpi_kill, mpi_sentinel, mpi_release, mpi_stop, mpi_workers,
};

/* Loading libmproc_mpi is what makes MP_MPI available to mp_pool_new. */
MP_SETUP_CONSTRUCTOR static void register_backend(void)
{
    mp__pool_register_mpi(&mpi_backend);
}

/* At exit, after every pool has stopped: each rank gets what it is owed
 * read, up to EXIT_WAIT_NS in all, then STOP. If any rank cannot be settled
 * none is stopped, so that no rank sits in MPI_Finalize when mpirun ends
 * the job (Open MPI 4.1's mpirun can crash tearing such a job down); false
 * then: MPI_Finalize would wait forever. */
bool ranks_shutdown(void)
{
    struct mpi_limit lim = { NULL, mpi_clock_ns() + EXIT_WAIT_NS };
    for (int r = 1; r < R.n; r++) {
        struct rank_state *st = &R.ranks[r];
        if (st->lost || st->proxy || settle(st, lim) != 0)
            return false;
    }
    struct request h = { .op = OP_STOP };
    bool all = true;
    for (int r = 1; r < R.n; r++) {
        MPI_Request req;
        if (mpi_isend(&h, sizeof h, r, TAG_REQUEST, &req) != 0 || mpi_wait(&req, lim) != 0)
            all = false;
    }
    return all;
}
