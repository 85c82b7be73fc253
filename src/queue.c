/* queue.c - Queue, SimpleQueue and JoinableQueue: one MPMC queue in the arena.
 *
 * Items are records in a chain of byte rings ("segments") in the family arena.
 * One lock (a tlock) serialises producers, another consumers, so a producer and
 * a consumer never wait for each other. An operation commits with ONE store:
 * a put of its record's header, a get of a counter (gets); a journal written
 * just before it lets the next holder finish the bookkeeping of an operation
 * whose process was killed, so no item is torn or delivered twice, and only
 * an item a killed consumer had already taken is lost (docs/queue.md). Items
 * above QUEUE_INLINE_MAX go out of line in their own arena block: one copy
 * in, one copy out, or none for put_shared and get_shared, which hand the
 * block itself over (docs/arena.md).
 */
#include "queue_internal.h"
#include "platform/ringcopy.h"
#include "platform/waitflag.h"

#include <limits.h>
#include <sched.h>
#include <stdalign.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

MP_TEST_HOOK void (*mp__queue_test_hook)(const char *point);

/* A record's kind, in bits 1-2 of its header. REC_SHOWN is a big item
 * that was shown while it was copied in: a third word holds the gen it was
 * shown under (see "big items in flight"). */
enum { REC_INLINE = 0, REC_BIG = 1, REC_LINK = 2, REC_SHOWN = 3 };

#define REC_HEADER 8          /* header(len, kind); records are 8-byte aligned */
#define REC_REF 16            /* header + an arena pointer (big item, link) */
#define REC_SHOWN_SIZE 24     /* header + an arena pointer + a gen */
#define SEG_MIN_CLASS 16      /* segments' rings are 64 KiB ... */
#define SEG_MAX_CLASS 20      /* ... doubling up to 1 MiB, then chained */
/* Segments of 1 MiB a consumer leaves are kept for the producers' next
 * ones, up to SPARES (see seg_retire). */
#define SPARES 4
/* A spinning waiter looks about every LOOK_NS. Each look pulls the
 * counter's line to this core, and the other side's next commit must take
 * it back: looking every ~90 ns instead of every ~15 made 4 KiB items ~5%
 * faster; every ~180 ns made the round trip 15% slower. That was 8 pauses
 * of 11 ns; on another host here one pause costs 29 ns (8: a look every
 * 230 ns), so the pauses per look are measured (look_pauses). */
#define LOOK_NS 90
/* The spin budget (queue_spin): where it starts, its bounds, and after how
 * many spins in a row that ended in a sleep one spin probes the whole
 * SPIN_MAX_NS again. */
#define SPIN_NS 20000
#define SPIN_MIN_NS 1000
#define SPIN_MAX_NS 50000
#define SPIN_PROBE_AFTER 16
/* Big items from here map their pages in one call, once per block and
 * process (arena_prefault remembers). */
#define PREFAULT_MIN ((size_t)1 << 20)
/* Big items from PREVIEW_MIN up to COPY_STREAM_MIN are shown to consumers
 * while they are copied in, PREVIEW_CHUNK bytes at a time (see "big items
 * in flight"). A follower gives up after PREVIEW_STALL_NS without progress
 * (the producer is not running), and a claim older than PREVIEW_STALE_MS
 * (its producer died) passes to the next producer. */
#define PREVIEW_MIN ((size_t)256 << 10)
#define PREVIEW_CHUNK ((size_t)64 << 10)
#define PREVIEW_STALL_NS 50000
#define PREVIEW_STALE_MS 1000
/* A producer of such an item that is PACE_ITEMS or more items ahead of a
 * consumer busy copying a big item out waits for that copy to end, at most
 * PACE_MAX_NS (a copy that started PACE_STALE_NS ago is a dead consumer's). */
#define PACE_ITEMS 2
#define PACE_MAX_NS 300000
#define PACE_STALE_NS 10000000

/* A byte ring. Producers own tail, consumers own head; head is published so
 * a producer knows how much room is left. */
struct seg {
    _Atomic uint64_t tail;
    char pad0[MP_CACHELINE - 8];
    _Atomic uint64_t head;
    char pad1[MP_CACHELINE - 8];
    uint64_t cap;             /* data bytes, a power of two: a place is pos & (cap - 1) */
    uint32_t class;
    char pad2[MP_CACHELINE - 12];
    alignas(8) unsigned char data[];
};

_Static_assert(offsetof(struct seg, data) % MP_CACHELINE == 0, "records' lines are the arena's");

/* A process that got items, and what it owes: got - lost - done task_done
 * calls (see "joining past a dead consumer"). */
#define TAKERS 32
struct taker {
    _Atomic uint64_t owner;   /* task_word of the process; 0 = free */
    _Atomic uint64_t got;     /* items its processes got */
    _Atomic uint64_t lost;    /* written off when a dead owner owed them */
    _Atomic uint64_t done;    /* task_done calls counted to it */
};

/* What the holder of a side is about to commit: if it dies right after the
 * commit store, the next holder moves the position from here (and, for a
 * get, the taker's count). */
struct journal {
    struct seg *seg;
    uint64_t pos_after;
    uint64_t count_after;
    struct taker *taker;
    uint64_t got_after;
};

struct side {
    tlock lock;
    struct seg *seg;          /* producers: the tail segment; consumers: the head one */
    uint64_t cached;          /* producers: gets last seen (bounded queues) */
    uint64_t cached_head;     /* producers: seg->head last seen */
    uint64_t count;           /* the side's own copy of its counter (puts, gets): others
                               * read the counter's line, so loading it could wait
                               * for that line to come back */
    /* The journal starts a line of its own (the lock with its borrowers'
     * flags and the fields above take the two before it). Measured when a
     * side was one line packed: a 4 KiB item took up to 25% longer (likely
     * Intel's spatial prefetcher, which fetches lines in 128-byte pairs:
     * one-line sides put the producers' and the consumers' hottest lines in
     * one). */
    alignas(MP_CACHELINE) struct journal j;
};

/* A futex word: bit 0 says "someone sleeps here", the rest is a sequence
 * number wakers bump. A flag rather than a count of sleepers, so a waiter
 * killed in its sleep costs one spare wake-up, not a syscall on every put. */
struct waitword {
    _Atomic uint32_t word;
    _Atomic uint32_t waker_cpu;   /* 1 + the CPU of the last commit that wakes here; 0: none */
};

/* The big item one producer is copying in right now, shown to consumers so
 * that they copy it out right behind it, while its bytes are still in cache
 * (see "big items in flight"). A hint only: nothing is taken through it. */
struct preview {
    _Atomic uint64_t claim;   /* the showing producer's start, in ms (+1); 0 = none */
    _Atomic uint64_t next;    /* the last gen handed out */
    _Atomic uint64_t gen;     /* a seqlock: 0 while the fields below change */
    _Atomic uintptr_t block;
    _Atomic uint64_t len;
    _Atomic uint64_t done;    /* bytes of block written so far */
    _Atomic uint64_t copying; /* when the consumer copying a big item out began; 0 = none */
};

/* The rules, field by field ("under put" = holding put.lock, the producers'
 * tlock; "under get" = the consumers'):
 *   magic, creator, maxsize  written by mp_queue_new before the handle is
 *                      shared; read-only after (mp_queue_free clears magic).
 *   closed             set once, under put, by shutdown; read by anyone.
 *   put.seg, .cached, .cached_head, .count, .j, and the tail segment's
 *                      tail under put. tail is published with a release store.
 *   get.seg, .cached, .count, .j, and the head segment's head
 *                      under get. head is published with a release store;
 *                      a producer reads it to know the room left.
 *   a record's header  a put's commit: stored last, with release, under
 *                      put; cleared by the consumer that took it, under
 *                      get. Read by consumers under get (waiters: a hint).
 *   puts               items put: stored after the header, under put.
 *   gets               a get's commit: one store, under get.
 *                      Both read by anyone (sizes, waiters, joins).
 *   done               task_done calls no taker could be charged with
 *                      (items got by a process no taker tracks): CAS, by
 *                      anyone. Every other call is counted in a taker's
 *                      done only, so one atomic step counts a call.
 *   takers[].owner, .got, .lost, and lost
 *                      under get (lost is the sum of the takers' lost; a
 *                      repair sums it again); takers[].done and lost_told
 *                      atomic, by anyone; dead_look by CAS, by joiners.
 *   not_empty          raised by a consumer about to sleep, under put, and
 *                      woken by a producer after its commit (waitflag.h);
 *   not_full           the same with the sides swapped;
 *   all_done           raised by join with a seq_cst exchange, woken by
 *                      task_done after a fence.
 *   .waker_cpu         not_empty's under put, after a commit, not_full's
 *                      under get (bounded queues only); a hint read by
 *                      spinning waiters, never trusted for correctness.
 *   shown              written by the producer holding shown.claim (taken
 *                      by CAS), read by any consumer as a seqlock; but
 *                      shown.copying, which is written under get.
 * Segments: a producer links a new one under put; the consumer that leaves
 * an old one frees it, or keeps it in spare, under get. A consumer only
 * fills an empty spare slot (by CAS) and a producer only empties a full
 * one (by exchange, under put). Big items' blocks belong to the record that
 * points at them until a consumer has taken it.
 * Lock order: put.lock before get.lock (only mp__queue_valid takes both);
 * waiting is done holding neither. A dead holder's lock passes to the next
 * locker with MP_EOWNERDEAD, which replays that side's journal (repair)
 * before anything else. */
