/* arena.c - the family's shared memory and its allocator.
 *
 * One memfd, mapped MAP_SHARED at the same address in every process of the
 * family: fork inherits it, spawn and the fork server map it again at the
 * parent's address from an inherited fd. Nothing has a name, so nothing is
 * left in /dev/shm; the kernel frees it when the last process goes.
 *
 * The allocator is TLSF under one robust mutex: blocks split and coalesce,
 * a journal makes each operation all-or-nothing for a holder killed inside
 * it; small blocks are freed to and taken from lock-free stacks in front
 * of it (bounded, drained when the lists run short); free spans from 2 MiB give their pages back (in sweeps, so warm blocks
 * stay warm) and fresh big blocks get theirs up front, so running out of
 * memory is an error and not a SIGBUS. docs/arena.md says why and how.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "platform/valgrind_check.h"

#define ARENA_MAGIC 0x6d7072636172656fULL   /* "mprcareo": the TLSF layout */
#define BLOCK_HEADER ARENA_BLOCK_HEADER      /* 64: keeps payloads cache-line aligned */
#define ALIGN_LOG 6                          /* block sizes are multiples of 64 */
#define SL_LOG 3                             /* 8 lists per power of two */
#define SL_COUNT (1 << SL_LOG)
#define FL_SHIFT (SL_LOG + ALIGN_LOG)
#define SMALL_BLOCK ((uint64_t)1 << FL_SHIFT) /* below: one list per 64 bytes */
#define FL_COUNT 32                          /* blocks up to 2^40 bytes */
#define MIN_BLOCK 128                        /* a header and 64 bytes */
#define PUNCH_MIN ((uint64_t)2 << 20)        /* free spans from here give pages back ... */
#define DIRTY_MAX ((uint64_t)64 << 20)       /* ... once they hold this many dirty bytes
                                                more than 4x the blocks in use */
#define RESERVE_MIN ((uint64_t)64 << 10)     /* fresh blocks from here get their pages now */
#define CACHE_BLOCK_MAX (4096 + BLOCK_HEADER)  /* blocks up to here are cached when freed, */
#define CACHE_CLASSES (CACHE_BLOCK_MAX / 64 - 1) /* one stack per size (128, 192, ... bytes), */
#define CACHE_DEPTH 32                       /* each at most this deep: 4.2 MiB in all */

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

/* A cached block is in use as far as the lists and coalescing go (it never
 * merges), and in its size's stack for the next request of that size. */
enum { BLOCK_USED = 0x626c6b21, BLOCK_FREE = 0x66726565, BLOCK_CACHED = 0x63616368,
       BLOCK_DEFERRED = 0x64656672 };
enum {
    F_FRESH = 2,   /* in use: carved from punched or never-used memory */
    F_END = 4,     /* the sentinel after the last block */
};

/* Every block starts with this header; sizes include it. */
struct block {
    uint32_t magic;       /* BLOCK_USED, BLOCK_FREE, or anything else: not a block */
    uint32_t flags;
    uint64_t size;
    uint64_t prev_size;   /* the physical predecessor's size, 0 for the first block */
    uint64_t next_free;   /* free blocks: offsets of their list neighbours, 0 = none */
    uint64_t prev_free;
    /* Free blocks: [dirty_lo, dirty_hi) from the block's start spans every
     * part freed since its pages were last punched (they may be resident);
     * outside it the kernel holds no pages. Advisory: not journaled. */
    uint64_t dirty_lo, dirty_hi;
    /* Cached blocks: (depth << 32) | the next block's index in the stack.
     * Read without the lock, by a taker that may find the block already
     * gone (its CAS then fails), so only ever through atomics. Deferred
     * blocks: the next block's index in the deferred stack. */
    uint64_t link;
};
_Static_assert(sizeof(struct block) == BLOCK_HEADER, "a header fills the space before the payload");

/* One header as an operation will leave it: the whole header, or with
 * prev_only just its predecessor size (the block after the one operated
 * on, which may be cached or taken from its stack meanwhile: its magic is
 * not the operation's to write). */
struct jentry {
    uint64_t off, size, prev_size;
    uint32_t magic, flags;
    uint32_t prev_only;
};

/* The protocol, for every process of the family at once.
 *
 * Fields: magic, size, first and end are written by the creator before any
 * other process maps the arena, and never again. lock (a robust mutex)
 * guards fl_map, sl_map, heads, dirty_big, used and the journal j, and every
 * header of a FREE block; sweeps is bumped under it and read by anyone;
 * cache[] changes only by compare-and-swap. slots[] belong to the
 * subsystems that set them (arena_slot).
 *
 * A block is, by the magic word of its header:
 *   FREE    in exactly one list (heads[fl][sl]), linked by next_free and
 *           prev_free; only a holder of lock touches it.
 *   USED    its owner's, who may read its own header without the lock; its
 *           prev_size changes under lock when its predecessor splits or
 *           merges (written only if it changes, so the owner's reads never
 *           see a torn word).
 *   CACHED  freed to its size's stack: in use as far as the lists go, never
 *           merged; link holds the next block of the stack and the depth.
 *           Pushed and popped by CAS on cache[]; marked CACHED by a CAS
 *           from USED, so a double free fails, and USED again by its taker.
 *   DEFERRED freed by a caller that could not take lock in time (a process
 *           stopped holding it): in use as far as the lists go, in the
 *           deferred stack (pushed by CAS, marked from USED by a CAS as a
 *           cached block is), and freed by the next holder of lock, which
 *           pops it under the lock.
 *   (the sentinel at end is USED with F_END: nothing merges past it)
 * Blocks tile [first, end): each header's size leads to the next header,
 * and each prev_size back to the previous one.
 *
 * A change under lock is planned into j, committed by one store of j.n,
 * applied, then cleared. A holder killed anywhere leaves the next locker
 * (MP_EOWNERDEAD) a journal to replay or nothing to do; arena_repair then
 * rebuilds the lists and the counters from a walk of the blocks. A process
 * killed between a cache pop and its mark leaves one CACHED block in no
 * stack: leaked, and counted by arena_check as stray. A holder killed
 * while it frees a deferred block leaves that one block leaked too: DEFERRED
 * in no stack (stray) if killed before it marks the block USED again, in
 * use by nobody if after (its free's journal is then replayed or not, as
 * any free's). Nothing else is lost.
 */
/* In j.slot: a free's slot, emptied by a repair (slots are pointers,
 * so the low bit is free). */
#define SLOT_EMPTIED 1u

struct arena_header {
    uint64_t magic;
    uint64_t size;
    rmutex lock;
    uint64_t first;                     /* offset of the first block */
    uint64_t end;                       /* offset of the sentinel */
    uint64_t fl_map;                    /* bit fl: some sl_map[fl] bit set */
    uint32_t sl_map[FL_COUNT];          /* bit sl: heads[fl][sl] non-empty */
    uint64_t heads[FL_COUNT][SL_COUNT];
    uint64_t dirty_big;                 /* dirty bytes in free spans from PUNCH_MIN */
    uint64_t used;                      /* bytes in blocks in use */
    uint32_t corrupt;                   /* a link led outside the blocks: allocate no more */
    _Atomic uint64_t sweeps;            /* sweeps that punched: mappings went away */
    struct {
        uint32_t n;                     /* entries committed, 0 = none */
        struct jentry e[4];
        /* An alloc's hand slot (arena_alloc_held), 0 = none: once the
         * journal is committed the block of e[0] is taken, and a repair
         * writes its address there, as the dead holder was about to. With
         * SLOT_EMPTIED set, a free's (arena_free_held): once committed the
         * block is free, and a repair empties the slot. */
        uint64_t slot;
    } j;
    void *slots[ARENA_SLOT_COUNT];
    /* The small-block stacks, one per size: (tag << 32) | index of the top
     * block (offset / 64, 0 = empty), the tag bumped by every change so a
     * CAS from a stale view fails (ABA). Lock-free; see cache_pop. */
    _Atomic uint64_t cache[CACHE_CLASSES];
    /* The deferred stack: (tag << 32) | index of the top block, 0 = empty. */
    _Atomic uint64_t deferred;
};

