/* arena.c - the family's shared memory and its allocator.
 *
 * One memfd, mapped MAP_SHARED at the same address in every process of the
 * family: fork inherits it, spawn and the fork server map it again at the
 * parent's address from an inherited fd. Nothing has a name, so nothing is
 * left in /dev/shm; the kernel frees it when the last process goes. Blocks
 * come in power-of-two classes with one free list each, under a robust mutex.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "platform/valgrind_check.h"

#define ARENA_MAGIC 0x6d7072636172656eULL   /* "mprcaren" */
#define BLOCK_MAGIC 0x626c6b21u
#define BLOCK_HEADER 64                      /* keeps payloads cache-line aligned */
#define MIN_CLASS 6
#define MAX_CLASS 40
#define HUGE_CLASS 28                        /* blocks from 256 MiB give pages back when freed */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ARENA_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ARENA_SANITIZED 1
#endif
#endif

/* Chosen to lie inside every sanitizer's application range and far from
 * where the kernel puts libraries, so a re-executed child finds it free. */
#define ARENA_BASE ((uintptr_t)0x7e9000000000ULL)
#ifdef ARENA_SANITIZED
#define ARENA_SIZE ((size_t)8 << 30)
#else
#define ARENA_SIZE ((size_t)64 << 30)
#endif
/* Valgrind's leak check reads every byte of every readable mapping at exit,
 * and reading a memfd's holes allocates its pages: 64 GiB would fill memory. */
#define ARENA_SIZE_VALGRIND ((size_t)256 << 20)
#define ARENA_SIZE_MIN ((size_t)1 << 20)

struct block {
    uint32_t magic;
    uint32_t class;
    uint64_t next;        /* offset of the next free block, 0 = none */
    char pad[BLOCK_HEADER - 16];
};

struct arena_header {
    uint64_t magic;
    uint64_t size;
    rmutex lock;
    uint64_t bump;                      /* first never-used offset */
    uint64_t free_head[MAX_CLASS + 1];
    void *slots[ARENA_SLOT_COUNT];
};

static struct {
    pthread_mutex_t init;               /* process-local: guards creation */
    struct arena_header *_Atomic hdr;
    int fd;
    size_t size;
} arena = { PTHREAD_MUTEX_INITIALIZER, NULL, -1, 0 };

