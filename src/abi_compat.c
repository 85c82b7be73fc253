/* abi_compat.c - the calls of an older ABI whose options struct has since
 * grown, kept for the binaries built against it (docs/abi.md).
 *
 * A *_opts struct is never read past the size it had when the binary that
 * passes it was built. The library does not learn that size from the
 * struct: it learns it from the symbol version the binary asked for. Each
 * call taking an options struct binds, in a new build, to its current
 * version (mp_pool_new@@MPROC_0.2); when a struct grows, its calls get a new
 * version and the old version becomes a shim here that copies the old, shorter
 * struct into a zeroed current one (new fields: their defaults) and calls
 * the current version.
 *
 * MPROC_0.1 is the first contract (the Python tutorials' API before 0.2),
 * which libmproc.so.0 exported without versions: a binary of that time
 * asks for mp_pool_new unversioned, and the dynamic linker gives an
 * unversioned reference the oldest version there is, these shims. Since
 * then mp_pool_opts gained progress and progress_ctx, and mp_process_opts
 * pass_fds and n_pass_fds.
 */
#include "internal.h"

#include <stddef.h>
#include <string.h>

/* The options as the first contract had them: the current ones up to
 * their first later field. */
struct pool_opts_0_1 {
    int processes;
    void (*initializer)(void *arg); void *initarg; size_t initarg_size;
    int maxtasksperchild;
    mp_start_method method;  mp_backend backend;
    double task_timeout;
};
struct process_opts_0_1 {
    const char *name;
    bool daemon;
    mp_start_method method;
    size_t arg_size;
};
/* Each old struct is the start of the current one, field for field. */
_Static_assert(offsetof(mp_pool_opts, progress) == sizeof(struct pool_opts_0_1),
               "mp_pool_opts grew at its end only");
_Static_assert(offsetof(mp_pool_opts, task_timeout) == offsetof(struct pool_opts_0_1, task_timeout),
               "mp_pool_opts kept its 0.1 fields in place");
_Static_assert(offsetof(mp_process_opts, pass_fds) == sizeof(struct process_opts_0_1),
               "mp_process_opts grew at its end only");
_Static_assert(offsetof(mp_process_opts, arg_size) == offsetof(struct process_opts_0_1, arg_size),
               "mp_process_opts kept its 0.1 fields in place");

/* Bound as the versioned names, so they are not declared in mproc.h. */
MP_EXTERN int mp__pool_new_0_1(mp_pool **p, const struct pool_opts_0_1 *o);
MP_EXTERN int mp__process_new_0_1(mp_process **p, mp_target target, void *arg,
                                  const struct process_opts_0_1 *o);

int mp__pool_new_0_1(mp_pool **p, const struct pool_opts_0_1 *o)
{
    mp_pool_opts now;
    memset(&now, 0, sizeof now);
    if (o)
        memcpy(&now, o, sizeof *o);
    return mp_pool_new(p, o ? &now : NULL);
}
__asm__(".symver mp__pool_new_0_1,mp_pool_new@MPROC_0.1");

int mp__process_new_0_1(mp_process **p, mp_target target, void *arg,
                        const struct process_opts_0_1 *o)
{
    mp_process_opts now;
    memset(&now, 0, sizeof now);
    if (o)
        memcpy(&now, o, sizeof *o);
    return mp_process_new(p, target, arg, o ? &now : NULL);
}
__asm__(".symver mp__process_new_0_1,mp_process_new@MPROC_0.1");