MP_TEST_HOOK void (*mp__arena_test_hook)(const char *point);

static inline void list_of(uint64_t size, int *fl, int *sl);

static struct {
    pthread_mutex_t init;               /* process-local: guards creation */
    struct arena_header *_Atomic hdr;
    int fd;
    size_t size;
    int create_err;                     /* why the last creation failed (-errno), or 0 */
} arena = { PTHREAD_MUTEX_INITIALIZER, NULL, -1, 0, 0 };

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

/* MPROC_ARENA_SIZE's value in bytes (digits, then K, M or G in either
 * case), or 0 when it is none or out of ARENA_SIZE_MIN..ARENA_SIZE. */
static size_t arena_parse_size(const char *s)
{
    if (*s < '0' || *s > '9')
        return 0;                     /* strtoull would take "-1" or " 1" */
    char *end;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    int c = *end | 0x20;              /* lower case */
    int shift = c == 'k' ? 10 : c == 'm' ? 20 : c == 'g' ? 30 : 0;
    if (errno != 0 || end[shift ? 1 : 0] != '\0' || n > (ARENA_SIZE >> shift))
        return 0;
    size_t size = ((size_t)n << shift) & ~(size_t)4095;
    return size >= ARENA_SIZE_MIN ? size : 0;
}

/* The arena's size: MPROC_ARENA_SIZE when set, e.g. where overcommit is
 * off; a small one under valgrind. A value that is no size is said once
 * on stderr, as no call could report it (the arena is made on first use,
 * by whichever call needs it), and the default is used. */
static size_t arena_pick_size(void)
{
    size_t fallback = RUNNING_ON_VALGRIND ? ARENA_SIZE_VALGRIND : ARENA_SIZE;
    const char *s = getenv("MPROC_ARENA_SIZE");
    if (!s || !*s)
        return fallback;
    size_t size = arena_parse_size(s);
    if (size == 0)
        fprintf(stderr, "mproc: MPROC_ARENA_SIZE=%.40s is not a size from 1M to %zuG (bytes, "
                "or a number with K, M or G): the arena takes its default, %zu%s\n",
                s, ARENA_SIZE >> 30, fallback >> (fallback >> 30 ? 30 : 20),
                fallback >> 30 ? "G" : "M");
    return size ? size : fallback;
}