struct mp_queue {
    uint32_t magic;
    pid_t creator;
    uint64_t maxsize;
    _Atomic uint32_t closed;
    alignas(MP_CACHELINE) struct side put;
    alignas(MP_CACHELINE) struct side get;
    alignas(MP_CACHELINE) _Atomic uint64_t puts;   /* items committed by producers */
    alignas(MP_CACHELINE) _Atomic uint64_t gets;   /* items committed by consumers */
    alignas(MP_CACHELINE) _Atomic uint64_t done;   /* task_done calls counted to no taker */
    _Atomic uint64_t lost;         /* items written off: got by processes that died owing them */
    _Atomic uint64_t lost_told;    /* how many of those a join has reported */
    _Atomic uint64_t dead_look;    /* when a join last looked for dead takers (now_ns) */
    alignas(MP_CACHELINE) struct waitword not_empty;
    alignas(MP_CACHELINE) struct waitword not_full;
    alignas(MP_CACHELINE) struct waitword all_done;
    alignas(MP_CACHELINE) struct preview shown;
    alignas(MP_CACHELINE) _Atomic(struct seg *) spare[SPARES];   /* NULL: none */
    alignas(MP_CACHELINE) struct taker takers[TAKERS];
};

static void hook(const char *point)
{
    if (mp__queue_test_hook)
        mp__queue_test_hook(point);
}

static bool queue_ok(const mp_queue *q)
{
    return q && arena_contains(q, sizeof *q) && q->magic == MAGIC_QUEUE;
}

/* ------------------------------------------------------------------ segments */

/* A record's header is its commit: (len << 3) | (kind << 1) | 1, stored
 * last, with release. The word where the next record's header will go
 * holds 0 until then: a producer makes sure of it before it commits the
 * record in front of it (a consumer clears each header it takes, so the
 * word is mostly 0 already), and a new segment starts with a 0. So a
 * consumer learns that an item is there, and what it is, from the one line
 * it reads the item from; the producers' count (puts) is bookkeeping for
 * sizes and joins, stored after the commit. */
static uint64_t header(size_t len, uint64_t kind)
{
    return ((uint64_t)len << 3) | (kind << 1) | 1;
}

static size_t header_len(uint64_t h)
{
    return (size_t)(h >> 3);
}

static uint64_t header_kind(uint64_t h)
{
    return (h >> 1) & 3;
}

/* The place of position pos in s's ring. */
static unsigned char *ring_at(struct seg *s, uint64_t pos)
{
    return s->data + (pos & (s->cap - 1));
}

static _Atomic uint64_t *ring_header(struct seg *s, uint64_t pos)
{
    return (_Atomic uint64_t *)(void *)ring_at(s, pos);
}

/* An empty ring: positions at 0, and no record at the first. */
static void seg_reset(struct seg *s)
{
    atomic_store_explicit(&s->tail, 0, memory_order_relaxed);
    atomic_store_explicit(&s->head, 0, memory_order_relaxed);
    atomic_store_explicit(ring_header(s, 0), 0, memory_order_relaxed);
}

/* d: the caller's deadline for the arena's lock (NULL: none). held, if
 * not NULL, gets the hand it is held in (internal.h). */
static struct seg *seg_new(uint32_t class, lazy_deadline *d, void *_Atomic **held)
{
    size_t size = sizeof(struct seg) + ((size_t)1 << class);
    const mp_deadline *at = d ? lazy_deadline_at(d) : NULL;
    struct seg *s = held ? hand_alloc(size, false, at, held) : arena_alloc_nozero_until(size, at);
    if (!s)
        return NULL;
    s->cap = (uint64_t)1 << class;
    s->class = class;
    seg_reset(s);
    return s;
}

/* Maps a new segment's pages into this process in one call, rather than
 * a fault per page as the ring reaches them (in a fork child, or once the
 * arena has given them back, every page faults: about a fault per 32 items
 * of 64 bytes). Once per segment and process (arena_prefault remembers). */
static void seg_prefault(struct seg *s)
{
    arena_prefault(s, sizeof *s + s->cap, true);
}

/* A segment the producers move to when the tail one is full: a spare if
 * there is one of that class, else a new one, held in *held until linked. */
static struct seg *seg_next(mp_queue *q, uint32_t class, lazy_deadline *d, void *_Atomic **held)
{
    for (int i = 0; class == SEG_MAX_CLASS && i < SPARES; i++) {
        if (!atomic_load_explicit(&q->spare[i], memory_order_relaxed))
            continue;
        struct seg *s = atomic_exchange(&q->spare[i], NULL);
        seg_reset(s);
        return s;
    }
    struct seg *s = seg_new(class, d, held);
    if (s)
        seg_prefault(s);
    return s;
}

/* A segment the consumers left. On this machine's kind of host, a
 * process's first touch of a page costs it about 15 us (its page tables,
 * and the host's behind them, start empty in a fork child, and a page the
 * arena gave back starts empty everywhere): a 1 MiB segment is 256 such
 * touches in each process, about 0.5 us per 64-byte item. A producer that
 * runs ahead of its consumer moves to a new segment each MiB, so spares
 * let the two cycle through pages both have touched, rather than through
 * new ones. At most SPARES MiB stay so, until mp_queue_free. */
static void seg_retire(mp_queue *q, struct seg *s)
{
    for (int i = 0; s->class == SEG_MAX_CLASS && i < SPARES; i++) {
        struct seg *none = NULL;
        if (atomic_compare_exchange_strong(&q->spare[i], &none, s))
            return;
    }
    arena_free(s);
}

static void ring_write(struct seg *s, uint64_t pos, const void *src, size_t n)
{
    ringcopy_in(s->data, s->cap, pos, src, n);
}

static void ring_read(const struct seg *s, uint64_t pos, void *dst, size_t n)
{
    ringcopy_out(s->data, s->cap, pos, dst, n);
}

/* Headers and references are 8-byte words at 8-aligned positions, so they
 * never straddle the end of the ring. */
static uint64_t *ring_word(struct seg *s, uint64_t pos)
{
    return (uint64_t *)(void *)ring_at(s, pos);
}

static bool kind_big(uint64_t kind)
{
    return kind == REC_BIG || kind == REC_SHOWN;
}

/* A record's bytes before any padding. */
static size_t record_bytes(size_t len, uint64_t kind)
{
    return kind == REC_SHOWN ? REC_SHOWN_SIZE
         : kind != REC_INLINE ? REC_REF : REC_HEADER + ((len + 7) & ~(size_t)7);
}

/* Where a record that starts at pos ends. One of a cache line or more ends
 * on a line boundary (segments' data and capacities are whole lines), so
 * in a stream of such items each starts on a line of its own. Packed, a
 * 64-byte item's record (72 bytes) shares a line with the next: a
 * consumer reading the newest item takes that line from the producer
 * writing the next one, and back. Measured, 64 B items 1->1: 5.9 M/s
 * packed, 8.0 M/s on their own lines (medians of seven, same run). Small
 * records stay packed: a line each would be up to 8 times the memory. */
static uint64_t record_end(uint64_t pos, size_t len, uint64_t kind)
{
    uint64_t size = record_bytes(len, kind);
    if (size < MP_CACHELINE)
        return pos + size;
    return (pos + size + MP_CACHELINE - 1) & ~(uint64_t)(MP_CACHELINE - 1);
}

/* The most room a record can take, wherever it starts (at an 8-aligned
 * position: up to 56 bytes of padding after one of a line or more). */
static size_t record_room(size_t len, uint64_t kind)
{
    size_t size = record_bytes(len, kind);
    return size < MP_CACHELINE ? size : size + MP_CACHELINE - 8;
}

/* ------------------------------------------------------------------ waiting */

/* A spinning waiter's budget (queue_spin) and how many spins in a row
 * ended in a sleep, per thread. */
static MP_TLS_HOT uint64_t spin_budget_ns;
static MP_TLS_HOT uint32_t spin_failures;

static int lock_side(mp_queue *q, struct side *s, void (*repair)(mp_queue *), double timeout);
static void put_repair(mp_queue *q);
static void get_repair(mp_queue *q);

/* Waking, without a fence on the fast path. A sleeper raises its word's flag
 * while holding the lock of the side that wakes it (consumers raise
 * not_empty under the producers' lock, producers not_full under the
 * consumers'), then looks once more and sleeps. A waker looks at the flag
 * before it gives that lock back, after its commit. The lock orders the
 * two: either the waker's turn came first, and the sleeper's last look sees
 * its commit, or the sleeper's did, and the waker sees the flag. So no
 * wake-up is lost, and a put or get pays no fence (a fence after a put of
 * 4 KiB waited for all its stores to reach the other core: 90% of the
 * producer's time outside memcpy). all_done has no such lock: its flag is
 * raised with a seq_cst exchange and task_done fences before it looks. */
static uint32_t raise_flag(mp_queue *q, struct waitword *w, double lock_timeout)
{
    /* A guard held past the call's time (its holder stopped) is not waited
     * for: the flag goes up unguarded, and a wake-up lost to that costs a
     * slice at most (sleeps are sliced). */
    struct side *guard = w == &q->not_empty ? &q->put : w == &q->not_full ? &q->get : NULL;
    bool locked = guard && lock_side(q, guard, guard == &q->put ? put_repair : get_repair,
                                     lock_timeout) == 0;
    uint32_t v = waitflag_raise(&w->word);
    if (locked)
        tlock_unlock(&guard->lock);
    return v;
}

/* Pauses per look, so that a look comes about every LOOK_NS: measured
 * once per process (a preemption during the measure only makes looks
 * more frequent). */
