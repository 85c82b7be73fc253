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

/* The main executable's base as dladdr reports it (its ELF header), found
 * through its dynamic section, which is always its own. */
static uintptr_t main_base(void)
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

int fnref_from(const void *fn, fnref *out)
{
    Dl_info info;
    if (!fn || !out)
        return MP_EINVAL;
    memset(out, 0, sizeof *out);
    if (!dladdr(fn, &info) || !info.dli_fbase)
        return MP_EINVAL;
    out->offset = (uint64_t)((uintptr_t)fn - (uintptr_t)info.dli_fbase);
    if ((uintptr_t)info.dli_fbase == main_base())
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
        uintptr_t base = main_base();
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
