/* 10_process_ids.c - who am I: pids, parent pids and process names */
#include <mproc.h>
#include <stdio.h>
#include <unistd.h>

/* A child learns about itself from the OS (getpid, getppid) and from mproc
 * (its record: name, parent). The parent sees the same pid from outside. */
static int introduce(void *arg)
{
    (void)arg;
    printf("  [child ] I am %-12s pid %d, my parent is pid %d (%s)\n",
           mp_process_name(mp_current_process()), getpid(), getppid(),
           mp_process_name(mp_parent_process()));
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    printf("The main program is itself a process: %s, pid %d (parent: the shell, pid %d).\n",
           mp_process_name(mp_current_process()), getpid(), getppid());

    /* A name of our own choosing, like Process(target=f1, name='welcome'). */
    mp_process *p;
    mp_process_new(&p, introduce, NULL, &(mp_process_opts){ .name = "welcome" });
    mp_process_start(p);
    printf("  [parent] started %s, its pid is %d\n", mp_process_name(p), mp_process_pid(p));
    mp_process_join(p, MP_FOREVER);
    mp_process_free(p);

    /* Default names count up per parent: Process-2, Process-3, ... */
    printf("\nThree more with default names; their parent pid is ours, %d:\n", getpid());
    mp_process *kids[3];
    for (int i = 0; i < 3; i++) {
        mp_process_new(&kids[i], introduce, NULL, NULL);
        mp_process_start(kids[i]);
        mp_process_join(kids[i], MP_FOREVER);   /* one at a time: tidy output */
    }
    for (int i = 0; i < 3; i++)
        mp_process_free(kids[i]);
    return 0;
}