static unsigned look_pauses(void)
{
    static _Atomic unsigned measured;
    unsigned n = atomic_load_explicit(&measured, memory_order_relaxed);
    if (n)
        return n;
    uint64_t t0 = now_ns();
    for (int i = 0; i < 64; i++)
        cpu_relax();
    uint64_t per = (now_ns() - t0) / 64;
    n = per == 0 ? 16 : per >= LOOK_NS ? 1 : (unsigned)(LOOK_NS / per);
    atomic_store_explicit(&measured, n, memory_order_relaxed);
    return n;
}

/* 1 + the CPU this thread runs on (glibc reads it from rseq: ~2 ns), or 0. */
static uint32_t this_cpu(void)
{
    int c = sched_getcpu();
    return c < 0 ? 0 : (uint32_t)c + 1;
}

/* After a commit that wakes waiters on w: says where it was made. */
static void note_waker_cpu(struct waitword *w)
{
    uint32_t c = this_cpu();
    if (atomic_load_explicit(&w->waker_cpu, memory_order_relaxed) != c)
        atomic_store_explicit(&w->waker_cpu, c, memory_order_relaxed);
}

/* Spins until ready(q), within this thread's budget: true if it came.
 *
 * The one whose commit we wait for may be runnable on this very CPU,
 * waiting for us to give it back: then every look is wasted until the
 * scheduler preempts us, and the budget runs out first. So when the last
 * waker committed on the CPU we spin on, we yield. Only then: yielding on
 * a schedule gives the CPU to unrelated work on a loaded machine, and if
 * the waker now runs elsewhere, its next commit corrects the hint.
 *
 * The budget doubles when the wait ends in a spin and halves when it ends
 * in a sleep. Halving alone never recovers: once waits last a little
 * longer than the budget, every one of them sleeps and the budget stays at
 * its floor. So after SPIN_PROBE_AFTER sleeps in a row, one spin probes the
 * whole SPIN_MAX_NS; if the item comes, the budget is set to that. */
static bool queue_spin(void *arg, struct waitword *w, bool (*ready)(void *, bool))
{
    if (!several_cpus())
        return false;
    if (spin_budget_ns == 0)
        spin_budget_ns = SPIN_NS;
    bool probe = spin_failures >= SPIN_PROBE_AFTER;
    uint64_t budget = probe ? SPIN_MAX_NS : spin_budget_ns;
    unsigned pauses = look_pauses();
    uint64_t start = now_ns();
    for (unsigned i = 1;; i++) {
        if (ready(arg, true)) {
            spin_failures = 0;
            spin_budget_ns = probe || spin_budget_ns * 2 > SPIN_MAX_NS ? SPIN_MAX_NS
                                                                       : spin_budget_ns * 2;
            return true;
        }
        for (unsigned k = 0; k < pauses; k++)
            cpu_relax();
        if ((i & 3) == 1 && atomic_load_explicit(&w->waker_cpu, memory_order_relaxed) == this_cpu())
            sched_yield();
        if ((i & 7) == 0 && now_ns() - start > budget) {
            spin_failures = probe ? 0 : spin_failures + 1;
            spin_budget_ns = spin_budget_ns / 2 < SPIN_MIN_NS ? SPIN_MIN_NS : spin_budget_ns / 2;
            return false;
        }
    }
}

/* queue_give and queue_take: the side's lock stayed held by another past
 * the call's time. MP_EFULL and MP_EEMPTY, as Python's Queue raises Full
 * and Empty when it cannot take its lock in time. */
enum { SIDE_BUSY_PUT = 1, SIDE_BUSY_GET = 2, ARENA_BUSY_PUT = 3, ARENA_BUSY_GET = 4 };
/* give_inline and take_inline: the general path (queue_give, queue_take)
 * has this call. */
enum { GO_GENERAL = 5 };

/* What a put (or get) makes of a block the arena did not give: the
 * arena's lock held past the call's deadline, or no room. */
static int no_block(bool put)
{
    if (errno == ETIMEDOUT)
        return put ? ARENA_BUSY_PUT : ARENA_BUSY_GET;
    return MP_ENOMEM;
}

/* How long a call waits for a side's lock: its time left, but at least
 * LOCK_GRACE_S, so that a _nowait call does not fail because another is
 * copying an item out; MP_FOREVER for a call without a deadline. Only a
 * holder that is stopped (or a huge item's copy) makes it matter. The
 * call's deadline starts here, if not before: a wait for the lock counts
 * against the call's time (a 1 s get held 0.9 s by the lock, then finding
 * nothing, waited 1 s more). The common paths (give_inline, take_inline)
 * never get here, so they read no clock. */
static double lock_wait(lazy_deadline *d)
{
    if (d->timeout < 0 || d->timeout > 1e9)
        return MP_FOREVER;
    double left = d->timeout == 0 ? 0 : deadline_left(lazy_deadline_at(d));
    return left > LOCK_GRACE_S ? left : LOCK_GRACE_S;
}

/* Waits until ready(arg, ...) or the deadline: 0 (recheck) or MP_ETIMEDOUT.
 * ready is asked with spinning true while the waiter spins (it may then
 * answer from a hint), and false once the waiter's flag is up, just before
 * it sleeps (then it must not miss what is there).
 * A sleep lasts at most FUTEX_SLICE: a process killed between its commit
 * and its wake-up call wakes nobody, and the sleeper must see the commit
 * anyway (a lock holder's death is caught sooner, by the repair's wake-up). */
static int wait_until(mp_queue *q, struct waitword *w, bool (*ready)(void *, bool),
                      void *arg, lazy_deadline *d)
{
    const mp_deadline *at = lazy_deadline_at(d);
    if (queue_spin(arg, w, ready))
        return 0;
    uint32_t v = raise_flag(q, w, lock_wait(d));
    if (ready(arg, false))
        return 0;
    return futex_wait_sliced(&w->word, v, at, false) == MP_ETIMEDOUT ? MP_ETIMEDOUT : 0;
}

/* Under the waking side's lock, after the commit: does anyone sleep on w? */
static bool flag_up(struct waitword *w)
{
    return waitflag_up(&w->word);
}

/* Wakes every sleeper (those that find nothing to do sleep again); called
 * after the lock is given back, when flag_up said so. */
static void wake(struct waitword *w)
{
    waitflag_wake(&w->word);
}

/* Items counted in and not yet out. A consumer may take an item between
 * its producer's commit and the count, so gets can pass puts for a moment:
 * then 0. */
static uint64_t queued(mp_queue *q)
{
    uint64_t g = atomic_load(&q->gets);
    uint64_t p = atomic_load(&q->puts);
    return p > g ? p - g : 0;
}

/* What a consumer waits on: the word where the next item's header will be
 * (found under get, so only a hint once the lock is given back: another
 * consumer may have taken that item and left the segment). Spinning, it
 * watches only that word, so the producers' count stays in their cache;
 * before it sleeps it also asks the counts, which the hint cannot fool. */
struct get_wait {
    mp_queue *q;
    const _Atomic uint64_t *watch;
};

static bool get_ready(void *arg, bool spinning)
{
    const struct get_wait *g = arg;
    return atomic_load_explicit(g->watch, memory_order_relaxed) != 0 ||
           atomic_load_explicit(&g->q->closed, memory_order_relaxed) ||
           (!spinning && queued(g->q) > 0);
}

static bool put_ready(void *arg, bool spinning)
{
    (void)spinning;
    mp_queue *q = arg;
    return !q->maxsize || queued(q) < q->maxsize || atomic_load(&q->closed);
}

/* task_done calls counted to the takers. */
static uint64_t takers_done(mp_queue *q)
{
    uint64_t sum = 0;
    for (int i = 0; i < TAKERS; i++)
        sum += atomic_load(&q->takers[i].done);
    return sum;
}

/* task_done calls so far: those counted to the takers, and the others. */
static uint64_t done_total(mp_queue *q)
{
    return takers_done(q) + atomic_load(&q->done);
}

/* Every item put is done or lost. gets passes puts when a producer's item
 * was got before the producer counted it: that item is owed a task_done
 * too. */
static bool join_ready(void *arg, bool spinning)
{
    (void)spinning;
    mp_queue *q = arg;
    uint64_t p = atomic_load(&q->puts), g = atomic_load(&q->gets);
    return done_total(q) + atomic_load(&q->lost) >= (g > p ? g : p);
}

/* ------------------------------------------------------------------ big items in flight */

/* A big item copied in after its consumer is already waiting would be
 * copied out only after its commit, from memory: by then a 1 MiB item has
 * left the producer's cache. So a producer shows the item it is copying in
 * (one at a time per queue: a claim taken by CAS), and publishes how far it
 * has got every PREVIEW_CHUNK bytes; a consumer that finds the queue empty
 * copies the item out right behind it, each chunk crossing from one core's
 * cache to the other's. Measured here, two processes doing this move 1 MiB
 * items about three times as fast as with whole-item hand-offs.
 *
 * It is only a head start. The consumer takes items as always, under get,
 * and what it copied counts only if the record it takes names the gen and
 * the block it followed: a gen is shown once, and the block belongs to that
 * item until the item is taken, so its bytes were final when copied. Any
 * other outcome (another consumer took it, its producer died, a full queue
 * kept it waiting) costs the follower its copy, which it then makes from
 * the block as usual. A producer that stops running leaves its followers
 * spinning PREVIEW_STALL_NS at most; a producer killed while showing leaves
 * its claim, which the next producer takes over after PREVIEW_STALE_MS. */

/* What a consumer has copied of a shown item. */
struct follow {
    uint64_t gen;             /* 0: nothing followed */
    const unsigned char *block;
    size_t len, copied;
};

