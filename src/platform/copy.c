/* copy.c - copying big blocks past the cache.
 *
 * A copy of many megabytes cannot stay in cache, and ordinary stores make the
 * CPU read every destination line before it overwrites it: three bytes of
 * memory traffic per byte copied. Streaming (non-temporal) stores write whole
 * lines without reading them: two. glibc's memcpy switches to them only past
 * a threshold derived from the reported last-level cache, 480 MiB on the VMs
 * this was measured on, so a 64 MiB copy ran at ~6 GB/s there against ~8
 * streamed. SSE2's streaming store is in every x86-64; other CPUs use memcpy.
 */
#include "internal.h"

#include <string.h>

#if defined(__x86_64__)
#include <emmintrin.h>

void copy_big(void *dst, const void *src, size_t n)
{
    if (n < COPY_STREAM_MIN) {
        memcpy(dst, src, n);
        return;
    }
    char *d = dst;
    const char *s = src;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15;   /* streaming stores want 16-byte alignment */
    memcpy(d, s, head);
    size_t i = head;
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(s + i + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(const void *)(s + i + 48));
        _mm_stream_si128((__m128i *)(void *)(d + i), a);
        _mm_stream_si128((__m128i *)(void *)(d + i + 16), b);
        _mm_stream_si128((__m128i *)(void *)(d + i + 32), c);
        _mm_stream_si128((__m128i *)(void *)(d + i + 48), e);
    }
    memcpy(d + i, s + i, n - i);
    _mm_sfence();            /* streamed stores are weakly ordered: finish them here */
}

#else

void copy_big(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
}

#endif
