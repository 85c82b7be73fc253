/* pool_map.c - map and imap: many items, moved as a few chunks.
 *
 * The input is copied once into the arena and cut into chunks; a chunk is a
 * task naming a range of items, so a worker takes a whole chunk in one
 * claim. map results land straight in an arena array; imap results are
 * appended as records to the chunk's own arena buffer. A worker publishes
 * how many items of its chunk are finished after each one, so when it dies
 * the pool keeps those, fails only the item it was running and queues the
 * rest of the chunk again.
 */
#include "pool_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct segment {                        /* imap records, copied out of a chunk */
    struct segment *next;
    unsigned char *data;                /* just after the header, one block (pool_mem_alloc) */
    size_t len, off;                    /* off: next record to read */
};

struct mp_iter {
    _Atomic uint32_t magic;             /* relaxed: a caller may check a freed handle
                                         * while the collector frees it */
    pid_t creator;                      /* its lock and condition are this process's */
    mp_pool *pool;
    struct job *job;                    /* NULL once every chunk is collected */
    size_t n, chunksize;
    bool unordered;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct segment *segs, **tail;       /* unordered: arrival order */
    struct segment **by_chunk;          /* ordered: each original chunk's segments */
    size_t nchunks, pending;            /* pending: segments not yet read out */
    size_t emitted;                     /* items handed out */
    int last_code;
    _Atomic bool detached;              /* freed by its caller while items were pending */
    /* mp_as_completed: the caller's futures, and which are handed out. */
    mp_future **fs;                     /* NULL for imap */
    bool *given;
    size_t from;                        /* the futures before it are all handed out */
    mp_future **rest;                   /* next_completed's scratch: made here, so that a
                                           timed next makes no allocation (the arena's
                                           lock may be held by a stopped process) */
};

static bool mul_overflows(size_t a, size_t b)
{
    return b && a > SIZE_MAX / b;
}

/* Python's Pool.map: divmod(n, 4 * workers), rounded up. */
static size_t auto_chunksize(mp_pool *p, size_t n)
{
    size_t per = (size_t)pool_worker_count(p) * 4;
    size_t c = n / per + (n % per != 0);
    return c ? c : 1;
}

static mp_future *chunk_new(mp_pool *p, struct job *job, size_t start, size_t count)
{
    mp_future *c = task_new(p, KIND_CHUNK, 0);
    if (!c)
        return NULL;
    c->job = job;
    c->start = start;
    c->count = count;
    atomic_store_explicit(&c->state, TASK_QUEUED | TASK_NOTIFY | TASK_DETACHED, memory_order_relaxed);
    return c;
}

static void job_free(struct job *job)
{
    arena_free(job->in);
    arena_free(job->out);
    arena_free(job);
}

/* Builds the job and queues its chunks; the caller sets future or iter. */
static int job_start(mp_pool *p, struct pool_shared *sh, struct job *job, size_t chunksize)
{
    size_t nchunks = job->n / chunksize + (job->n % chunksize != 0);
    mp_future *first = NULL, *last = NULL;
    uint64_t id = atomic_fetch_add(&sh->next_id, nchunks);
    int rc = 0;
    for (size_t i = 0; i < nchunks && rc == 0; i++) {
        size_t start = i * chunksize;
        size_t count = job->n - start < chunksize ? job->n - start : chunksize;
        mp_future *c = chunk_new(p, job, start, count);
        if (!c) {
            rc = MP_ENOMEM;
            break;
        }
        c->sh = sh;
        atomic_store_explicit(&c->id, id + i, memory_order_relaxed);
        if (last)
            last->next = c;
        else
            first = c;
        last = c;
    }
    job->chunks_left = nchunks;
    if (rc == 0 && first) {
        /* Counted before the push: a worker may finish items at once, and
         * the progress callback must never see more done than in total. */
        pool_progress_add_total(p, job->n);
        if ((rc = pool_push(sh, first, last, nchunks)) == 0)
            return 0;
        if (rc == MP_ECLOSED)
            rc = pool_closed_meanwhile(p);
        pool_progress_add_total(p, 0 - (uint64_t)job->n);   /* taken back */
    }
    for (mp_future *t = first, *next; t; t = next) {
        next = t->next;
        task_free(t);
    }
    return rc;
}