static struct arena_header *arena_create(void)
{
    int fd = memfd_create("mproc-arena", MFD_CLOEXEC);
    arena.create_err = fd < 0 ? -errno : 0;     /* EMFILE at the descriptor limit */
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
    /* One free block spans the arena; a used sentinel ends it. */
    h->first = (sizeof *h + 4095) & ~(uint64_t)4095;
    h->end = size - BLOCK_HEADER;
    struct block *all = (struct block *)((char *)p + h->first);
    *all = (struct block){ .magic = BLOCK_FREE, .size = h->end - h->first };
    *(struct block *)((char *)p + h->end) =
        (struct block){ .magic = BLOCK_USED, .flags = F_END, .size = BLOCK_HEADER,
                        .prev_size = all->size };
    int fl, sl;
    list_of(all->size, &fl, &sl);
    h->heads[fl][sl] = h->first;
    h->sl_map[fl] = 1u << sl;
    h->fl_map = (uint64_t)1 << fl;
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
    return arena_get() ? arena.fd : arena.create_err ? arena.create_err : MP_ENOMEM;
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

/* ------------------------------------------------------------------ the allocator
 *
 * Two-level segregated fit (TLSF, Masmano et al. 2004; docs/arena.md): free
 * blocks sit in lists by size, 8 lists per power of two (one per 64 bytes
 * below 512), found in O(1) through two bitmaps. A request takes the head of
 * the first non-empty list whose every block fits, and the block is split;
 * a freed block merges with free physical neighbours (boundary tags: each
 * header knows its predecessor's size). */

static inline struct block *block_at(struct arena_header *h, uint64_t off)
{
    return (struct block *)((char *)h + off);
}

static inline uint64_t block_off(struct arena_header *h, const struct block *b)
{
    return (uint64_t)((const char *)b - (const char *)h);
}

/* Whether off may be a block's offset: 64-aligned, inside [first, end].
 * Every link read from shared memory is asked before it is followed; one
 * that fails can only come from a process that wrote past its block, and
 * the arena is marked corrupt (no more allocations, arena_check fails)
 * instead of writing through it. */
static bool link_ok(struct arena_header *h, uint64_t off)
{
    if (off >= h->first && off <= h->end && !(off & 63))
        return true;
    h->corrupt = 1;
    return false;
}

/* The next block's offset after the one at off, or 0 when its size is
 * not one a block can have (the arena is then marked corrupt). */
static uint64_t next_block(struct arena_header *h, uint64_t off)
{
    uint64_t size = block_at(h, off)->size;
    if (size >= BLOCK_HEADER && !(size & 63) && size <= h->end - off)
        return off + size;
    h->corrupt = 1;
    return 0;
}


/* A block's magic changes without the lock (cached <-> used), so every
 * access is atomic; relaxed, as the lock or the stack's CAS orders the rest. */
static inline uint32_t magic_of(const struct block *b)
{
    return __atomic_load_n(&b->magic, __ATOMIC_RELAXED);
}

/* The free block a list link names, or NULL (and the arena marked corrupt)
 * when the link or the header it leads to is not a free block's. */
static struct block *free_at(struct arena_header *h, uint64_t off)
{
    if (!link_ok(h, off) || off == h->end || !next_block(h, off))
        return NULL;
    struct block *b = block_at(h, off);
    if (magic_of(b) == BLOCK_FREE)
        return b;
    h->corrupt = 1;
    return NULL;
}

static inline void set_magic(struct block *b, uint32_t magic)
{
    __atomic_store_n(&b->magic, magic, __ATOMIC_RELAXED);
}

static inline int log2_floor(uint64_t x)
{
    return 63 - __builtin_clzll(x);
}

/* The list a block of size bytes belongs in. */
static inline void list_of(uint64_t size, int *fl, int *sl)
{
    if (size < SMALL_BLOCK) {
        *fl = 0;
        *sl = (int)(size >> ALIGN_LOG);
    } else {
        int f = log2_floor(size);
        *sl = (int)(size >> (f - SL_LOG)) ^ SL_COUNT;
        *fl = f - FL_SHIFT + 1;
    }
}

static void hook(const char *point)
{
    if (mp__arena_test_hook)
        mp__arena_test_hook(point);
}

static void list_remove(struct arena_header *h, struct block *b)
{
    int fl, sl;
    list_of(b->size, &fl, &sl);
    if (b->prev_free) {
        if (link_ok(h, b->prev_free))
            block_at(h, b->prev_free)->next_free = b->next_free;
    } else {
        h->heads[fl][sl] = b->next_free;
    }
    if (b->next_free && link_ok(h, b->next_free))
        block_at(h, b->next_free)->prev_free = b->prev_free;
    if (!h->heads[fl][sl]) {
        h->sl_map[fl] &= ~(1u << sl);
        if (!h->sl_map[fl])
            h->fl_map &= ~((uint64_t)1 << fl);
    }
}

static void list_insert(struct arena_header *h, struct block *b)
{
    int fl, sl;
    list_of(b->size, &fl, &sl);
    uint64_t off = block_off(h, b);
    b->prev_free = 0;
    b->next_free = h->heads[fl][sl];
    if (b->next_free && link_ok(h, b->next_free))
        block_at(h, b->next_free)->prev_free = off;
    h->heads[fl][sl] = off;
    h->sl_map[fl] |= 1u << sl;
    h->fl_map |= (uint64_t)1 << fl;
}

static bool same_list(uint64_t a, uint64_t b)
{
    int fa, sa, fb, sb;
    list_of(a, &fa, &sa);
    list_of(b, &fb, &sb);
    return fa == fb && sa == sb;
}

/* Puts to in from's place in its list (a split or merge that leaves the
 * size in the same list: the common case of a big free span at the end). */
static void list_replace(struct arena_header *h, struct block *from, struct block *to)
{
    int fl, sl;
    list_of(to->size, &fl, &sl);
    uint64_t off = block_off(h, to);
    to->prev_free = from->prev_free;
    to->next_free = from->next_free;
    if (to->prev_free) {
        if (link_ok(h, to->prev_free))
            block_at(h, to->prev_free)->next_free = off;
    } else {
        h->heads[fl][sl] = off;
    }
    if (to->next_free && link_ok(h, to->next_free))
        block_at(h, to->next_free)->prev_free = off;
}

/* A free block of at least size bytes, or NULL. The search rounds size up to
 * the next list boundary so any block found fits; failing that, the first
 * few blocks of size's own list are tried (a nearly-whole-arena request). */
static struct block *find_free(struct arena_header *h, uint64_t size)
{
    int fl, sl;
    /* First the head of size's own list: a block freed by an item of the
     * same size (a queue's stream) is taken again while still warm, where
     * the rounded search would pass it over for a bigger, colder one. */
    list_of(size, &fl, &sl);
    struct block *b = fl < FL_COUNT && h->heads[fl][sl] ? free_at(h, h->heads[fl][sl]) : NULL;
    if (b && b->size >= size)
        return b;
    uint64_t r = size >= SMALL_BLOCK ? size + ((uint64_t)1 << (log2_floor(size) - SL_LOG)) - 1
                                     : size;
    list_of(r, &fl, &sl);
    if (fl < FL_COUNT) {
        uint32_t sm = h->sl_map[fl] & (~0u << sl);
        if (!sm) {
            uint64_t fm = fl + 1 < FL_COUNT ? h->fl_map & (~(uint64_t)0 << (fl + 1)) : 0;
            if (fm) {
                fl = __builtin_ctzll(fm);
                sm = h->sl_map[fl];
            }
        }
        if (sm)
            return free_at(h, h->heads[fl][__builtin_ctz(sm)]);
    }
    list_of(size, &fl, &sl);
    if (fl >= FL_COUNT)
        return NULL;
    uint64_t off = h->heads[fl][sl];
    for (int i = 0; off && i < 16 && (b = free_at(h, off)); i++) {
        if (b->size >= size)
            return b;
        off = b->next_free;
    }
    return NULL;
}

/* The journal: every header an operation will change, written and committed
 * (one store of n) before the first change. A holder killed after the
 * commit leaves it for the next holder to apply again (the writes are plain
 * values, so applying twice is harmless) and the free lists to rebuild from
 * the headers. Killed before the commit, it changed nothing. */
static void plan(struct arena_header *h, uint32_t i, uint64_t off, uint64_t size,
                 uint64_t prev_size, uint32_t magic, uint32_t flags)
{
    h->j.e[i] = (struct jentry){ off, size, prev_size, magic, flags, 0 };
}

static void plan_prev(struct arena_header *h, uint32_t i, uint64_t off, uint64_t prev_size)
{
    h->j.e[i] = (struct jentry){ off, 0, prev_size, 0, 0, 1 };
}

static void journal_commit(struct arena_header *h, uint32_t n)
{
    atomic_thread_fence(memory_order_release);
    h->j.n = n;
    atomic_thread_fence(memory_order_release);
}

/* Field by field through volatile: a wider load spanning the narrower
 * stores plan() just made could not be forwarded from them and would wait
 * (measured: a third of a small alloc). A field is written only when it
 * changes: the owner of a block in use reads its header without the lock. */
static void journal_apply(struct arena_header *h)
{
    const volatile struct jentry *e = h->j.e;
    for (uint32_t i = 0, n = h->j.n; i < n; i++) {
        if (!link_ok(h, e[i].off))
            continue;
        struct block *b = block_at(h, e[i].off);
        uint64_t prev_size = e[i].prev_size;
        if (b->prev_size != prev_size)
            __atomic_store_n(&b->prev_size, prev_size, __ATOMIC_RELAXED);
        if (e[i].prev_only)
            continue;
        uint64_t size = e[i].size;
        uint32_t magic = e[i].magic, flags = e[i].flags;
        if (magic_of(b) != magic)
            set_magic(b, magic);
        if (b->flags != flags)
            __atomic_store_n(&b->flags, flags, __ATOMIC_RELAXED);
        if (b->size != size)                  /* atomic: read without the lock by a freer */
            __atomic_store_n(&b->size, size, __ATOMIC_RELAXED);
    }
}

static void journal_clear(struct arena_header *h)
{
    atomic_thread_fence(memory_order_release);
    h->j.n = 0;
    h->j.slot = 0;
}

/* A free block's dirty range in arena offsets, clamped to the block. */
static void dirty_range(struct arena_header *h, const struct block *b, uint64_t *lo, uint64_t *hi)
{
    uint64_t off = block_off(h, b);
    uint64_t l = b->dirty_lo < b->size ? b->dirty_lo : b->size;
    uint64_t r = b->dirty_hi < b->size ? b->dirty_hi : b->size;
    *lo = off + l;
    *hi = r > l ? off + r : off + l;
}

static void set_dirty(struct arena_header *h, struct block *b, uint64_t lo, uint64_t hi)
{
    uint64_t off = block_off(h, b), end = off + b->size;
    lo = lo > off ? lo : off;
    hi = hi < end ? hi : end;
    b->dirty_lo = hi > lo ? lo - off : 0;
    b->dirty_hi = hi > lo ? hi - off : 0;
}

static bool is_dirty(const struct block *b)
{
    return b->dirty_hi > b->dirty_lo;
}

/* The pages a punch of a free block would give back: its dirty range
 * without the page of its header or of the next block's. */
static void punchable(struct arena_header *h, const struct block *b, uint64_t *lo, uint64_t *hi)
{
    uint64_t off = block_off(h, b), dlo, dhi;
    dirty_range(h, b, &dlo, &dhi);
    uint64_t first = off + BLOCK_HEADER > dlo ? off + BLOCK_HEADER : dlo;
    *lo = (first + 4095) & ~(uint64_t)4095;
    *hi = dhi & ~(uint64_t)4095;
    if (*hi < *lo)
        *hi = *lo;
}

/* What a free block adds to dirty_big. */
static uint64_t dirty_big(struct arena_header *h, const struct block *b)
{
    uint64_t lo, hi;
    if (b->size < PUNCH_MIN || !is_dirty(b))
        return 0;
    punchable(h, b, &lo, &hi);
    return hi - lo;
}

/* After a holder died mid-operation: finish its headers, then rebuild the
 * lists and bitmaps from the blocks themselves. */
static void arena_repair(struct arena_header *h)
{
    if (!h->j.n) {
        h->j.slot = 0;                   /* an alloc's or a free's, never committed */
        return;                          /* died outside an operation: nothing torn */
    }
    if (h->j.n > 4)
        h->j.n = 4;                      /* cannot be; keeps the replay in bounds */
    journal_apply(h);
    if (h->j.slot & SLOT_EMPTIED)        /* a free's block in hand: it is free now */
        atomic_store_explicit((void *_Atomic *)(uintptr_t)(h->j.slot & ~(uint64_t)SLOT_EMPTIED),
                              NULL, memory_order_release);
    else if (h->j.slot)                  /* an alloc's block in hand: it is taken now */
        atomic_store_explicit((void *_Atomic *)(uintptr_t)h->j.slot,
                              (char *)block_at(h, h->j.e[0].off) + BLOCK_HEADER,
                              memory_order_release);
    memset(h->heads, 0, sizeof h->heads);
    h->dirty_big = h->used = 0;
    memset(h->sl_map, 0, sizeof h->sl_map);
    h->fl_map = 0;
    for (uint64_t off = h->first; off && off < h->end; off = next_block(h, off)) {
        struct block *b = block_at(h, off);
        if (magic_of(b) == BLOCK_FREE) {
            set_dirty(h, b, off, off + b->size);   /* not journaled: assume resident */
            h->dirty_big += dirty_big(h, b);
            list_insert(h, b);
        } else {
            h->used += b->size;
        }
    }
    journal_clear(h);
}

static void deferred_drain(struct arena_header *h);

/* Takes the lock, waiting until d (NULL: for as long as its holder lives),
 * and frees the deferred blocks. A timed wait lasts at least LOCK_GRACE_S,
 * so a call with a timeout of 0 does not fail because another process is
 * allocating at that moment; only a holder that does not go on (stopped:
 * SIGSTOP, a debugger, a frozen cgroup) makes it time out. false: the lock
 * was not taken. */
static bool arena_lock_until(struct arena_header *h, const mp_deadline *d)
{
    static const mp_deadline forever = { .forever = true };
    int rc = rmutex_trylock(&h->lock);
    if (rc == MP_ETIMEDOUT) {
        mp_deadline grace;
        if (d && !d->forever && deadline_left(d) < LOCK_GRACE_S) {
            grace = deadline_in(LOCK_GRACE_S);
            d = &grace;
        }
        rc = rmutex_wait(&h->lock, d ? d : &forever);
    }
    if (rc == MP_ETIMEDOUT)
        return false;
    if (rc == MP_EOWNERDEAD)
        arena_repair(h);
    deferred_drain(h);
    return true;
}

static void arena_lock(struct arena_header *h)
{
    arena_lock_until(h, NULL);
}

/* Takes a block of exactly need bytes, splitting off the rest when it can
 * stand as a block of its own. From the block's end when that is where its
 * most recently freed bytes are (its dirty range ends there): a queue's big
 * items then come back to the block just freed, still in the cache, instead
 * of walking a ring through the arena. */
static struct block *alloc_locked(struct arena_header *h, uint64_t need, void *_Atomic *slot)
{
    struct block *b = find_free(h, need);
    if (!b)
        return NULL;
    uint64_t off = block_off(h, b), size = b->size, rest = size - need, lo, hi;
    dirty_range(h, b, &lo, &hi);
    bool split = rest >= MIN_BLOCK, high = split && lo < hi && hi == off + size;
    uint64_t at = high ? off + rest : off, rem = high ? off : off + need;
    uint64_t used = split ? need : size;
    uint32_t n = 1, fresh = lo <= at && at + used <= hi ? 0 : F_FRESH;   /* warm: all dirty */
    if (split) {
        plan(h, 0, at, need, high ? rest : b->prev_size, BLOCK_USED, fresh);
        plan(h, 1, rem, rest, high ? b->prev_size : need, BLOCK_FREE, 0);
        plan_prev(h, 2, off + size, high ? need : rest);
        n = 3;
    } else {
        plan(h, 0, off, size, b->prev_size, BLOCK_USED, fresh);
    }
    bool in_place = split && same_list(size, rest);
    h->j.slot = (uint64_t)(uintptr_t)slot;
    hook("alloc_planned");
    journal_commit(h, n);
    /* The counters change only while the journal is committed: a holder
     * killed before leaves them as they were, one killed after has them
     * recounted by arena_repair. */
    h->dirty_big -= dirty_big(h, b);
    h->used += used;
    hook("alloc_committed");
    /* From the commit the block is taken (a repair rolls forward): named in
     * hand now, or by the repair should we die before this store. */
    if (slot)
        atomic_store_explicit(slot, (char *)block_at(h, at) + BLOCK_HEADER, memory_order_release);
    if (!in_place)
        list_remove(h, b);
    hook("alloc_unlinked");
    journal_apply(h);
    hook("alloc_applied");
    if (split) {
        set_dirty(h, block_at(h, rem), lo, hi);
        h->dirty_big += dirty_big(h, block_at(h, rem));
    }
    if (in_place && !high)
        list_replace(h, b, block_at(h, rem));
    else if (split && !in_place)
        list_insert(h, block_at(h, rem));
    hook("alloc_linked");
    journal_clear(h);
    return block_at(h, at);
}

/* Gives the pages inside a free span back to the kernel, keeping the page
 * of its header (and of the next block's). */
static void punch(struct arena_header *h, struct block *b)
{
    uint64_t lo, hi;
    punchable(h, b, &lo, &hi);
    if (hi > lo)
        fallocate(arena.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)lo, (off_t)(hi - lo));
    b->dirty_lo = b->dirty_hi = 0;
}

