/* shm.c - named shared memory, the same segments as Python's SharedMemory.
 *
 * A name is a POSIX shm name: like Python we put a '/' in front of the name
 * the caller gives and hand it back without it, so `mp_shm_new(&s, "abc", ..)`
 * and `SharedMemory(name="abc")` open one buffer. The handle lives in the
 * arena, so it reaches every child; each process keeps its own mapping in a
 * small local list (a forked child inherits the parent's, a spawned one maps
 * the name on first use, as Python re-attaches by name). The segment lives
 * until mp_shm_unlink, as in POSIX.
 */
#include "internal.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define CREATOR_GRACE 1.0       /* seconds an empty segment's creator gets to size it */

struct mp_shm {                 /* in the arena */
    uint32_t magic;
    pid_t creator;              /* frees the handle; others only unmap */
    size_t size;
    dev_t dev;                  /* the segment itself: a name unlinked and made */
    ino_t ino;                  /* again is another one */
    uint64_t made;              /* when (now_ns): tells this handle from one freed at
                                 * the same address */
    char name[NAME_MAX + 3];    /* with the leading '/', and the caller's own if it gave one */
};

/* Where this process mapped each handle. A handle freed by its creator
 * leaves its mapping in the other processes until they look it up again:
 * then its address may hold another handle, which made tells apart. */
struct mapping {
    const mp_shm *shm;
    uint64_t made;
    void *buf;
    size_t size;
    struct mapping *next;
};

static struct {
    pthread_mutex_t lock;
    struct mapping *head;
} local = { PTHREAD_MUTEX_INITIALIZER, NULL };

/* Fork hooks (fork.c): the list's lock is held across the fork, so the
 * child's copy of the list is whole and its lock free. */
static void local_lock(void) { pthread_mutex_lock(&local.lock); }
static void local_unlock(void) { pthread_mutex_unlock(&local.lock); }

MP_SETUP_CONSTRUCTOR static void local_init(void)
{
    fork_hook_set(FORK_SHM, local_lock, local_unlock, local_unlock);
}

/* Under local.lock: where s's mapping is linked (*at NULL: none). One
 * left by a freed handle at s's address goes on the way. */
static struct mapping **mapping_of(const mp_shm *s)
{
    ASSERT_HELD(&local.lock);
    struct mapping **at = &local.head;
    while (*at && ((*at)->shm != s || (*at)->made != s->made)) {
        struct mapping *m = *at;
        if (m->shm != s) {
            at = &m->next;
            continue;
        }
        *at = m->next;
        munmap(m->buf, m->size);
        free(m);
    }
    return at;
}

static int mapping_add(const mp_shm *s, void *buf)
{
    struct mapping *m = malloc(sizeof *m);
    if (!m)
        return MP_ENOMEM;
    pthread_mutex_lock(&local.lock);
    m->shm = s;
    m->made = s->made;
    m->buf = buf;
    m->size = s->size;
    m->next = local.head;
    local.head = m;
    pthread_mutex_unlock(&local.lock);
    return 0;
}