static struct job *job_new(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                           size_t out_size, int *rc)
{
    const struct fnentry *e = pool_fn(p, fn);
    if (!e) {
        *rc = mp_fail(MP_EINVAL, NULL, "fn is not a function of the program or a loaded "
                      "library, so a worker cannot find it");
        return NULL;
    }
    if (mul_overflows(n, in_size) || mul_overflows(n, out_size)) {
        *rc = mp_fail(MP_EINVAL, NULL, "n (%zu) items of in_size %zu or out_size %zu bytes "
                      "overflow a size_t", n, in_size, out_size);
        return NULL;
    }
    *rc = mp_fail(MP_ENOMEM, NULL, "no room in the shared arena for %zu items", n);
    struct job *job = arena_alloc(sizeof *job);
    if (!job)
        return NULL;
    job->fn = e;
    job->n = n;
    job->in_size = in_size;
    job->out_size = out_size;
    job->fail_index = SIZE_MAX;
    size_t in_bytes = n * in_size, out_bytes = n * out_size;
    if (in_bytes > 0 && !(job->in = arena_alloc_nozero(in_bytes)))
        goto fail;
    if (in_bytes > 0)
        memcpy(job->in, in, in_bytes);
    if (out_bytes > 0 && !(job->out = arena_alloc(out_bytes)))
        goto fail;
    *rc = 0;
    return job;
fail:
    job_free(job);
    return NULL;
}

static int map_args_valid(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size)
{
    int rc = pool_check_open(p);
    if (rc != 0)
        return rc;
    if (!fn)
        return mp_fail(MP_EINVAL, NULL, "fn is NULL");
    if (n && in_size && !in)
        return mp_fail(MP_EINVAL, NULL, "in is NULL but there are %zu items of %zu bytes",
                       n, in_size);
    if (n && in_size && !mul_overflows(n, in_size))     /* before a fault in the copy */
        return mem_range_check(NULL, "in", in, n * in_size);
    return 0;
}

static int map_async(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                     void *out, size_t out_size, size_t chunksize, mp_future **f);

int mp_pool_map_async(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                      void *out, size_t out_size, size_t chunksize, mp_future **f)
{
    return mp_fail_code(map_async(p, fn, in, n, in_size, out, out_size, chunksize, f), __func__);
}

static int map_async(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                     void *out, size_t out_size, size_t chunksize, mp_future **f)
{
    if (f)
        *f = NULL;
    int rc = map_args_valid(p, fn, in, n, in_size);
    if (rc != 0)
        return rc;
    if (!f)
        return mp_fail(MP_EINVAL, NULL, "f (where the future goes) is NULL");
    if (n && out_size && !out)
        return mp_fail(MP_EINVAL, NULL, "out is NULL but out_size is %zu", out_size);
    if (n && out_size && !mul_overflows(n, out_size) &&   /* before a fault in the collector */
        (rc = mem_range_check(NULL, "out", out, n * out_size)) != 0)
        return rc;
    mp_future *future = task_new(p, KIND_JOB, 0);
    if (!future)
        return mp_fail(MP_ENOMEM, NULL, "no room in the shared arena for a task");
    struct job *job = job_new(p, fn, in, n, in_size, out_size, &rc);
    if (!job) {
        task_free(future);
        return rc;
    }
    struct pool_shared *sh = pool_shared_of(p);
    future->sh = sh;
    atomic_store_explicit(&future->id, atomic_fetch_add(&sh->next_id, 1), memory_order_relaxed);
    atomic_store_explicit(&future->state, TASK_RUNNING, memory_order_relaxed);
    future->job = job;
    job->future = future;
    job->user_out = out;
    *f = future;
    if (n == 0) {
        job_free(job);
        future->job = NULL;
        task_finish(future, TASK_RUNNING, 0, 0);
        return 0;
    }
    rc = job_start(p, sh, job, chunksize ? chunksize : auto_chunksize(p, n));
    if (rc != 0) {
        job_free(job);
        task_free(future);
        *f = NULL;
    }
    return rc;
}

