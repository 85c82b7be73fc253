/* fnref.c - naming a function so another image of the program can find it.
 *
 * dladdr gives the object a function lives in and that object's load base;
 * (object path, offset) survives exec, ASLR and a different load order. The
 * main executable is named "" because its path may differ between images.
 */
#include "internal.h"

#include <dlfcn.h>
#include <link.h>
#include <string.h>

/* What fnref needs to know of the main executable, found once per process
 * (it cannot change, and a forked child inherits it): its base as dladdr
 * reports it (its ELF header) and the ranges of its loaded segments, so a
 * function in it is named and found without dladdr or dlopen, that is,
 * without the loader's lock: a fork while another thread holds that lock
 * leaves the child unable to take it (ThreadSanitizer's interceptors
 * deadlock so). No pthread_once for the same reason: a child forked while
 * another thread ran it would wait for good. The first caller claims the
 * work; a caller arriving meanwhile looks things up itself, uncached. */
#define MAIN_SEGMENTS_MAX 16

struct main_image {
    uintptr_t base;
    size_t nseg;
    struct { uintptr_t lo, hi; } seg[MAIN_SEGMENTS_MAX];
};

static struct main_image cached;
static _Atomic int cached_state;        /* 0 unknown, 1 being found, 2 found */

/* The base through the main program's dynamic section, which is always its own. */
static uintptr_t find_main_base(void)
{
    void *h = dlopen(NULL, RTLD_NOW | RTLD_NOLOAD);
    struct link_map *lm = NULL;
    uintptr_t base = 0;
    Dl_info info;
    if (h && dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && dladdr((void *)lm->l_ld, &info))
        base = (uintptr_t)info.dli_fbase;
    if (h)
        dlclose(h);
    return base;
}

/* dl_iterate_phdr lists the main program first. */
static int find_main_segments(struct dl_phdr_info *info, size_t size, void *ctx)
{
    struct main_image *m = ctx;
    (void)size;
    for (size_t i = 0; i < info->dlpi_phnum && m->nseg < MAIN_SEGMENTS_MAX; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t lo = (uintptr_t)info->dlpi_addr + (uintptr_t)ph->p_vaddr;
        m->seg[m->nseg].lo = lo;
        m->seg[m->nseg++].hi = lo + (uintptr_t)ph->p_memsz;
    }
    return 1;
}

static const struct main_image *main_image(struct main_image *uncached)
{
    int state = atomic_load_explicit(&cached_state, memory_order_acquire);
    if (state == 2)
        return &cached;
    int expected = 0;
    bool mine = state == 0 && atomic_compare_exchange_strong(&cached_state, &expected, 1);
    struct main_image *m = mine ? &cached : uncached;
    memset(m, 0, sizeof *m);
    m->base = find_main_base();
    if (m->base)
        dl_iterate_phdr(find_main_segments, m);
    if (mine)
        atomic_store_explicit(&cached_state, m->base ? 2 : 0, memory_order_release);
    return m;
}

static bool in_main(const struct main_image *m, uintptr_t a)
{
    for (size_t i = 0; i < m->nseg; i++)
        if (a >= m->seg[i].lo && a < m->seg[i].hi)
            return true;
    return false;
}

int fnref_from(const void *fn, fnref *out)
{
    Dl_info info;
    struct main_image uncached;
    if (!fn || !out)
        return MP_EINVAL;
    memset(out, 0, sizeof *out);
    const struct main_image *m = main_image(&uncached);
    if (m->base && in_main(m, (uintptr_t)fn)) {
        out->offset = (uint64_t)((uintptr_t)fn - m->base);
        return 0;
    }
    if (!dladdr(fn, &info) || !info.dli_fbase)
        return MP_EINVAL;
    out->offset = (uint64_t)((uintptr_t)fn - (uintptr_t)info.dli_fbase);
    if (m->base && (uintptr_t)info.dli_fbase == m->base)
        return 0;
    if (!info.dli_fname || strlen(info.dli_fname) >= sizeof out->object)
        return MP_EINVAL;
    strcpy(out->object, info.dli_fname);
    return 0;
}

struct find { const char *object; uintptr_t base; bool found; };

static int find_object(struct dl_phdr_info *info, size_t size, void *ctx)
{
    struct find *f = ctx;
    (void)size;
    if (!info->dlpi_name || strcmp(info->dlpi_name, f->object) != 0)
        return 0;
    f->base = (uintptr_t)info->dlpi_addr;   /* shared objects are linked at 0 */
    f->found = true;
    return 1;
}

void *fnref_resolve(const fnref *r)
{
    if (!r || memchr(r->object, '\0', sizeof r->object) == NULL)
        return NULL;
    if (r->object[0] == '\0') {
        struct main_image uncached;
        uintptr_t base = main_image(&uncached)->base;
        return base ? (void *)(base + (uintptr_t)r->offset) : NULL;
    }
    struct find f = { r->object, 0, false };
    dl_iterate_phdr(find_object, &f);
    if (!f.found) {
        /* Loaded by the parent at run time: load it here too, and keep it. */
        if (!dlopen(r->object, RTLD_NOW | RTLD_GLOBAL))
            return NULL;
        dl_iterate_phdr(find_object, &f);
    }
    return f.found ? (void *)(f.base + (uintptr_t)r->offset) : NULL;
}
