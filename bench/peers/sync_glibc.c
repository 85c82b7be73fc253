/* sync_glibc.c - the lock workloads of bench/sync.c with glibc's own
 * process-shared objects: a robust process-shared pthread mutex (contender
 * "glibc robust mutex"), the same made recursive ("glibc robust recursive
 * mutex") and an unnamed process-shared sem_t ("glibc sem_t"), each in
 * MAP_SHARED memory. Robust, as mproc's lock is: a holder's death hands the
 * next locker EOWNERDEAD, which makes the mutex consistent and carries on.
 */
#include "peer.h"

#include <pthread.h>
#include <semaphore.h>

struct shared {
    pthread_mutex_t mutex, rmutex;
    sem_t sem;
    volatile long go;
    long count;
};

static void lock(pthread_mutex_t *m)
{
    if (pthread_mutex_lock(m) == EOWNERDEAD)
        pthread_mutex_consistent(m);
}

static int mutex_init(pthread_mutex_t *m, int type)
{
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    rc = rc ? rc : pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    rc = rc ? rc : pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    rc = rc ? rc : pthread_mutexattr_settype(&a, type);
    rc = rc ? rc : pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return rc;
}

static double mutex_rep(void *arg)
{
    pthread_mutex_t *m = arg;
    double t0 = bench_now();
    for (long i = 0; i < S_UNCONTENDED; i++) {
        lock(m);
        pthread_mutex_unlock(m);
    }
    return bench_per_op_ns(t0, S_UNCONTENDED);
}

static double sem_rep(void *arg)
{
    sem_t *s = arg;
    double t0 = bench_now();
    for (long i = 0; i < S_UNCONTENDED; i++) {
        while (sem_wait(s) != 0)
            ;                               /* EINTR */
        sem_post(s);
    }
    return bench_per_op_ns(t0, S_UNCONTENDED);
}

/* bench/sync.c's lock_contended_2proc: two processes each take the mutex
 * S_CONTENDED times and add one to a shared counter inside. */
static void contend(struct shared *s)
{
    while (!s->go)
        ;
    for (long i = 0; i < S_CONTENDED; i++) {
        lock(&s->mutex);
        s->count++;
        pthread_mutex_unlock(&s->mutex);
    }
}

static double contended_rep(void *arg)
{
    struct shared *s = arg;
    s->go = 0;
    s->count = 0;
    pid_t pid = fork();
    if (pid == 0) {
        contend(s);
        _exit(0);
    }
    if (pid < 0)
        return NAN;
    usleep(10000);                          /* let the child reach the start line */
    double t0 = bench_now();
    s->go = 1;
    contend(s);
    bool ok = peer_reap(pid) == 0;
    double ns = bench_per_op_ns(t0, 2 * S_CONTENDED);
    return ok && s->count == 2 * S_CONTENDED ? ns : NAN;
}

int main(int argc, char **argv)
{
    struct shared *s = peer_shared(sizeof *s);
    if (!s || mutex_init(&s->mutex, PTHREAD_MUTEX_NORMAL) ||
        mutex_init(&s->rmutex, PTHREAD_MUTEX_RECURSIVE) || sem_init(&s->sem, 1, 1)) {
        fprintf(stderr, "peer sync_glibc: cannot create the objects\n");
        return 1;
    }
    if (bench_selected(argc, argv, "lock_uncontended"))
        bench_peer_row("lock_uncontended", bench_median_of(bench_reps(5), mutex_rep, &s->mutex),
                       "ns", BENCH_LOWER, "glibc robust mutex");
    if (bench_selected(argc, argv, "rlock_uncontended"))
        bench_peer_row("rlock_uncontended", bench_median_of(bench_reps(5), mutex_rep, &s->rmutex),
                       "ns", BENCH_LOWER, "glibc robust recursive mutex");
    if (bench_selected(argc, argv, "semaphore_uncontended"))
        bench_peer_row("semaphore_uncontended", bench_median_of(bench_reps(5), sem_rep, &s->sem),
                       "ns", BENCH_LOWER, "glibc sem_t");
    if (bench_selected(argc, argv, "lock_contended_2proc"))
        bench_peer_row("lock_contended_2proc", bench_median_of(bench_reps(5), contended_rep, s),
                       "ns", BENCH_LOWER, "glibc robust mutex");
    return 0;
}