/* Shows block, about to be filled with len bytes: its gen, or 0 if another
 * producer is showing an item. *claim is what show_end needs. */
static uint64_t show_begin(mp_queue *q, void *block, size_t len, uint64_t *claim)
{
    struct preview *pv = &q->shown;
    uint64_t now = now_ns() / 1000000 + 1;
    uint64_t old = atomic_load_explicit(&pv->claim, memory_order_relaxed);
    /* Signed: a claim made just after now was read is newer, not stale. */
    if ((old != 0 && (int64_t)(now - old) < PREVIEW_STALE_MS) ||
        !atomic_compare_exchange_strong(&pv->claim, &old, now))
        return 0;
    uint64_t gen = atomic_fetch_add(&pv->next, 1) + 1;
    atomic_store_explicit(&pv->gen, 0, memory_order_relaxed);        /* seqlock: writing */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&pv->block, (uintptr_t)block, memory_order_relaxed);
    atomic_store_explicit(&pv->len, len, memory_order_relaxed);
    atomic_store_explicit(&pv->done, 0, memory_order_relaxed);
    atomic_store_explicit(&pv->gen, gen, memory_order_release);
    *claim = now;
    return gen;
}

/* Waits, if the queue holds PACE_ITEMS or more and a consumer is copying
 * a big item out, for that copy to end. Without it, a producer that once
 * got ahead stays ahead: every item is then read long after it was written,
 * from memory, and the consumer never catches up to follow one. */
static void pace(mp_queue *q)
{
    uint64_t start = 0;
    for (unsigned i = 1;; i++) {
        uint64_t since = atomic_load_explicit(&q->shown.copying, memory_order_relaxed);
        if (since == 0 || queued(q) < PACE_ITEMS)
            return;
        cpu_relax();
        if ((i & 63) == 0) {
            uint64_t t = now_ns();
            if (start == 0)
                start = t;
            if (t - start > PACE_MAX_NS || t - since > PACE_STALE_NS)
                return;
        }
    }
}

/* Copies the shown item in, publishing each chunk. */
static void show_copy(mp_queue *q, void *block, const void *data, size_t len)
{
    for (size_t off = 0; off < len;) {
        size_t n = len - off < PREVIEW_CHUNK ? len - off : PREVIEW_CHUNK;
        memcpy((char *)block + off, (const char *)data + off, n);
        off += n;
        atomic_store_explicit(&q->shown.done, off, memory_order_release);
        if (off == len / 2)
            hook("put_shown_half");
    }
}

/* Hides the item shown under gen, committed or not: a consumer that
 * followed it has what it needs, and nobody should start on it now. Then
 * gives the claim back (unless another producer took it over as stale). */
static void show_end(mp_queue *q, uint64_t gen, uint64_t claim)
{
    atomic_compare_exchange_strong(&q->shown.gen, &gen, 0);
    atomic_compare_exchange_strong(&q->shown.claim, &claim, 0);
}

/* Copies out what the producer showing an item has written, and goes on as
 * it writes, while it makes progress and nothing is ready to take: true if
 * it copied anything. The item goes to buf (cap bytes) or out (grown). */
static bool follow(struct get_wait *w, struct follow *f, void *buf, size_t cap, mp_buf *out,
                   const mp_deadline *d)
{
    mp_queue *q = w->q;
    struct preview *pv = &q->shown;
    uint64_t gen = atomic_load_explicit(&pv->gen, memory_order_acquire);
    if (gen == 0)
        return false;
    uint64_t claim = atomic_load_explicit(&pv->claim, memory_order_relaxed);
    if (claim == 0 || (int64_t)(now_ns() / 1000000 + 1 - claim) >= PREVIEW_STALE_MS)
        return false;         /* its producer died showing it */
    const unsigned char *block = (const void *)atomic_load_explicit(&pv->block,
                                                                    memory_order_relaxed);
    size_t len = (size_t)atomic_load_explicit(&pv->len, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&pv->gen, memory_order_relaxed) != gen)
        return false;
    if (f->gen != gen) {
        if (out ? mp_buf_reserve(out, len) != 0 : len > cap)
            return false;
        *f = (struct follow){ .gen = gen, .block = block, .len = len };
    }
    unsigned char *dst = out ? out->data : buf;
    bool moved = false;
    uint64_t still = 0;       /* when done was first seen unchanged */
    for (unsigned i = 1; f->copied < len; i++) {
        size_t done = (size_t)atomic_load_explicit(&pv->done, memory_order_acquire);
        if (atomic_load_explicit(&pv->gen, memory_order_relaxed) != gen || done > len)
            break;
        if (done > f->copied) {
            memcpy(dst + f->copied, block + f->copied, done - f->copied);
            f->copied = done;
            moved = true;
            hook("get_followed");
            still = 0;
            continue;
        }
        if (get_ready(w, true))
            break;
        cpu_relax();
        if ((i & 63) == 0) {
            uint64_t t = now_ns();
            if (still == 0)
                still = t;
            else if (t - still > PREVIEW_STALL_NS || deadline_passed(d))
                break;
        }
    }
    return moved;
}

/* How many bytes of the big item at src (n bytes, shown under gen) the
 * consumer already holds. */
static size_t followed(const struct follow *f, uint64_t gen, const void *src, size_t n)
{
    return f && gen && f->gen == gen && f->block == src && f->len == n ? f->copied : 0;
}

/* ------------------------------------------------------------------ repair */

/* A holder died. A producer's commit is the header at the tail: if that
 * word is not 0, the record there was committed and the position (and,
 * from the journal, the count) is moved past it; a link there was
 * published and the switch to its segment is finished. A consumer may
 * already have taken that record and cleared its header (and may not have
 * moved its own position yet: it died there, or is there now). Then the
 * counts tell: its consumer counted it (gets passed puts: only the one
 * record its producer did not count can make it), or its producer did
 * (puts passed the side's own copy, which a put stores after its tail),
 * and the record ends where the journal says. Otherwise the record was
 * never committed and is overwritten. A consumer's commit is gets: if it
 * happened, finish moving the position it journaled. The journal names the
 * segment, so a stale one (already left behind) is ignored. */
static void put_repair(mp_queue *q)
{
    struct journal *j = &q->put.j;
    struct seg *s = q->put.seg;
    uint64_t tail = atomic_load(&s->tail);
    uint64_t h = atomic_load(ring_header(s, tail));
    uint64_t puts = atomic_load(&q->puts);
    bool counted = puts > q->put.count || atomic_load(&q->gets) > puts;
    if (h && header_kind(h) == REC_LINK) {
        s = (struct seg *)(uintptr_t)*ring_word(s, tail + 8);
        q->put.seg = s;
    } else if (h || (counted && j->seg == s)) {
        uint64_t after = h ? record_end(tail, header_len(h), header_kind(h)) : j->pos_after;
        if (j->seg == s && j->pos_after == after && puts < j->count_after)
            atomic_store(&q->puts, j->count_after);
        atomic_store(&s->tail, after);
    }
    q->put.cached_head = atomic_load(&s->head);
    q->put.count = atomic_load(&q->puts);
}

static void sum_lost_locked(mp_queue *q);

static void get_repair(mp_queue *q)
{
    struct journal *j = &q->get.j;
    if (atomic_load(&q->gets) == j->count_after && j->seg == q->get.seg) {
        atomic_store(&j->seg->head, j->pos_after);
        if (j->taker)
            atomic_store_explicit(&j->taker->got, j->got_after, memory_order_relaxed);
    }
    q->get.count = atomic_load(&q->gets);
    sum_lost_locked(q);      /* a write-off cut between its two stores */
}

static int lock_side(mp_queue *q, struct side *s, void (*repair)(mp_queue *), double timeout)
{
    int rc = tlock_lock_timed(&s->lock, timeout);
    if (rc == MP_EOWNERDEAD) {
        repair(q);
        /* The dead holder may have committed and not lived to wake anyone. */
        wake(&q->not_empty);
        wake(&q->not_full);
        wake(&q->all_done);
        rc = 0;
    }
    return rc;
}

/* Invalidates the old journal before filling in the new one, so a holder
 * killed half-way through writing it leaves nothing to replay. */
static void journal_write(struct journal *j, struct seg *s, uint64_t pos_after,
                          uint64_t count_after, struct taker *t, uint64_t got_after)
{
    j->count_after = count_after;
    atomic_thread_fence(memory_order_release);
    j->seg = s;
    j->pos_after = pos_after;
    j->taker = t;
    j->got_after = got_after;
    atomic_thread_fence(memory_order_release);
}

/* ------------------------------------------------------------------ put */

static bool full_locked(mp_queue *q)
{
    if (!q->maxsize)
        return false;
    uint64_t p = q->put.count;
    if (p - q->put.cached < q->maxsize)
        return false;
    q->put.cached = atomic_load_explicit(&q->gets, memory_order_acquire);
    return p - q->put.cached >= q->maxsize;
}

/* Whether the tail segment has room for need bytes plus a link record. */
static MP_ALWAYS_INLINE bool tail_has_room(mp_queue *q, size_t need)
{
    struct seg *s = q->put.seg;
    uint64_t tail = atomic_load_explicit(&s->tail, memory_order_relaxed);
    if (s->cap - (tail - q->put.cached_head) >= need + REC_REF)
        return true;
    q->put.cached_head = atomic_load_explicit(&s->head, memory_order_acquire);
    return s->cap - (tail - q->put.cached_head) >= need + REC_REF;
}

