/* mproc.h - Python's multiprocessing, threading and concurrent.futures in C.
 *
 * One header, one library. Every call returns 0 (or a count where stated) on
 * success and a negative MP_E* code on failure; no call prints, aborts or exits
 * on bad input. Timeouts are seconds: MP_FOREVER (or +inf, or anything
 * above 1e9 s, some 31 years) blocks, 0 never blocks; NaN and any other
 * negative value give MP_EINVAL at once.
 * Handles are opaque; options are zero-initialised structs (NULL = defaults),
 * and more fields may be added to them at any time.
 */
#ifndef MPROC_H
#define MPROC_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MP_BUILDING) && defined(__GNUC__)
#define MP_EXTERN __attribute__((visibility("default")))
#else
#define MP_EXTERN
#endif

#define MP_VERSION_MAJOR 0
#define MP_VERSION_MINOR 1
#define MP_VERSION_PATCH 0
#define MP_VERSION_HEX ((MP_VERSION_MAJOR << 16) | (MP_VERSION_MINOR << 8) | MP_VERSION_PATCH)
MP_EXTERN unsigned mp_version(void);            /* MP_VERSION_HEX of the library */
MP_EXTERN const char *mp_version_string(void);  /* "0.1.0" */

/* ------------------------------------------------------------------ errors */

enum {
    MP_EINVAL = -EINVAL,        /* bad argument (ValueError) */
    MP_ETIMEDOUT = -ETIMEDOUT,  /* timeout expired (TimeoutError) */
    MP_ENOMEM = -ENOMEM,        /* out of memory */
    MP_EFULL = -1001,           /* queue full on a bounded wait (queue.Full) */
    MP_EEMPTY = -1002,          /* queue empty on a bounded wait (queue.Empty) */
    MP_ECLOSED = -1003,         /* object closed or shut down */
    MP_EEOF = -1004,            /* peer closed, stream or iterator ended */
    MP_ETOOBIG = -1005,         /* message larger than the buffer or limit */
    MP_EAUTH = -1006,           /* authentication failed */
    MP_ESTATE = -1007,          /* wrong state for this call */
    MP_EOWNERDEAD = -1008,      /* lock acquired; its previous owner died holding it */
    MP_EBROKEN = -1009,         /* barrier broken / pool or manager unusable */
    MP_ETASK = -1010,           /* a task returned non-zero: mp_future_code() */
    MP_ECRASHED = -1011,        /* the worker running the task died: mp_future_code() */
    MP_ECANCELLED = -1012,      /* the future was cancelled */
    MP_EKILLED = -1013,         /* the pool killed the task (timeout or terminate) */
    MP_ENOTFOUND = -1014,       /* no such key or name (KeyError) */
    MP_ETYPE = -1015,           /* stored value has another type (TypeError) */
    MP_ERANGE = -1016,          /* index out of range (IndexError) */
    MP_ECONFLICT = -1017,       /* compare-and-swap found another value */
    MP_EPROTO = -1018,          /* malformed message from a peer */
};

MP_EXTERN const char *mp_strerror(int rc);  /* "timeout expired"; any int is accepted */
MP_EXTERN const char *mp_errname(int rc);   /* "OK" for 0, "MP_ETIMEDOUT", "EBADF", ... */
/* The last error of this thread in a sentence that names the call, the
 * argument and the reason, and says what to do where that is known:
 * 'mp_listener_new: address "127.0.0.1:8080" has no scheme; use
 * tcp:HOST:PORT, unix:/path or unix:@name'. Set whenever a call returns
 * an error (a timeout, and the end of an mp_iter, too), and when
 * mp_shared_alloc returns NULL. mp_pool_apply and mp_pool_map name
 * themselves for a bad argument, and otherwise leave the message of the
 * call that failed inside them (mp_future_result, ...). A successful call does not clear it (as Python
 * keeps its last exception): read it right after the call that failed.
 * "" before the first error; never NULL; valid until this thread's next
 * call into mproc. */
MP_EXTERN const char *mp_last_error(void);

#define MP_FOREVER (-1.0)

/* ------------------------------------------------------------------ buffers */

/* A call that fills an mp_buf replaces its contents, reusing its capacity. */
typedef struct { void *data; size_t len, cap; } mp_buf;   /* zero-init = empty */
MP_EXTERN int  mp_buf_append(mp_buf *b, const void *data, size_t len);
MP_EXTERN int  mp_buf_reserve(mp_buf *b, size_t cap);      /* capacity at least cap */
MP_EXTERN void mp_buf_free(mp_buf *b);                     /* frees data, resets */

/* ------------------------------------------------------------------ processes */

