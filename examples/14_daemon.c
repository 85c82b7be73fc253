/* 14_daemon.c - a daemon child dies with its parent; a normal child is waited for */
#include <mproc.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

struct flags { _Atomic int daemon_up, normal_up; _Atomic pid_t daemon_pid; };

static void wait_flag(_Atomic int *f)
{
    for (int i = 0; i < 5000 && !atomic_load(f); i++)
        usleep(1000);
}

static int steward(void *arg)           /* the daemon */
{
    struct flags *f = arg;
    printf("  daemon : steward is running\n");
    fflush(stdout);
    atomic_store(&f->daemon_up, 1);
    sleep(3);
    printf("  daemon : steward is over (never printed: it dies with main)\n");
    return 0;
}

static int worker(void *arg)            /* a normal child */
{
    struct flags *f = arg;
    printf("  normal : worker is running\n");
    fflush(stdout);
    atomic_store(&f->normal_up, 1);
    usleep(300000);
    printf("  normal : worker is over (main waited for it at exit)\n");
    return 0;
}

static int parent_that_gets_killed(void *arg)
{
    struct flags *f = arg;
    mp_process *d;
    mp_process_new(&d, steward, f, &(mp_process_opts){ .daemon = true });
    mp_process_start(d);
    atomic_store(&f->daemon_pid, mp_process_pid(d));
    wait_flag(&f->daemon_up);
    printf("  middle : now I am killed with SIGKILL: no atexit, no cleanup...\n");
    fflush(stdout);
    raise(SIGKILL);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    struct flags *f = mp_shared_alloc(sizeof *f);

    printf("Part 1: main starts a daemon and a normal child, then returns from main.\n");
    mp_process *d, *n;
    mp_process_new(&d, steward, f, &(mp_process_opts){ .daemon = true });
    mp_process_new(&n, worker, f, NULL);
    mp_process_start(d);
    mp_process_start(n);
    wait_flag(&f->daemon_up);
    wait_flag(&f->normal_up);

    printf("\nPart 2: ...but first, the same daemon under a parent that is SIGKILLed.\n");
    prctl(PR_SET_CHILD_SUBREAPER, 1);   /* orphans come to us, so we can see how they died */
    f->daemon_up = 0;
    mp_process *middle;
    mp_process_new(&middle, parent_that_gets_killed, f, NULL);
    mp_process_start(middle);
    mp_process_join(middle, MP_FOREVER);
    int st = 0;
    waitpid(atomic_load(&f->daemon_pid), &st, 0);
    printf("  main   : its daemon (pid %d) died too, by signal %d (SIGKILL from the kernel:\n"
           "           PR_SET_PDEATHSIG fires when the parent dies, however it dies)\n",
           atomic_load(&f->daemon_pid), WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    mp_process_free(middle);

    printf("\nmain returns: exit terminates the daemon and joins the worker.\n");
    fflush(stdout);
    return 0;           /* no join, no free: exit handling does the joining */
}
