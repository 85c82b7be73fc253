/* thread.c - mp_thread: threading.Thread over pthreads.
 *
 * A thread publishes its end in a futex word, so a join with a timeout waits
 * on that word and only then calls pthread_join (which cannot time out).
 * Threads made here are listed in the runtime from mp_thread_new until
 * mp_thread_free, so exit can join the non-daemon ones, mp_active_count can
 * count them, and a child that another thread forks meanwhile still reaches
 * every record (see mp_thread_new). A thread mproc did not start gets a
 * record of its own the first time it asks for one (Python's _DummyThread):
 * it reads as running until the thread ends, and is reused by the next such
 * thread after that, so their number stays that of such threads at once.
 */
#include "process_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct mp_thread {
    uint32_t magic;
    _Atomic uint32_t state;          /* PROC_NEW, PROC_RUNNING, PROC_DONE; futex word */
    int exitcode;
    bool daemon;
    bool builtin;                    /* the main thread or a dummy: never started here */
    bool joined;                     /* pthread_join done (under join_lock) */
    bool listed;                     /* in the runtime's list (under runtime_lock) */
    pthread_t handle;
    pthread_mutex_t join_lock;
    mp_target target;
    void *arg;
    char name[PROC_NAME_MAX];
    struct mp_thread *next, *prev;
};

static struct mp_thread main_thread = {
    .magic = MAGIC_THREAD, .state = PROC_RUNNING, .builtin = true, .name = "MainThread",
};
static __thread struct mp_thread *self;

/* Dummies: records of threads mproc did not start (mp_current_thread). A
 * dummy's thread marks it ended at its exit (dummy_key's destructor) and
 * puts it on spare_dummies, under the runtime's lock, for the next. */
static pthread_key_t dummy_key;
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;
static struct mp_thread *spare_dummies;
static unsigned dummies;
static __thread struct mp_thread no_memory_dummy;   /* when none can be had */

static bool valid(const mp_thread *t)
{
    return t && t->magic == MAGIC_THREAD;
}

static bool is_builtin(const mp_thread *t)
{
    return t->builtin;
}

static void list_add(struct mp_runtime *r, struct mp_thread *t)
{
    ASSERT_HELD(&r->lock);
    t->prev = NULL;
    t->next = r->threads;
    if (r->threads)
        r->threads->prev = t;
    r->threads = t;
    t->listed = true;
}

static void list_remove(struct mp_runtime *r, struct mp_thread *t)
{
    ASSERT_HELD(&r->lock);
    if (!t->listed)
        return;
    if (t->prev)
        t->prev->next = t->next;
    else
        r->threads = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->listed = false;
}

/* The state a thread is in, for the MP_ESTATE messages. */
static const char *state_name(const struct mp_thread *t)
{
    uint32_t s = atomic_load(&t->state);
    return s == PROC_NEW ? "not started" : s == PROC_RUNNING ? "running" : "finished";
}

static int fail_state(const char *fn, const struct mp_thread *t, const char *what)
{
    return mp_fail(MP_ESTATE, fn, "thread \"%s\" is %s; %s", t->name, state_name(t), what);
}

int mp_thread_new(mp_thread **out, mp_target target, void *arg, const mp_thread_opts *o)
{
    if (!out || !target)
        return mp_fail(MP_EINVAL, __func__, "%s is NULL", !out ? "t (where the thread goes)"
                                                                : "target");
    /* Made, filled in and listed under the runtime's lock, which a fork
     * takes: a child forked by another thread meanwhile finds the record
     * whole on the list, not only in the registers of a thread it does not
     * have (valgrind would call it lost there, and fail that child). */
    struct mp_runtime *r = runtime();
    size_t cap = sizeof ((struct mp_thread *)NULL)->name;
    size_t name_len = o && o->name ? strlen(o->name) : 0;
    runtime_lock();
    struct mp_thread *t = name_len < cap ? calloc(1, sizeof *t) : NULL;
    if (t) {
        if (name_len)
            memcpy(t->name, o->name, name_len + 1);
        else        /* NULL or "", as Python's: only these count */
            snprintf(t->name, cap, "Thread-%u", ++r->next_thread);
        t->magic = MAGIC_THREAD;
        t->daemon = o && o->daemon;
        t->target = target;
        t->arg = arg;
        pthread_mutex_init(&t->join_lock, NULL);
        list_add(r, t);
    }
    runtime_unlock();
    if (name_len >= cap)
        return mp_fail(MP_EINVAL, __func__, "name is %zu bytes; at most %zu", name_len, cap - 1);
    if (!t)
        return mp_fail(MP_ENOMEM, __func__, "no memory for a thread");
    *out = t;
    return 0;
}