/* Punches every dirty free span from PUNCH_MIN up. Called when such spans
 * hold DIRTY_MAX dirty bytes more than four times the blocks in use: a block
 * freed and soon taken again (a queue's big items, a producer a few items
 * ahead) stays warm, while memory nobody takes goes back as the workload
 * shrinks. Once all is freed, at most DIRTY_MAX stays. */
static void sweep_locked(struct arena_header *h)
{
    int fl0, sl0;
    list_of(PUNCH_MIN, &fl0, &sl0);
    for (int fl = fl0; fl < FL_COUNT; fl++) {
        if (!(h->fl_map & ((uint64_t)1 << fl)))
            continue;
        for (int sl = 0; sl < SL_COUNT; sl++)
            for (uint64_t off = h->heads[fl][sl]; off && link_ok(h, off);
                 off = block_at(h, off)->next_free)
                if (is_dirty(block_at(h, off)))
                    punch(h, block_at(h, off));
    }
    h->dirty_big = 0;
    atomic_fetch_add_explicit(&h->sweeps, 1, memory_order_relaxed);
}

/* prev's size is the prev_size its successor records; else corrupt. */
static bool prev_agrees(struct arena_header *h, const struct block *prev, uint64_t prev_size)
{
    if (prev->size == prev_size)
        return true;
    h->corrupt = 1;
    return false;
}

