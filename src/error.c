/* error.c - the MP_E* codes, their names, and the last error's message.
 *
 * Codes are -errno where one fits and mproc's own (below -1000) otherwise;
 * mp_strerror and mp_errname accept any int and never return NULL.
 * A failing call also leaves a sentence in a per-thread buffer (mp_fail),
 * read with mp_last_error; a success leaves it alone, as Python leaves
 * sys.last_exc, so it means something only right after an error.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
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

/* ------------------------------------------------------------------ last error */

#define LAST_ERROR_MAX 512

static __thread char last_error[LAST_ERROR_MAX];
/* The code of a message a helper recorded without a call's name (fn NULL),
 * 0 once a public call has named it: mp_fail_code names it then. */
static __thread int unnamed_rc;

const char *mp_last_error(void)
{
    return last_error;
}

/* A format without '%' is copied as is: timeouts on a polling loop stay cheap. */
static void put_message(size_t at, const char *fmt, va_list ap)
{
    if (!strchr(fmt, '%')) {
        size_t n = strlen(fmt), room = LAST_ERROR_MAX - 1 - at;
        n = n < room ? n : room;
        memcpy(last_error + at, fmt, n);
        last_error[at + n] = '\0';
        return;
    }
    vsnprintf(last_error + at, LAST_ERROR_MAX - at, fmt, ap);
}

int mp_fail(int rc, const char *fn, const char *fmt, ...)
{
    int saved = errno;
    size_t at = 0;
    if (fn) {
        size_t n = strlen(fn);
        at = n + 2 < LAST_ERROR_MAX / 2 ? n + 2 : 0;
        if (at) {
            memcpy(last_error, fn, n);
            memcpy(last_error + n, ": ", 2);
        }
    }
    va_list ap;
    va_start(ap, fmt);
    put_message(at, fmt, ap);
    va_end(ap);
    unnamed_rc = fn ? 0 : rc;
    errno = saved;
    return rc;
}

int mp_fail_code(int rc, const char *fn)
{
    if (rc >= 0)
        return rc;
    if (unnamed_rc != rc)
        return mp_fail(rc, fn, "%s (%s)", mp_strerror(rc), mp_errname(rc));
    size_t n = strlen(fn), len = strlen(last_error);
    if (n + 2 + len >= LAST_ERROR_MAX)
        len = LAST_ERROR_MAX - 1 - n - 2;
    memmove(last_error + n + 2, last_error, len);
    memcpy(last_error, fn, n);
    memcpy(last_error + n, ": ", 2);
    last_error[n + 2 + len] = '\0';
    unnamed_rc = 0;
    return rc;
}

int mp_fail_handle(const char *fn, const char *arg, const void *h)
{
    if (!h)
        return mp_fail(MP_EINVAL, fn, "%s is NULL", arg);
    /* relaxed: a pool's collector may free a detached handle as it is read */
    if (atomic_load_explicit((const _Atomic uint32_t *)h, memory_order_relaxed) == MAGIC_FREED)
        return mp_fail(MP_EINVAL, fn, "%s was freed or closed already; make a new one", arg);
    return mp_fail(MP_EINVAL, fn, "%s is not a live handle of that kind (another object, or garbage)", arg);
}

int mp_fail_timeout(const char *fn, double timeout)
{
    return mp_fail(MP_EINVAL, fn, "timeout %g is %s; use MP_FOREVER to wait for good, 0 not to "
                   "wait, or a positive number of seconds", timeout,
                   timeout != timeout ? "not a number" : "negative (a deadline already passed?)");
}