static void thread_ended(struct mp_thread *t)
{
    atomic_store_explicit(&t->state, PROC_DONE, memory_order_release);
    futex_wake(&t->state, INT32_MAX);
}

/* A target that ends its thread with pthread_exit, or is cancelled, has
 * finished too (exit code -1): its joiners and exit must not wait on. */
static void ended_early(void *arg)
{
    struct mp_thread *t = arg;
    t->exitcode = -1;
    thread_ended(t);
}

static void *trampoline(void *arg)
{
    struct mp_thread *t = arg;
    self = t;
    int code;
    pthread_cleanup_push(ended_early, t);
    code = t->target(t->arg);
    pthread_cleanup_pop(0);
    t->exitcode = code;
    thread_ended(t);
    return NULL;
}

int mp_thread_start(mp_thread *t)
{
    if (!valid(t))
        return mp_fail_handle(__func__, "thread", t);
    if (is_builtin(t))
        return fail_state(__func__, t, "only threads made by mp_thread_new start");
    uint32_t expect = PROC_NEW;
    if (!atomic_compare_exchange_strong(&t->state, &expect, PROC_RUNNING))
        return fail_state(__func__, t, "a thread starts once (Python: RuntimeError); make a new one");
    int err = pthread_create(&t->handle, NULL, trampoline, t);
    if (err != 0) {
        atomic_store(&t->state, PROC_NEW);
        return mp_fail(-err, __func__, "pthread_create: %s", mp_strerror(-err));
    }
    return 0;
}

/* Once the thread has ended: releases its pthread, exactly once. */
static void reap(struct mp_thread *t)
{
    pthread_mutex_lock(&t->join_lock);
    if (!t->joined) {
        pthread_join(t->handle, NULL);
        t->joined = true;
    }
    pthread_mutex_unlock(&t->join_lock);
}

int mp_thread_join(mp_thread *t, double timeout)
{
    if (!valid(t))
        return mp_fail_handle(__func__, "thread", t);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    if (atomic_load(&t->state) == PROC_NEW)
        return fail_state(__func__, t, "start it before joining it");
    if (t == mp_current_thread())    /* Python: cannot join the current thread */
        return fail_state(__func__, t, "a thread cannot join itself");
    if (is_builtin(t))
        return mp_fail(MP_ESTATE, __func__, "thread \"%s\" was not started by mproc (the main "
                       "thread, or a dummy: Python cannot join those either)", t->name);
    mp_deadline d = deadline_in(timeout);
    uint32_t s;
    while ((s = atomic_load_explicit(&t->state, memory_order_acquire)) != PROC_DONE)
        if (futex_wait(&t->state, s, &d) == MP_ETIMEDOUT)
            return mp_fail(MP_ETIMEDOUT, __func__, "thread \"%s\" still runs at the timeout",
                           t->name);
    reap(t);
    return 0;
}

bool mp_thread_is_alive(mp_thread *t)
{
    return valid(t) && atomic_load(&t->state) == PROC_RUNNING;
}

int mp_thread_exitcode(mp_thread *t, int *code)
{
    if (!valid(t))
        return mp_fail_handle(__func__, "thread", t);
    if (!code)
        return mp_fail(MP_EINVAL, __func__, "code is NULL");
    if (atomic_load_explicit(&t->state, memory_order_acquire) != PROC_DONE)
        return fail_state(__func__, t, "it has no exit code until it finishes: join it first");
    *code = t->exitcode;
    return 0;
}