/* slot: the hand that names b until the free is committed (NULL: none). */
static void free_locked(struct arena_header *h, struct block *b, void *_Atomic *slot)
{
    uint64_t off = block_off(h, b), size = b->size;
    struct block *prev = b->prev_size && b->prev_size <= off && link_ok(h, off - b->prev_size)
                         ? block_at(h, off - b->prev_size) : NULL;
    if (!next_block(h, off))
        return;                          /* corrupt: leak it rather than guess */
    struct block *next = block_at(h, off + size);
    /* A neighbour merges only if its header agrees with ours: a size that
     * does not would send the merged block's end outside its span. */
    bool with_prev = prev && magic_of(prev) == BLOCK_FREE && prev_agrees(h, prev, b->prev_size);
    bool with_next = magic_of(next) == BLOCK_FREE && next_block(h, off + size);
    uint64_t start = with_prev ? off - prev->size : off;
    uint64_t total = size + (with_prev ? prev->size : 0) + (with_next ? next->size : 0);
    uint64_t gone = (with_prev ? dirty_big(h, prev) : 0) + (with_next ? dirty_big(h, next) : 0);
    uint32_t n = 2;
    uint64_t lo = off, hi = off + size, l, r;   /* the hull of the dirty parts */
    if (with_prev && is_dirty(prev)) {
        dirty_range(h, prev, &l, &r);
        lo = l;
    }
    if (with_next && is_dirty(next)) {
        dirty_range(h, next, &l, &r);
        hi = r;
    }
    plan(h, 0, start, total, with_prev ? prev->prev_size : b->prev_size, BLOCK_FREE, 0);
    plan_prev(h, 1, start + total, total);
    if (with_prev)
        plan(h, n++, off, 0, 0, 0, 0);      /* an inner header: no longer a block */
    if (with_next)
        plan(h, n++, off + size, 0, 0, 0, 0);
    /* Merged with one neighbour and still in its list: it keeps its place. */
    bool keep_prev = with_prev && !with_next && same_list(prev->size, total);
    bool take_next = with_next && !with_prev && same_list(next->size, total);
    h->j.slot = slot ? (uint64_t)(uintptr_t)slot | SLOT_EMPTIED : 0;
    hook("free_planned");
    journal_commit(h, n);
    if (slot)                            /* else emptied by the repair */
        atomic_store_explicit(slot, NULL, memory_order_release);
    hook("free_committed");
    if (with_prev && !keep_prev)
        list_remove(h, prev);
    if (with_next && !take_next)
        list_remove(h, next);
    hook("free_unlinked");
    journal_apply(h);
    hook("free_applied");
    set_dirty(h, block_at(h, start), lo, hi);
    if (take_next)
        list_replace(h, next, b);
    else if (!keep_prev)
        list_insert(h, block_at(h, start));
    h->dirty_big += dirty_big(h, block_at(h, start)) - gone;
    h->used -= size;                 /* before the journal ends, as in alloc_locked */
    hook("free_linked");
    journal_clear(h);
    if (h->dirty_big > DIRTY_MAX + 4 * h->used)
        sweep_locked(h);
}

/* Makes the kernel supply a fresh block's pages now, so running out of
 * memory is this call's error and not a SIGBUS at the first touch. */
static bool reserve(struct arena_header *h, struct block *b, uint64_t size)
{
    uint64_t off = block_off(h, b);
    uint64_t lo = (off + BLOCK_HEADER) & ~(uint64_t)4095;
    uint64_t hi = (off + size + 4095) & ~(uint64_t)4095;
    int rc;
    do
        rc = fallocate(arena.fd, FALLOC_FL_KEEP_SIZE, (off_t)lo, (off_t)(hi - lo));
    while (rc != 0 && errno == EINTR);
    return rc == 0;
}

/* ------------------------------------------------------------------ the small-block cache
 *
 * A freed block up to CACHE_BLOCK_MAX goes onto its size's stack instead of
 * back to the lists, and the next request of that size takes it from there:
 * a CAS each way and no lock, where the lists cost the robust mutex twice
 * and a journal (docs/arena.md). A Treiber stack (Concurrency Kit's
 * ck_stack in spirit): the top is (tag << 32) | block index in one 64-bit
 * word, every change bumps the tag, so a taker whose view went stale (the
 * block taken, freed, pushed again meanwhile) fails its CAS. Each block
 * records its depth, and a stack is never deeper than CACHE_DEPTH, so the
 * memory held stays bounded; when the lists cannot serve a request the
 * stacks are drained into them.
 *
 * A process killed at any step leaks at most the one block it was moving
 * and tears nothing: a stack changes in one CAS, a block is marked cached
 * before it is pushed and used after it is taken, and the lists see a
 * cached block as one in use. */

static inline int cache_class(uint64_t size)
{
    return (int)(size >> ALIGN_LOG) - 2;
}

static inline uint64_t block_link(const struct block *b)
{
    return __atomic_load_n(&b->link, __ATOMIC_ACQUIRE);
}

/* Takes the top block of stack c (marking it used), or NULL if empty. */
static struct block *cache_pop(struct arena_header *h, int c)
{
    _Atomic uint64_t *top = &h->cache[c];
    uint64_t old = atomic_load_explicit(top, memory_order_acquire), idx;
    struct block *b;
    do {
        idx = old & 0xffffffffu;
        if (!idx)
            return NULL;
        b = block_at(h, idx << ALIGN_LOG);
        /* b may have been taken and reused meanwhile: then this reads
         * anything, and the CAS fails on the tag. */
        uint64_t next = block_link(b) & 0xffffffffu;
        if (atomic_compare_exchange_weak_explicit(top, &old, ((old >> 32) + 1) << 32 | next,
                                                  memory_order_acquire, memory_order_acquire))
            break;
    } while (1);
    hook("cache_popped");
    set_magic(b, BLOCK_USED);
    __atomic_store_n(&b->link, 0, __ATOMIC_RELAXED);   /* not in a queue (arena_mark_queued) */
    return b;
}

/* Pushes the in-use block b onto its size's stack: false if it is not a
 * block in use (freed twice) or the stack is full. */
static bool cache_push(struct arena_header *h, struct block *b, uint64_t size)
{
    uint32_t used = BLOCK_USED;
    if (!__atomic_compare_exchange_n(&b->magic, &used, BLOCK_CACHED, false, __ATOMIC_RELAXED,
                                     __ATOMIC_RELAXED))
        return false;
    hook("cache_marked");
    _Atomic uint64_t *top = &h->cache[cache_class(size)];
    uint64_t old = atomic_load_explicit(top, memory_order_acquire);
    uint64_t idx = block_off(h, b) >> ALIGN_LOG;
    do {
        uint64_t below = old & 0xffffffffu;
        uint64_t depth = below ? (block_link(block_at(h, below << ALIGN_LOG)) >> 32) + 1 : 1;
        if (depth > CACHE_DEPTH) {
            set_magic(b, BLOCK_USED);
            return false;
        }
        __atomic_store_n(&b->link, depth << 32 | below, __ATOMIC_RELAXED);
    } while (!atomic_compare_exchange_weak_explicit(top, &old, ((old >> 32) + 1) << 32 | idx,
                                                    memory_order_release, memory_order_acquire));
    hook("cache_pushed");
    return true;
}

