/* fdreg.c - the registry of descriptor handles (fdreg.h).
 *
 * Each process keeps a list of the handles it holds a descriptor for. A fork
 * counts the child as one more holder of each; spawn keeps their
 * descriptors open across exec, and the fork server's requester sends them
 * along. Either way the handle then goes where no registry can follow it:
 * it becomes immortal and joins the family's list of crossed handles (an
 * arena slot), where a process that got it that way finds it by its
 * descriptor.
 */
#include "fdreg.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

/* Rules: items, n and cap are this process's own, read and written under
 * lock only (fdreg_keep_across_exec reads them without it, in a child where
 * no other thread exists). */
static struct {
    pthread_mutex_t lock;
    struct fdhandle **items;
    size_t n, cap;
} registry = { PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0 };

static void fork_prepare(void)
{
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.n; i++)
        atomic_fetch_add(&registry.items[i]->refs, 1);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&registry.lock);
}

static void fork_child(void)
{
    pthread_mutex_unlock(&registry.lock);
}

__attribute__((constructor)) static void registry_init(void)
{
    fork_hook_set(FORK_FDREG, fork_prepare, fork_parent, fork_child);
}

int fdhandle_register(struct fdhandle *h)
{
    struct stat st;
    if (!h->ino && fstat(h->fd, &st) == 0)
        h->ino = (uint64_t)st.st_ino;
    int rc = 0;
    pthread_mutex_lock(&registry.lock);
    if (registry.n == registry.cap) {
        size_t cap = registry.cap ? registry.cap * 2 : 16;
        void *p = realloc(registry.items, cap * sizeof *registry.items);
        if (p) {
            registry.items = p;
            registry.cap = cap;
        } else {
            rc = MP_ENOMEM;
        }
    }
    if (rc == 0)
        registry.items[registry.n++] = h;
    pthread_mutex_unlock(&registry.lock);
    return rc;
}

static bool registry_remove(struct fdhandle *h)
{
    bool found = false;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = registry.n; i-- > 0;) {
        if (registry.items[i] == h) {
            registry.items[i] = registry.items[--registry.n];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&registry.lock);
    return found;
}

/* h goes where our registry cannot follow (across an exec, to the fork
 * server's child): never freed, since its holders can no longer be counted,
 * and put on the family's list of such handles, where fdhandle_find finds
 * it. No lock and no allocation: this also runs between fork and exec. */
static void mark_shared_for_good(struct fdhandle *h)
{
    atomic_store(&h->immortal, 1);
    struct fdhandle *_Atomic *head = (struct fdhandle *_Atomic *)arena_slot(ARENA_SLOT_CROSSED);
    if (!head || atomic_exchange(&h->crossed, 1))
        return;
    struct fdhandle *first = atomic_load(head);
    do
        atomic_store(&h->next_crossed, first);
    while (!atomic_compare_exchange_weak(head, &first, h));
}

/* A handle on the family's crossed list whose descriptor fd is, in this
 * process, still the handle's file. Crossed handles are never freed, so
 * the walk needs no lock. */
static struct fdhandle *crossed_of_fd(int fd)
{
    struct fdhandle *_Atomic *head = (struct fdhandle *_Atomic *)arena_slot(ARENA_SLOT_CROSSED);
    struct stat st;
    if (!head || !atomic_load(head) || fstat(fd, &st) != 0)
        return NULL;
    for (struct fdhandle *h = atomic_load(head); h; h = atomic_load(&h->next_crossed))
        if (h->fd == fd && h->ino == (uint64_t)st.st_ino)
            return h;
    return NULL;
}

struct fdhandle *fdhandle_find(int fd, bool (*match)(const struct fdhandle *h, int fd))
{
    struct fdhandle *found = NULL;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.n && !found; i++)
        if (match(registry.items[i], fd))
            found = registry.items[i];
    pthread_mutex_unlock(&registry.lock);
    if (!found && (found = crossed_of_fd(fd)) && !match(found, fd))
        found = NULL;
    return found;
}

/* Runs in a forked child just before exec: no locks, no allocation. The
 * registry is this process's copy, so nobody changes it under us. */
void fdreg_keep_across_exec(void)
{
    for (size_t i = 0; i < registry.n; i++) {
        struct fdhandle *h = registry.items[i];
        int flags = fcntl(h->fd, F_GETFD);
        if (flags >= 0)
            fcntl(h->fd, F_SETFD, flags & ~FD_CLOEXEC);
        mark_shared_for_good(h);
    }
}

size_t fdreg_live_fds(int *fds, size_t cap)
{
    size_t n = 0;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.n && n < cap; i++) {
        fds[n++] = registry.items[i]->fd;
        mark_shared_for_good(registry.items[i]);
    }
    pthread_mutex_unlock(&registry.lock);
    return n;
}

bool fdhandle_release(struct fdhandle *h)
{
    if (registry_remove(h)) {
        close(h->fd);
        return !atomic_load(&h->immortal) && atomic_fetch_sub(&h->refs, 1) == 1;
    }
    /* Reached through a spawned child's argument: never registered here. */
    if (atomic_load(&h->immortal))
        close(h->fd);
    return false;
}

/* In a forked child that is about to exit: every handle it inherited or
 * made and did not close is closed through close_one (which drops this
 * process's count), so a child that returns without closing its copies
 * does not keep them, and the arena memory behind them, for ever. */
void fdreg_close_all(void (*close_one)(struct fdhandle *h))
{
    pthread_mutex_lock(&registry.lock);
    size_t n = registry.n;
    struct fdhandle **copy = n ? malloc(n * sizeof *copy) : NULL;
    if (copy)
        memcpy(copy, registry.items, n * sizeof *copy);
    pthread_mutex_unlock(&registry.lock);
    for (size_t i = 0; copy && i < n; i++)
        close_one(copy[i]);
    free(copy);
}
