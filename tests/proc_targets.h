/* proc_targets.h - process targets that live in a shared library, so spawn
 * and the fork server are seen to find functions outside the executable. */
#ifndef MPROC_PROC_TARGETS_H
#define MPROC_PROC_TARGETS_H

struct lib_job { int a, b; int *out; };   /* out: shared memory, or NULL */

int lib_target_sum(void *arg);            /* *out = a + b; returns a + b */
int lib_target_raise(void *arg);          /* raises the signal *(int *)arg */

#endif