/* Gives every cached block back to the lists, where it merges with its free
 * neighbours. Under the lock, when the lists could not serve a request:
 * true if there was any. */
static bool cache_drain(struct arena_header *h)
{
    bool any = false;
    for (int c = 0; c < CACHE_CLASSES; c++) {
        struct block *b;
        while ((b = cache_pop(h, c)) != NULL) {
            hook("cache_drained");
            free_locked(h, b, NULL);
            any = true;
        }
    }
    return any;
}

/* A block in use of at most max bytes, by its payload, without the lock:
 * its owner alone changes its header, and the lists write the next block's
 * prev_size only when it changes, which it cannot while this block is in
 * use. NULL for anything that is not plainly such a block (the locked path
 * then decides). */
static struct block *owned_block(struct arena_header *h, const void *p, uint64_t max)
{
    uint64_t off = (uint64_t)((const char *)p - (const char *)h) - BLOCK_HEADER;
    if ((off & 63) || off < h->first || off >= h->end)
        return NULL;
    struct block *b = block_at(h, off);
    uint64_t size = __atomic_load_n(&b->size, __ATOMIC_RELAXED);
    if (magic_of(b) != BLOCK_USED || size < MIN_BLOCK || size > max ||
        (size & 63) || size > h->end - off ||
        __atomic_load_n(&block_at(h, off + size)->prev_size, __ATOMIC_RELAXED) != size)
        return NULL;
    return b;
}

static struct block *cacheable_block(struct arena_header *h, const void *p)
{
    return owned_block(h, p, CACHE_BLOCK_MAX);
}

/* ------------------------------------------------------------------ deferred frees
 *
 * A free that cannot take the lock within LOCK_GRACE_S (its holder is
 * stopped: SIGSTOP, a debugger, a frozen cgroup) does not wait on: it
 * pushes the block onto the deferred stack, and whoever takes the lock next
 * frees it. So a call with a timeout that frees a block (a get of a big
 * item) keeps its timeout. Pushed by CAS from any process; popped only
 * under the lock, one block at a time. */

/* b is in use: marks it DEFERRED (a CAS from USED, so a double free fails)
 * and pushes it. */
static bool deferred_push(struct arena_header *h, struct block *b)
{
    uint32_t used = BLOCK_USED;
    if (!__atomic_compare_exchange_n(&b->magic, &used, BLOCK_DEFERRED, false, __ATOMIC_RELAXED,
                                     __ATOMIC_RELAXED))
        return false;
    uint64_t old = atomic_load_explicit(&h->deferred, memory_order_acquire);
    uint64_t idx = block_off(h, b) >> ALIGN_LOG;
    do
        __atomic_store_n(&b->link, old & 0xffffffffu, __ATOMIC_RELAXED);
    while (!atomic_compare_exchange_weak_explicit(&h->deferred, &old, ((old >> 32) + 1) << 32 | idx,
                                                  memory_order_release, memory_order_acquire));
    return true;
}

/* Under the lock: frees every deferred block. A holder killed between a pop
 * and its free leaks that one block (see the comment at the top). */
static void deferred_drain(struct arena_header *h)
{
    uint64_t old = atomic_load_explicit(&h->deferred, memory_order_acquire);
    while (old & 0xffffffffu) {
        struct block *b = block_at(h, (old & 0xffffffffu) << ALIGN_LOG);
        uint64_t next = __atomic_load_n(&b->link, __ATOMIC_RELAXED) & 0xffffffffu;
        if (!atomic_compare_exchange_weak_explicit(&h->deferred, &old,
                                                   ((old >> 32) + 1) << 32 | next,
                                                   memory_order_acquire, memory_order_acquire))
            continue;
        set_magic(b, BLOCK_USED);
        free_locked(h, b, NULL);
        old = atomic_load_explicit(&h->deferred, memory_order_acquire);
    }
}

/* Takes a block of size bytes, its pages reserved, not zeroed. slot, if
 * not NULL, gets the block's address as soon as the block is taken (under
 * the lock, or right after the cache's CAS), before the pages are reserved:
 * see arena_alloc_held. */
static void *take(size_t size, const mp_deadline *d, void *_Atomic *slot)
{
    struct arena_header *h = arena_get();
    if (!h || size == 0 || size > h->size)
        return NULL;
    uint64_t need = ((uint64_t)size + BLOCK_HEADER + 63) & ~(uint64_t)63;
    void *was = slot ? atomic_load_explicit(slot, memory_order_relaxed) : NULL;
    if (need <= CACHE_BLOCK_MAX) {
        struct block *c = cache_pop(h, cache_class(need));
        if (c && slot)
            atomic_store_explicit(slot, (char *)c + BLOCK_HEADER, memory_order_release);
        if (c) {
            hook("alloc_taken");
            return (char *)c + BLOCK_HEADER;
        }
    }
    if (!arena_lock_until(h, d)) {
        errno = ETIMEDOUT;
        return NULL;
    }
    /* A hand slot (claimed, not yet filled) is named in the allocation's
     * journal, so a holder killed between its commit and the store leaves
     * the block named there too; any other slot is written after. */
    void *_Atomic *in_hand = slot && was == HAND_CLAIMED ? slot : NULL;
    struct block *b = h->corrupt ? NULL : alloc_locked(h, need, in_hand);
    if (!b && !h->corrupt && cache_drain(h))
        b = alloc_locked(h, need, in_hand);
    if (b && slot && !in_hand)
        atomic_store_explicit(slot, (char *)b + BLOCK_HEADER, memory_order_release);
    if (b)
        __atomic_store_n(&b->link, 0, __ATOMIC_RELAXED);   /* not in a queue */
    /* Read under the lock: freeing a neighbour rewrites this header. */
    uint64_t bsize = b ? b->size : 0;
    bool fresh = b && (b->flags & F_FRESH);
    rmutex_unlock(&h->lock);
    if (!b)
        return NULL;
    hook("alloc_taken");
    void *p = (char *)b + BLOCK_HEADER;
    if (bsize >= RESERVE_MIN && (fresh || bsize >= PUNCH_MIN) && !reserve(h, b, bsize)) {
        if (slot)
            atomic_store_explicit(slot, was, memory_order_release);
        arena_free(p);
        return NULL;
    }
    return p;
}

void *arena_alloc_nozero_until(size_t size, const mp_deadline *d)
{
    return take(size, d, NULL);
}

void *arena_alloc_nozero(size_t size)
{
    return take(size, NULL, NULL);
}

void *arena_alloc_held(size_t size, bool zero, const mp_deadline *d, void *_Atomic *slot)
{
    void *p = take(size, d, slot);
    if (p && zero)
        memset(p, 0, size);
    return p;
}

void *arena_alloc_until(size_t size, const mp_deadline *d)
{
    void *p = arena_alloc_nozero_until(size, d);
    if (p)
        memset(p, 0, size);
    return p;
}

void *arena_alloc(size_t size)
{
    return arena_alloc_until(size, NULL);
}