int mp_pool_map(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                void *out, size_t out_size, size_t chunksize)
{
    mp_future *f;
    int rc = map_async(p, fn, in, n, in_size, out, out_size, chunksize, &f);
    if (rc != 0)
        return mp_fail_code(rc, __func__);
    rc = mp_future_result(f, NULL, MP_FOREVER);
    size_t i;
    if ((rc == MP_ETASK || rc == MP_ECRASHED || rc == MP_EKILLED) &&
        mp_future_failed_index(f, &i) == 0)
        rc = mp_fail(rc, __func__, "item %zu, the lowest that failed: %s %d (mp_pool_map_async's "
                     "future gives the index and code: mp_future_failed_index, mp_future_code)",
                     i, rc == MP_ETASK ? "fn returned the error code"
                        : rc == MP_EKILLED ? "the pool killed its task (task_timeout, or "
                                             "terminate); code"
                        : f->code < 0 ? "the worker running it was killed by signal"
                        : "the worker running it exited with status",
                     mp_future_code(f));
    mp_future_free(f);
    return rc;
}

/* ------------------------------------------------------------------ in the worker */

static int append_record(struct slot *s, mp_future *f, size_t index, int rc, int code,
                         const mp_buf *out)
{
    size_t need = RECORD_SIZE(out->len), len = atomic_load(&f->blob_len);
    if (len + need > f->blob_cap) {
        size_t cap = f->blob_cap ? f->blob_cap * 2 : 4096;
        while (cap < len + need)
            cap *= 2;
        /* Killed at any point from the first store to the last, the worker
         * leaves every block it holds named in f, for task_free; the
         * signal fences keep the compiler from moving the stores across
         * each other (a kill is seen like a signal: between two stores). */
        worker_hold(s);
        unsigned char *b = arena_alloc_nozero(cap), *old = f->blob;
        if (!b) {
            worker_release(s);
            return MP_ENOMEM;
        }
        f->blob_new = b;
        atomic_signal_fence(memory_order_seq_cst);
        if (len)
            memcpy(b, old, len);
        pool_hook("blob_copied");
        f->blob_old = old;
        atomic_signal_fence(memory_order_seq_cst);
        f->blob = b;                     /* published before the old one goes */
        f->blob_cap = cap;
        atomic_signal_fence(memory_order_seq_cst);
        f->blob_new = NULL;
        f->blob_old = NULL;
        atomic_signal_fence(memory_order_seq_cst);
        arena_free(old);
        worker_release(s);
    }
    struct record r = { index, out->len, rc, code };
    memcpy(f->blob + len, &r, sizeof r);
    if (out->len)
        memcpy(f->blob + len + sizeof r, out->data, out->len);
    atomic_store_explicit(&f->blob_len, len + need, memory_order_release);
    return 0;
}

static int run_item(struct slot *s, struct job *job, mp_future *f, size_t index, mp_fn fn,
                    const struct task_runner *r, mp_buf *out, int *code)
{
    const unsigned char *in = job->in ? job->in + index * job->in_size : NULL;   /* in_size 0 */
    int rc = task_call(r, job->fn, fn, in, job->in_size, out, code);
    if (rc == WORKER_GONE)
        return rc;
    if (job->imap) {
        int arc = append_record(s, f, index, rc, *code, out);
        return arc ? arc : rc;
    }
    if (rc == 0 && out->len > job->out_size)
        return MP_ETOOBIG;
    if (rc == 0 && out->len)
        memcpy(job->out + index * job->out_size, out->data, out->len);
    return rc;
}

int chunk_run(struct pool_shared *sh, struct slot *s, mp_future *f, mp_fn fn,
              const struct task_runner *r, mp_buf *out)
{
    struct job *job = f->job;
    bool timed = sh->task_timeout > 0;
    /* Shipped at once unless each item must be timed on its own. */
    if (r && r->prefetch && !timed)
        r->prefetch(r->ctx, job, f->start + atomic_load(&f->cur), f->start + f->count);
    for (size_t i = atomic_load(&f->cur); i < f->count; i++) {
        size_t index = f->start + i;
        int code = 0;
        if (timed)
            atomic_store(&s->started_ns, now_ns());
        int rc = run_item(s, job, f, index, fn, r, out, &code);
        if (rc == WORKER_GONE)
            return rc;
        if (job->imap && rc == MP_ENOMEM) {
            /* no record for this item: end the chunk as if the worker died in it */
            atomic_store(&s->started_ns, 0);
            task_finish(f, TASK_RUNNING, MP_ENOMEM, 0);
            return 0;
        }
        if (rc != 0 && f->fail_index == SIZE_MAX) {
            f->fail_index = index;
            f->fail_rc = rc;
            f->fail_code = code;
        }
        atomic_store_explicit(&f->cur, i + 1, memory_order_release);
    }
    atomic_store(&s->started_ns, 0);
    task_finish(f, TASK_RUNNING, 0, 0);
    return 0;
}

