/* error.c - the MP_E* codes and their names.
 *
 * Codes are -errno where one fits and mproc's own (below -1000) otherwise;
 * mp_strerror and mp_errname accept any int and never return NULL.
 */
#include "internal.h"

#include <string.h>

static const struct { int code; const char *name, *text; } codes[] = {
    { MP_EFULL, "MP_EFULL", "queue full" },
    { MP_EEMPTY, "MP_EEMPTY", "queue empty" },
    { MP_ECLOSED, "MP_ECLOSED", "object closed or shut down" },
    { MP_EEOF, "MP_EEOF", "end of file: peer closed or stream ended" },
    { MP_ETOOBIG, "MP_ETOOBIG", "message larger than the buffer or limit" },
    { MP_EAUTH, "MP_EAUTH", "authentication failed" },
    { MP_ESTATE, "MP_ESTATE", "wrong state for this call" },
    { MP_EOWNERDEAD, "MP_EOWNERDEAD", "lock acquired; its previous owner died holding it" },
    { MP_EBROKEN, "MP_EBROKEN", "broken: barrier, pool or manager unusable" },
    { MP_ETASK, "MP_ETASK", "task returned an error" },
    { MP_ECRASHED, "MP_ECRASHED", "worker running the task died" },
    { MP_ECANCELLED, "MP_ECANCELLED", "cancelled" },
    { MP_EKILLED, "MP_EKILLED", "task killed by the pool" },
    { MP_ENOTFOUND, "MP_ENOTFOUND", "no such key or name" },
    { MP_ETYPE, "MP_ETYPE", "stored value has another type" },
    { MP_ERANGE, "MP_ERANGE", "index out of range" },
    { MP_ECONFLICT, "MP_ECONFLICT", "compare-and-swap found another value" },
    { MP_EPROTO, "MP_EPROTO", "malformed message from peer" },
    { MP_EINVAL, "MP_EINVAL", "invalid argument" },
    { MP_ETIMEDOUT, "MP_ETIMEDOUT", "timeout expired" },
    { MP_ENOMEM, "MP_ENOMEM", "out of memory" },
};

int errno_to_mp(int err)
{
    return err > 0 ? -err : (err < 0 ? err : MP_EINVAL);
}

const char *mp_strerror(int rc)
{
    if (rc == 0)
        return "success";
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].code == rc)
            return codes[i].text;
    if (rc < 0 && rc > -4096) {
        const char *s = strerrordesc_np(-rc);
        if (s)
            return s;
    }
    return "unknown error";
}

const char *mp_errname(int rc)
{
    if (rc == 0)
        return "OK";
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].code == rc)
            return codes[i].name;
    if (rc < 0 && rc > -4096) {
        const char *s = strerrorname_np(-rc);
        if (s)
            return s;
    }
    return "UNKNOWN";
}