typedef struct mp_process mp_process;
typedef int (*mp_target)(void *arg);        /* return value = exit code (0-255) */
typedef enum { MP_START_DEFAULT, MP_FORK, MP_SPAWN, MP_FORKSERVER } mp_start_method;
typedef struct {
    const char *name;        /* default "Process-N" (N counts per parent); at most
                                63 bytes, else MP_EINVAL */
    bool daemon;             /* killed when the parent exits, normally or not */
    mp_start_method method;
    size_t arg_size;         /* bytes at arg copied to the child (needed for spawn/forkserver);
                                0: arg passed as is, so under spawn/forkserver it must
                                point into shared memory (mp_shared_alloc), else
                                mp_process_start refuses it (MP_EINVAL). Copied bytes
                                are copied as they are: a pointer inside them to
                                private memory (a string literal, the heap) means
                                nothing in a spawned child */
    /* Descriptors the child keeps open at the same numbers, under every
     * method (Python's subprocess pass_fds): a pipe or an accepted socket
     * for the child to use. fork keeps them as they are; spawn keeps them
     * across exec and the fork server sends them (SCM_RIGHTS), and there
     * the child gets them without FD_CLOEXEC. Each must be open, >= 0 and
     * listed once (else MP_EINVAL, or -EBADF for one not open); at most
     * MP_PASS_FDS_MAX. The list is copied by mp_process_new. */
    const int *pass_fds;
    size_t n_pass_fds;
} mp_process_opts;
enum { MP_PASS_FDS_MAX = 200 };
/* mp_process_exitcode of a forkserver child that ended after its fork server
 * died, where the kernel no longer tells how (no pidfds, or reaped by init
 * on a kernel before 6.15): neither an exit status nor a -signal. */
enum { MP_EXITCODE_UNKNOWN = -256 };

MP_EXTERN int   mp_process_new(mp_process **p, mp_target target, void *arg, const mp_process_opts *o);
MP_EXTERN int   mp_process_set_daemon(mp_process *p, bool daemon);   /* MP_ESTATE after start */
MP_EXTERN int   mp_process_start(mp_process *p);                     /* MP_ESTATE if started */
MP_EXTERN int   mp_process_join(mp_process *p, double timeout);      /* 0, MP_ETIMEDOUT */
MP_EXTERN bool  mp_process_is_alive(mp_process *p);
MP_EXTERN int   mp_process_terminate(mp_process *p);                 /* SIGTERM */
MP_EXTERN int   mp_process_kill(mp_process *p);                      /* SIGKILL */
MP_EXTERN int   mp_process_exitcode(mp_process *p, int *code);       /* MP_ESTATE if not finished; <0 = -signal */
MP_EXTERN pid_t mp_process_pid(const mp_process *p);                 /* 0 before start or for NULL
                                                                        (Python: None): not for kill() */
MP_EXTERN const char *mp_process_name(const mp_process *p);
MP_EXTERN bool  mp_process_daemon(const mp_process *p);
MP_EXTERN int   mp_process_sentinel(const mp_process *p);            /* fd readable once ended */
MP_EXTERN int   mp_process_free(mp_process *p);                      /* MP_ESTATE while it runs */

MP_EXTERN mp_process *mp_current_process(void);   /* "MainProcess" in the main one */
MP_EXTERN mp_process *mp_parent_process(void);    /* NULL in the main process */
MP_EXTERN int  mp_active_children(mp_process **out, size_t cap);   /* count; reaps finished ones */
MP_EXTERN int  mp_cpu_count(void);
MP_EXTERN int  mp_set_start_method(mp_start_method m);
MP_EXTERN mp_start_method mp_get_start_method(void);

/* ------------------------------------------------------------------ threads */

typedef struct mp_thread mp_thread;
/* name: default "Thread-N"; at most 63 bytes, else MP_EINVAL */
typedef struct { const char *name; bool daemon; } mp_thread_opts;
MP_EXTERN int  mp_thread_new(mp_thread **t, mp_target target, void *arg, const mp_thread_opts *o);
MP_EXTERN int  mp_thread_start(mp_thread *t);
MP_EXTERN int  mp_thread_join(mp_thread *t, double timeout);  /* 0, MP_ETIMEDOUT */
MP_EXTERN bool mp_thread_is_alive(mp_thread *t);
MP_EXTERN int  mp_thread_exitcode(mp_thread *t, int *code);   /* target's return value;
                                                                 * -1 after pthread_exit */
MP_EXTERN const char *mp_thread_name(const mp_thread *t);
MP_EXTERN int  mp_thread_free(mp_thread *t);                  /* MP_ESTATE while it runs */
/* "MainThread" on the main one; "Dummy-N" on a thread mproc did not start,
 * alive until it ends, never joined (MP_ESTATE) */
MP_EXTERN mp_thread *mp_current_thread(void);
MP_EXTERN int  mp_active_count(void);                         /* live threads started here + main */

/* ------------------------------------------------------------------ synchronisation */

/* Every object lives in the family's shared arena: create it before starting
 * a child, pass it through the child's argument, and it works between the
 * threads and processes of the family alike. Free it once, in the creator. */
typedef struct mp_lock mp_lock;
typedef struct mp_semaphore mp_semaphore;
typedef struct mp_event mp_event;
typedef struct mp_condition mp_condition;
typedef struct mp_barrier mp_barrier;

MP_EXTERN int  mp_lock_new(mp_lock **l);
MP_EXTERN int  mp_rlock_new(mp_lock **l);       /* recursive: the owner may acquire again */
/* 0, MP_ETIMEDOUT, or MP_EOWNERDEAD: held now, but its holder died holding it
 * (killed or thread ended), so guarded data may be half-updated. A thread
 * taking a plain Lock it already holds gets MP_ETIMEDOUT after the timeout,
 * or -EDEADLK at once for MP_FOREVER (Python would hang). */
