/* 11_terminate_is_alive.c - asking a process to stop, and checking it did */
#include <mproc.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static int works_forever(void *arg)
{
    (void)arg;
    for (;;)
        pause();            /* a worker with no end in sight */
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    mp_process *p;
    mp_process_new(&p, works_forever, NULL, NULL);
    printf("before start:      is_alive = %d\n", mp_process_is_alive(p));
    mp_process_start(p);
    printf("after start:       is_alive = %d (pid %d)\n", mp_process_is_alive(p), mp_process_pid(p));

    /* terminate() only sends SIGTERM: the kernel delivers it a moment later,
     * so right away the child may well still be alive. */
    mp_process_terminate(p);
    printf("right after terminate: is_alive = %d (the signal is on its way)\n",
           mp_process_is_alive(p));

    mp_process_join(p, 5.0);
    int code;
    mp_process_exitcode(p, &code);
    printf("after join:        is_alive = %d, exit code %d (= -SIGTERM, killed by signal %d)\n",
           mp_process_is_alive(p), code, -code);
    mp_process_free(p);

    /* kill() is the one that cannot be caught or ignored. */
    mp_process_new(&p, works_forever, NULL, NULL);
    mp_process_start(p);
    mp_process_kill(p);
    mp_process_join(p, 5.0);
    mp_process_exitcode(p, &code);
    printf("a killed process:  exit code %d (= -SIGKILL)\n", code);
    mp_process_free(p);
    return 0;
}
