/* ringcopy.h - copies into and out of a byte ring that wraps around.
 *
 * A ring is cap bytes at data, cap a power of two; a position is a byte
 * count since the ring began (it never wraps itself), so its place is
 * pos & (cap - 1) (a mask: a division by a cap known only at run time
 * costs tens of cycles). A copy that runs past the end goes on at the
 * start. Used by the pipe ring (pipe_ring.c) and the queue's segments
 * (queue.c).
 */
#ifndef MPROC_PLATFORM_RINGCOPY_H
#define MPROC_PLATFORM_RINGCOPY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* n bytes from src into the ring at pos; n <= cap. */
static inline void ringcopy_in(uint8_t *data, uint64_t cap, uint64_t pos, const void *src, size_t n)
{
    size_t off = (size_t)(pos & (cap - 1)), first = (size_t)cap - off;
    if (n == 0)
        return;                             /* src may be NULL then */
    if (n <= first) {
        memcpy(data + off, src, n);         /* the usual case: one copy, inlined when n is small */
        return;
    }
    memcpy(data + off, src, first);
    memcpy(data, (const char *)src + first, n - first);
}

/* n bytes of the ring at pos into dst; n <= cap. */
static inline void ringcopy_out(const uint8_t *data, uint64_t cap, uint64_t pos, void *dst, size_t n)
{
    size_t off = (size_t)(pos & (cap - 1)), first = (size_t)cap - off;
    if (n == 0)
        return;                             /* dst may be NULL then */
    if (n <= first) {
        memcpy(dst, data + off, n);
        return;
    }
    memcpy(dst, data + off, first);
    memcpy((char *)dst + first, data, n - first);
}

#endif