/* ------------------------------------------------------------------ in the collector */

static void job_fail(struct job *job, size_t index, int rc, int code)
{
    if (index < job->fail_index) {
        job->fail_index = index;
        job->fail_rc = rc;
        job->fail_code = code;
    }
}

static void iter_destroy(mp_iter *it)
{
    for (size_t c = 0; c <= it->nchunks; c++) {
        struct segment *list = c < it->nchunks ? (it->by_chunk ? it->by_chunk[c] : NULL) : it->segs;
        for (struct segment *s = list, *next; s; s = next) {
            next = s->next;
            pool_mem_free(s);
        }
    }
    pool_mem_free(it->by_chunk);
    pool_mem_free(it->fs);
    pool_mem_free(it->given);
    pool_mem_free(it->rest);
    pthread_mutex_destroy(&it->lock);
    pthread_cond_destroy(&it->cond);
    atomic_store_explicit(&it->magic, MAGIC_FREED, memory_order_relaxed);
    arena_heap_root(it, sizeof *it, false);
    arena_free(it);
}

/* A segment for len bytes of records, or NULL. The collector makes it while
 * workers may be forked: pool_mem_alloc, not the heap. */
static struct segment *segment_new(size_t len)
{
    if (len > SIZE_MAX - sizeof(struct segment))
        return NULL;
    struct segment *s = pool_mem_alloc(sizeof *s + len);
    if (!s)
        return NULL;
    *s = (struct segment){ .data = (unsigned char *)(s + 1), .len = len };
    return s;
}

/* Hands the records of s to the iterator, under the original chunk they
 * came from. (A segment that cannot be made loses its records, and the
 * reader waits for them until its timeout.) */
static void iter_file(mp_iter *it, size_t chunk, struct segment *s)
{
    pthread_mutex_lock(&it->lock);
    if (it->unordered) {
        *it->tail = s;
        it->tail = &s->next;
    } else {                             /* read by index: file it under its chunk */
        s->next = it->by_chunk[chunk];
        it->by_chunk[chunk] = s;
    }
    it->pending++;
    pthread_cond_broadcast(&it->cond);
    pthread_mutex_unlock(&it->lock);
}

static void iter_deliver(mp_iter *it, size_t chunk, const unsigned char *data, size_t len)
{
    struct segment *s = segment_new(len);
    if (!s)
        return;
    if (len)
        memcpy(s->data, data, len);
    iter_file(it, chunk, s);
}

/* Records of items [from, to) that never ran, all failing with rc. */
static void iter_deliver_failed(mp_iter *it, size_t from, size_t to, int rc, int code)
{
    size_t n = to - from, size = RECORD_SIZE(0);
    struct segment *s = n <= SIZE_MAX / size ? segment_new(n * size) : NULL;
    if (!s)
        return;
    for (size_t i = 0; i < n; i++) {
        struct record r = { from + i, 0, rc, code };
        memcpy(s->data + i * size, &r, sizeof r);
    }
    iter_file(it, from / it->chunksize, s);
}

static size_t records_len(const unsigned char *blob, size_t count)
{
    size_t off = 0;
    for (size_t i = 0; i < count; i++) {
        struct record r;
        memcpy(&r, blob + off, sizeof r);
        off += RECORD_SIZE(r.len);
    }
    return off;
}

static void job_finish(mp_pool *p, struct job *job)
{
    if (job->imap) {
        mp_iter *it = job->iter;
        pthread_mutex_lock(&it->lock);
        it->job = NULL;
        bool gone = it->detached;
        pthread_cond_broadcast(&it->cond);
        pthread_mutex_unlock(&it->lock);
        if (gone)
            iter_destroy(it);
        job_free(job);
        return;
    }
    mp_future *f = job->future;
    bool detached = atomic_load(&f->state) & TASK_DETACHED;
    if (job->out_size && !detached)
        memcpy(job->user_out, job->out, job->n * job->out_size);
    f->fail_index = job->fail_index;
    int rc = job->fail_index == SIZE_MAX ? 0 : job->fail_rc;
    int code = job->fail_index == SIZE_MAX ? 0 : job->fail_code;
    f->job = NULL;
    job_free(job);
    pool_progress_final(p);
    task_finish(f, TASK_RUNNING, rc, code);
}