/* Room for need bytes plus a link record, moving to a new segment (linked
 * from the old one) if the tail segment has none. */
static struct seg *room_locked(mp_queue *q, size_t need, lazy_deadline *d)
{
    struct seg *s = q->put.seg;
    if (tail_has_room(q, need))
        return s;
    uint64_t tail = atomic_load_explicit(&s->tail, memory_order_relaxed);
    uint32_t class = s->class < SEG_MAX_CLASS ? s->class + 1 : s->class;
    errno = 0;
    void *_Atomic *held = NULL;
    struct seg *n = seg_next(q, class, d, &held);
    if (!n)
        return NULL;
    /* Consumers pass the link only once an item in n is committed, so s
     * stays theirs until the switch below is done (a producer killed in
     * between leaves it to put_repair). */
    *ring_word(s, tail + 8) = (uint64_t)(uintptr_t)n;
    hand_release(held);                   /* the link names n from here on */
    atomic_store_explicit(ring_header(s, tail), header(0, REC_LINK), memory_order_release);
    q->put.cached_head = 0;
    q->put.seg = n;
    return n;
}

/* Writes the record at the tail of s, which has room for it, and commits it. */
static MP_ALWAYS_INLINE void put_record(mp_queue *q, struct seg *s, const void *data, size_t len,
                                        void *big, uint64_t gen, void *_Atomic *held)
{
    uint64_t kind = !big ? REC_INLINE : gen ? REC_SHOWN : REC_BIG;
    uint64_t tail = atomic_load_explicit(&s->tail, memory_order_relaxed);
    uint64_t after = record_end(tail, len, kind);
    if (big)
        *ring_word(s, tail + 8) = (uint64_t)(uintptr_t)big;
    if (gen)
        *ring_word(s, tail + 16) = gen;
    if (!big)
        ring_write(s, tail + REC_HEADER, data, len);
    _Atomic uint64_t *next = ring_header(s, after);
    if (atomic_load_explicit(next, memory_order_relaxed) != 0)
        atomic_store_explicit(next, 0, memory_order_relaxed);       /* next: none yet */
    hook("put_written");
    if (held)
        hand_release(held);                   /* the queue names big from the commit on */
    uint64_t count = q->put.count + 1;
    journal_write(&q->put.j, s, after, count, NULL, 0);
    atomic_store_explicit(ring_header(s, tail), header(len, kind), memory_order_release);
    hook("put_committed");
    atomic_store_explicit(&q->puts, count, memory_order_release);
    hook("put_counted");
    atomic_store_explicit(&s->tail, after, memory_order_relaxed);
    q->put.count = count;                     /* after tail: see put_repair */
}

static int put_locked(mp_queue *q, const void *data, size_t len, void *big, uint64_t gen,
                      void *_Atomic *held, lazy_deadline *d)
{
    uint64_t kind = !big ? REC_INLINE : gen ? REC_SHOWN : REC_BIG;
    struct seg *s = room_locked(q, record_room(len, kind), d);
    if (!s)
        return no_block(true);
    put_record(q, s, data, len, big, gen, held);
    return 0;
}

/* Commits one item: inline from data, or the out-of-line block big (shown
 * under gen, if not 0; held in hand in held, if not NULL, until the commit). */
static int queue_give(mp_queue *q, const void *data, size_t len, void *big, uint64_t gen,
                      void *_Atomic *held, double timeout)
{
    lazy_deadline d = { .timeout = timeout };
    bool sleepers = false;
    int rc;
    for (;;) {
        rc = lock_side(q, &q->put, put_repair, lock_wait(&d));
        if (rc != 0) {
            rc = rc == MP_ETIMEDOUT ? SIDE_BUSY_PUT : rc;
            break;
        }
        if (atomic_load(&q->closed))
            rc = MP_ECLOSED;
        else if (full_locked(q))
            rc = MP_EFULL;
        else
            rc = put_locked(q, data, len, big, gen, held, &d);
        if (rc == 0)
            note_waker_cpu(&q->not_empty);
        sleepers = rc == 0 && flag_up(&q->not_empty);
        tlock_unlock(&q->put.lock);
        if (rc != MP_EFULL || timeout == 0 ||
            wait_until(q, &q->not_full, put_ready, q, &d) != 0)
            break;
    }
    if (sleepers)
        wake(&q->not_empty);
    return rc;
}

/* The common put on its own: an inline item, in a queue not full, into a
 * tail segment with room; GO_GENERAL for anything else (a wait for room, a
 * new segment). The same steps as queue_give's, without what its other
 * cases keep on the stack (a deadline, a big block in hand, the retry):
 * where the consumer's core is far from the producer's, a put waits on the
 * stores it makes (a 64-byte put made 72, and makes 57: valgrind's count),
 * and 64-byte items 1->1 went from 8.3 to 11.3 M/s (medians of 30 rows). */
/* How long the common paths wait for a side's lock: a call with a deadline
 * at most LOCK_GRACE_S, leaving a holder that keeps it longer (one that is
 * stopped, or a big item's copy) to the general path, which waits within
 * the call's deadline; a call without one for ever, as the general path
 * would (a timed wait costs a contended lock a timer per sleep). */
static double inline_lock_wait(double timeout)
{
    return timeout < 0 || timeout > 1e9 ? MP_FOREVER : LOCK_GRACE_S;
}

static int give_inline(mp_queue *q, const void *data, size_t len, double timeout)
{
    int rc = lock_side(q, &q->put, put_repair, inline_lock_wait(timeout));
    if (rc != 0)
        return rc == MP_ETIMEDOUT ? GO_GENERAL : rc;
    if (atomic_load(&q->closed))
        rc = MP_ECLOSED;
    else if (full_locked(q) || !tail_has_room(q, record_room(len, REC_INLINE)))
        rc = GO_GENERAL;
    else
        put_record(q, q->put.seg, data, len, NULL, 0, NULL);
    bool sleepers = false;
    if (rc == 0) {
        note_waker_cpu(&q->not_empty);
        sleepers = flag_up(&q->not_empty);
    }
    tlock_unlock(&q->put.lock);
    if (sleepers)
        wake(&q->not_empty);
    return rc;
}

/* The message for what a put or get ended with (nothing for 0). Constant
 * strings for the codes a polling loop meets often: they cost no format. */
static int queue_result(int rc, const char *fn, double timeout)
{
    switch (rc) {
    case 0: return 0;
    case SIDE_BUSY_PUT:
        return mp_fail(MP_EFULL, fn, "another producer held the queue until the timeout (is "
                       "it stopped?)");
    case SIDE_BUSY_GET:
        return mp_fail(MP_EEMPTY, fn, "another consumer held the queue until the timeout (is "
                       "it stopped?)");
    case ARENA_BUSY_PUT:
    case ARENA_BUSY_GET:
        return mp_fail(rc == ARENA_BUSY_PUT ? MP_EFULL : MP_EEMPTY, fn, "another process held "
                       "the shared arena's lock until the timeout (is it stopped?)");
    case MP_EFULL:
        return mp_fail(rc, fn, timeout == 0 ? "the queue is full (maxsize items)"
                                            : "the queue stayed full until the timeout");
    case MP_EEMPTY:
        return mp_fail(rc, fn, timeout == 0 ? "the queue is empty"
                                            : "the queue stayed empty until the timeout");
    case MP_ETIMEDOUT:
        return mp_fail(rc, fn, "not every item got was marked done (mp_queue_task_done) "
                               "by the timeout");
    case MP_ECLOSED:
        return mp_fail(rc, fn, "the queue was shut down (mp_queue_shutdown): no more puts");
    case MP_EEOF:
        return mp_fail(rc, fn, "the queue was shut down and every item has been got");
    case MP_ENOMEM:
        return mp_fail(rc, fn, "the shared arena has no room for this item (MPROC_ARENA_SIZE "
                               "sets its size)");
    default:
        return mp_fail_code(rc, fn);
    }
}

/* A put of an item above QUEUE_INLINE_MAX: copied into a block of its own. */
static MP_NOINLINE int put_big(const char *fn, mp_queue *q, const void *data, size_t len,
                               double timeout)
{
    mp_deadline d = deadline_in(timeout);
    errno = 0;
    void *_Atomic *held = NULL;
    void *big = hand_alloc(len, false, &d, &held);  /* a producer killed before the */
    if (!big)                                       /* commit leaves it to its reaper */
        return queue_result(no_block(true), fn, timeout);
    int bad = mem_range_check(fn, "data", data, len);   /* before a fault in the copy */
    if (bad != 0) {
        hand_free(held, big);
        return bad;
    }
    if (len >= PREFAULT_MIN)
        arena_prefault(big, len, true);
    uint64_t gen = 0, claim = 0;
    if (len >= PREVIEW_MIN && len < COPY_STREAM_MIN && timeout != 0 && several_cpus()) {
        pace(q);
        gen = show_begin(q, big, len, &claim);
    }
    if (gen)
        show_copy(q, big, data, len);
    else
        copy_big(big, data, len);
    int rc = queue_give(q, data, len, big, gen, held, timeout);
    if (gen)
        show_end(q, gen, claim);
    if (rc != 0)
        hand_free(held, big);
    return queue_result(rc, fn, timeout);
}

