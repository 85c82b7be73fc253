/* 17_forkserver.c - three start methods side by side: fork, spawn, forkserver */
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

static int whose_child(void *arg)
{
    pid_t *parent = arg;          /* shared memory: the answer comes back */
    *parent = getppid();
    return 0;
}

static int nothing(void *arg)
{
    (void)arg;
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    const char *names[] = { "", "fork", "spawn", "forkserver" };
    pid_t *parent = mp_shared_alloc(sizeof *parent);
    printf("main is pid %d\n", getpid());
    for (int m = MP_FORK; m <= MP_FORKSERVER; m++) {
        mp_process *p;
        mp_process_new(&p, whose_child, parent, &(mp_process_opts){ .method = (mp_start_method)m });
        mp_process_start(p);
        mp_process_join(p, MP_FOREVER);
        printf("  %-10s child %d: OS parent %d%s\n", names[m], mp_process_pid(p), *parent,
               *parent == getpid() ? " (main)" : " (the fork server, started on first use)");
        mp_process_free(p);
    }

    printf("\nstart + join of a child that does nothing, 50 times each:\n");
    for (int m = MP_FORK; m <= MP_FORKSERVER; m++) {
        double t0 = now();
        for (int i = 0; i < 50; i++) {
            mp_process *p;
            mp_process_new(&p, nothing, NULL, &(mp_process_opts){ .method = (mp_start_method)m });
            mp_process_start(p);
            mp_process_join(p, MP_FOREVER);
            mp_process_free(p);
        }
        printf("  %-10s %8.0f us each\n", names[m], (now() - t0) / 50 * 1e6);
    }
    printf("fork copies this process; spawn runs the program afresh (exec, dynamic\n"
           "loading); forkserver forks a small clean server that never ran main.\n");
    mp_shared_free(parent);
    return 0;
}
