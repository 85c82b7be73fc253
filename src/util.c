/* util.c - deadlines, mp_buf and the version: small things every file uses.
 *
 * A timeout becomes an absolute CLOCK_MONOTONIC deadline once, at the start
 * of a call, and every retry (EINTR, spurious wake-up) is measured against it.
 */
#include "internal.h"
#include "platform/valgrind_check.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
}

mp_deadline deadline_in(double timeout)
{
    mp_deadline d = { { 0, 0 }, false };
    if (timeout < 0 || isinf(timeout) || timeout > 1e9) {
        d.forever = true;
        return d;
    }
    clock_gettime(CLOCK_MONOTONIC, &d.at);
    double whole = floor(timeout);
    d.at.tv_sec += (time_t)whole;
    d.at.tv_nsec += (long)((timeout - whole) * 1e9);
    if (d.at.tv_nsec >= 1000000000L) {
        d.at.tv_sec++;
        d.at.tv_nsec -= 1000000000L;
    }
    return d;
}

bool deadline_passed(const mp_deadline *d)
{
    return !d->forever && deadline_left(d) <= 0;
}

double deadline_left(const mp_deadline *d)
{
    if (d->forever)
        return 1e18;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double left = (double)(d->at.tv_sec - now.tv_sec) + (double)(d->at.tv_nsec - now.tv_nsec) / 1e9;
    return left > 0 ? left : 0;
}

int deadline_poll_ms(const mp_deadline *d)
{
    if (d->forever)
        return -1;
    double ms = ceil(deadline_left(d) * 1000.0);
    return ms < (double)INT_MAX ? (int)ms : INT_MAX;
}

MP_TEST_HOOK bool (*mp__buf_refuse_alloc)(size_t cap);

int mp_buf_reserve(mp_buf *b, size_t cap)
{
    if (!b)
        return mp_fail(MP_EINVAL, __func__, "b is NULL");
    if (b->cap >= cap)
        return 0;
    if (cap > PTRDIFF_MAX)                 /* no allocator can give this */
        return mp_fail(MP_ENOMEM, __func__, "%zu bytes is more than any allocation can be", cap);
    size_t want = b->cap ? b->cap : 64;
    while (want < cap)
        want = want > PTRDIFF_MAX / 2 ? cap : want * 2;
    void *p = mp__buf_refuse_alloc && mp__buf_refuse_alloc(cap) ? NULL : realloc(b->data, want);
    if (!p)
        return MP_ENOMEM;
    b->data = p;
    b->cap = want;
    return 0;
}

int mp_buf_append(mp_buf *b, const void *data, size_t len)
{
    if (!b || (!data && len))
        return mp_fail(MP_EINVAL, __func__, !b ? "b is NULL" : "data is NULL but len is %zu", len);
    if (len > SIZE_MAX - b->len)
        return mp_fail(MP_ETOOBIG, __func__, "len %zu would overflow the buffer's size", len);
    /* data may be b's own bytes (Python's ba += ba), which growing moves. */
    uintptr_t at = (uintptr_t)data, base = (uintptr_t)b->data;
    bool own = b->data && at >= base && at < base + b->cap;
    int rc = mp_buf_reserve(b, b->len + len);
    if (rc != 0)
        return rc;
    if (own)
        data = (char *)b->data + (at - base);
    if (len)
        memmove((char *)b->data + b->len, data, len);
    b->len += len;
    return 0;
}

void mp_buf_free(mp_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

unsigned mp_version(void)
{
    return MP_VERSION_HEX;
}

const char *mp_version_string(void)
{
    return "0.1.0";
}

int mem_range_check(const char *fn, const char *what, const void *data, size_t len)
{
    if (len > (size_t)PTRDIFF_MAX || (uintptr_t)data + len < (uintptr_t)data)
        return mp_fail(MP_ETOOBIG, fn, "%s's length %zu is more than any buffer can hold (at "
                       "most PTRDIFF_MAX bytes); pass the buffer's real length", what, len);
    /* Under valgrind the probe is its own error (msync's range must be
     * defined memory there), and valgrind reports a bad range itself. */
    if (len < MEM_CHECK_MIN || RUNNING_ON_VALGRIND)
        return 0;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), start = (uintptr_t)data & ~(page - 1);
    if (msync((void *)start, (uintptr_t)data + len - start, MS_ASYNC) != 0 && errno == ENOMEM)
        return mp_fail(MP_EINVAL, fn, "%s..%s+%zu runs past this process's memory; pass the "
                       "buffer's real length", what, what, len);
    return 0;
}