/* mp_queue_put and mp_queue_put_nowait, named fn in their messages. */
static int queue_put(const char *fn, mp_queue *q, const void *data, size_t len, double timeout)
{
    if (!queue_ok(q))
        return mp_fail_handle(fn, "queue", q);
    if (!data && len)
        return mp_fail(MP_EINVAL, fn, "data is NULL but len is %zu", len);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(fn, timeout);
    if (len > (SIZE_MAX >> 3))
        return mp_fail(MP_EINVAL, fn, "len %zu is more than any item can be", len);
    if (atomic_load(&q->closed))
        return queue_result(MP_ECLOSED, fn, timeout);   /* early outs, so no big item */
    if (timeout == 0 && mp_queue_full(q))                 /* is copied in vain */
        return queue_result(MP_EFULL, fn, timeout);
    if (len > QUEUE_INLINE_MAX)
        return put_big(fn, q, data, len, timeout);
    int rc = give_inline(q, data, len, timeout);
    if (rc == GO_GENERAL)
        rc = queue_give(q, data, len, NULL, 0, NULL, timeout);
    return queue_result(rc, fn, timeout);
}

int mp_queue_put(mp_queue *q, const void *data, size_t len, double timeout)
{
    return queue_put(__func__, q, data, len, timeout);
}

int mp_queue_put_shared(mp_queue *q, void *p, size_t len, double timeout)
{
    if (!queue_ok(q))
        return mp_fail_handle(__func__, "queue", q);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    mp_deadline d = deadline_in(timeout);
    size_t size = 0;
    /* Marked as a queue's from here, so that a second put of it (or an
     * mp_shared_free) is refused while a queue holds it: two getters
     * would have had one block. */
    int is = arena_mark_queued(p, &d, &size);
    if (is == -1)
        return queue_result(ARENA_BUSY_PUT, __func__, timeout);
    if (is == -2)
        return mp_fail(MP_EINVAL, __func__, "p is in a queue already: a block is put once, "
                       "and is the getter's from mp_queue_get_shared on");
    if (!is)
        return mp_fail(MP_EINVAL, __func__, "p is not a block from mp_shared_alloc (or it was "
                       "freed, or points inside one)");
    int rc;
    if (len > size || len > (SIZE_MAX >> 3))
        rc = mp_fail(MP_EINVAL, __func__, "len %zu is more than the block holds (%zu bytes)",
                     len, size);
    else if (atomic_load(&q->closed))
        rc = queue_result(MP_ECLOSED, __func__, timeout);
    else
        rc = queue_result(queue_give(q, NULL, len, p, 0, NULL, timeout), __func__, timeout);
    if (rc != 0)
        arena_unmark_queued(p);              /* still the caller's */
    return rc;
}

int mp_queue_put_nowait(mp_queue *q, const void *data, size_t len)
{
    return queue_put(__func__, q, data, len, 0);
}

/* ------------------------------------------------------------------ joining past a dead consumer */

/* A consumer killed between get and task_done owes its items for ever, and
 * Python's join waits for them for ever. So each process that gets items
 * has a taker: what it got (counted at the get's commit, and replayed with
 * it from the journal), and the task_done calls counted to it. A join that
 * waits looks for takers whose process ended owing items, writes those off
 * as lost (join_ready counts them with the done ones), and returns
 * MP_EBROKEN once everything else is done. A task_done counts to the
 * caller's own taker if it owes one, else to any taker that does, so an
 * item handed to another process after the get is not lost when its getter
 * dies. A process that finds all TAKERS in use by live processes goes
 * untracked: join then waits for its items as Python's does. */

/* This process as a taker's owner: read from /proc once per process, and
 * checked against getpid once per thread (a fork child has another tid,
 * so it checks again). */
static uint64_t self_process(void)
{
    static MP_TLS_HOT uint32_t for_tid;
    static MP_TLS_HOT uint64_t word;
    static _Atomic uint64_t process_word;
    uint32_t tid = mp_gettid();
    if (for_tid != tid) {
        uint32_t pid = (uint32_t)getpid();
        word = atomic_load_explicit(&process_word, memory_order_relaxed);
        if ((uint32_t)word != pid) {
            word = task_word(pid);
            atomic_store_explicit(&process_word, word, memory_order_relaxed);
        }
        for_tid = tid;
    }
    return word;
}

/* What t owes: 0 when a task_done raced a write-off past it. */
static uint64_t owed(const struct taker *t)
{
    uint64_t got = atomic_load_explicit(&t->got, memory_order_relaxed);
    uint64_t paid = atomic_load_explicit(&t->lost, memory_order_relaxed) +
                    atomic_load_explicit(&t->done, memory_order_relaxed);
    return got > paid ? got - paid : 0;
}

static void sum_lost_locked(mp_queue *q)
{
    uint64_t sum = 0;
    for (int i = 0; i < TAKERS; i++)
        sum += atomic_load_explicit(&q->takers[i].lost, memory_order_relaxed);
    if (atomic_load_explicit(&q->lost, memory_order_relaxed) != sum)
        atomic_store(&q->lost, sum);
}

/* Under get, a taker whose owner is known to have ended: what it owed is
 * lost, and the taker is free again (its counts go on under a new owner). */
static uint64_t write_off_locked(struct taker *t)
{
    uint64_t w = atomic_load_explicit(&t->owner, memory_order_relaxed);
    if (w == 0 || !task_word_gone(w))
        return 0;
    uint64_t n = owed(t);
    if (n)
        atomic_store_explicit(&t->lost, atomic_load_explicit(&t->lost, memory_order_relaxed) + n,
                              memory_order_relaxed);
    atomic_store_explicit(&t->owner, 0, memory_order_relaxed);
    return n;
}

/* The takers this thread used last, a few queues' worth. Only a hint: a
 * taker counts as this process's while its owner word says so. */
#define TAKER_CACHE 4
static MP_TLS_HOT struct { mp_queue *q; struct taker *t; } taker_cache[TAKER_CACHE];

static unsigned taker_slot(const mp_queue *q)
{
    return (unsigned)((uintptr_t)q >> 12) % TAKER_CACHE;
}

static struct taker *cached_taker(mp_queue *q, uint64_t self)
{
    unsigned i = taker_slot(q);
    struct taker *t = taker_cache[i].q == q ? taker_cache[i].t : NULL;
    return t && atomic_load_explicit(&t->owner, memory_order_relaxed) == self ? t : NULL;
}

/* Under get, before an item is taken: this process's taker, claimed on
 * its first get (a free one, else one whose owner ended owing nothing), or
 * NULL if every one belongs to a live process or to an ended one that
 * still owes items. Those stay for a join to write off: the items may
 * have been handed on, and their task_done calls may be still to come. */
static struct taker *taker_locked(mp_queue *q)
{
    uint64_t self = self_process();
    struct taker *t = cached_taker(q, self);
    if (t)
        return t;
    struct taker *free = NULL;
    t = NULL;
    for (int i = 0; i < TAKERS && !t; i++) {
        uint64_t w = atomic_load_explicit(&q->takers[i].owner, memory_order_relaxed);
        if (w == self)
            t = &q->takers[i];
        else if (w == 0 && !free)
            free = &q->takers[i];
    }
    for (int i = 0; i < TAKERS && !t && !free; i++) {
        struct taker *c = &q->takers[i];
        if (owed(c) == 0)           /* stays 0: only a get, under our lock, adds */
            write_off_locked(c);    /* frees it if its owner ended */
        if (atomic_load_explicit(&c->owner, memory_order_relaxed) == 0)
            free = c;
    }
    if (!t && free) {
        t = free;
        atomic_store_explicit(&t->owner, self, memory_order_relaxed);
    }
    unsigned i = taker_slot(q);
    taker_cache[i].q = q;
    taker_cache[i].t = t;
    return t;
}

/* Looks for processes that ended owing items and writes those off: true
 * if it did. At most once per DEAD_LOOK_NS per queue, as it reads /proc
 * for each taker that owes (a join(q, 0) may be polled in a loop); and it
 * takes get for a moment, not past LOCK_GRACE_S (a stopped holder only
 * delays the look to the next one). */
#define DEAD_LOOK_NS 10000000
static bool write_off_dead(mp_queue *q)
{
    uint64_t accounted = done_total(q) + atomic_load(&q->lost);
    if (atomic_load(&q->gets) <= accounted)
        return false;                 /* nobody owes anything */
    uint64_t now = now_ns(), last = atomic_load_explicit(&q->dead_look, memory_order_relaxed);
    if ((last != 0 && now - last < DEAD_LOOK_NS) ||
        !atomic_compare_exchange_strong(&q->dead_look, &last, now))
        return false;
    if (lock_side(q, &q->get, get_repair, LOCK_GRACE_S) != 0)
        return false;
    bool lost = false;
    for (int i = 0; i < TAKERS; i++)
        if (owed(&q->takers[i]))
            lost |= write_off_locked(&q->takers[i]) != 0;
    if (lost)
        sum_lost_locked(q);
    tlock_unlock(&q->get.lock);
    return lost;
}

/* One more task_done counted to t if it owes an item: true if so. */
static bool charge(struct taker *t)
{
    uint64_t d = atomic_load(&t->done);
    while (owed(t))
        if (atomic_compare_exchange_weak(&t->done, &d, d + 1))
            return true;
    return false;
}

/* Counts one task_done to the caller's taker if it owes one, else to the
 * first that does: false if none does. One CAS counts it, so a caller
 * killed at any moment has counted it wholly or not at all. */
static bool count_done(mp_queue *q)
{
    struct taker *t = cached_taker(q, self_process());
    if (t && charge(t))
        return true;
    for (int i = 0; i < TAKERS; i++)
        if (charge(&q->takers[i]))
            return true;
    return false;
}

/* ------------------------------------------------------------------ get */

/* The head record: its segment, position and header (0: no item yet),
 * following (and freeing) segments the producers left. *watch is the
 * header word the next item will show up in. A link is passed only once
 * the segment it leads to holds a committed item (see room_locked). */
