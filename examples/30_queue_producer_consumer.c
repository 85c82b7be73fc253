/* 30_queue_producer_consumer.c - JoinableQueue: three cooks, two daemon eaters, main waits on q.join() */
/*
 * The Python tutorials' bun shop: producers put buns into one queue, consumers take them
 * and call task_done() for each; the main process waits on mp_queue_join()
 * until every bun put has been eaten. The eaters loop forever, so they are
 * daemons: they end with the main process. The queue lives in the family's
 * shared arena, so the handle passed to each child just works.
 */
#include <mproc.h>

#include <stdio.h>
#include <unistd.h>

struct cook { mp_queue *q; const char *name, *food; };
struct eater { mp_queue *q; const char *name; };

static int cook(void *arg)
{
    struct cook *c = arg;
    for (int i = 0; i < 3; i++) {
        char bun[64];
        int n = snprintf(bun, sizeof bun, "%s #%d", c->food, i);
        usleep(20000 + 10000 * (unsigned)i);          /* baking takes a while */
        mp_queue_put(c->q, bun, (size_t)n, MP_FOREVER);
        printf("  %-8s made   %s\n", c->name, bun);
    }
    return 0;                                         /* put has returned: nothing to flush */
}

static int eat(void *arg)
{
    struct eater *e = arg;
    char bun[64];
    size_t len;
    while (mp_queue_get(e->q, bun, sizeof bun - 1, &len, MP_FOREVER) == 0) {
        bun[len] = '\0';
        usleep(30000);                                /* eating takes longer */
        printf("  %-8s ate    %s\n", e->name, bun);
        mp_queue_task_done(e->q);                     /* "this one is handled" */
    }
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_queue *q;
    if (mp_queue_new(&q, &(mp_queue_opts){ .maxsize = 30 }) != 0)
        return 1;
    struct cook cooks[] = { { q, "Jason", "marsala" }, { q, "Asan", "flatbread" },
                            { q, "Arun", "durian" } };
    struct eater eaters[] = { { q, "Afei" }, { q, "Xiaofei" } };
    mp_process *e[2], *c[3];

    printf("Two daemon eaters wait on a JoinableQueue(30); three cooks start baking.\n");
    for (int i = 0; i < 2; i++) {
        mp_process_new(&e[i], eat, &eaters[i], &(mp_process_opts){ .daemon = true });
        mp_process_start(e[i]);
    }
    for (int i = 0; i < 3; i++) {
        mp_process_new(&c[i], cook, &cooks[i], NULL);
        mp_process_start(c[i]);
    }
    for (int i = 0; i < 3; i++)
        mp_process_join(c[i], MP_FOREVER);
    printf("All cooks are done (joining them never blocks on unsent data).\n");

    int rc = mp_queue_join(q, 10.0);                  /* every bun put, got and task_done */
    printf("q.join() returned %s: all 9 buns were eaten, the queue holds %zu.\n",
           rc == 0 ? "0" : mp_errname(rc), mp_queue_qsize(q));
    printf("Main ends here; the daemon eaters, still waiting for buns, end with it.\n");
    return rc == 0 ? 0 : 1;
}