MP_EXTERN int  mp_lock_acquire(mp_lock *l, double timeout);
MP_EXTERN int  mp_lock_release(mp_lock *l);     /* MP_EINVAL unlocked / not the owner's thread */
MP_EXTERN void mp_lock_free(mp_lock *l);        /* releases it first if the caller holds it */
/* Python's `with lock:`. Runs the following statement or block once with
 * l held, and only if mp_lock_acquire(l, MP_FOREVER) returned 0 or
 * MP_EOWNERDEAD; otherwise (NULL or freed lock, -EDEADLK) it skips it.
 * MP_WITH_LOCK_RC(l, rc) also stores that code in the caller's int rc
 * (any int lvalue) before the body, so the caller can tell a skipped body
 * (rc < 0 and not MP_EOWNERDEAD) and repair after a dead holder
 * (rc == MP_EOWNERDEAD). Leave the body early with break (or continue):
 * the lock is released. Unlike Python's break inside `with`, it leaves
 * only the body, not a loop around it: set a flag and break again after.
 * return and goto would skip the release. */
typedef struct { mp_lock *lock; int rc, held, once; } mp__with_lock;
static inline mp__with_lock mp__with_lock_begin(mp_lock *l)
{
    mp__with_lock w = { l, mp_lock_acquire(l, MP_FOREVER), 0, 1 };
    w.held = w.rc == 0 || w.rc == MP_EOWNERDEAD;
    return w;
}
static inline void mp__with_lock_end(mp__with_lock *w)
{
    if (w->held)
        mp_lock_release(w->lock);
    w->once = 0;
}
#define MP__CAT2(a, b) a##b
#define MP__CAT(a, b) MP__CAT2(a, b)
/* The inner loop holds the body, so a break ends only it and the outer
 * loop's step still releases. */
#define MP__WITH_LOCK(l, rc_store, w, run) \
    for (mp__with_lock w = mp__with_lock_begin(l); w.once && (rc_store, 1); mp__with_lock_end(&w)) \
        for (int run = w.held; run; run = 0)
#ifdef __COUNTER__
#define MP__UNIQUE __COUNTER__   /* nested uses get their own names, even on one line */
#else
#define MP__UNIQUE __LINE__
#endif
#define MP__WITH_LOCK_N(l, rc_store, n) MP__WITH_LOCK(l, rc_store, MP__CAT(mp__w_, n), MP__CAT(mp__run_, n))
#define MP__WITH_LOCK_RC_N(l, rc_lvalue, n) \
    MP__WITH_LOCK(l, (rc_lvalue) = MP__CAT(mp__w_, n).rc, MP__CAT(mp__w_, n), MP__CAT(mp__run_, n))
#define MP_WITH_LOCK(l) MP__WITH_LOCK_N((l), (void)0, MP__UNIQUE)
#define MP_WITH_LOCK_RC(l, rc_lvalue) MP__WITH_LOCK_RC_N((l), rc_lvalue, MP__UNIQUE)

/* value <= INT_MAX. No owner: a count taken by a process that dies is lost. */
MP_EXTERN int  mp_semaphore_new(mp_semaphore **s, unsigned value);
MP_EXTERN int  mp_bounded_semaphore_new(mp_semaphore **s, unsigned value);
MP_EXTERN int  mp_semaphore_acquire(mp_semaphore *s, double timeout);   /* 0, MP_ETIMEDOUT */
MP_EXTERN int  mp_semaphore_release(mp_semaphore *s);   /* MP_EINVAL past the bound or INT_MAX */
MP_EXTERN int  mp_semaphore_value(mp_semaphore *s);     /* the count now (>= 0) */
MP_EXTERN void mp_semaphore_free(mp_semaphore *s);

MP_EXTERN int  mp_event_new(mp_event **e);
MP_EXTERN int  mp_event_set(mp_event *e);       /* wakes every waiter */
MP_EXTERN int  mp_event_clear(mp_event *e);
MP_EXTERN bool mp_event_is_set(mp_event *e);    /* false for a bad handle */
MP_EXTERN int  mp_event_wait(mp_event *e, double timeout);   /* 0 once set, MP_ETIMEDOUT */
MP_EXTERN void mp_event_free(mp_event *e);

/* On a Lock or RLock made by mp_lock_new/mp_rlock_new (not a manager lock);
 * l NULL: its own RLock, freed with it. */
MP_EXTERN int  mp_condition_new(mp_condition **c, mp_lock *l);
MP_EXTERN int  mp_condition_acquire(mp_condition *c, double timeout);
MP_EXTERN int  mp_condition_release(mp_condition *c);
/* Needs the lock (else MP_EINVAL); releases it fully, however deep, and holds
 * it again at that depth on return (taking it back is not timed, as Python):
 * 0 notified, MP_ETIMEDOUT, MP_EOWNERDEAD if a holder died meanwhile
 * (notified or not), MP_ENOMEM (arena full). */
MP_EXTERN int  mp_condition_wait(mp_condition *c, double timeout);
/* Python's wait_for: waits until pred(ctx) is true, calling it with the lock
 * held, first at once and then after every wake-up. 0: pred returned true;
 * MP_ETIMEDOUT: it was still false at the timeout (looked at once more after
 * the last wait, as Python does; Python returns that last value); either
 * way the lock is held again. MP_EOWNERDEAD: a holder died during a wait
 * (the lock is held; pred is not called again: repair first). */