static struct seg *next_record_locked(mp_queue *q, uint64_t *head, uint64_t *hdr,
                                      const _Atomic uint64_t **watch)
{
    struct seg *s = q->get.seg;
    *head = atomic_load_explicit(&s->head, memory_order_relaxed);
    _Atomic uint64_t *w = ring_header(s, *head);
    /* The item's bytes go on into the next line: fetch both at once,
     * rather than learn the length first and only then miss again. */
    __builtin_prefetch((const char *)w + MP_CACHELINE);
    *hdr = atomic_load_explicit(w, memory_order_acquire);
    while (*hdr && header_kind(*hdr) == REC_LINK) {
        struct seg *n = (struct seg *)(uintptr_t)*ring_word(s, *head + 8);
        uint64_t first = atomic_load_explicit(&n->head, memory_order_relaxed);
        _Atomic uint64_t *nw = ring_header(n, first);
        uint64_t nh = atomic_load_explicit(nw, memory_order_acquire);
        if (!nh) {
            *watch = nw;
            *hdr = 0;
            return s;
        }
        seg_prefault(n);
        q->get.seg = n;       /* a consumer killed here only leaks the old one */
        seg_retire(q, s);
        s = n;
        *head = first;
        w = nw;
        *hdr = nh;
    }
    *watch = w;
    return s;
}

/* Copies the head item into buf (or out) and commits. Bounded by the copy:
 * the item stays queued until the commit, so a consumer killed mid-copy
 * loses nothing. *big is the out-of-line block to free after unlocking.
 * With shared, the item's block is handed over instead (an inline item is
 * copied into a new one): killed after the commit, the taker leaks it. */
static MP_ALWAYS_INLINE int get_locked(mp_queue *q, struct seg *s, uint64_t head, uint64_t hdr,
                                       void *buf, size_t cap, size_t *len, mp_buf *out,
                                       void **shared, const struct follow *f, void **big,
                                       void *_Atomic **held, struct taker *t, lazy_deadline *d)
{
    size_t n = header_len(hdr);
    uint64_t kind = header_kind(hdr);
    bool is_big = kind_big(kind);
    if (shared) {
        *len = n;
        if (!is_big) {
            errno = 0;
            if (!(buf = arena_alloc_nozero_until(n ? n : 1, lazy_deadline_at(d))))
                return no_block(false);
            *shared = buf;
        }
    } else if (out) {
        int rc = mp_buf_reserve(out, n);
        if (rc != 0)
            return rc;
        buf = out->data;
        out->len = n;
    } else {
        *len = n;
        if (n > cap)
            return MP_ETOOBIG;
    }
    void *src = is_big ? (void *)(uintptr_t)*ring_word(s, head + 8) : NULL;
    if (shared && is_big) {
        *shared = src;                /* the block changes hands, not its bytes */
        src = NULL;
    } else if (is_big && n) {
        uint64_t gen = kind == REC_SHOWN ? *ring_word(s, head + 16) : 0;
        size_t have = followed(f, gen, src, n);
        if (n >= PREFAULT_MIN)
            arena_prefault(src, n, false);
        if (n - have >= PREVIEW_MIN)
            atomic_store_explicit(&q->shown.copying, now_ns(), memory_order_relaxed);
        hook("get_copying");
        copy_big((char *)buf + have, (const char *)src + have, n - have);
        if (n - have >= PREVIEW_MIN)
            atomic_store_explicit(&q->shown.copying, 0, memory_order_relaxed);
    } else {
        ring_read(s, head + REC_HEADER, buf, n);
    }
    hook("get_copied");
    /* From the commit on, the big block is ours alone to free: in hand,
     * so that our reaper frees it should we die before we do. The slot is
     * claimed first, so that only one store follows the commit. */
    *held = src ? hand_claim() : NULL;
    uint64_t after = record_end(head, n, kind);
    uint64_t count = q->get.count + 1;
    uint64_t got = t ? atomic_load_explicit(&t->got, memory_order_relaxed) + 1 : 0;
    journal_write(&q->get.j, s, after, count, t, got);
    atomic_store_explicit(&q->gets, count, memory_order_release);   /* commit */
    if (*held)
        atomic_store_explicit(*held, src, memory_order_release);
    q->get.count = count;
    hook("get_committed");
    if (t)
        atomic_store_explicit(&t->got, got, memory_order_relaxed);
    atomic_store_explicit(ring_header(s, head), 0, memory_order_relaxed);
    hook("get_cleared");
    atomic_store_explicit(&s->head, after, memory_order_release);
    *big = src;
    return 0;
}

/* The common get on its own, as give_inline is the common put: an inline
 * item into buf or out; GO_GENERAL for a big item, or to wait for one. */
static int take_inline(mp_queue *q, void *buf, size_t cap, size_t *len, mp_buf *out,
                       double timeout, const _Atomic uint64_t **empty_at)
{
    int rc = lock_side(q, &q->get, get_repair, inline_lock_wait(timeout));
    if (rc != 0)
        return rc == MP_ETIMEDOUT ? GO_GENERAL : rc;
    bool closed = atomic_load(&q->closed);   /* before the header: see every last put */
    uint64_t head, hdr;
    const _Atomic uint64_t *watch;
    struct seg *s = next_record_locked(q, &head, &hdr, &watch);
    void *big = NULL;
    void *_Atomic *held = NULL;
    if (!hdr) {
        rc = closed ? MP_EEOF : timeout == 0 ? MP_EEMPTY : GO_GENERAL;
        if (rc == GO_GENERAL)
            *empty_at = watch;                /* queue_take waits there at once */
    } else if (header_kind(hdr) != REC_INLINE) {
        rc = GO_GENERAL;
    } else {
        rc = get_locked(q, s, head, hdr, buf, cap, len, out, NULL, NULL, &big, &held,
                        taker_locked(q), NULL);
    }
    bool sleepers = false;
    if (rc == 0 && q->maxsize) {
        note_waker_cpu(&q->not_full);
        sleepers = flag_up(&q->not_full);
    }
    tlock_unlock(&q->get.lock);
    if (sleepers)
        wake(&q->not_full);
    return rc;
}

/* empty_at: take_inline found the queue empty, the next item to come at
 * that header word; then the first look is skipped (each look takes the
 * consumers' lock, which other consumers want). */
static int queue_take(mp_queue *q, void *buf, size_t cap, size_t *len, mp_buf *out,
                      void **shared, double timeout, const _Atomic uint64_t *empty_at)
{
    lazy_deadline d = { .timeout = timeout };
    struct follow f = { 0 };
    struct get_wait wait = { .q = q, .watch = empty_at };
    void *big = NULL;
    void *_Atomic *held = NULL;
    bool sleepers = false;
    int rc = MP_EEMPTY;
    for (bool look = !empty_at;; look = true) {
        if (!look)
            goto wait;
        rc = lock_side(q, &q->get, get_repair, lock_wait(&d));
        if (rc != 0) {
            rc = rc == MP_ETIMEDOUT ? SIDE_BUSY_GET : rc;
            break;
        }
        bool closed = atomic_load(&q->closed);   /* before the header: see every last put */
        uint64_t head, hdr;
        struct seg *s = next_record_locked(q, &head, &hdr, &wait.watch);
        if (hdr)
            rc = get_locked(q, s, head, hdr, buf, cap, len, out, shared, &f, &big,
                            &held, taker_locked(q), &d);
        else
            rc = closed ? MP_EEOF : MP_EEMPTY;
        if (rc == 0 && q->maxsize)
            note_waker_cpu(&q->not_full);
        sleepers = rc == 0 && q->maxsize && flag_up(&q->not_full);
        tlock_unlock(&q->get.lock);
        if (rc != MP_EEMPTY || timeout == 0)
            break;
    wait:
        if (!shared && follow(&wait, &f, buf, cap, out, lazy_deadline_at(&d)))
            continue;
        if (wait_until(q, &q->not_empty, get_ready, &wait, &d) != 0)
            break;
        /* Where the item that came most likely is: its lines start on
         * their way here while we take the lock. Only a hint (another
         * consumer may have moved on): a prefetch never faults. */
        __builtin_prefetch((const char *)wait.watch);
        __builtin_prefetch((const char *)wait.watch + MP_CACHELINE);
    }
    if (sleepers)
        wake(&q->not_full);
    if (rc == 0)
        hand_free(held, big);
    return rc;
}

/* The arguments every get checks (no_out: what is wrong with where the
 * item goes, or NULL): 0, or the message's code. */
static int get_args(const char *fn, mp_queue *q, const char *no_out, double timeout)
{
    if (!queue_ok(q))
        return mp_fail_handle(fn, "queue", q);
    if (no_out)
        return mp_fail(MP_EINVAL, fn, "%s", no_out);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(fn, timeout);
    return 0;
}

/* mp_queue_get and mp_queue_get_nowait, named fn in their messages. */
static int queue_get(const char *fn, mp_queue *q, void *buf, size_t cap, size_t *len,
                     double timeout)
{
    const char *no_out = !len ? "len (where the item's size goes) is NULL"
                         : !buf && cap ? "buf is NULL but cap is not 0" : NULL;
    int rc = get_args(fn, q, no_out, timeout);
    if (rc != 0)
        return rc;
    const _Atomic uint64_t *empty_at = NULL;
    rc = take_inline(q, buf, cap, len, NULL, timeout, &empty_at);
    if (rc == GO_GENERAL)
        rc = queue_take(q, buf, cap, len, NULL, NULL, timeout, empty_at);
    if (rc == MP_ETOOBIG)
        return mp_fail(rc, fn, "the next item is %zu bytes, more than cap (%zu); it stays "
                       "queued (mp_queue_get_buf takes any size)", *len, cap);
    return queue_result(rc, fn, timeout);
}

