/* 34_queue_survives_kill.c - kill -9 a consumer in the middle of its work: the queue carries on */
/*
 * With Python's multiprocessing.Queue, a process killed while it holds the
 * queue's internal lock leaves the queue wedged for everyone else. mproc's
 * queue commits every put and get with one store and keeps a journal, and its
 * locks are robust: the next process to take a lock a dead one held finishes
 * or rolls back what the dead one was doing. Here two consumers share the
 * work; one is SIGKILLed half-way; the other still gets every item that was
 * not already handed to the dead one - none twice. Every item is marked done
 * (a JoinableQueue): Python's join would wait for ever for the item the
 * dead one took; mproc's returns MP_EBROKEN and says how many were lost.
 */
#include <mproc.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

enum { ITEMS = 200000 };

struct tally { uint64_t got, sum; };

static void consume(mp_queue *q, struct tally *t)
{
    uint64_t x;
    size_t len;
    while (mp_queue_get(q, &x, sizeof x, &len, MP_FOREVER) == 0) {
        t->got++;
        t->sum += x;
        mp_queue_task_done(q);
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_queue *q;
    mp_queue_new(&q, NULL);
    struct tally *t = mp_shared_alloc(2 * sizeof *t);
    pid_t victim = fork();
    if (victim == 0) {
        consume(q, &t[0]);
        _exit(0);
    }
    pid_t survivor = fork();
    if (survivor == 0) {
        consume(q, &t[1]);
        _exit(0);
    }
    uint64_t sum = 0;
    for (uint64_t x = 1; x <= ITEMS; x++) {
        mp_queue_put(q, &x, sizeof x, MP_FOREVER);
        sum += x;
        if (x == ITEMS / 2) {
            kill(victim, SIGKILL);                    /* wherever it is: maybe inside a get */
            waitpid(victim, NULL, 0);
            printf("Killed consumer %d with SIGKILL after %d puts.\n", (int)victim, ITEMS / 2);
        }
    }
    mp_queue_shutdown(q);                             /* the survivor drains, then sees MP_EEOF */
    waitpid(survivor, NULL, 0);
    uint64_t got = t[0].got + t[1].got;
    printf("The dead consumer had counted %llu items, the survivor got %llu: %llu of %d.\n",
           (unsigned long long)t[0].got, (unsigned long long)t[1].got,
           (unsigned long long)got, ITEMS);
    /* At most one item can be missing: the one the victim had taken but not yet counted. */
    bool ok = (got == ITEMS && t[0].sum + t[1].sum == sum) || got == ITEMS - 1;
    printf("%s\n", ok ? "Nothing was lost (beyond what the dead one took) and nothing came twice."
                      : "Items were lost or duplicated!");
    int rc = mp_queue_join(q, 10);                    /* Python's would hang if one was lost */
    if (rc == 0)
        printf("join: every item was marked done (the victim died between two items).\n");
    else if (rc == MP_EBROKEN)
        printf("join returned at once: %s\n", mp_last_error());
    else
        ok = false;
    mp_shared_free(t);
    mp_queue_free(q);
    return ok ? 0 : 1;
}