MP_EXTERN int  mp_condition_wait_for(mp_condition *c, bool (*pred)(void *ctx), void *ctx,
                                     double timeout);
/* Needs the lock (else MP_EINVAL; n < 0 too): wakes the first n of those
 * waiting now, oldest first. A waiter killed while waiting is skipped. */
MP_EXTERN int  mp_condition_notify(mp_condition *c, int n);
MP_EXTERN int  mp_condition_notify_all(mp_condition *c);
MP_EXTERN void mp_condition_free(mp_condition *c);

/* threading.Barrier: wait returns a distinct index 0..parties-1 to each party
 * of a round. A wait that times out (a process stopped inside a barrier call
 * holds it no longer), abort, or a party killed while waiting
 * (noticed within 0.1 s) breaks it: every waiter and every later wait gets
 * MP_EBROKEN until reset; a reset while parties wait breaks their wait too. */
/* parties 1..44739242 on x86-64 (INT_MAX / 48: each party is a 48-byte
 * slot in the arena, so the largest barrier takes 2 GiB); else MP_EINVAL,
 * and mp_last_error names the bound. */
MP_EXTERN int  mp_barrier_new(mp_barrier **b, unsigned parties);
MP_EXTERN int  mp_barrier_wait(mp_barrier *b, double timeout);     /* index, MP_EBROKEN */
MP_EXTERN int  mp_barrier_abort(mp_barrier *b);
MP_EXTERN int  mp_barrier_reset(mp_barrier *b);
MP_EXTERN int  mp_barrier_parties(mp_barrier *b);
MP_EXTERN int  mp_barrier_n_waiting(mp_barrier *b);   /* 0 unless filling, as Python */
MP_EXTERN bool mp_barrier_broken(mp_barrier *b);      /* Python's .broken; false for a bad handle */
MP_EXTERN void mp_barrier_free(mp_barrier *b);

/* ------------------------------------------------------------------ queues */

typedef struct mp_queue mp_queue;
typedef struct { size_t maxsize; /* items; 0 = unbounded */ } mp_queue_opts;
MP_EXTERN int  mp_queue_new(mp_queue **q, const mp_queue_opts *o);
MP_EXTERN int  mp_queue_put(mp_queue *q, const void *data, size_t len, double timeout);  /* MP_EFULL, MP_ECLOSED */
MP_EXTERN int  mp_queue_get(mp_queue *q, void *buf, size_t cap, size_t *len, double timeout);
                            /* MP_EEMPTY; MP_ETOOBIG sets *len, item stays queued */
MP_EXTERN int  mp_queue_get_buf(mp_queue *q, mp_buf *out, double timeout);   /* any size */
MP_EXTERN int  mp_queue_put_nowait(mp_queue *q, const void *data, size_t len);
MP_EXTERN int  mp_queue_get_nowait(mp_queue *q, void *buf, size_t cap, size_t *len);
/* Big items without a copy. p is a block from mp_shared_alloc, len <= its
 * room (what was asked for, rounded up to a multiple of 64; else
 * MP_EINVAL); on success the queue owns it, otherwise the caller still
 * does: a block is put once (a second put, or a free, while a queue holds
 * it is MP_EINVAL). get_shared hands the caller the item's block (*p is
 * valid in every process of the family; free it with mp_shared_free): an
 * item put by copy comes in a block of its own, and a plain get copies a
 * shared one. */
MP_EXTERN int  mp_queue_put_shared(mp_queue *q, void *p, size_t len, double timeout);
MP_EXTERN int  mp_queue_get_shared(mp_queue *q, void **p, size_t *len, double timeout);
MP_EXTERN size_t mp_queue_qsize(mp_queue *q);
MP_EXTERN bool mp_queue_empty(mp_queue *q);
MP_EXTERN bool mp_queue_full(mp_queue *q);
MP_EXTERN int  mp_queue_task_done(mp_queue *q);             /* MP_EINVAL if more than items got */
/* Until every item put is got and task_done; MP_EBROKEN (once) when some
 * were got by a process that died before marking them done. */
MP_EXTERN int  mp_queue_join(mp_queue *q, double timeout);
MP_EXTERN int  mp_queue_shutdown(mp_queue *q);              /* puts MP_ECLOSED; gets drain, then MP_EEOF */
MP_EXTERN void mp_queue_free(mp_queue *q);

/* ------------------------------------------------------------------ pipes and connections */