static int map_fd(int fd, size_t size, void **buf)
{
    *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return *buf == MAP_FAILED ? -errno : 0;
}

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
static int shm_size_of(int fd, size_t want, bool created, bool maybe_new, mp_shm *s)
{
    /* A segment is sparse: one bigger than the room left where it lives
     * would be made, and its first write past that room would be SIGBUS. */
    struct statvfs fs;
    if (created && fstatvfs(fd, &fs) == 0 && fs.f_blocks &&
        want / fs.f_frsize > (uint64_t)fs.f_bavail)
        return -ENOSPC;
    if (created && ftruncate(fd, (off_t)want) != 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    /* Empty, asked for "new or existing": its maker, asking the same at
     * the same moment, may be between its shm_open and its ftruncate. (A
     * plain open of an empty segment fails at once, as Python's.) */
    mp_deadline d = deadline_in(maybe_new ? CREATOR_GRACE : 0);
    while (st.st_size == 0 && !deadline_passed(&d)) {
        usleep(1000);
        if (fstat(fd, &st) != 0)
            return -errno;
    }
    s->size = (size_t)st.st_size;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    return s->size == 0 || s->size < want ? MP_EINVAL : 0;
}

/* The first thing wrong with mp_shm_new's arguments, as a message; 0 if none. */
static int check_shm_args(const char *fn, const char *name, size_t size, int flags)
{
    if (flags & ~(MP_CREATE | MP_EXCL))
        return mp_fail(MP_EINVAL, fn, "flags 0x%x: only MP_CREATE and MP_EXCL are known", flags);
    if ((flags & MP_EXCL) && !(flags & MP_CREATE))
        return mp_fail(MP_EINVAL, fn, "MP_EXCL needs MP_CREATE too");
    if (!name && !(flags & MP_CREATE))
        return mp_fail(MP_EINVAL, fn, "name is NULL without MP_CREATE: which segment to open?");
    if ((flags & MP_CREATE) && size == 0)
        return mp_fail(MP_EINVAL, fn, "a new segment needs size > 0 (Python: ValueError)");
    if (size > (size_t)INT64_MAX)
        return mp_fail(MP_EINVAL, fn, "size %zu is too big", size);
    const char *word = name && name[0] == '/' ? name + 1 : name;   /* a leading '/' is kept */
    if (word && strlen(word) > NAME_MAX)     /* as shm_open says, past the leading '/' */
        return mp_fail(MP_EINVAL, fn, "name is %zu bytes after any leading '/'; at most %d",
                       strlen(word), NAME_MAX);
    if (word && !*word)
        return mp_fail(MP_EINVAL, fn, "name \"%s\" is empty; pass NULL with MP_CREATE for a "
                       "fresh one", name);
    if (word && (strcmp(word, ".") == 0 || strcmp(word, "..") == 0))
        return mp_fail(MP_EINVAL, fn, "name \"%s\" names a directory, not a segment", name);
    if (word && strchr(word, '/'))           /* shm_open's EINVAL, which would read as a size's */
        return mp_fail(MP_EINVAL, fn, "name \"%s\" has a '/' inside; a segment's name is one "
                       "word (as Python's SharedMemory name=)", name);
    return 0;
}

/* Why opening or sizing the segment failed. */
static int fail_open(int rc, const char *fn, const char *name, size_t size)
{
    if (rc == -EEXIST)
        return mp_fail(rc, fn, "segment \"%s\" exists already (MP_EXCL); open it with MP_CREATE "
                       "or 0, or unlink it", name);
    if (rc == -ENOENT)
        return mp_fail(rc, fn, "no segment \"%s\"; create it with MP_CREATE", name);
    if (rc == -ENOSPC)
        return mp_fail(rc, fn, "segment \"%s\" of %zu bytes: more than /dev/shm has room for "
                       "(a write past its room would kill the process with SIGBUS)", name, size);
    if (rc == MP_EINVAL)
        return mp_fail(rc, fn, "segment \"%s\" is empty or smaller than size %zu", name, size);
    return mp_fail(rc, fn, "segment \"%s\": %s", name, mp_strerror(rc));
}

int mp_shm_new(mp_shm **out, const char *name, size_t size, int flags)
{
    if (!out)
        return mp_fail(MP_EINVAL, __func__, "s (where the segment goes) is NULL");
    *out = NULL;
    int check = check_shm_args(__func__, name, size, flags);
    if (check != 0)
        return check;
    mp_shm *s = arena_alloc(sizeof *s);
    if (!s)
        return mp_fail(MP_ENOMEM, __func__, "the shared arena is full");
    s->made = now_ns();
    bool created;
    void *buf = NULL;
    int rc = shm_open_any(s->name, sizeof s->name, name, flags, &created);
    if (rc < 0)
        goto fail;
    int fd = rc;
    rc = shm_size_of(fd, size, created, (flags & MP_CREATE) != 0, s);
    if (rc == 0)
        rc = map_fd(fd, s->size, &buf);
    close(fd);
    if (rc == 0 && (rc = mapping_add(s, buf)) != 0)
        munmap(buf, s->size);
    if (rc != 0) {
        if (created)
            shm_unlink(s->name);
        goto fail;
    }
    s->creator = getpid();
    s->magic = MAGIC_SHM;
    *out = s;
    return 0;
fail:
    rc = fail_open(rc, __func__, name ? name : s->name + 1, size);
    arena_free(s);
    return rc;
}

static bool shm_ok(const mp_shm *s)
{
    return s && s->magic == MAGIC_SHM;
}

/* A process that did not make the mapping (a spawned child) opens the name:
 * 0 and *buf, or -ENOENT if the name is gone, MP_ESTATE if it now names
 * another segment (unlinked and made again: mapping that one would read
 * someone else's bytes) or the segment is smaller than the handle says
 * (truncated: reading past its end would fault with SIGBUS), or -errno. */
static int shm_attach(const mp_shm *s, void **buf)
{
    int fd = shm_open(s->name, O_RDWR, 0);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = fstat(fd, &st) != 0 ? -errno
           : st.st_dev != s->dev || st.st_ino != s->ino ? MP_ESTATE
           : (uint64_t)st.st_size < s->size ? MP_ESTATE
           : map_fd(fd, s->size, buf);
    close(fd);
    if (rc == 0 && mapping_add(s, *buf) != 0) {
        munmap(*buf, s->size);
        rc = MP_ENOMEM;
    }
    return rc;
}

bool shm_mapping_contains(const void *p)
{
    bool in = false;
    pthread_mutex_lock(&local.lock);
    for (struct mapping *m = local.head; m && !in; m = m->next)
        in = (const char *)p >= (const char *)m->buf &&
             (const char *)p < (const char *)m->buf + m->size;
    pthread_mutex_unlock(&local.lock);
    return in;
}

void *mp_shm_buf(const mp_shm *s)
{
    if (!shm_ok(s)) {
        mp_fail_handle(__func__, "s", s);
        return NULL;
    }
    pthread_mutex_lock(&local.lock);
    struct mapping *m = *mapping_of(s);
    void *buf = m ? m->buf : NULL;
    pthread_mutex_unlock(&local.lock);
    int rc = buf ? 0 : shm_attach(s, &buf);
    if (rc == -ENOENT)
        mp_fail(rc, __func__, "segment \"%s\" was unlinked before this process first used it",
                s->name + 1);
    else if (rc == MP_ESTATE)
        mp_fail(rc, __func__, "segment \"%s\" changed before this process first used it: "
                "unlinked and made again, or made smaller than its %zu bytes", s->name + 1,
                s->size);
    else if (rc != 0)
        mp_fail(rc, __func__, "segment \"%s\" cannot be mapped here: %s", s->name + 1,
                mp_strerror(rc));
    return rc == 0 ? buf : NULL;
}

size_t mp_shm_size(const mp_shm *s)
{
    return shm_ok(s) ? s->size : 0;
}

const char *mp_shm_name(const mp_shm *s)
{
    if (!shm_ok(s)) {
        mp_fail_handle(__func__, "s", s);
        return NULL;
    }
    return s->name + 1;
}

int mp_shm_unlink(mp_shm *s)
{
    if (!shm_ok(s))
        return mp_fail_handle(__func__, "s", s);
    if (shm_unlink(s->name) == 0)
        return 0;
    return mp_fail(-errno, __func__, "segment \"%s\": %s", s->name + 1, mp_strerror(-errno));
}

void mp_shm_free(mp_shm *s)
{
    if (!shm_ok(s))
        return;
    pthread_mutex_lock(&local.lock);
    struct mapping **at = mapping_of(s), *m = *at;
    if (m)
        *at = m->next;
    pthread_mutex_unlock(&local.lock);
    if (m) {
        munmap(m->buf, m->size);
        free(m);
    }
    if (s->creator == getpid()) {
        s->magic = MAGIC_FREED;
        arena_free(s);
    }
}
