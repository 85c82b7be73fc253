/* 13_join.c - join waits for a child; started together, children run at once */
#include <mproc.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int task(void *arg)
{
    int n = *(int *)arg;
    usleep((useconds_t)n * 100000);     /* "work" for n tenths of a second */
    printf("  task %d done after %.1f s\n", n, n / 10.0);
    return n;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    int ns[3] = { 3, 1, 2 };
    mp_process *p[3];
    double t0 = now();
    for (int i = 0; i < 3; i++) {
        /* arg_size copies the int into the child, as args=(n,) would */
        mp_process_new(&p[i], task, &ns[i], &(mp_process_opts){ .arg_size = sizeof ns[i] });
        mp_process_start(p[i]);
    }
    printf("all three started; main goes on at once (%.2f s)\n", now() - t0);
    for (int i = 0; i < 3; i++) {
        int code;
        mp_process_join(p[i], MP_FOREVER);
        mp_process_exitcode(p[i], &code);
        printf("joined %s: exit code %d\n", mp_process_name(p[i]), code);
        mp_process_free(p[i]);
    }
    printf("total %.1f s: the longest task, not the sum (0.6 s), since they ran together\n",
           now() - t0);

    /* A join can give up: the timeout says how long we are willing to wait. */
    mp_process *slow;
    int n = 5;
    mp_process_new(&slow, task, &n, &(mp_process_opts){ .arg_size = sizeof n });
    mp_process_start(slow);
    int rc = mp_process_join(slow, 0.1);
    printf("join(0.1 s) on a 0.5 s task: %s; it is still alive: %d\n",
           mp_errname(rc), mp_process_is_alive(slow));
    mp_process_join(slow, MP_FOREVER);
    mp_process_free(slow);
    return 0;
}