/* Frames and the authkey handshake are CPython's multiprocessing.connection,
 * byte for byte. A message too big for the buffer (recv_bytes: *len says its
 * size) or over maxlen (recv_buf) gives MP_ETOOBIG and stays pending: the
 * next call with room enough gets it; nothing is allocated for it first.
 * A receive reads exactly its frame, as Python's, so a socket's descriptor
 * can be handed on (mp_conn_send_fd, mp_conn_from_fd) with the messages
 * behind it. Wait on a conn with mp_conn_poll or mp_wait, not with poll()
 * on its fileno (an mp_pipe's messages are in shared memory). Sends never raise
 * SIGPIPE (a vanished peer is -EPIPE). Handles work in children started
 * after them; mp_conn_close closes only this process's copy. Addresses:
 * "unix:/path", "unix:@abstract", "tcp:HOST:PORT", "tcp:[v6]:PORT" (port 0:
 * the kernel picks, mp_listener_address tells). authkey NULL: no handshake;
 * a non-NULL authkey with keylen 0 runs it with the empty key (Python's
 * authkey=b"", as CPython 3.13's Listener and Client do). With a key,
 * accept runs the handshakes of all waiting connections side by side and
 * returns the first that ends well, so peers that connect and say nothing
 * delay the connections behind them by about 0.1 s for each 32 of them
 * (each new handshake has that long to itself before accept takes the
 * next, so a burst spreads over the processes sharing a listener; behind
 * one that had it unfinished, accept takes up to 32 at once; CPython's
 * accept waits behind the first silent one for ever): one that is not
 * done within 30 s is dropped and its accept call fails with MP_EAUTH, as
 * does one with the wrong key. A handshake still under way when accept's
 * timeout passes goes on in the next accept call of this process (up to
 * 64 at once; more: the oldest is dropped), and is not seen on the
 * listener's descriptor: with a key, wait in accept, not in mp_wait on
 * mp_listener_fileno. mp_listener_free closes this process's handshakes
 * (whether or not other processes still hold the listener), and wakes
 * this process's threads inside mp_listener_accept on l: they return
 * MP_ECLOSED at once (in CPython, closing a listener does not wake them).
 * With no descriptor (or memory) free for a waiting connection, accept
 * waits out its timeout, looking again every 10 ms, then returns -EMFILE
 * (-ENFILE, ...): the connection stays in the backlog. */
typedef struct mp_conn mp_conn;
typedef struct mp_listener mp_listener;
MP_EXTERN int  mp_pipe(mp_conn **a, mp_conn **b, bool duplex);   /* one-way: a receives, b sends */
/* len over PTRDIFF_MAX: MP_ETOOBIG; from 64 KiB, a range data..data+len
 * that is not all mapped memory: MP_EINVAL. Nothing is sent then. */
MP_EXTERN int  mp_conn_send_bytes(mp_conn *c, const void *data, size_t len);
MP_EXTERN int  mp_conn_recv_bytes(mp_conn *c, void *buf, size_t cap, size_t *len);  /* MP_EEOF, MP_ETOOBIG */
/* MP_ENOMEM: out could not grow; that message is dropped, the next receive
 * gets the next one. */
MP_EXTERN int  mp_conn_recv_buf(mp_conn *c, mp_buf *out, size_t maxlen);            /* maxlen 0: no limit */
MP_EXTERN int  mp_conn_poll(mp_conn *c, double timeout);     /* 1 data ready (or EOF), 0 none */
MP_EXTERN int  mp_conn_fileno(const mp_conn *c);
/* Closes this process's copy. Threads of this process inside a call on c
 * (recv, poll, send, mp_wait; socket conns and mp_pipe ends alike) return
 * MP_ECLOSED at once (a send cut short leaves a partial frame: the other
 * holders' stream is broken, and ends there); close returns once they
 * have left, and later calls on c in this process fail (MP_ECLOSED, or
 * MP_EINVAL once c is freed; c is a pointer, so once a new conn is made
 * at its address, as free() would allow, it names that one). In CPython,
 * closing does not wake them. */
MP_EXTERN void mp_conn_close(mp_conn *c);
MP_EXTERN int  mp_wait(const int *fds, size_t n, bool *ready, double timeout);      /* count ready */
/* Python's reduction.send_handle/recv_handle: a descriptor passed over a
 * unix-socket conn (SCM_RIGHTS, the byte a Python peer sends and expects).
 * The receiver gets a new descriptor (close-on-exec) for the same open file;
 * the sender keeps its own. Not on mp_pipe ends (their messages travel in
 * shared memory) nor TCP: MP_EINVAL. send_fd: -EBADF if fd is not open.
 * recv_fd waits up to timeout (MP_ETIMEDOUT): MP_ESTATE when a message
 * comes first (nothing is taken), MP_EPROTO when the peer sent more than
 * one, MP_EEOF.
 * Receive a descriptor in the process that received the messages before it. */
MP_EXTERN int  mp_conn_send_fd(mp_conn *c, int fd);
MP_EXTERN int  mp_conn_recv_fd(mp_conn *c, int *fd, double timeout);
/* Python's Connection(fd): wraps a connected stream socket (both ways) or a
 * pipe end (the way it was opened) in the framing. The conn owns fd from
 * then on (mp_conn_close closes it) and makes it close-on-exec. MP_EINVAL
 * for a file, a datagram, listening or unconnected socket; -EBADF if closed. */
MP_EXTERN int  mp_conn_from_fd(mp_conn **c, int fd);

MP_EXTERN int  mp_listener_new(mp_listener **l, const char *address, const void *authkey, size_t keylen);
MP_EXTERN int  mp_listener_accept(mp_listener *l, mp_conn **c, double timeout);    /* MP_EAUTH */
MP_EXTERN const char *mp_listener_address(const mp_listener *l);
MP_EXTERN int  mp_listener_fileno(const mp_listener *l);
MP_EXTERN void mp_listener_free(mp_listener *l);
/* MP_EAUTH: the server has another key (it answered "#FAILURE#"); MP_EEOF:
 * it hung up during the handshake, with no verdict (Python's EOFError). */
