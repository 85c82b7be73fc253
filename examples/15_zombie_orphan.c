/* 15_zombie_orphan.c - zombies and orphans, seen in /proc */
#include <mproc.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* The state letter of /proc/<pid>/stat: R running, S sleeping, Z zombie;
 * '-' once the entry is gone. */
static char state_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '-';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *end = strrchr(buf, ')');
    return end ? end[2] : '?';
}

static int quick(void *arg)
{
    (void)arg;
    return 0;
}

struct orphan { _Atomic pid_t pid, first_parent, new_parent; _Atomic int go; };

static int grandchild(void *arg)
{
    struct orphan *o = arg;
    o->first_parent = getppid();
    o->pid = getpid();
    while (getppid() == o->first_parent)   /* until someone adopts us */
        usleep(1000);
    o->new_parent = getppid();
    return 0;
}

static int dies_early(void *arg)
{
    struct orphan *o = arg;
    mp_process *g;
    mp_process_new(&g, grandchild, o, NULL);
    mp_process_start(g);
    while (!atomic_load(&o->pid))
        usleep(1000);
    _exit(0);           /* leaves at once, without joining its child */
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    printf("Zombie: a child that has ended but was not yet waited for.\n");
    mp_process *p;
    mp_process_new(&p, quick, NULL, NULL);
    mp_process_start(p);
    pid_t pid = mp_process_pid(p);
    for (int i = 0; i < 5000 && state_of(pid) != 'Z'; i++)
        usleep(1000);
    printf("  child %d has returned; its state in /proc is '%c' (zombie): the kernel keeps\n"
           "  its exit status until the parent collects it\n", pid, state_of(pid));
    mp_process_join(p, MP_FOREVER);
    printf("  after join the state is '%c': the entry is gone, no zombie outlives a join\n",
           state_of(pid));
    mp_process_free(p);

    printf("\nOrphan: a child whose parent ended before it.\n");
    prctl(PR_SET_CHILD_SUBREAPER, 1);   /* adopt orphans ourselves instead of pid 1 */
    struct orphan *o = mp_shared_alloc(sizeof *o);
    mp_process_new(&p, dies_early, o, NULL);
    mp_process_start(p);
    mp_process_join(p, MP_FOREVER);
    mp_process_free(p);
    int st;
    waitpid(o->pid, &st, 0);            /* adopted: now ours to reap */
    printf("  grandchild %d was born to pid %d; that parent exited without waiting for it,\n"
           "  so the kernel re-parented it to pid %d (us: main is pid %d, a subreaper;\n"
           "  otherwise it would have been init, pid 1), which reaped it in the end\n",
           o->pid, o->first_parent, o->new_parent, getpid());
    mp_shared_free(o);
    return 0;
}
