/* 31_queue_sentinel_vs_shutdown.c - two ways to tell consumers "no more work": sentinels, or mp_queue_shutdown */
/*
 * Python's classic ending puts one None per consumer; a consumer stops when it
 * gets one. mproc has no None, but an empty (0-byte) item plays the part. The
 * newer way (Queue.shutdown in Python 3.13) needs no counting: after
 * mp_queue_shutdown, puts fail with MP_ECLOSED and gets drain what is left,
 * then return MP_EEOF to every consumer, blocked ones included.
 */
#include <mproc.h>

#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

enum { CONSUMERS = 2, ITEMS = 6 };

static int consume(mp_queue *q, int id, int *count)
{
    char item[32];
    size_t len;
    int rc;
    while ((rc = mp_queue_get(q, item, sizeof item - 1, &len, MP_FOREVER)) == 0) {
        if (len == 0) {
            printf("  consumer %d: got the sentinel, stopping after %d items\n", id, *count);
            return 0;
        }
        item[len] = '\0';
        (*count)++;
        usleep(10000);
    }
    printf("  consumer %d: get returned %s, stopping after %d items\n", id, mp_errname(rc), *count);
    return 0;
}

static void run(bool use_shutdown)
{
    mp_queue *q;
    mp_queue_new(&q, NULL);
    pid_t pid[CONSUMERS];
    for (int c = 0; c < CONSUMERS; c++)
        if ((pid[c] = fork()) == 0) {
            int count = 0;
            _exit(consume(q, c, &count));
        }
    for (int i = 0; i < ITEMS; i++) {
        char item[32];
        int n = snprintf(item, sizeof item, "job %d", i);
        mp_queue_put(q, item, (size_t)n, MP_FOREVER);
    }
    if (use_shutdown) {
        mp_queue_shutdown(q);
        int rc = mp_queue_put(q, "late", 4, MP_FOREVER);
        printf("  main: shut the queue down; a late put returns %s\n", mp_errname(rc));
    } else {
        for (int c = 0; c < CONSUMERS; c++)
            mp_queue_put(q, "", 0, MP_FOREVER);     /* one sentinel per consumer */
        printf("  main: put %d jobs and %d sentinels\n", ITEMS, CONSUMERS);
    }
    for (int c = 0; c < CONSUMERS; c++)
        waitpid(pid[c], NULL, 0);
    printf("  main: both consumers have ended; %zu items left\n", mp_queue_qsize(q));
    mp_queue_free(q);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("1. Ending by sentinel: the producer must know how many consumers there are.\n");
    run(false);
    printf("2. Ending by mp_queue_shutdown: consumers drain the queue, then see MP_EEOF.\n");
    run(true);
    return 0;
}