MP_EXTERN int  mp_client(mp_conn **c, const char *address, const void *authkey, size_t keylen, double timeout);

/* ------------------------------------------------------------------ shared memory */

typedef struct mp_shm mp_shm;
enum { MP_CREATE = 1, MP_EXCL = 2 };
MP_EXTERN void *mp_shared_alloc(size_t size);   /* zeroed, visible to children started after it */
MP_EXTERN void  mp_shared_free(void *p);
/* A POSIX shm segment, named as Python's SharedMemory(name=...) names it:
 * "x" and "/x" are both /dev/shm/x (mp_shm_name gives the name as given);
 * a '/' anywhere else is MP_EINVAL. MP_CREATE|MP_EXCL: a new one, -EEXIST
 * if taken; MP_CREATE: new or existing; 0: existing, -ENOENT if none. A new
 * one needs size > 0; an existing one keeps its own size, which must be
 * >= size (0: any). name NULL with MP_CREATE: a fresh "psm_xxxxxxxx".
 * The handle reaches children through their argument; a spawned one maps
 * the name on its first mp_shm_buf (NULL if unlinked by then, or if the
 * name was made again or the segment made smaller meanwhile). mp_shm_free
 * in a child only unmaps it there. */
MP_EXTERN int   mp_shm_new(mp_shm **s, const char *name, size_t size, int flags);
MP_EXTERN void *mp_shm_buf(const mp_shm *s);
MP_EXTERN size_t mp_shm_size(const mp_shm *s);
MP_EXTERN const char *mp_shm_name(const mp_shm *s);    /* as given, as Python's .name */
MP_EXTERN int   mp_shm_unlink(mp_shm *s);   /* removes the name; mappings stay valid; -ENOENT */
MP_EXTERN void  mp_shm_free(mp_shm *s);     /* unmaps; the segment stays until unlinked */

/* ------------------------------------------------------------------ pool and futures */

/* A task is fn(in, len, out): in is a copy of the caller's bytes, out starts
 * empty and what fn appends comes back; non-zero means the task failed.
 * fn is found again in each worker (by object and offset), so it may be any
 * function of the program or of a library it loaded, under every method.
 * A worker that dies fails only its task (MP_ECRASHED) and is replaced.
 * A pool is used from the process (and any thread) that created it. */
typedef struct mp_pool mp_pool;
typedef struct mp_future mp_future;
typedef struct mp_iter mp_iter;
typedef int (*mp_fn)(const void *in, size_t len, mp_buf *out);   /* non-zero = task error */
typedef enum { MP_PROCESSES, MP_THREADS, MP_MPI /* libmproc_mpi, under mpirun */ } mp_backend;
typedef struct {
    int processes;                    /* 0: mp_cpu_count() */
    void (*initializer)(void *arg); void *initarg; size_t initarg_size;
                                      /* once per worker; initarg_size bytes copied (0: pointer as is) */
    int maxtasksperchild;             /* 0: unlimited; a chunk of a map counts as one task */
    mp_start_method method;  mp_backend backend;   /* MP_MPI: MP_EINVAL without libmproc_mpi */
    double task_timeout;              /* 0: none; an overrunning task's worker is killed
                                         (MP_EKILLED) and replaced; MP_EINVAL with MP_THREADS */
    void (*progress)(size_t done, size_t total, void *ctx);   /* items (a map counts each one),
                                         on the pool's result thread, at most every 100 ms
                                         and once more when all submitted work is done */
    void *progress_ctx;
} mp_pool_opts;

MP_EXTERN int  mp_pool_new(mp_pool **p, const mp_pool_opts *o);
MP_EXTERN int  mp_pool_apply(mp_pool *p, mp_fn fn, const void *in, size_t len, mp_buf *out);
                                      /* the task's result code, as mp_future_result */
MP_EXTERN int  mp_pool_apply_async(mp_pool *p, mp_fn fn, const void *in, size_t len, mp_future **f);
                                      /* MP_ECLOSED after close or terminate,
                                         MP_EBROKEN once the pool broke */
/* map: out[i] = fn(in[i]) for n elements of in_size bytes; each result must
 * fit out_size bytes (shorter ones are zero-padded; longer fail the item
 * with MP_ETOOBIG). starmap is map over an array of argument structs. Every
 * item runs even when some fail; the call returns the error of the lowest
 * failing item (MP_ETASK, MP_ECRASHED, ...); map_async's future tells its
 * index (mp_future_failed_index) and code. A failed item's out slot is
 * zeros, and later failures are not told: use imap to see each item's
 * code. out must stay valid until done. */
MP_EXTERN int  mp_pool_map(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                           void *out, size_t out_size, size_t chunksize);   /* chunksize 0: automatic */
MP_EXTERN int  mp_pool_map_async(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                                 void *out, size_t out_size, size_t chunksize, mp_future **f);
/* imap: results of any size, streamed with their index, in order or as they
 * come. mp_iter_next returns that item's code (0, MP_ETASK, MP_ECRASHED,
 * MP_EKILLED; mp_iter_code tells the task's code) or MP_EEOF after the last. */
MP_EXTERN int  mp_pool_imap(mp_pool *p, mp_fn fn, const void *in, size_t n, size_t in_size,
                            size_t chunksize, bool unordered, mp_iter **it);
