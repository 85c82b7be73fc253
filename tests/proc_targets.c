/* proc_targets.c - the shared library of proc_targets.h. */
#include "proc_targets.h"

#include <signal.h>

int lib_target_sum(void *arg)
{
    struct lib_job *j = arg;
    if (j->out)
        *j->out = j->a + j->b;
    return j->a + j->b;
}

int lib_target_raise(void *arg)
{
    raise(*(int *)arg);
    return 0;
}
