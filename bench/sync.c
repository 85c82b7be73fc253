/* sync.c - benchmarks of the synchronisation objects (bench/sync.py is the
 * Python peer: multiprocessing.Lock, RLock, Semaphore, Event).
 *
 * lock_uncontended / rlock_uncontended / semaphore_uncontended: ns for one
 * acquire plus one release nobody else wants. lock_handoff_2proc: us per
 * hand-off between two processes, ping-ponging a pair of Events (one round
 * trip is two hand-offs). lock_contended_2proc: ns per acquire while two
 * processes each take the lock CONTENDED times, adding one to a shared
 * counter inside (checked at the end).
 */
#include "bench.h"
#include "mproc.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define UNCONTENDED 2000000
#define ROUND_TRIPS 20000
#define CONTENDED 1000000

static double lock_rep(void *arg)
{
    mp_lock *l = arg;
    double t0 = bench_now();
    for (long i = 0; i < UNCONTENDED; i++) {
        mp_lock_acquire(l, MP_FOREVER);
        mp_lock_release(l);
    }
    return bench_per_op_ns(t0, UNCONTENDED);
}

static double semaphore_rep(void *arg)
{
    mp_semaphore *s = arg;
    double t0 = bench_now();
    for (long i = 0; i < UNCONTENDED; i++) {
        mp_semaphore_acquire(s, MP_FOREVER);
        mp_semaphore_release(s);
    }
    return bench_per_op_ns(t0, UNCONTENDED);
}

struct contended { mp_lock *l; volatile long go; long count; };

static void contend(struct contended *c)
{
    while (!c->go)
        ;
    for (long i = 0; i < CONTENDED; i++) {
        mp_lock_acquire(c->l, MP_FOREVER);
        c->count++;
        mp_lock_release(c->l);
    }
}

static double contended_rep(void *arg)
{
    struct contended *c = arg;
    c->go = 0;
    c->count = 0;
    pid_t pid = fork();
    if (pid == 0) {
        contend(c);
        _exit(0);
    }
    usleep(10000);                          /* let the child reach the start line */
    double t0 = bench_now();
    c->go = 1;
    contend(c);
    int st;
    waitpid(pid, &st, 0);
    double ns = bench_per_op_ns(t0, 2 * CONTENDED);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 && c->count == 2 * CONTENDED ? ns : NAN;
}

struct pingpong { mp_event *ping, *pong; };

static int pong_side(struct pingpong *p, long n)
{
    for (long i = 0; i < n; i++) {
        if (mp_event_wait(p->ping, 10) != 0)
            return 1;
        mp_event_clear(p->ping);
        mp_event_set(p->pong);
    }
    return 0;
}

static double handoff_rep(void *arg)
{
    struct pingpong *p = arg;
    pid_t pid = fork();
    if (pid == 0)
        _exit(pong_side(p, ROUND_TRIPS));
    double t0 = bench_now();
    bool ok = true;
    for (long i = 0; i < ROUND_TRIPS && ok; i++) {
        mp_event_set(p->ping);
        ok = mp_event_wait(p->pong, 10) == 0;
        mp_event_clear(p->pong);
    }
    double us = bench_per_op_ns(t0, 2 * ROUND_TRIPS) / 1000;
    int st;
    if (!ok)
        kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return ok && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? us : NAN;
}

int main(int argc, char **argv)
{
    mp_lock *l, *rl;
    mp_semaphore *s;
    struct pingpong *p = mp_shared_alloc(sizeof *p);
    struct contended *c = mp_shared_alloc(sizeof *c);
    if (!p || !c || mp_lock_new(&l) || mp_rlock_new(&rl) || mp_semaphore_new(&s, 1) ||
        mp_event_new(&p->ping) || mp_event_new(&p->pong)) {
        fprintf(stderr, "bench_sync: cannot create the objects\n");
        return 1;
    }
    if (bench_selected(argc, argv, "lock_uncontended"))
        bench_row("lock_uncontended", bench_median_of(bench_reps(5), lock_rep, l), "ns", BENCH_LOWER);
    if (bench_selected(argc, argv, "rlock_uncontended"))
        bench_row("rlock_uncontended", bench_median_of(bench_reps(5), lock_rep, rl), "ns", BENCH_LOWER);
    if (bench_selected(argc, argv, "semaphore_uncontended"))
        bench_row("semaphore_uncontended", bench_median_of(bench_reps(5), semaphore_rep, s), "ns",
                  BENCH_LOWER);
    c->l = l;
    if (bench_selected(argc, argv, "lock_contended_2proc"))
        bench_row("lock_contended_2proc", bench_median_of(bench_reps(5), contended_rep, c), "ns",
                  BENCH_LOWER);
    if (bench_selected(argc, argv, "lock_handoff_2proc"))
        bench_row("lock_handoff_2proc", bench_median_of(bench_reps(5), handoff_rep, p), "us",
                  BENCH_LOWER);
    mp_event_free(p->ping);
    mp_event_free(p->pong);
    mp_shared_free(p);
    mp_shared_free(c);
    mp_semaphore_free(s);
    mp_lock_free(rl);
    mp_lock_free(l);
    return 0;
}
