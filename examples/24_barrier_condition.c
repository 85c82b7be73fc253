/* 24_barrier_condition.c - a Barrier keeps workers in step; a Condition hands work to a waiter */
#include <mproc.h>
#include <stdio.h>
#include <unistd.h>

struct team {
    mp_barrier *step;
    mp_condition *cond;
    int jobs;               /* guarded by cond's lock */
};

struct who { struct team *t; int id; };

/* Three phases; nobody starts phase k+1 before all finished phase k. The
 * party whose wait returns 0 speaks for the round. */
static int worker(void *arg)
{
    struct who *w = arg;
    for (int phase = 1; phase <= 3; phase++) {
        usleep((useconds_t)(w->id * 20000));          /* some are slower */
        int index = mp_barrier_wait(w->t->step, 10);
        if (index < 0)
            return 1;
        if (index == 0)
            printf("  phase %d done by all %d workers\n", phase, mp_barrier_parties(w->t->step));
    }
    return 0;
}

/* Sleeps until a job is there: wait releases the lock while asleep. */
static int consumer(void *arg)
{
    struct team *t = arg;
    mp_condition_acquire(t->cond, MP_FOREVER);
    while (t->jobs == 0)
        mp_condition_wait(t->cond, 10);
    t->jobs--;
    printf("  consumer woke up and took the job (%d left)\n", t->jobs);
    mp_condition_release(t->cond);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    struct team *t = mp_shared_alloc(sizeof *t);
    mp_barrier_new(&t->step, 3);
    mp_condition_new(&t->cond, NULL);

    printf("three worker processes, one Barrier(3):\n");
    mp_process *p[3];
    for (int i = 0; i < 3; i++) {
        struct who w = { t, i };
        mp_process_new(&p[i], worker, &w, &(mp_process_opts){ .arg_size = sizeof w });
        mp_process_start(p[i]);
    }
    for (int i = 0; i < 3; i++) {
        mp_process_join(p[i], MP_FOREVER);
        mp_process_free(p[i]);
    }

    printf("a Barrier(2) with only one party and a 0.2 s timeout:\n");
    mp_barrier *lonely;
    mp_barrier_new(&lonely, 2);
    int rc = mp_barrier_wait(lonely, 0.2);
    printf("  %s: the timeout broke it, for every waiter (BrokenBarrierError)\n", mp_errname(rc));
    mp_barrier_free(lonely);

    printf("a consumer process waits on a Condition; we add a job and notify it:\n");
    mp_process *c;
    mp_process_new(&c, consumer, t, NULL);
    mp_process_start(c);
    usleep(100000);
    mp_condition_acquire(t->cond, MP_FOREVER);
    t->jobs = 1;
    mp_condition_notify(t->cond, 1);
    mp_condition_release(t->cond);
    mp_process_join(c, MP_FOREVER);
    mp_process_free(c);

    mp_condition_free(t->cond);
    mp_barrier_free(t->step);
    mp_shared_free(t);
    return 0;
}
