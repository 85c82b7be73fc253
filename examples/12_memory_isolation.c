/* 12_memory_isolation.c - each process has its own memory; shared memory is opt-in */
#include <mproc.h>
#include <stdio.h>

static int num = 100;       /* an ordinary global */

static int change_global(void *arg)
{
    (void)arg;
    num = 0;
    printf("  [child ] set num = %d\n", num);
    return 0;
}

static int change_shared(void *arg)
{
    int *shared = arg;
    *shared = 0;
    printf("  [child ] set *shared = %d\n", *shared);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* lines in order, even into a pipe */
    printf("A child gets a copy of the parent's memory, not the memory itself:\n");
    mp_process *p;
    mp_process_new(&p, change_global, NULL, NULL);
    mp_process_start(p);
    mp_process_join(p, MP_FOREVER);
    mp_process_free(p);
    printf("  [parent] num is still %d: the child changed its own copy\n", num);

    printf("\nMemory from mp_shared_alloc is the same bytes in every process:\n");
    int *shared = mp_shared_alloc(sizeof *shared);
    *shared = 100;
    mp_process_new(&p, change_shared, shared, NULL);   /* the pointer itself, no copy */
    mp_process_start(p);
    mp_process_join(p, MP_FOREVER);
    mp_process_free(p);
    printf("  [parent] *shared is now %d\n", *shared);
    mp_shared_free(shared);
    return 0;
}
