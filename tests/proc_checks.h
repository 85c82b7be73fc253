/* proc_checks.h - checks on mp_process shared by test_process.c and
 * test_spawn.c. */
#ifndef MPROC_PROC_CHECKS_H
#define MPROC_PROC_CHECKS_H

#include "testutil.h"

/* Asks is_alive and join(p, 0) over and over until p is joined (10 s at
 * most): they must agree at every moment, and once is_alive says no,
 * join(p, 0) joins. */
/* Joins p (bounded), frees it and gives its exit code. */
static inline int finish(mp_process *p)
{
    int code = -1000;
    TU_OK(mp_process_join(p, 20 * tu_slow()));
    TU_OK(mp_process_exitcode(p, &code));
    TU_OK(mp_process_free(p));
    return code;
}

static inline void join_zero_agrees_with_is_alive(mp_process *p)
{
    double end = tu_now() + 10 * tu_slow();
    int joined;
    do {
        bool alive = mp_process_is_alive(p);
        joined = mp_process_join(p, 0);
        assert_true(joined == 0 || joined == MP_ETIMEDOUT);
        if (!alive)
            TU_OK(joined);
        if (joined == 0)
            assert_false(mp_process_is_alive(p));
    } while (joined != 0 && tu_now() < end);
    TU_OK(joined);
}

#endif