MP_EXTERN int  mp_iter_next(mp_iter *it, size_t *index, mp_buf *out, double timeout);  /* MP_EEOF at end;
                                                   index or out NULL: not wanted */
MP_EXTERN int  mp_iter_code(mp_iter *it);                   /* code of the item last returned */
MP_EXTERN void mp_iter_free(mp_iter *it);                   /* safe while items are pending */
MP_EXTERN int  mp_pool_close(mp_pool *p);       /* no more tasks; workers leave once all are done */
MP_EXTERN int  mp_pool_terminate(mp_pool *p);   /* kills the workers, pending tasks end MP_EKILLED
                                                   (MP_THREADS: running tasks finish); returns when all is gone */
/* After close/terminate, else MP_ESTATE. Returns once the pool's threads
 * are done: every task finished and every on_done callback (and the last
 * progress call) returned. */
MP_EXTERN int  mp_pool_join(mp_pool *p, double timeout);
MP_EXTERN void mp_pool_free(mp_pool *p);        /* terminates a pool still running */
/* join, terminate and free wait for the pool's own threads: from an on_done
 * or progress callback, or a task of an MP_THREADS pool, they return
 * MP_ESTATE (free does nothing). */

MP_EXTERN int  mp_future_wait(mp_future *f, double timeout);   /* 0 done, MP_ETIMEDOUT */
MP_EXTERN bool mp_future_done(mp_future *f);
MP_EXTERN int  mp_future_result(mp_future *f, mp_buf *out, double timeout);
               /* 0, MP_ETASK, MP_ECRASHED, MP_EKILLED, MP_ECANCELLED; MP_ETIMEDOUT = not done yet;
                  MP_EBROKEN: the pool could not keep a worker alive (its initializer kills
                  them, or none could be started for 10 s: out of descriptors or processes);
                  out (may be NULL) gets what fn wrote, also when it returned non-zero */
/* MP_ETASK: fn's return value; MP_ECRASHED: the signal that killed the
 * worker, or its exit status if it called exit(); 0 otherwise. */
MP_EXTERN int  mp_future_code(mp_future *f);
/* MP_ECRASHED only: how the worker ended, as mp_process_exitcode tells a
 * process's (-signal if a signal killed it, else its exit status), so a
 * signal and an exit() of the same number differ. MP_ESTATE for a task
 * that is not done or did not crash. */
MP_EXTERN int  mp_future_exitcode(mp_future *f, int *exitcode);
MP_EXTERN int  mp_future_failed_index(mp_future *f, size_t *index);   /* map: lowest failing item;
                                                   MP_ESTATE if none failed or not done */
MP_EXTERN int  mp_future_cancel(mp_future *f);  /* 0 if it had not started (result: MP_ECANCELLED)
                                                   or was cancelled already, else MP_ESTATE;
                                                   maps cannot be cancelled */
/* cb runs once f's task has ended: at once in the calling thread if it has,
 * in the thread whose mp_future_cancel finishes it (before cancel returns,
 * as Python's; in the process that created the pool), else on the pool's
 * result thread in the process that created the pool.
 * That thread finishes maps and feeds imap iterators, so there a map of
 * that pool, or a wait for one (result, wait, mp_futures_wait with one
 * among fs, mp_iter_next of an imap or of as_completed over one), returns
 * MP_ESTATE at once (a timeout of 0 still polls); an apply works.
 * In the process that made the pool, f is done (mp_future_wait, result,
 * done, mp_futures_wait, as_completed) once its callbacks have returned,
 * as Python's AsyncResult runs callback= before get() returns; but to a
 * thread running callbacks, once its task has ended (callbacks never wait
 * for callbacks). */
MP_EXTERN int  mp_future_on_done(mp_future *f, void (*cb)(mp_future *, void *), void *ctx);
enum { MP_FIRST_COMPLETED, MP_FIRST_EXCEPTION, MP_ALL_COMPLETED };
/* Count done when the mode is met or at the timeout (like Python's wait:
 * a timeout is not an error). FIRST_EXCEPTION: any ended with an error
 * other than MP_ECANCELLED. A future listed twice counts once (Python's
 * wait takes a set). */
MP_EXTERN int  mp_futures_wait(mp_future **fs, size_t n, int mode, double timeout);
/* Safe while pending (the task still runs) and from a callback of f itself:
 * f stays valid until all its callbacks have returned. */
MP_EXTERN void mp_future_free(mp_future *f);
/* as_completed: an iterator whose mp_iter_next gives the index in fs of each
 * future as it finishes, and its result (as mp_future_result: rc, out;
 * mp_iter_code its code), then MP_EEOF. A future listed twice is given
 * once, at its first index (Python's takes a set). The futures must
 * outlive it. */
MP_EXTERN int  mp_as_completed(mp_future **fs, size_t n, mp_iter **it);

/* ------------------------------------------------------------------ manager */