int mp_queue_get(mp_queue *q, void *buf, size_t cap, size_t *len, double timeout)
{
    return queue_get(__func__, q, buf, cap, len, timeout);
}

int mp_queue_get_nowait(mp_queue *q, void *buf, size_t cap, size_t *len)
{
    return queue_get(__func__, q, buf, cap, len, 0);
}

int mp_queue_get_buf(mp_queue *q, mp_buf *out, double timeout)
{
    int rc = get_args(__func__, q, out ? NULL : "out is NULL", timeout);
    if (rc != 0)
        return rc;
    const _Atomic uint64_t *empty_at = NULL;
    rc = take_inline(q, NULL, 0, NULL, out, timeout, &empty_at);
    if (rc == GO_GENERAL)
        rc = queue_take(q, NULL, 0, NULL, out, NULL, timeout, empty_at);
    return queue_result(rc, __func__, timeout);
}

int mp_queue_get_shared(mp_queue *q, void **p, size_t *len, double timeout)
{
    int rc = get_args(__func__, q, !p ? "p (where the block goes) is NULL"
                                   : !len ? "len (where the item's size goes) is NULL" : NULL,
                      timeout);
    if (rc != 0)
        return rc;
    *p = NULL;
    rc = queue_take(q, NULL, 0, len, NULL, p, timeout, NULL);
    if (rc == 0)
        arena_unmark_queued(*p);             /* the caller's now: free it when done */
    return queue_result(rc, __func__, timeout);
}

/* ------------------------------------------------------------------ sizes */

size_t mp_queue_qsize(mp_queue *q)
{
    if (!queue_ok(q))
        return 0;
    return (size_t)queued(q);
}

bool mp_queue_empty(mp_queue *q)
{
    return mp_queue_qsize(q) == 0;
}

bool mp_queue_full(mp_queue *q)
{
    return queue_ok(q) && q->maxsize && mp_queue_qsize(q) >= q->maxsize;
}

/* ------------------------------------------------------------------ joining */

int mp_queue_task_done(mp_queue *q)
{
    if (!queue_ok(q))
        return mp_fail_handle(__func__, "queue", q);
    /* Counted once, in one place: to a taker that owes an item, or, when
     * none does (an item got by a process no taker tracks), in the queue's
     * own count. It was counted in the queue first and then to a taker: a
     * caller killed between the two left its taker owing an item that was
     * done, which a join then wrote off as lost (MP_EBROKEN while another
     * item was still being worked on, whose task_done was then refused). */
    if (!count_done(q)) {
        uint64_t d = atomic_load(&q->done);
        do {
            if (takers_done(q) + d + atomic_load(&q->lost) >= atomic_load(&q->gets))
                return mp_fail(MP_EINVAL, __func__, "called more times than items were got "
                               "(and not lost with a dead consumer)");
        } while (!atomic_compare_exchange_weak(&q->done, &d, d + 1));
    }
    hook("task_done_counted");
    /* A joiner raises its flag (seq_cst) and then looks at the counts: it
     * sees this call, or this fence orders our look at its flag after it. */
    atomic_thread_fence(memory_order_seq_cst);
    if (flag_up(&q->all_done) && join_ready(q, false))
        wake(&q->all_done);
    return 0;
}

int mp_queue_join(mp_queue *q, double timeout)
{
    if (!queue_ok(q))
        return mp_fail_handle(__func__, "queue", q);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    lazy_deadline d = { .timeout = timeout };
    do {
        while (!join_ready(q, false)) {
            if (write_off_dead(q))
                continue;
            if (timeout == 0 || wait_until(q, &q->all_done, join_ready, q, &d) != 0) {
                if (!join_ready(q, false))
                    return queue_result(MP_ETIMEDOUT, __func__, timeout);
                break;
            }
        }
        /* A producer killed between its commit and its count left an item
         * puts does not show: taking the producers' lock replays its
         * journal. A live holder is a put still under way, which a join
         * need not wait for. */
        if (lock_side(q, &q->put, put_repair, LOCK_GRACE_S) == 0)
            tlock_unlock(&q->put.lock);
    } while (!join_ready(q, false));
    /* Every item is done or lost. The first join to see a loss reports it. */
    uint64_t told = atomic_load(&q->lost_told), lost = atomic_load(&q->lost);
    while (lost > told) {
        if (atomic_compare_exchange_weak(&q->lost_told, &told, lost))
            return lost - told == 1
                       ? mp_fail(MP_EBROKEN, __func__, "1 item was got by a consumer that died "
                                 "before marking it done (mp_queue_task_done): it never will be")
                       : mp_fail(MP_EBROKEN, __func__, "%llu items were got by consumers that died "
                                 "before marking them done (mp_queue_task_done): they never "
                                 "will be", (unsigned long long)(lost - told));
    }
    return 0;
}

/* ------------------------------------------------------------------ lifetime */

int mp_queue_new(mp_queue **out, const mp_queue_opts *o)
{
    if (!out)
        return mp_fail(MP_EINVAL, __func__, "q (where the queue goes) is NULL");
    *out = NULL;
    mp_queue *q = arena_alloc(sizeof *q);
    struct seg *s = seg_new(SEG_MIN_CLASS, NULL, NULL);
    if (!q || !s)
        goto fail;
    q->put.seg = q->get.seg = s;
    q->maxsize = o ? o->maxsize : 0;
    q->creator = getpid();
    q->magic = MAGIC_QUEUE;
    *out = q;
    return 0;
fail:
    arena_free(s);
    arena_free(q);
    return mp_fail(MP_ENOMEM, __func__, "the shared arena has no room for a new queue "
                   "(MPROC_ARENA_SIZE sets its size)");
}

int mp_queue_shutdown(mp_queue *q)
{
    if (!queue_ok(q))
        return mp_fail_handle(__func__, "queue", q);
    /* Under the producers' lock: a put either committed before, or fails. */
    int rc = lock_side(q, &q->put, put_repair, MP_FOREVER);
    if (rc != 0)
        return mp_fail_code(rc, __func__);
    atomic_store(&q->closed, 1);
    tlock_unlock(&q->put.lock);
    atomic_fetch_add(&q->not_empty.word, 2);
    futex_wake(&q->not_empty.word, INT_MAX);
    atomic_fetch_add(&q->not_full.word, 2);
    futex_wake(&q->not_full.word, INT_MAX);
    return 0;
}

/* Walks the records from the consumers' position to the producers', checking
 * each (ck_ring_valid) and, if release, freeing what it passes. True when the
 * structure is whole: every counted item is there and nothing else. */
static bool walk_records(mp_queue *q, bool release)
{
    struct seg *s = q->get.seg;
    uint64_t head = atomic_load(&s->head);
    uint64_t left = atomic_load(&q->puts) - atomic_load(&q->gets);
    bool ok = true;
    while (ok && (left || s != q->put.seg)) {
        uint64_t hdr = atomic_load(ring_header(s, head)), kind = header_kind(hdr);
        void *ref = kind == REC_INLINE ? NULL : (void *)(uintptr_t)*ring_word(s, head + 8);
        size_t len = header_len(hdr);
        if (!hdr) {
            ok = false;
            break;
        }
        if (kind == REC_LINK) {
            ok = arena_contains(ref, sizeof *s);
            if (release)
                arena_free(s);
            s = ref;
            head = ok ? atomic_load(&s->head) : 0;
            continue;
        }
        ok = left > 0 && (kind == REC_INLINE ? len <= QUEUE_INLINE_MAX
                                             : arena_contains(ref, len));
        if (ok && release && kind != REC_INLINE)
            arena_free(ref);
        head = record_end(head, len, kind);
        ok = ok && head <= atomic_load(&s->tail);
        left--;
    }
    ok = ok && s == q->put.seg && head == atomic_load(&s->tail) &&
         atomic_load(ring_header(s, head)) == 0;
    if (release)
        arena_free(s);
    return ok;
}

MP_TEST_HOOK bool mp__queue_valid(mp_queue *q)
{
    if (!queue_ok(q) || lock_side(q, &q->put, put_repair, MP_FOREVER) != 0)
        return false;
    bool ok = lock_side(q, &q->get, get_repair, MP_FOREVER) == 0;
    if (ok) {
        uint64_t lost = 0;
        for (int i = 0; i < TAKERS; i++) {
            const struct taker *t = &q->takers[i];
            lost += atomic_load(&t->lost);
            ok = ok && atomic_load(&t->lost) <= atomic_load(&t->got);
        }
        ok = ok && walk_records(q, false) && done_total(q) <= atomic_load(&q->gets) &&
             lost == atomic_load(&q->lost) && lost <= atomic_load(&q->gets);
        tlock_unlock(&q->get.lock);
    }
    tlock_unlock(&q->put.lock);
    return ok;
}

MP_TEST_HOOK bool mp__queue_lent(mp_queue *q, bool put)
{
    return tlock_lent_to_caller(put ? &q->put.lock : &q->get.lock);
}

void mp_queue_free(mp_queue *q)
{
    /* A child's handle is a view of the creator's queue: only the creator frees. */
    if (!queue_ok(q) || q->creator != getpid())
        return;
    q->magic = MAGIC_FREED;
    walk_records(q, true);
    for (int i = 0; i < SPARES; i++)
        arena_free(atomic_load(&q->spare[i]));
    arena_free(q);
}
