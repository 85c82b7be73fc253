/* 30_queue_producer_consumer.c - JoinableQueue: three cooks, two daemon eaters, main waits on q.join() */
/*
 * The seeds' bun shop: producers put buns into one queue, consumers take them
 * and call task_done() for each; the main process waits on mp_queue_join()
 * until every bun put has been eaten, then stops the (daemon) eaters, which
 * would otherwise wait forever. Children are plain fork()s sharing the queue:
 * the queue lives in the family's shared arena, so the handle just works.
 */
#include <mproc.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void cook(mp_queue *q, const char *name, const char *food)
{
    for (int i = 0; i < 3; i++) {
        char bun[64];
        int n = snprintf(bun, sizeof bun, "%s #%d", food, i);
        usleep(20000 + 10000 * (unsigned)i);          /* baking takes a while */
        mp_queue_put(q, bun, (size_t)n, MP_FOREVER);
        printf("  %-8s made   %s\n", name, bun);
    }
}

static void eat(mp_queue *q, const char *name)
{
    char bun[64];
    size_t len;
    while (mp_queue_get(q, bun, sizeof bun - 1, &len, MP_FOREVER) == 0) {
        bun[len] = '\0';
        usleep(30000);                                /* eating takes longer */
        printf("  %-8s ate    %s\n", name, bun);
        mp_queue_task_done(q);                        /* "this one is handled" */
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_queue *q;
    if (mp_queue_new(&q, &(mp_queue_opts){ .maxsize = 30 }) != 0)
        return 1;
    static const char *cooks[][2] = { { "Jason", "marsala" }, { "Asan", "flatbread" },
                                      { "Arun", "durian" } };
    static const char *eaters[] = { "Afei", "Xiaofei" };
    pid_t eater_pid[2], cook_pid[3];

    printf("Two daemon eaters wait on a JoinableQueue(30); three cooks start baking.\n");
    for (int i = 0; i < 2; i++)
        if ((eater_pid[i] = fork()) == 0) {
            eat(q, eaters[i]);
            _exit(0);
        }
    for (int i = 0; i < 3; i++)
        if ((cook_pid[i] = fork()) == 0) {
            cook(q, cooks[i][0], cooks[i][1]);
            _exit(0);                                 /* put has returned: nothing to flush */
        }
    for (int i = 0; i < 3; i++)
        waitpid(cook_pid[i], NULL, 0);
    printf("All cooks are done (joining them never blocks on unsent data).\n");

    int rc = mp_queue_join(q, 10.0);                  /* every bun put, got and task_done */
    printf("q.join() returned %s: all %d buns were eaten, the queue holds %zu.\n",
           rc == 0 ? "0" : mp_errname(rc), 9, mp_queue_qsize(q));

    /* Daemon eaters end with the main process: stop them now. */
    for (int i = 0; i < 2; i++) {
        kill(eater_pid[i], SIGTERM);
        waitpid(eater_pid[i], NULL, 0);
    }
    printf("Main: the daemon eaters were stopped; bye.\n");
    mp_queue_free(q);
    return rc == 0 ? 0 : 1;
}