static int map_at(int fd, uintptr_t base, size_t size, void **out)
{
    void *p = mmap((void *)base, size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_NORESERVE | MAP_FIXED_NOREPLACE, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    if (p != (void *)base) {            /* old kernels treat the flag as a hint */
        munmap(p, size);
        return -EEXIST;
    }
    *out = p;
    return 0;
}

/* The arena's size: MPROC_ARENA_SIZE (bytes, or with a K/M/G suffix) when
 * set, e.g. where overcommit is off; a small one under valgrind. */
static size_t arena_pick_size(void)
{
    const char *s = getenv("MPROC_ARENA_SIZE");
    if (s && *s) {
        char *end;
        unsigned long long n = strtoull(s, &end, 10);
        int shift = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
        if (n > 0 && end[shift ? 1 : 0] == '\0' && n <= (ARENA_SIZE >> shift)
            && (n << shift) >= ARENA_SIZE_MIN)
            return ((size_t)n << shift) & ~(size_t)4095;
    }
    return RUNNING_ON_VALGRIND ? ARENA_SIZE_VALGRIND : ARENA_SIZE;
}

static struct arena_header *arena_create(void)
{
    int fd = memfd_create("mproc-arena", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    void *p = NULL;
    size_t size = arena_pick_size();
    if (ftruncate(fd, (off_t)size) != 0)
        goto fail;
    for (int i = 0; i < 64 && !p; i++)
        map_at(fd, ARENA_BASE + (uintptr_t)i * size, size, &p);
    if (!p)
        goto fail;
    struct arena_header *h = p;
    h->magic = ARENA_MAGIC;
    h->size = size;
    h->bump = (sizeof *h + 4095) & ~(uint64_t)4095;
    if (rmutex_init(&h->lock) != 0) {
        munmap(p, size);
        goto fail;
    }
    arena.fd = fd;
    arena.size = size;
    return h;
fail:
    close(fd);
    return NULL;
}

static struct arena_header *arena_get(void)
{
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    if (h)
        return h;
    pthread_mutex_lock(&arena.init);
    h = atomic_load_explicit(&arena.hdr, memory_order_relaxed);
    if (!h) {
        h = arena_create();
        atomic_store_explicit(&arena.hdr, h, memory_order_release);
    }
    pthread_mutex_unlock(&arena.init);
    return h;
}

int arena_attach(int fd, uintptr_t base, size_t size)
{
    pthread_mutex_lock(&arena.init);
    int rc = MP_ESTATE;
    if (atomic_load(&arena.hdr))
        goto out;
    void *p = NULL;
    rc = map_at(fd, base, size, &p);
    if (rc != 0)
        goto out;
    struct arena_header *h = p;
    if (h->magic != ARENA_MAGIC || h->size != size) {
        munmap(p, size);
        rc = MP_EINVAL;
        goto out;
    }
    arena.fd = fd;
    arena.size = size;
    atomic_store_explicit(&arena.hdr, h, memory_order_release);
out:
    pthread_mutex_unlock(&arena.init);
    return rc;
}

int arena_fd(void)
{
    return arena_get() ? arena.fd : MP_ENOMEM;
}

void *arena_base(void)
{
    return atomic_load_explicit(&arena.hdr, memory_order_acquire);
}

size_t arena_size(void)
{
    return arena_get() ? arena.size : 0;
}

void **arena_slot(int slot)
{
    struct arena_header *h = arena_get();
    if (!h || slot < 0 || slot >= ARENA_SLOT_COUNT)
        return NULL;
    return &h->slots[slot];
}

bool arena_contains(const void *p, size_t len)
{
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)h;
    return h && a >= b && a - b <= arena.size && len <= arena.size - (a - b);
}

static int size_class(size_t size)
{
    if (size > ((size_t)1 << MAX_CLASS) - BLOCK_HEADER)
        return -1;
    size_t need = size + BLOCK_HEADER;
    int c = MIN_CLASS;
    while (((size_t)1 << c) < need)
        c++;
    return c;
}

/* Under the arena lock. A holder that died mid-call may have left one block
 * unaccounted for; the lists themselves are updated in single stores. */
static struct block *take_block(struct arena_header *h, int c)
{
    char *base = (char *)h;
    if (h->free_head[c]) {
        struct block *b = (struct block *)(base + h->free_head[c]);
        h->free_head[c] = b->next;
        return b;
    }
    uint64_t bytes = (uint64_t)1 << c;
    /* Big blocks are aligned to 4 KiB so that freeing can punch whole pages. */
    uint64_t at = c >= 12 ? (h->bump + 4095) & ~(uint64_t)4095 : h->bump;
    if (at + bytes > h->size)
        return NULL;
    h->bump = at + bytes;
    return (struct block *)(base + at);
}

void *arena_alloc_nozero(size_t size)
{
    struct arena_header *h = arena_get();
    int c = size_class(size);
    if (!h || c < 0 || size == 0)
        return NULL;
    mp_deadline forever = deadline_in(MP_FOREVER);
    rmutex_lock(&h->lock, &forever);     /* MP_EOWNERDEAD: still ours, carry on */
    struct block *b = take_block(h, c);
    rmutex_unlock(&h->lock);
    if (!b)
        return NULL;
    b->magic = BLOCK_MAGIC;
    b->class = (uint32_t)c;
    b->next = 0;
    return (char *)b + BLOCK_HEADER;
}

void *arena_alloc(size_t size)
{
    void *p = arena_alloc_nozero(size);
    if (p)
        memset(p, 0, size);
    return p;
}

void arena_free(void *p)
{
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    if (!p || !h || !arena_contains(p, 1))
        return;
    struct block *b = (struct block *)((char *)p - BLOCK_HEADER);
    if (b->magic != BLOCK_MAGIC || b->class < MIN_CLASS || b->class > MAX_CLASS)
        return;                          /* not ours or freed twice: refuse quietly */
    b->magic = 0;
    if (b->class >= HUGE_CLASS)          /* give the pages back, keep the header page */
        madvise((char *)b + 4096, ((size_t)1 << b->class) - 4096, MADV_REMOVE);
    mp_deadline forever = deadline_in(MP_FOREVER);
    rmutex_lock(&h->lock, &forever);
    b->next = h->free_head[b->class];
    h->free_head[b->class] = (uint64_t)((char *)b - (char *)h);
    rmutex_unlock(&h->lock);
}

/* The ranges this process has mapped in already: populating a range whose
 * pages are all mapped still walks every page table entry (about 1 ms for
 * 64 MiB here), and a producer reusing freed blocks would pay it per item.
 * A fork child starts empty (its page tables start empty for the arena). */
static struct {
    pthread_mutex_t lock;
    pid_t pid;
    uintptr_t start[8];
    size_t len[8];
    unsigned next;
} prefaulted = { .lock = PTHREAD_MUTEX_INITIALIZER };

static bool prefault_seen(uintptr_t start, size_t len)
{
    bool seen = false;
    pthread_mutex_lock(&prefaulted.lock);
    if (prefaulted.pid != getpid()) {
        memset(prefaulted.start, 0, sizeof prefaulted.start);
        prefaulted.pid = getpid();
    }
    for (unsigned i = 0; i < 8 && !seen; i++)
        seen = prefaulted.start[i] == start && prefaulted.len[i] >= len;
    if (!seen) {
        prefaulted.start[prefaulted.next] = start;
        prefaulted.len[prefaulted.next] = len;
        prefaulted.next = (prefaulted.next + 1) % 8;
    }
    pthread_mutex_unlock(&prefaulted.lock);
    return seen;
}

void arena_prefault(void *p, size_t n, bool write)
{
#if defined(MADV_POPULATE_WRITE) && defined(MADV_POPULATE_READ)
    uintptr_t start = (uintptr_t)p & ~(uintptr_t)4095, end = (uintptr_t)p + n;
    /* Blocks from HUGE_CLASS give their pages back when freed: never cached. */
    bool huge = size_class(n) >= HUGE_CLASS;
    if (n && arena_contains(p, n) && (huge || !prefault_seen(start, end - start)))
        madvise((void *)start, end - start, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
#else
    (void)p, (void)n, (void)write;
#endif
}

void *mp_shared_alloc(size_t size)
{
    return arena_alloc(size);
}

void mp_shared_free(void *p)
{
    arena_free(p);
}