/* The in-use block whose payload starts at p, or NULL. Under the lock. */
static struct block *used_block(struct arena_header *h, const void *p)
{
    if (!arena_contains(p, 1))
        return NULL;
    uint64_t off = (uint64_t)((const char *)p - (const char *)h) - BLOCK_HEADER;
    if ((off & 63) || off < h->first || off >= h->end)
        return NULL;
    struct block *b = block_at(h, off);
    if (magic_of(b) != BLOCK_USED || b->size < MIN_BLOCK || (b->size & 63) || b->size > h->end - off)
        return NULL;
    return block_at(h, off + b->size)->prev_size == b->size ? b : NULL;
}

/* A small block onto its size's stack, without the lock: true if so. */
static bool free_to_cache(struct arena_header *h, void *p)
{
    struct block *c = cacheable_block(h, p);
    return c && cache_push(h, c, __atomic_load_n(&c->size, __ATOMIC_RELAXED));
}

void arena_free(void *p)
{
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    if (!p || !h || !arena_contains(p, 1) || free_to_cache(h, p))
        return;
    static const mp_deadline now = { { 0, 0 }, false };   /* passed: the grace alone */
    if (!arena_lock_until(h, &now)) {
        /* Not ours or freed twice: refused, as under the lock. */
        struct block *b = owned_block(h, p, UINT64_MAX);
        if (b)
            deferred_push(h, b);
        return;
    }
    struct block *b = used_block(h, p);   /* not ours or freed twice: refuse quietly */
    if (b)
        free_locked(h, b, NULL);
    rmutex_unlock(&h->lock);
}

void arena_free_held(void *_Atomic *slot, void *p)
{
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    if (!slot || !p || !h || !arena_contains(p, 1)) {
        if (slot)
            atomic_store_explicit(slot, NULL, memory_order_release);
        arena_free(p);
        return;
    }
    static const mp_deadline now = { { 0, 0 }, false };   /* passed: the grace alone */
    if (!arena_lock_until(h, &now)) {
        atomic_store_explicit(slot, NULL, memory_order_release);
        arena_free(p);                   /* deferred, as any free then */
        return;
    }
    struct block *b = used_block(h, p);
    if (b)
        free_locked(h, b, slot);
    else
        atomic_store_explicit(slot, NULL, memory_order_release);
    rmutex_unlock(&h->lock);
}

void arena_settle(void)
{
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    mp_deadline now = deadline_in(0);       /* passed: the grace alone */
    if (h && arena_lock_until(h, &now))
        rmutex_unlock(&h->lock);
}

bool arena_is_block(const void *p)
{
    return arena_block_until(p, NULL, NULL) == 1;
}

/* A block in use carries QUEUED in its link word (a cached block's stack
 * link, unused while it is in use and cleared when it is taken) while a
 * queue holds it (mp_queue_put_shared). */
#define QUEUED UINT64_MAX

/* p looked at under the lock: 1 a block in use (*size, if not NULL, its
 * bytes; with mark, marked a queue's now), -2 (mark) a queue's already, 0
 * not a block in use, -1 the lock stayed held until d. */