const char *mp_thread_name(const mp_thread *t)
{
    if (!valid(t)) {
        mp_fail_handle(__func__, "thread", t);
        return NULL;
    }
    return t->name;
}

int mp_thread_free(mp_thread *t)
{
    if (!t)
        return 0;
    if (!valid(t))
        return mp_fail_handle(__func__, "thread", t);
    if (is_builtin(t))
        return mp_fail(MP_EINVAL, __func__, "thread \"%s\" was not made by mp_thread_new", t->name);
    if (atomic_load(&t->state) == PROC_RUNNING)
        return fail_state(__func__, t, "join it before freeing it");
    if (atomic_load(&t->state) == PROC_DONE)
        reap(t);
    runtime_lock();
    list_remove(runtime(), t);
    runtime_unlock();
    pthread_mutex_destroy(&t->join_lock);
    t->magic = MAGIC_FREED;
    free(t);
    return 0;
}

static void dummy_thread_ends(void *arg)
{
    struct mp_thread *t = arg;
    thread_ended(t);
    runtime_lock();
    t->next = spare_dummies;
    spare_dummies = t;
    runtime_unlock();
}

static void dummy_key_make(void)
{
    pthread_key_create(&dummy_key, dummy_thread_ends);
}

/* This thread's dummy, made (or a spare one reused) now. */
static struct mp_thread *dummy_new(void)
{
    pthread_once(&dummy_once, dummy_key_make);
    runtime_lock();
    struct mp_thread *t = spare_dummies;
    if (t)
        spare_dummies = t->next;
    else
        t = calloc(1, sizeof *t);
    unsigned n = ++dummies;
    runtime_unlock();
    if (!t || pthread_setspecific(dummy_key, t) != 0) {
        free(t);                     /* never named: ours alone */
        t = &no_memory_dummy;
    }
    t->magic = MAGIC_THREAD;
    t->builtin = true;
    t->next = NULL;
    snprintf(t->name, sizeof t->name, "Dummy-%u", n);
    atomic_store(&t->state, PROC_RUNNING);
    return t;
}

mp_thread *mp_current_thread(void)
{
    if (self)
        return self;
    if (mp_gettid() == (uint32_t)runtime()->pid)
        return &main_thread;
    self = dummy_new();
    return self;
}

int mp_active_count(void)
{
    int n = atomic_load(&main_thread.state) == PROC_RUNNING;
    runtime_lock();
    for (struct mp_thread *t = runtime()->threads; t; t = t->next)
        n += atomic_load(&t->state) == PROC_RUNNING;
    runtime_unlock();
    return n;
}

/* Joins every running non-daemon thread but the caller, including any they
 * start meanwhile (threading._shutdown). */
void thread_join_all_at_exit(void)
{
    struct mp_thread *me = mp_current_thread();
    for (;;) {
        struct mp_thread *wait_for = NULL;
        runtime_lock();
        for (struct mp_thread *t = runtime()->threads; t && !wait_for; t = t->next)
            if (t != me && !t->daemon && atomic_load(&t->state) == PROC_RUNNING)
                wait_for = t;
        runtime_unlock();
        if (!wait_for)
            return;
        mp_thread_join(wait_for, MP_FOREVER);
    }
}

/* Only the forking thread exists in the child: the others are over there.
 * Their records stay listed (the handles are the program's; valgrind would
 * call them leaked otherwise) but read as ended and joined. The forking
 * thread is the child's main thread, as in Python: a dummy becomes
 * MainThread (its tid is now the pid), and a thread started here keeps its
 * record, which stands for the main thread (main_thread reads as ended). */
void thread_after_fork_child(void)
{
    if (self && self->builtin)
        self = NULL;
    else if (self)
        atomic_store(&main_thread.state, PROC_DONE);
    for (struct mp_thread *t = runtime()->threads; t; t = t->next) {
        if (t == self || atomic_load(&t->state) == PROC_NEW)
            continue;                 /* a thread not started may start here */
        pthread_mutex_init(&t->join_lock, NULL);
        t->joined = true;
        if (atomic_load(&t->state) == PROC_RUNNING) {
            t->exitcode = -1;
            atomic_store(&t->state, PROC_DONE);
        }
    }
}
