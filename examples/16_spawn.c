/* 16_spawn.c - the spawn start method: a fresh program, and no main guard needed */
#include <mproc.h>
#include <stdio.h>
#include <unistd.h>

static int num = 100;             /* initial value, as compiled */

static int show(void *arg)
{
    const char *label = arg;      /* the copied bytes of the label */
    printf("  [%s child] %s pid %d, parent pid %d (%s); it sees num = %d\n", label,
           mp_process_name(mp_current_process()), getpid(), getppid(),
           mp_process_name(mp_parent_process()), num);
    return 0;
}

static void run(mp_start_method m, const char *label)
{
    mp_process *p;
    mp_process_new(&p, show, (void *)label,
                   &(mp_process_opts){ .method = m, .arg_size = 6 });   /* "fork"/"spawn" + NUL */
    mp_process_start(p);
    mp_process_join(p, MP_FOREVER);
    mp_process_free(p);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    /* Under Python's spawn this line would run again in every child unless
     * main were guarded by `if __name__ == "__main__"`. Here it runs once: the
     * library takes a spawned child aside before main and runs only its target. */
    printf("main starts (pid %d) - printed once, however many children spawn\n", getpid());
    num = 200;
    printf("main sets num = %d\n\n", num);

    run(MP_FORK, "fork ");
    printf("  a forked child is a copy of this process as it is now: num = 200\n\n");

    run(MP_SPAWN, "spawn");
    printf("  a spawned child is a fresh run of the program (/proc/self/exe): it sees the\n"
           "  initial num = 100, and anything it needs comes through its argument or\n"
           "  shared memory (mp_shared_alloc), which lives at the same address in both\n");
    return 0;
}