static int look_at_block(const void *p, const mp_deadline *d, size_t *size, bool mark)
{
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    if (!p || !h || !arena_contains(p, 1))
        return 0;
    if (!arena_lock_until(h, d))
        return -1;
    struct block *b = used_block(h, p);
    int rc = b != NULL;
    uint64_t none = 0;
    if (b && mark && !__atomic_compare_exchange_n(&b->link, &none, QUEUED, false,
                                                 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        rc = -2;
    if (b && size)
        *size = (size_t)(b->size - BLOCK_HEADER);
    rmutex_unlock(&h->lock);
    return rc;
}

int arena_block_until(const void *p, const mp_deadline *d, size_t *size)
{
    return look_at_block(p, d, size, false);
}

int arena_mark_queued(void *p, const mp_deadline *d, size_t *size)
{
    return look_at_block(p, d, size, true);
}

void arena_unmark_queued(void *p)
{
    struct block *b = (struct block *)((char *)p - BLOCK_HEADER);
    __atomic_store_n(&b->link, 0, __ATOMIC_RELAXED);
}

/* Whether p is a block a queue holds: a hint, read without the lock. */
static bool queued_block(struct arena_header *h, const void *p)
{
    struct block *b = owned_block(h, p, UINT64_MAX);
    return b && __atomic_load_n(&b->link, __ATOMIC_RELAXED) == QUEUED;
}

size_t arena_block_size(const void *p)
{
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    const struct block *b = (const struct block *)((const char *)p - BLOCK_HEADER);
    arena_lock(h);                   /* freeing a neighbour rewrites this header */
    uint64_t size = b->size;
    rmutex_unlock(&h->lock);
    return (size_t)(size - BLOCK_HEADER);
}

/* Walks every block and every free list under the lock (ck_ring_valid's
 * spirit): sizes and links in bounds, each header's predecessor size right,
 * no two free neighbours, every free block in the one list its size names
 * and in no other, the bitmaps saying which lists are non-empty, and every
 * cache stack well formed. The stacks change without the lock: exact only
 * while no other thread or process allocates or frees. */
bool arena_check(struct arena_stats *st)
{
    struct arena_header *h = arena_get();
    if (!h)
        return false;
    struct arena_stats s = { 0 };
    arena_lock(h);
    bool ok = h->j.n == 0 && !h->corrupt && h->first < h->end && h->end + BLOCK_HEADER <= h->size;
    uint64_t off = h->first, prev = 0;
    bool prev_free = false;
    size_t marked = 0, in_use = 0;      /* in_use: every block not free, as h->used counts */
    while (ok && off < h->end) {
        struct block *b = block_at(h, off);
        uint32_t magic = magic_of(b);
        bool is_free = magic == BLOCK_FREE;
        ok = (is_free || magic == BLOCK_USED || magic == BLOCK_CACHED ||
              magic == BLOCK_DEFERRED) && b->size >= MIN_BLOCK &&
             !(b->size & 63) && b->size <= h->end - off && b->prev_size == prev &&
             !(is_free && prev_free) && (magic != BLOCK_CACHED || b->size <= CACHE_BLOCK_MAX);
        if (is_free) {
            s.free_blocks++, s.free_bytes += b->size;
            if (b->size > s.largest_free)
                s.largest_free = b->size;
        } else if (magic == BLOCK_CACHED || magic == BLOCK_DEFERRED) {
            marked++;
        } else {
            s.used_blocks++, s.used_bytes += b->size;
        }
        in_use += is_free ? 0 : b->size;
        prev = b->size, prev_free = is_free, off += b->size;
    }
    ok = ok && h->used == in_use;       /* else frees stop giving memory back (see sweep) */
    struct block *end = block_at(h, h->end);
    ok = ok && off == h->end && magic_of(end) == BLOCK_USED && (end->flags & F_END) &&
         end->prev_size == prev;
    size_t listed = 0;
    for (int fl = 0; ok && fl < FL_COUNT; fl++) {
        ok = !!(h->fl_map & ((uint64_t)1 << fl)) == !!h->sl_map[fl];
        for (int sl = 0; ok && sl < SL_COUNT; sl++) {
            ok = !!(h->sl_map[fl] & (1u << sl)) == !!h->heads[fl][sl];
            uint64_t back = 0;
            for (uint64_t o = h->heads[fl][sl]; ok && o; o = block_at(h, o)->next_free) {
                struct block *b = block_at(h, o);
                int f, l;
                ok = o >= h->first && o < h->end && !(o & 63) && magic_of(b) == BLOCK_FREE &&
                     b->prev_free == back && ++listed <= s.free_blocks;
                if (ok) {
                    list_of(b->size, &f, &l);
                    ok = f == fl && l == sl;
                }
                back = o;
            }
        }
    }
    ok = ok && listed == s.free_blocks;
    /* The stacks: each entry a cached block of the stack's size, its depth
     * one more than the entry below; a block marked cached in no stack is
     * one a killed process was pushing or taking (leaked, not torn). */
    for (int c = 0; ok && c < CACHE_CLASSES; c++) {
        uint64_t idx = atomic_load(&h->cache[c]) & 0xffffffffu, depth = 0;
        for (int n = 0; ok && idx; n++) {
            uint64_t o = idx << ALIGN_LOG;
            struct block *b = block_at(h, o);
            uint64_t link = block_link(b);
            ok = n < CACHE_DEPTH && o >= h->first && o < h->end && magic_of(b) == BLOCK_CACHED &&
                 b->size == ((uint64_t)c + 2) << ALIGN_LOG && (!depth || link >> 32 == depth - 1);
            depth = link >> 32;
            idx = link & 0xffffffffu;
            s.cached_blocks++, s.cached_bytes += b->size;
            ok = ok && (idx ? depth >= 2 : depth == 1);
        }
    }
    /* The deferred stack: the lock's taking emptied it, so an entry here was
     * pushed since, by a free that did not wait for us. */
    size_t deferred = 0;
    for (uint64_t idx = atomic_load(&h->deferred) & 0xffffffffu; ok && idx; deferred++) {
        uint64_t o = idx << ALIGN_LOG;
        ok = o >= h->first && o < h->end && magic_of(block_at(h, o)) == BLOCK_DEFERRED &&
             deferred < marked;
        idx = ok ? block_link(block_at(h, o)) & 0xffffffffu : 0;
    }
    ok = ok && s.cached_blocks + deferred <= marked;
    s.deferred_blocks = deferred;
    s.stray_blocks = marked - (ok ? s.cached_blocks + deferred : marked);
    rmutex_unlock(&h->lock);
    if (st)
        *st = s;
    return ok;
}

/* The big ranges this process has mapped in already, since the last sweep
 * (a punch unmaps pages in every process): populating a range whose pages
 * are all mapped still walks every page table entry, and a process reusing
 * warm blocks would pay it per item. A fork child starts empty (its page
 * tables start empty for the arena). Direct-mapped by address. */
#define SEEN_SLOTS 256
static struct {
    pthread_mutex_t lock;
    pid_t pid;
    struct { uintptr_t start; size_t len; uint64_t sweeps; } e[SEEN_SLOTS];
} seen = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* A fork copies these process-local locks as they are: held across it, so
 * the child never finds one taken by a thread it does not have. */
static void fork_lock_local(void)
{
    pthread_mutex_lock(&arena.init);
    pthread_mutex_lock(&seen.lock);
}

static void fork_unlock_local(void)
{
    pthread_mutex_unlock(&seen.lock);
    pthread_mutex_unlock(&arena.init);
}

MP_SETUP_CONSTRUCTOR static void arena_fork_hooks(void)
{
    fork_hook_set(FORK_ARENA, fork_lock_local, fork_unlock_local, fork_unlock_local);
}

static bool prefault_seen(uintptr_t start, size_t len, uint64_t sweeps)
{
    pthread_mutex_lock(&seen.lock);
    if (seen.pid != getpid()) {
        memset(seen.e, 0, sizeof seen.e);
        seen.pid = getpid();
    }
    unsigned slot = (unsigned)(((start >> 12) * 0x9e3779b97f4a7c15ULL) >> 56);
    bool hit = seen.e[slot].start == start && seen.e[slot].len >= len &&
               seen.e[slot].sweeps == sweeps;
    if (!hit) {
        seen.e[slot].start = start;
        seen.e[slot].len = len;
        seen.e[slot].sweeps = sweeps;
    }
    pthread_mutex_unlock(&seen.lock);
    return hit;
}

void arena_prefault(void *p, size_t n, bool write)
{
#if defined(MADV_POPULATE_WRITE) && defined(MADV_POPULATE_READ)
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    uintptr_t start = (uintptr_t)p & ~(uintptr_t)4095, end = (uintptr_t)p + n;
    if (n && h && arena_contains(p, n) &&
        !prefault_seen(start, end - start, atomic_load_explicit(&h->sweeps, memory_order_relaxed)))
        madvise((void *)start, end - start, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
#else
    (void)p, (void)n, (void)write;
#endif
}

#if defined(__SANITIZE_ADDRESS__)
#define ARENA_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_LSAN 1
#endif
#endif
#ifdef ARENA_LSAN
#include <sanitizer/lsan_interface.h>
#endif

void arena_heap_root(const void *obj, size_t size, bool live)
{
#ifdef ARENA_LSAN
    if (live)
        __lsan_register_root_region(obj, size);
    else
        __lsan_unregister_root_region(obj, size);
#else
    (void)obj, (void)size, (void)live;
#endif
}

#ifdef MP_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#ifdef MP_TSAN
/* Applies op (__tsan_acquire or __tsan_release) to every word through
 * which the allocator orders its users: the lock, and each lock-free
 * stack (the cache's and the deferred one). */
static void arena_sync(void (*op)(void *))
{
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    if (!h)
        return;
    op(&h->lock);
    for (int i = 0; i < CACHE_CLASSES; i++)
        op(&h->cache[i]);
    op(&h->deferred);
}
#endif

void arena_handed_over(void)
{
#ifdef MP_TSAN
    arena_sync(__tsan_acquire);      /* what each unlock and push released */
#endif
}

void arena_looked_at(void)
{
#ifdef MP_TSAN
    arena_sync(__tsan_release);      /* what the next lock and pop acquire */
#endif
}

/* The caller's block is in hand from the moment it is taken until it is
 * returned (and from the free's start to its commit): a process killed
 * inside either call, zeroing a big block say, leaves it to its reaper,
 * where it leaked before. */
void *mp_shared_alloc(size_t size)
{
    void *_Atomic *slot;
    void *p = hand_alloc(size, true, NULL, &slot);
    hand_release(slot);
    if (p)
        return p;
    size_t whole = arena_size();
    if (size == 0)
        mp_fail(MP_EINVAL, __func__, "size is 0: ask for at least one byte");
    else if (whole && size > whole)
        mp_fail(MP_ENOMEM, __func__, "%zu bytes is more than the whole shared arena (%zu bytes; "
                "MPROC_ARENA_SIZE sets it)", size, whole);
    else
        mp_fail(MP_ENOMEM, __func__, "no block of %zu bytes: the shared arena is full, or the "
                "machine could not give its pages (MPROC_ARENA_SIZE sets the arena's size)", size);
    return NULL;
}

void mp_shared_free(void *p)
{
    struct arena_header *h = atomic_load_explicit(&arena.hdr, memory_order_acquire);
    if (p && h && arena_contains(p, 1) && queued_block(h, p)) {
        mp_fail(MP_EINVAL, __func__, "p is in a queue (mp_queue_put_shared): the queue owns it "
                "until mp_queue_get_shared hands it out");
        return;
    }
    if (p && h && arena_contains(p, 1) && free_to_cache(h, p))
        return;                     /* small: one CAS (a kill there leaks at most it) */
    arena_free_held(p ? hand_hold(p) : NULL, p);
}