/* Queues items [from, to) of c's job again: false if the pool is stopping. */
static bool requeue(mp_pool *p, mp_future *c, size_t from, size_t to)
{
    mp_future *rest = pool_terminating(p) ? NULL : chunk_new(p, c->job, from, to - from);
    if (!rest)
        return false;
    rest->sh = c->sh;
    atomic_store(&rest->id, atomic_fetch_add(&c->sh->next_id, 1));
    if (pool_push(c->sh, rest, rest, 1) != 0) {
        task_free(rest);
        return false;
    }
    c->job->chunks_left++;
    return true;
}

/* What a finished, crashed or killed chunk leaves: its results, the item
 * that failed, and the rest of the chunk queued again (or killed). */
void chunk_collect(mp_pool *p, mp_future *c)
{
    struct job *job = c->job;
    size_t done = atomic_load_explicit(&c->cur, memory_order_acquire), items = done;
    if (job->imap && done)
        iter_deliver(job->iter, c->start / job->iter->chunksize, c->blob, records_len(c->blob, done));
    if (!job->imap && c->fail_index != SIZE_MAX)
        job_fail(job, c->fail_index, c->fail_rc, c->fail_code);
    if (c->rc != 0 && done < c->count) {          /* the worker died in item `done` */
        size_t index = c->start + done++;
        if (job->imap)
            iter_deliver_failed(job->iter, index, index + 1, c->rc, c->code);
        else
            job_fail(job, index, c->rc, c->code);
        items++;
    }
    if (done < c->count) {
        size_t from = c->start + done, to = c->start + c->count;
        if (!requeue(p, c, from, to)) {
            if (job->imap)
                iter_deliver_failed(job->iter, from, to, MP_EKILLED, 0);
            else
                job_fail(job, from, MP_EKILLED, 0);
            items += to - from;
        }
    }
    if (c->sh->count_items)
        atomic_fetch_add(&c->sh->items_done, items);
    task_processed(c);
    if (--job->chunks_left == 0)
        job_finish(p, job);
}

/* ------------------------------------------------------------------ imap */

static int imap(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                size_t chunksize, bool unordered, mp_iter **out);

int mp_pool_imap(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                 size_t chunksize, bool unordered, mp_iter **out)
{
    return mp_fail_code(imap(p, fn, in, n, in_size, chunksize, unordered, out), __func__);
}

static int imap(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                size_t chunksize, bool unordered, mp_iter **out)
{
    if (out)
        *out = NULL;
    int rc = map_args_valid(p, fn, in, n, in_size);
    if (rc != 0)
        return rc;
    if (!out)
        return mp_fail(MP_EINVAL, NULL, "it (where the iterator goes) is NULL");
    mp_iter *it = arena_alloc(sizeof *it);   /* a freed handle stays readable: refused */
    if (!it)
        return MP_ENOMEM;
    arena_heap_root(it, sizeof *it, true);
    atomic_store_explicit(&it->magic, MAGIC_ITER, memory_order_relaxed);
    it->creator = pool_self_pid();
    it->pool = p;
    it->n = n;
    it->chunksize = chunksize ? chunksize : auto_chunksize(p, n);
    it->unordered = unordered;
    it->tail = &it->segs;
    it->nchunks = n / it->chunksize + (n % it->chunksize != 0);
    if (!unordered) {
        size_t nc = it->nchunks ? it->nchunks : 1;
        if (mul_overflows(nc, sizeof *it->by_chunk) ||
            !(it->by_chunk = pool_mem_alloc(nc * sizeof *it->by_chunk))) {
            arena_heap_root(it, sizeof *it, false);
            arena_free(it);
            return MP_ENOMEM;
        }
        memset(it->by_chunk, 0, nc * sizeof *it->by_chunk);
    }
    pthread_mutex_init(&it->lock, NULL);
    cond_init_monotonic(&it->cond);
    if (n) {
        it->job = job_new(p, fn, in, n, in_size, 0, &rc);
        if (!it->job)
            goto fail;
        it->job->imap = true;
        it->job->iter = it;
        if ((rc = job_start(p, pool_shared_of(p), it->job, it->chunksize)) != 0) {
            job_free(it->job);
            goto fail;
        }
    }
    *out = it;
    return 0;
fail:
    iter_destroy(it);
    return rc;
}

static bool iter_valid(const mp_iter *it)
{
    return it && arena_contains(it, sizeof *it) &&
           atomic_load_explicit(&it->magic, memory_order_relaxed) == MAGIC_ITER &&
           !atomic_load_explicit(&it->detached, memory_order_relaxed);
}