/* A manager serves named dicts, lists, queues and locks to any process that
 * has its address ("unix:/path", "unix:@abstract", "tcp:host:port") and
 * authkey. NULL opts or address: a fresh abstract unix address; no authkey:
 * 32 random bytes (mp_manager_authkey). Handles work in children under every
 * start method. Wire protocol: docs/manager-protocol.md.
 * Limits (its section 5): an object name is 1..255 bytes of UTF-8 and a dict
 * key at most 65536 bytes, else MP_EINVAL; a value (dict, list, queue item)
 * and a dict's whole key list (mp_dict_keys) at most 16 MiB, else
 * MP_ETOOBIG. mp_manager_connect gives up after 5 s without a finished
 * connection and handshake: MP_ETIMEDOUT. */
typedef struct mp_manager mp_manager;
typedef struct mp_dict mp_dict;
typedef struct mp_list mp_list;
typedef struct mp_mqueue mp_mqueue;
typedef struct { const char *address; const void *authkey; size_t authkey_len; } mp_manager_opts;
MP_EXTERN int  mp_manager_start(mp_manager **m, const mp_manager_opts *o);   /* starts a server process */
MP_EXTERN int  mp_manager_connect(mp_manager **m, const char *address, const void *authkey, size_t len);
MP_EXTERN const char *mp_manager_address(const mp_manager *m);
/* The authkey clients must present (random when the opts gave none). */
MP_EXTERN const void *mp_manager_authkey(const mp_manager *m, size_t *len);
MP_EXTERN pid_t mp_manager_pid(const mp_manager *m);   /* server pid if started here, else -1 */
MP_EXTERN int  mp_manager_shutdown(mp_manager *m);   /* MP_ESTATE unless started by this process */
/* Closes the connection; a manager started by this process is shut down
 * first (its server stops, as Python's manager does when it is collected). */
MP_EXTERN void mp_manager_free(mp_manager *m);

MP_EXTERN int mp_dict_open(mp_manager *m, const char *name, mp_dict **d);   /* created if missing */
MP_EXTERN int mp_dict_set(mp_dict *d, const char *key, const void *val, size_t len);
MP_EXTERN int mp_dict_get(mp_dict *d, const char *key, mp_buf *val);        /* MP_ENOTFOUND */
MP_EXTERN int mp_dict_del(mp_dict *d, const char *key);
MP_EXTERN int mp_dict_len(mp_dict *d, size_t *n);
/* Every key followed by its NUL, the last one too, nothing after: len is
 * the sum of (key length + 1), 0 for an empty dict. Oldest first, as a
 * Python dict: a replaced key keeps its place, one deleted and set again
 * goes last. */
MP_EXTERN int mp_dict_keys(mp_dict *d, mp_buf *keys);
MP_EXTERN int mp_dict_clear(mp_dict *d);
MP_EXTERN int mp_dict_set_i64(mp_dict *d, const char *key, int64_t v);
MP_EXTERN int mp_dict_get_i64(mp_dict *d, const char *key, int64_t *v);     /* MP_ENOTFOUND, MP_ETYPE */
MP_EXTERN int mp_dict_set_f64(mp_dict *d, const char *key, double v);
MP_EXTERN int mp_dict_get_f64(mp_dict *d, const char *key, double *v);     /* MP_ENOTFOUND, MP_ETYPE */
/* Adds delta on the server (a missing key counts as 0): no update is lost
 * between processes. result may be NULL; MP_ETYPE for a non-integer value,
 * MP_ERANGE on overflow. */
MP_EXTERN int mp_dict_incr(mp_dict *d, const char *key, int64_t delta, int64_t *result);
MP_EXTERN int mp_dict_cas(mp_dict *d, const char *key, const void *expect, size_t elen,
                          const void *val, size_t vlen);                     /* 0 or MP_ECONFLICT */
MP_EXTERN void mp_dict_free(mp_dict *d);

MP_EXTERN int mp_list_open(mp_manager *m, const char *name, mp_list **l);
MP_EXTERN int mp_list_append(mp_list *l, const void *val, size_t len);
MP_EXTERN int mp_list_get(mp_list *l, long i, mp_buf *val);                 /* negative i from the end; MP_ERANGE */
MP_EXTERN int mp_list_set(mp_list *l, long i, const void *val, size_t len);
MP_EXTERN int mp_list_pop(mp_list *l, long i, mp_buf *val);                 /* val NULL: dropped, not copied */
MP_EXTERN int mp_list_len(mp_list *l, size_t *n);
MP_EXTERN void mp_list_free(mp_list *l);

MP_EXTERN int mp_manager_queue(mp_manager *m, const char *name, size_t maxsize, mp_mqueue **q);
MP_EXTERN int mp_mqueue_put(mp_mqueue *q, const void *data, size_t len, double timeout);
MP_EXTERN int mp_mqueue_get(mp_mqueue *q, mp_buf *out, double timeout);
MP_EXTERN void mp_mqueue_free(mp_mqueue *q);
/* A plain Lock, taken with the same mp_lock_* calls and freed with
 * mp_lock_free (which releases it if this thread holds it). Its holder is
 * the thread that took it through this handle: -EDEADLK when that thread
 * acquires it again through the handle with MP_FOREVER; other threads and
 * processes wait. A holder whose connection closes (its process died)
 * hands the next acquirer MP_EOWNERDEAD, as a local lock's dead holder. */
MP_EXTERN int mp_manager_lock(mp_manager *m, const char *name, mp_lock **l);

#ifdef __cplusplus
}
#endif
#endif /* MPROC_H */
