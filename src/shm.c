/* shm.c - named shared memory, the same segments as Python's SharedMemory.
 *
 * A name is a POSIX shm name: like Python we put a '/' in front of the name
 * the caller gives and hand it back without it, so `mp_shm_new(&s, "abc", ..)`
 * and `SharedMemory(name="abc")` open one buffer. The handle is per process
 * (like Python's object): a forked child inherits it, a spawned one opens the
 * name again. The segment lives until mp_shm_unlink, as in POSIX.
 */
#include "internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

struct mp_shm {
    uint32_t magic;
    void *buf;
    size_t size;
    char name[];              /* with the leading '/' */
};

/* Python's _make_filename: "psm_" and 8 random hex digits. */
static void random_name(char *out, size_t cap)
{
    uint32_t r = 0;
    if (getrandom(&r, sizeof r, 0) != sizeof r)
        r = (uint32_t)now_ns() ^ (uint32_t)getpid() * 2654435761u;
    snprintf(out, cap, "/psm_%08x", r);
}

static int shm_open_named(const char *name, int flags)
{
    int oflag = O_RDWR | ((flags & MP_CREATE) ? O_CREAT : 0) | ((flags & MP_EXCL) ? O_EXCL : 0);
    int fd = shm_open(name, oflag, 0600);
    return fd < 0 ? -errno : fd;
}

/* Opens (or creates) the segment; *created tells whether this call made it. */
static int shm_open_any(char *name, size_t cap, const char *want, int flags, bool *created)
{
    *created = false;
    if (!want) {
        for (;;) {            /* a fresh random name, as Python does for name=None */
            random_name(name, cap);
            int fd = shm_open_named(name, MP_CREATE | MP_EXCL);
            if (fd != -EEXIST) {
                *created = fd >= 0;
                return fd;
            }
        }
    }
    snprintf(name, cap, "/%s", want);
    if ((flags & MP_CREATE) && !(flags & MP_EXCL)) {
        int fd = shm_open_named(name, MP_CREATE | MP_EXCL);
        if (fd != -EEXIST) {
            *created = fd >= 0;
            return fd;
        }
        return shm_open_named(name, 0);
    }
    int fd = shm_open_named(name, flags);
    *created = fd >= 0 && (flags & MP_CREATE);
    return fd;
}

/* Sizes the segment: a new one to size; an existing one keeps its own size,
 * which must hold the size asked for. */
static int shm_size_of(int fd, size_t want, bool created, size_t *size)
{
    if (created && ftruncate(fd, (off_t)want) != 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    *size = (size_t)st.st_size;
    return *size == 0 || *size < want ? MP_EINVAL : 0;
}

int mp_shm_new(mp_shm **out, const char *name, size_t size, int flags)
{
    if (!out)
        return MP_EINVAL;
    *out = NULL;
    if ((flags & ~(MP_CREATE | MP_EXCL)) || ((flags & MP_EXCL) && !(flags & MP_CREATE)) ||
        (!name && !(flags & MP_CREATE)) || ((flags & MP_CREATE) && size == 0) ||
        size > (size_t)INT64_MAX)
        return MP_EINVAL;
    size_t cap = (name ? strlen(name) : 12) + 2;
    mp_shm *s = calloc(1, sizeof *s + cap);
    if (!s)
        return MP_ENOMEM;
    bool created;
    int rc = shm_open_any(s->name, cap, name, flags, &created);
    if (rc < 0)
        goto fail;
    int fd = rc;
    rc = shm_size_of(fd, size, created, &s->size);
    if (rc == 0) {
        s->buf = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        rc = s->buf == MAP_FAILED ? -errno : 0;
    }
    close(fd);
    if (rc != 0) {
        if (created)
            shm_unlink(s->name);
        goto fail;
    }
    s->magic = MAGIC_SHM;
    *out = s;
    return 0;
fail:
    free(s);
    return rc;
}

static bool shm_ok(const mp_shm *s)
{
    return s && s->magic == MAGIC_SHM;
}

void *mp_shm_buf(const mp_shm *s)
{
    return shm_ok(s) ? s->buf : NULL;
}

size_t mp_shm_size(const mp_shm *s)
{
    return shm_ok(s) ? s->size : 0;
}

const char *mp_shm_name(const mp_shm *s)
{
    return shm_ok(s) ? s->name + 1 : NULL;
}

int mp_shm_unlink(mp_shm *s)
{
    if (!shm_ok(s))
        return MP_EINVAL;
    return shm_unlink(s->name) == 0 ? 0 : -errno;
}

void mp_shm_free(mp_shm *s)
{
    if (!shm_ok(s))
        return;
    s->magic = MAGIC_FREED;
    munmap(s->buf, s->size);
    free(s);
}