/* The segment holding the next record to hand out, or NULL if not here yet. */
static struct segment *next_segment(mp_iter *it, struct segment ***link)
{
    struct segment **head = it->unordered ? &it->segs : &it->by_chunk[it->emitted / it->chunksize];
    for (struct segment **l = head; *l; l = &(*l)->next) {
        struct segment *s = *l;
        if (s->off == s->len)
            continue;
        struct record r;
        memcpy(&r, s->data + s->off, sizeof r);
        if (it->unordered || r.index == it->emitted) {
            *link = l;
            return s;
        }
    }
    return NULL;
}

static int take_record(mp_iter *it, struct segment *s, struct segment **link, size_t *index, mp_buf *out)
{
    struct record r;
    memcpy(&r, s->data + s->off, sizeof r);
    int rc = 0;
    if (out) {
        out->len = 0;
        rc = mp_buf_append(out, s->data + s->off + sizeof r, (size_t)r.len);
        if (rc != 0)
            return rc;                   /* the record stays: try again with memory */
    }
    s->off += RECORD_SIZE(r.len);
    it->emitted++;
    it->last_code = task_code(r.rc, r.code);
    if (index)
        *index = (size_t)r.index;
    if (s->off == s->len) {
        *link = s->next;
        if (it->tail == &s->next)
            it->tail = link;
        it->pending--;
        pool_mem_free(s);
    }
    return r.rc;
}

/* ------------------------------------------------------------------ as_completed */

int mp_as_completed(mp_future **fs, size_t n, mp_iter **out)
{
    const char *fn = __func__;
    if (out)
        *out = NULL;
    if (!out)
        return mp_fail(MP_EINVAL, fn, "it (where the iterator goes) is NULL");
    if (!fs && n)
        return mp_fail(MP_EINVAL, fn, "fs is NULL but n is %zu", n);
    if (n > INT_MAX)
        return mp_fail(MP_EINVAL, fn, "n is %zu; at most INT_MAX futures", n);
    for (size_t i = 0; i < n; i++)
        if (!future_valid(fs[i]))
            return future_fail_listed(fn, i, fs[i]);
    mp_iter *it = arena_alloc(sizeof *it);
    if (!it)
        return mp_fail(MP_ENOMEM, fn, "no room in the shared arena for an iterator");
    arena_heap_root(it, sizeof *it, true);
    it->fs = pool_mem_alloc((n ? n : 1) * sizeof *fs);
    it->given = pool_mem_alloc((n ? n : 1) * sizeof *it->given);
    it->rest = pool_mem_alloc((n ? n : 1) * sizeof *it->rest);
    /* A future listed twice is handed out once (Python's as_completed
     * works on a set): its repeats count as handed out already. */
    int repeats = it->fs && it->given && it->rest ? futures_repeats(fs, n, it->given, NULL)
                                                  : -1;
    if (repeats < 0) {
        pool_mem_free(it->fs);
        pool_mem_free(it->given);
        pool_mem_free(it->rest);
        arena_heap_root(it, sizeof *it, false);
        arena_free(it);
        return mp_fail(MP_ENOMEM, fn, "out of memory for %zu futures", n);
    }
    if (n)
        memcpy(it->fs, fs, n * sizeof *fs);
    it->emitted = (size_t)repeats;
    atomic_store_explicit(&it->magic, MAGIC_ITER, memory_order_relaxed);
    it->creator = pool_self_pid();
    it->n = n;
    pthread_mutex_init(&it->lock, NULL);
    pthread_cond_init(&it->cond, NULL);
    *out = it;
    return 0;
}

/* Under it->lock: the first finished future not handed out yet, or n.
 * The look starts past those handed out in a row from the first, so
 * futures that finish in their order (or before the first call) cost one
 * look each, not a look at every one handed out before (400,000 finished
 * futures took 25.6 s to hand out). */
static size_t first_finished(mp_iter *it, mp_future **rest, size_t *nrest)
{
    ASSERT_HELD(&it->lock);
    *nrest = 0;
    while (it->from < it->n && it->given[it->from])
        it->from++;
    for (size_t i = it->from; i < it->n; i++) {
        if (it->given[i])
            continue;
        if (mp_future_done(it->fs[i]))
            return i;
        rest[(*nrest)++] = it->fs[i];
    }
    return it->n;
}

