/* old_binary.c - a program as it was built against the first contract
 * (MPROC_0.1: libmproc.so.0 without symbol versions), when mp_pool_opts
 * and mp_process_opts were shorter. Each struct it passes ends exactly at a
 * page that cannot be read, so a library that reads past the old size
 * crashes it. run.sh links it against an unversioned stand-in and runs it
 * against the installed library. */
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct mp_pool mp_pool;
typedef struct mp_process mp_process;
typedef int (*mp_target)(void *arg);
struct pool_opts {                    /* mp_pool_opts of the first contract */
    int processes;
    void (*initializer)(void *arg); void *initarg; size_t initarg_size;
    int maxtasksperchild;
    int method, backend;
    double task_timeout;
};
struct process_opts {                 /* mp_process_opts of the first contract */
    const char *name;
    bool daemon;
    int method;
    size_t arg_size;
};
int mp_pool_new(mp_pool **p, const struct pool_opts *o);
int mp_pool_close(mp_pool *p);
int mp_pool_join(mp_pool *p, double timeout);
void mp_pool_free(mp_pool *p);
int mp_process_new(mp_process **p, mp_target target, void *arg, const struct process_opts *o);
int mp_process_start(mp_process *p);
int mp_process_join(mp_process *p, double timeout);
int mp_process_exitcode(mp_process *p, int *code);
int mp_process_free(mp_process *p);

static int target(void *arg) { (void)arg; return 7; }

/* Room for n bytes that end where an unreadable page begins. */
static void *at_page_end(size_t n)
{
    long page = sysconf(_SC_PAGESIZE);
    char *m = mmap(NULL, 2 * (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(m + page, (size_t)page, PROT_NONE) != 0)
        return NULL;
    return m + page - n;
}

int main(void)
{
    struct pool_opts *po = at_page_end(sizeof *po);
    struct process_opts *qo = at_page_end(sizeof *qo);
    if (!po || !qo)
        return 2;
    *po = (struct pool_opts){ .processes = 1, .backend = 1 /* MP_THREADS */ };
    *qo = (struct process_opts){ .name = "old", .method = 1 /* MP_FORK */ };
    mp_pool *pool;
    if (mp_pool_new(&pool, po) != 0)
        return 3;
    mp_pool_close(pool);
    if (mp_pool_join(pool, 30) != 0)
        return 4;
    mp_pool_free(pool);
    mp_process *p;
    int code = -1;
    if (mp_process_new(&p, target, NULL, qo) != 0 || mp_process_start(p) != 0 ||
        mp_process_join(p, 30) != 0 || mp_process_exitcode(p, &code) != 0 || code != 7)
        return 5;
    mp_process_free(p);
    puts("old binary ran");
    return 0;
}