/* Each future once, as it finishes: its result, as mp_future_result. A
 * wait for several is one mp_futures_wait (FIRST_COMPLETED) on the rest. */
static int next_completed(mp_iter *it, size_t *index, mp_buf *out, const mp_deadline *d)
{
    mp_future **rest = it->rest;
    int rc;
    for (;;) {
        size_t nrest, i = it->emitted == it->n ? it->n : first_finished(it, rest, &nrest);
        if (it->emitted == it->n) {
            rc = MP_EEOF;
            break;
        }
        if (i < it->n) {
            it->given[i] = true;
            it->emitted++;
            rc = mp_future_result(it->fs[i], out, 0);
            it->last_code = mp_future_code(it->fs[i]);
            if (index)
                *index = i;
            break;
        }
        double left = d->forever ? MP_FOREVER : deadline_left(d);
        rc = futures_wait(rest, nrest, MP_FIRST_COMPLETED, left, true);
        if (rc < 0)
            break;                      /* a future freed under us: MP_EINVAL */
        if (rc == 0 && deadline_passed(d)) {
            rc = MP_ETIMEDOUT;
            break;
        }
    }
    return rc;
}

static int iter_next(mp_iter *it, size_t *index, mp_buf *out, double timeout);

/* Another process (a forked child) sees the iterator in the arena, but its
 * lock and condition variable are not process-shared: waiting on them from
 * there is undefined, and a waiter killed there would wedge the creator's
 * mp_iter_free in pthread_cond_destroy. */
static bool iter_here(const mp_iter *it)
{
    return it->creator == pool_self_pid();
}

int mp_iter_next(mp_iter *it, size_t *index, mp_buf *out, double timeout)
{
    if (!iter_valid(it))
        return mp_fail_handle(__func__, "it", it);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    if (!iter_here(it))
        return mp_fail(MP_ESTATE, __func__, "the iterator belongs to the process that made it "
                       "(%d), not to this one", (int)it->creator);
    if (timeout != 0 && !it->fs && pool_thread_serves(pool_shared_of(it->pool)) && it->job)
        return mp_fail(MP_ESTATE, __func__, "called from the pool's own result thread (an "
                       "on_done or progress callback), which feeds this iterator: it would wait "
                       "for itself");
    int rc = iter_next(it, index, out, timeout);
    if (rc == MP_EEOF)
        return mp_fail(rc, __func__, "every item has been handed out already");
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, __func__, "no item finished within %g s", timeout);
    if (rc == MP_ETASK || rc == MP_ECRASHED || rc == MP_EKILLED || rc == MP_ECANCELLED)
        return mp_fail(rc, __func__, "this item's task failed: %s (mp_iter_code gives its "
                       "code)", mp_strerror(rc));
    return mp_fail_code(rc, __func__);
}

static int iter_next(mp_iter *it, size_t *index, mp_buf *out, double timeout)
{
    mp_deadline d = deadline_in(timeout);
    pthread_mutex_lock(&it->lock);
    if (it->fs) {
        int rc = next_completed(it, index, out, &d);
        pthread_mutex_unlock(&it->lock);
        return rc;
    }
    int rc;
    for (;;) {
        struct segment **link, *s;
        if (it->emitted == it->n) {
            rc = MP_EEOF;
            break;
        }
        if ((s = next_segment(it, &link))) {
            rc = take_record(it, s, link, index, out);
            break;
        }
        if (deadline_passed(&d) || (!it->job && !it->pending)) {
            rc = it->job ? MP_ETIMEDOUT : MP_EEOF;
            break;
        }
        if (d.forever)
            pthread_cond_wait(&it->cond, &it->lock);
        else
            pthread_cond_timedwait(&it->cond, &it->lock, &d.at);
    }
    pthread_mutex_unlock(&it->lock);
    return rc;
}

int mp_iter_code(mp_iter *it)
{
    if (!iter_valid(it) || !iter_here(it))
        return 0;
    pthread_mutex_lock(&it->lock);
    int code = it->last_code;
    pthread_mutex_unlock(&it->lock);
    return code;
}

void mp_iter_free(mp_iter *it)
{
    if (!iter_valid(it) || !iter_here(it))
        return;                          /* the creator's, seen from a forked child: not ours */
    pthread_mutex_lock(&it->lock);
    bool pending = it->job != NULL;
    it->detached = pending;
    pthread_mutex_unlock(&it->lock);
    if (!pending)
        iter_destroy(it);
}
