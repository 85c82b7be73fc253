/* client.c - mp_manager and the proxies: dicts, lists, queues and locks.
 *
 * Handles live in the family arena, so a handle made before a child starts
 * works in it under every start method; they hold only what names the
 * object (address, key, object name). Connections are per process: a local
 * registry maps a handle to its socket, and the child side of fork closes
 * the inherited ones (a child must not keep its parent's lock connection
 * alive), so each process connects on first use, like Python's proxies.
 * Dicts and lists share the manager's connection; each queue and lock handle
 * has its own, so a blocked get or acquire never holds up the others and a
 * lock's owner is exactly one connection. Blocking calls wait on the server
 * in slices and re-ask until their own deadline, letting other threads in.
 * Every reply is read with a deadline (docs/manager-protocol.md section 9):
 * a call ends on time whatever the server or the network does, and a
 * connection that timed out is closed, its state being unknown.
 * A process sharing the server's arena sends its requests through a
 * shared-memory channel instead of the socket (channel.h), and a process of
 * the family that started the server does not send its dict calls at all:
 * it runs them on the dicts in the arena, under their lock (shdict.h).
 */
#include "conn_internal.h"
#include "manager/channel.h"
#include "manager/manager_internal.h"
#include "manager/protocol.h"
#include "manager/shdict.h"
#include "manager/wire.h"
#include "process_internal.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct mp_manager {
    uint32_t magic;
    pid_t creator;        /* frees the handle; others only drop their connection */
    pid_t server_pid;     /* > 0 when creator started the server */
    int watch_fd;         /* creator: the server watches its other end (no pidfds); -1 */
    bool shut;
    struct sock_file file;   /* creator, a unix address: its socket file, removed at
                              * shutdown only while the path still names it */
    struct shstore *dicts;   /* started here: its dicts, which the family uses directly */
    size_t keylen;
    char address[WIRE_MAX_ADDRESS];
    uint8_t key[WIRE_MAX_AUTHKEY];
    /* address, resolved once when the handle is made: a connection made
     * again later (after a call timed out, or in a child) must not wait on
     * the resolver, which has no deadline (a DNS server that does not
     * answer held every such call 10 s, a timeout of 0 too). */
    struct sockaddress to;
};

/* A proxy: an object's name, reached through a manager. */
struct proxy {
    uint32_t magic;
    pid_t creator;
    mp_manager *m;
    bool own;             /* queues and locks: a connection of their own */
    size_t nlen;
    char name[MSG_MAX_NAME + 1];
};

struct mp_dict { struct proxy p; };
struct mp_list { struct proxy p; };
struct mp_mqueue { struct proxy p; };
struct mlock { struct proxy p; };

/* ------------------------------------------------------------------ connections */

/* One process's connection for a handle (the manager, or an own-connection
 * proxy). */
struct mconn {
    pthread_mutex_t mu;
    _Atomic int waiting; /* threads waiting for mu */
    struct wire w;       /* fd -1 until connected */
    pid_t pid;           /* process the socket belongs to */
    struct channel *ch;  /* same-family fast path; the server's once attached */
    uint32_t seq;        /* last request posted on ch */
    /* A lock handle's: the thread (thread_token) that took the lock through
     * this connection, 0 while it does not hold it. The server knows only
     * the connection; which thread of ours took it is known only here.
     * Written under mu; read without it by the thread it names. */
    _Atomic uint64_t holder;
    mp_buf req;
    const void *handle;
    struct mconn *next;
};

static struct {
    pthread_once_t once;
    pthread_mutex_t mu;
    struct mconn *head;
    _Atomic pid_t pid;       /* getpid() is a system call: cached, reset on fork */
} local = { PTHREAD_ONCE_INIT, PTHREAD_MUTEX_INITIALIZER, NULL, 0 };

static void mconn_attach(struct mconn *c, const mp_deadline *d, const mp_deadline *alloc_by);

/* Fork hooks (fork.c): local.mu is held across the fork. */
static void local_prepare(void) { pthread_mutex_lock(&local.mu); }
static void local_parent(void) { pthread_mutex_unlock(&local.mu); }

/* The parent's sockets are not ours: close them without a word to the
 * server (the parent's connections stay up), and reset the mutexes another
 * thread may have held at the fork. */
static void local_child(void)
{
    local.pid = getpid();
    for (struct mconn *c = local.head; c; c = c->next) {
        pthread_mutex_init(&c->mu, NULL);
        atomic_store(&c->waiting, 0);      /* the parent's other threads */
        if (c->w.fd >= 0)
            close(c->w.fd);
        c->w.fd = -1;
        c->w.start = c->w.len = 0;
        c->pid = 0;
        c->ch = NULL;        /* the parent's connection's: its server frees it */
        atomic_store(&c->holder, 0);   /* the parent's threads held its locks */
    }
    pthread_mutex_unlock(&local.mu);
}

static void local_init(void)
{
    local.pid = getpid();
    fork_hook_set(FORK_MANAGER_CLIENT, local_prepare, local_parent, local_child);
}

/* Whether the server will never let go of ch: it never took it (a peer
 * that said yes to ATTACH without sharing our memory), or its process
 * ended (SIGKILL: its threads never ran their goodbyes). A process not
 * seen to have ended (its /proc unreadable, say) is taken to live on. */
static bool server_let_go_never(const struct channel *ch)
{
    if (atomic_load(&ch->magic) == CHANNEL_MAGIC)
        return true;
    uint64_t start;
    int alive = ch->server_pid > 0 ? proc_task_start(ch->server_pid, &start) : -1;
    return alive == 0 || (alive == 1 && start != ch->server_start);
}

/* Lets go of the channel: tells the server thread to leave, and frees the
 * channel if that thread has already gone, or will never let go of it (a
 * server killed after a channel was set up leaked its 32 KiB each time). */
static void mconn_leave_channel(struct mconn *c)
{
    struct channel *ch = c->ch;
    if (!ch)
        return;
    ch->req_len = CHANNEL_BYE;
    channel_post(&ch->req_seq, ++c->seq, &ch->server_sleeping);
    /* Asked while our reference keeps it ours: once we let go, a server
     * thread may free it, and the memory may hold another's channel. */
    if (server_let_go_never(ch) || atomic_fetch_sub(&ch->refs, 1) == 1)
        arena_free(ch);
    c->ch = NULL;
}

static void mconn_drop(struct mconn *c)
{
    mconn_leave_channel(c);
    wire_close(&c->w);
    c->w.spin_ns = MANAGER_SPIN_NS;
    c->pid = 0;
    atomic_store(&c->holder, 0);     /* the server frees a closed connection's locks */
}

/* Locks the registry and finds handle's entry: the link pointing at it, or
 * at the NULL ending the list. */
static struct mconn **local_find(const void *handle)
{
    pthread_once(&local.once, local_init);
    pthread_mutex_lock(&local.mu);
    struct mconn **link = &local.head;
    while (*link && (*link)->handle != handle)
        link = &(*link)->next;
    return link;
}

/* This process's connection for handle, created (unconnected) on first use. */
static struct mconn *mconn_of(const void *handle)
{
    struct mconn **link = local_find(handle);
    struct mconn *c = *link;
    if (c && link != &local.head) {      /* most recently used first */
        *link = c->next;
        c->next = local.head;
        local.head = c;
    } else if (!c && (c = calloc(1, sizeof *c))) {
        pthread_mutex_init(&c->mu, NULL);
        wire_init(&c->w, -1, MANAGER_SPIN_NS);
        c->handle = handle;
        c->next = local.head;
        local.head = c;
    }
    pthread_mutex_unlock(&local.mu);
    return c;
}

/* Closes and forgets this process's connection for handle, if any. */
static void mconn_forget(const void *handle)
{
    struct mconn **link = local_find(handle);
    struct mconn *c = *link;
    if (c)
        *link = c->next;
    pthread_mutex_unlock(&local.mu);
    if (c) {
        mconn_drop(c);
        mp_buf_free(&c->req);
        pthread_mutex_destroy(&c->mu);
        free(c);
    }
}

/* The earlier of the connect timeout and the call's deadline (NULL: none). */
static mp_deadline connect_deadline(const mp_deadline *call)
{
    mp_deadline d = deadline_in(MANAGER_CONNECT_TIMEOUT_S);
    if (call && !call->forever && deadline_left(call) < deadline_left(&d))
        d = *call;
    return d;
}

static int mconn_open(struct mconn *c, const mp_manager *m, const mp_deadline *call)
{
    mp_deadline d = connect_deadline(call);
    int rc;
    /* A server that hangs up in the handshake without its verdict (it
     * drops the oldest handshakes to make room in a flood) has not
     * refused the key: connect again, after a short nap, by d. */
    for (useconds_t nap = 1000;; nap = nap < 64000 ? 2 * nap : nap) {
        int fd;
        if ((rc = wire_connect_to(&m->to, &fd, &d)) < 0)
            return rc;
        wire_close(&c->w);
        wire_init(&c->w, fd, MANAGER_SPIN_NS);
        rc = wire_auth_client(&c->w, m->key, m->keylen, &d);
        if (rc == 0)
            break;
        mconn_drop(c);
        if (rc != MP_EEOF || deadline_left(&d) * 1e6 < nap)
            return rc == MP_EAUTH || rc == MP_ETIMEDOUT ? rc : MP_EBROKEN;
        usleep(nap);
    }
    c->pid = local.pid;
    /* A call with a deadline of its own leaves its time to its request:
     * the channel waits for the arena's lock only LOCK_GRACE_S. */
    static const mp_deadline passed = { { 0, 0 }, false };
    mconn_attach(c, &d, call && !call->forever ? &passed : &d);
    return 0;
}

/* The connection this thread holds, from mconn_begin to mconn_end: none
 * after a call that timed out waiting for it. */
static _Thread_local struct mconn *held;

/* Takes c's lock, by *by if given (another thread's call may hold it for
 * a slice of a blocking call, or until a stopped server's reply is due):
 * 0, or MP_ETIMEDOUT without it. */
static int mconn_lock(struct mconn *c, const mp_deadline *by)
{
    atomic_fetch_add(&c->waiting, 1);
    int e = !by || by->forever ? pthread_mutex_lock(&c->mu) : mutex_clocklock(&c->mu, &by->at);
    atomic_fetch_sub(&c->waiting, 1);
    if (e != 0)
        return MP_ETIMEDOUT;
    held = c;
    return 0;
}

/* Locks c, unless this thread holds it already (proxy_blocking takes it
 * first), and makes sure it is connected in this process, by the call's
 * deadline (NULL: the connect timeout). */
static int mconn_begin(struct mconn *c, const mp_manager *m, const mp_deadline *call)
{
    if (held != c)
        mconn_lock(c, NULL);
    if (c->w.fd >= 0 && c->pid == local.pid)
        return 0;
    if (c->w.fd >= 0) {    /* forked without the atfork hook (raw clone): */
        c->ch = NULL;      /* the parent's channel and socket, not ours */
        mconn_drop(c);
    }
    /* The key was good when the manager connected: any failure now means
     * the server is gone, but for this process's own shortage (out of
     * descriptors at its limit said the server was gone). */
    int rc = mconn_open(c, m, call);
    if (rc == -EMFILE || rc == -ENFILE || rc == MP_ENOMEM || rc == -ENOBUFS)
        return mp_fail(rc, NULL, "cannot connect to the manager at \"%s\": %s", m->address,
                       mp_strerror(rc));
    return rc == MP_ETIMEDOUT && call && deadline_passed(call) ? rc : rc < 0 ? MP_EBROKEN : 0;
}

static void mconn_end(struct mconn *c)
{
    if (held != c)
        return;
    held = NULL;
    pthread_mutex_unlock(&c->mu);
}

/* Between the slices of a blocking call: the mutex is not fair, and the
 * caller would take it straight back, so threads waiting for it get their
 * turn first (a few ms at most). */
static void mconn_give_way(struct mconn *c)
{
    for (int i = 0; i < 200 && atomic_load(&c->waiting) > 0; i++)
        usleep(10);
}

/* One request and its reply through the shared channel (channel.h), the
 * reply by d. */
static int mconn_channel_call(struct mconn *c, const uint8_t **data, size_t *len,
                              const mp_deadline *d)
{
    struct channel *ch = c->ch;
    ch->req_len = channel_put(ch, ch->req_inline, c->req.data, c->req.len);
    bool big = ch->req_len == CHANNEL_VIA_SOCKET;
    uint32_t seq = ++c->seq;
    /* posted before a big send, or both sides would wait on each other */
    channel_post(&ch->req_seq, seq, &ch->server_sleeping);
    int rc = big ? wire_send(&c->w, c->req.data, c->req.len, d) : 0;
    if (rc == 0)
        rc = channel_wait(&ch->resp_seq, seq - 1, &ch->client_sleeping, MANAGER_SPIN_NS,
                          MANAGER_CLIENT_SLICE, c->w.fd, d);
    if (rc < 0)
        return rc;
    if (ch->resp_len == CHANNEL_VIA_SOCKET)
        return wire_recv(&c->w, data, len, WIRE_MAX_FRAME, d);
    *data = channel_msg(ch, ch->resp_inline, ch->resp_len);
    if (!*data)
        return MP_EPROTO;
    *len = ch->resp_len;
    return 0;
}

/* Sends c->req and decodes the reply, which must come by d, into rep; the
 * reply's status, MP_ETIMEDOUT when no reply came in time, or MP_EBROKEN.
 * After either error the connection is in an unknown state (a request may
 * be half sent, a reply may still come), so it is dropped; the next call
 * connects afresh. */
static int mconn_roundtrip(struct mconn *c, struct mmsg *rep, const mp_deadline *d)
{
    const uint8_t *data;
    size_t len;
    int rc;
    if (c->ch) {
        rc = mconn_channel_call(c, &data, &len, d);
    } else {
        rc = wire_send(&c->w, c->req.data, c->req.len, d);
        if (rc == 0)
            rc = wire_recv(&c->w, &data, &len, WIRE_MAX_FRAME, d);
    }
    if (rc == 0)
        rc = msg_decode(data, len, rep);
    /* A status is 0 or an mproc code (all above -4096): anything else is a
     * broken server, not a value to cut to an int (INT64_MIN would read 0). */
    if (rc == 0 && (rep->v[0].type != MV_INT || rep->v[0].i > 0 || rep->v[0].i < -4095))
        rc = MP_EPROTO;
    if (rc < 0) {
        mconn_drop(c);
        return rc == MP_ETIMEDOUT || rc == MP_EPROTO ? rc : MP_EBROKEN;
    }
    return (int)rep->v[0].i;
}

/* Offers the server a channel in our arena; it takes it only if it shares
 * that arena (same family). Either way the connection works, so a channel
 * the arena does not give by alloc_by (its lock held by a stopped process)
 * is done without. */
static void mconn_attach(struct mconn *c, const mp_deadline *d, const mp_deadline *alloc_by)
{
    if (!arena_base())
        return;
    struct channel *ch = arena_alloc_until(sizeof *ch, alloc_by);
    uint64_t nonce;
    if (!ch || getrandom(&nonce, sizeof nonce, 0) != sizeof nonce) {
        arena_free(ch);
        return;
    }
    ch->nonce = nonce & INT64_MAX;
    atomic_store(&ch->refs, 2);
    atomic_store(&ch->magic, CHANNEL_MAGIC);
    struct menc e;
    enc_begin(&e, &c->req, 3);
    enc_int(&e, OP_ATTACH);
    enc_int(&e, (int64_t)(uintptr_t)ch);
    enc_int(&e, (int64_t)ch->nonce);
    struct mmsg rep;
    int rc = e.rc < 0 ? e.rc : mconn_roundtrip(c, &rep, d);
    if (rc == 0) {
        c->ch = ch;
        c->seq = 0;
    } else if (rc != MP_EBROKEN && rc != MP_ETIMEDOUT) {
        arena_free(ch);      /* refused: never the server's */
    }                        /* else: unknown whether it took it; leave it be */
}

static struct mconn *proxy_conn(const struct proxy *p)
{
    return mconn_of(p->own ? (const void *)p : (const void *)p->m);
}

/* When a call's reply is due. A call with a deadline of its own (own) gets
 * MP_ETIMEDOUT when the reply is late; one without gets MP_EBROKEN: the
 * server did not answer within MANAGER_REPLY_TIMEOUT_S and counts as gone. */
struct due {
    mp_deadline reply;
    bool own;
};

static struct due due_default(void)
{
    return (struct due){ deadline_in(MANAGER_REPLY_TIMEOUT_S), false };
}

/* This thread, as a lock's holder: numbered from 1 in this process and
 * never reused, as a tid or a pthread_t is once its thread ends. */
static uint64_t thread_token(void)
{
    static _Atomic uint64_t last;
    static _Thread_local uint64_t mine;
    if (mine == 0)
        mine = atomic_fetch_add(&last, 1) + 1;
    return mine;
}

/* Notes which thread holds a lock through c after a lock call's reply
 * (c locked): an acquire that got it, a release (or one refused because
 * the connection does not hold it). */
static void lock_note_holder(struct mconn *c, int op, int rc)
{
    if (op == OP_LOCK_ACQUIRE && (rc == 0 || rc == MP_EOWNERDEAD))
        atomic_store(&c->holder, thread_token());
    else if (op == OP_LOCK_RELEASE && (rc == 0 || rc == MP_EINVAL))
        atomic_store(&c->holder, 0);
}

/* One call: the request is the op, the proxy's name, then args. Returns
 * with c locked (the reply points into its buffer): call mconn_end(c). */
/* MP_EBROKEN for a call on m, with what it means. */
static int manager_gone(const mp_manager *m)
{
    return mp_fail(MP_EBROKEN, NULL, "the manager at \"%s\" is gone: its server was shut "
                   "down, or died", m->address);
}

static int proxy_call(struct proxy *p, struct mconn *c, int op, const struct mval *args, size_t n,
                      struct mmsg *rep, const struct due *due)
{
    struct due dflt;
    if (!due) {
        dflt = due_default();
        due = &dflt;
    }
    int rc = mconn_begin(c, p->m, &due->reply);
    if (rc == MP_EBROKEN || (rc == MP_ETIMEDOUT && !due->own))
        return manager_gone(p->m);
    if (rc < 0)
        return rc;
    struct menc e;
    enc_begin(&e, &c->req, 2 + n);
    enc_int(&e, op);
    enc_text(&e, p->name, p->nlen);
    for (size_t i = 0; i < n; i++)
        enc_val(&e, &args[i]);
    rc = e.rc < 0 ? e.rc : mconn_roundtrip(c, rep, &due->reply);
    if (rc == MP_ETIMEDOUT && deadline_passed(&due->reply))   /* not the server's status */
        rc = due->own ? MP_ETIMEDOUT : MP_EBROKEN;
    lock_note_holder(c, op, rc);
    if (rc == MP_EPROTO && c->w.fd < 0)      /* the reply itself (a status is never this) */
        return mp_fail(rc, NULL, "the manager at \"%s\" sent a malformed reply (a broken "
                       "server, or not an mproc manager); the connection was closed",
                       p->m->address);
    return rc == MP_EBROKEN ? manager_gone(p->m) : rc;
}

/* A call whose reply carries nothing the caller needs. */
static int proxy_simple(struct proxy *p, int op, const struct mval *args, size_t n,
                        const struct due *due)
{
    struct mconn *c = proxy_conn(p);
    if (!c)
        return MP_ENOMEM;
    struct mmsg rep;
    int rc = proxy_call(p, c, op, args, n, &rep, due);
    mconn_end(c);
    return rc;
}

/* A call whose reply value is an int (lengths, incr). */
static int proxy_int(struct proxy *p, int op, const struct mval *args, size_t n, int64_t *out)
{
    struct mconn *c = proxy_conn(p);
    if (!c)
        return MP_ENOMEM;
    struct mmsg rep;
    int rc = proxy_call(p, c, op, args, n, &rep, NULL);
    if (rc == 0 && (rep.n != 2 || rep.v[1].type != MV_INT || rep.v[1].i < 0))
        rc = MP_EPROTO;             /* a count (its one use): never negative */
    if (rc == 0 && out)
        *out = rep.v[1].i;
    mconn_end(c);
    return rc;
}

/* A call whose reply value is bytes, copied into out (NULL: dropped). */
static int proxy_bytes(struct proxy *p, int op, const struct mval *args, size_t n, mp_buf *out,
                       const struct due *due)
{
    struct mconn *c = proxy_conn(p);
    if (!c)
        return MP_ENOMEM;
    struct mmsg rep;
    int rc = proxy_call(p, c, op, args, n, &rep, due);
    if (rc == 0 && rep.n != 2)
        rc = MP_EPROTO;
    if (rc == 0 && rep.v[1].type != MV_BYTES)
        rc = MP_ETYPE;
    if (rc == 0 && out) {
        out->len = 0;
        rc = mp_buf_append(out, rep.v[1].p, rep.v[1].len);
    }
    mconn_end(c);
    return rc;
}

/* A blocking call: asks the server in slices until the deadline, so the
 * connection is free for other threads between slices. `expire` is the
 * code the server gives when a slice ends empty-handed. The server is asked
 * to wait for all the time left (it answers at least once a slice), and
 * the reply is awaited until MANAGER_REPLY_MARGIN_MS after the deadline: a
 * stopped or unreachable server costs the caller its timeout plus the
 * margin, and MP_ETIMEDOUT. (Asked to answer the margin before the
 * deadline, a server answered at once for the last 50 ms, and the call
 * asked again and again: half a CPU on each side for a get(0.1) in a loop.)
 * With no deadline (MP_FOREVER) each slice's reply is due within
 * MANAGER_REPLY_TIMEOUT_S, else MP_EBROKEN. */
static int proxy_blocking(struct proxy *p, int op, struct mval *args, size_t n, size_t targ,
                          double timeout, int expire, mp_buf *out)
{
    mp_deadline d = deadline_in(timeout);
    const double margin = MANAGER_REPLY_MARGIN_MS / 1000.0;
    for (;;) {
        struct mconn *c = proxy_conn(p);
        if (!c)
            return MP_ENOMEM;
        /* Another thread's call on this handle may hold the connection for
         * a slice of its own, or until a stopped server's reply is due:
         * wait for it until the deadline (and its margin) at most, as the
         * queue in the arena waits for its lock, and only then see how
         * long the server may take. */
        mp_deadline by = d.forever ? d : deadline_in(deadline_left(&d) + margin);
        if (mconn_lock(c, &by) != 0)
            return expire;
        struct due due = due_default();
        double wait = -1.0;
        if (!d.forever) {
            double left = deadline_left(&d);
            wait = left;
            due = (struct due){ deadline_in(left + margin), true };
        }
        args[targ] = (struct mval){ .type = MV_FLOAT, .f = wait };
        int rc = out ? proxy_bytes(p, op, args, n, out, &due) : proxy_simple(p, op, args, n, &due);
        mconn_end(c);                /* given back already, unless the call failed before */
        if (rc != expire || timeout == 0 || deadline_passed(&d))
            return rc;
        mconn_give_way(c);
    }
}

/* ------------------------------------------------------------------ arguments */

static struct mval text_arg(const char *s) { return (struct mval){ .type = MV_TEXT, .p = (const uint8_t *)s, .len = strlen(s) }; }
static struct mval bytes_arg(const void *p, size_t len) { return (struct mval){ .type = MV_BYTES, .p = p, .len = len }; }
static struct mval int_arg(int64_t i) { return (struct mval){ .type = MV_INT, .i = i }; }

/* The argument checks: 0, or the code with why it failed recorded; the
 * public call that returns the code puts its name in front (mp_fail_code). */
static int key_check(const char *key)
{
    if (key && strlen(key) <= MSG_MAX_KEY)
        return 0;
    return mp_fail(MP_EINVAL, NULL, key ? "key is longer than %d bytes" : "key is NULL", MSG_MAX_KEY);
}

/* what..what+len, the bytes of a value: len_name is what the call calls len. */
static int bytes_check(const char *what, const char *len_name, const void *p, size_t len)
{
    if (len > MSG_MAX_VALUE)
        return mp_fail(MP_ETOOBIG, NULL, "%s %zu is more than a manager stores in one value "
                       "(%d bytes)", len_name, len, MSG_MAX_VALUE);
    if (!p && len)
        return mp_fail(MP_EINVAL, NULL, "%s is NULL but %s is %zu", what, len_name, len);
    return mem_range_check(NULL, what, p, len);
}

/* what: the argument's name and what it is for. */
static int out_check(const void *out, const char *what)
{
    return out ? 0 : mp_fail(MP_EINVAL, NULL, "%s is NULL", what);
}

static int timeout_check(double timeout)
{
    return timeout_valid(timeout) ? 0 : mp_fail_timeout(NULL, timeout);
}

/* A freed manager makes its proxies unusable too (arena memory stays
 * mapped, so the check itself is safe). */
static int proxy_check(const struct proxy *p, uint32_t magic)
{
    if (p && p->magic == magic && p->m && p->m->magic == MAGIC_MANAGER)
        return 0;
    return mp_fail(MP_EINVAL, NULL, !p ? "the handle is NULL"
                   : p->magic != magic ? "the handle is freed, or not of this kind"
                                       : "the handle's manager was freed");
}

/* ------------------------------------------------------------------ managers */

static bool manager_ok(const mp_manager *m)
{
    if (m && m->magic == MAGIC_MANAGER)
        return true;
    mp_fail(MP_EINVAL, NULL, m ? "the manager handle is freed or not a manager"
                               : "the manager handle is NULL");
    return false;
}

/* The callers have checked key, keylen and the address's length. */
static int manager_alloc(mp_manager **out, const char *address, const void *key, size_t keylen)
{
    mp_manager *m = arena_alloc(sizeof *m);
    int why = m ? 0 : arena_fd();       /* no arena: why, as -EMFILE */
    if (!m)
        return why < 0 ? why : MP_ENOMEM;
    m->magic = MAGIC_MANAGER;
    m->creator = getpid();
    m->watch_fd = -1;
    snprintf(m->address, sizeof m->address, "%s", address);
    if (keylen)
        memcpy(m->key, key, keylen);
    m->keylen = keylen;
    *out = m;
    return 0;
}

/* Resolves m->address into m->to, once, before the handle is shared. */
static int manager_resolve(mp_manager *m)
{
    return wire_resolve(m->address, &m->to);
}

static void manager_release(mp_manager *m)
{
    mconn_forget(m);
    shstore_destroy(m->dicts);
    m->magic = MAGIC_FREED;
    arena_free(m);
}

/* Connects this process's connection for m: 0, MP_EAUTH, or the socket's error. */
static int manager_connect_now(mp_manager *m)
{
    struct mconn *c = mconn_of(m);
    if (!c)
        return MP_ENOMEM;
    pthread_mutex_lock(&c->mu);
    int rc = mconn_open(c, m, NULL);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int mp_manager_connect(mp_manager **out, const char *address, const void *authkey, size_t len)
{
    if (!out || !address)
        return mp_fail(MP_EINVAL, __func__, "%s is NULL", out ? "address" : "m (where the manager goes)");
    if (!authkey && len)
        return mp_fail(MP_EINVAL, __func__, "authkey is NULL but len is %zu", len);
    if (len > WIRE_MAX_AUTHKEY)
        return mp_fail(MP_EINVAL, __func__, "an authkey of %zu bytes is longer than %d", len,
                       WIRE_MAX_AUTHKEY);
    if (strlen(address) >= WIRE_MAX_ADDRESS)
        return mp_fail(MP_EINVAL, __func__, "the address is longer than %d bytes",
                       WIRE_MAX_ADDRESS - 1);
    mp_manager *m;
    int rc = manager_alloc(&m, address, authkey, len);
    if (rc < 0)
        return mp_fail_code(rc, __func__);
    if ((rc = manager_resolve(m)) < 0) {
        manager_release(m);
        return mp_fail_code(rc, __func__);  /* the address, or the resolver: its parser said */
    }
    if ((rc = manager_connect_now(m)) < 0) {
        manager_release(m);
        if (rc == MP_ETIMEDOUT)
            return mp_fail(rc, __func__, "the server at \"%s\" did not complete the connection "
                           "and handshake within %d s (stopped, overloaded, or not a manager)",
                           address, MANAGER_CONNECT_TIMEOUT_S);
        if (rc == MP_EAUTH)
            return mp_fail(rc, __func__, "the handshake with the server at \"%s\" failed, as "
                           "%s (authkey of %zu bytes: pass the key the manager was started with, "
                           "mp_manager_authkey of its creator)", address, auth_why(), len);
        if (rc == MP_EINVAL)                /* the address: its parser said why */
            return mp_fail_code(rc, __func__);
        return mp_fail(rc, __func__, "cannot connect to the manager at \"%s\": %s%s", address,
                       mp_strerror(rc), rc == -ECONNREFUSED || rc == -ENOENT ?
                       "; is its server started, and at this address?" : "");
    }
    *out = m;
    return 0;
}

/* Closes every descriptor from 3 up but the n in keep (sorted here). */
static void close_all_but(int *keep, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
            int t = keep[j];
            keep[j] = keep[j - 1];
            keep[j - 1] = t;
        }
    unsigned from = 3;
    for (int i = 0; i < n; i++) {
        if (keep[i] < (int)from)
            continue;
        if (keep[i] > (int)from)
            syscall(SYS_close_range, from, (unsigned)keep[i] - 1, 0u);
        from = (unsigned)keep[i] + 1;
    }
    syscall(SYS_close_range, from, ~0u, 0u);
}

/* The child side of mp_manager_start: keep only the listener, the parent
 * watch and the arena (the dicts of clients that come by address are
 * stored in it, and big blocks are reserved through its descriptor), serve
 * until shut down or until the parent process exits, then exit. The watch
 * is the parent's pidfd, or without pidfds the read end of a pipe whose
 * write end the parent holds (its other children inherit it too, so then
 * the server may outlive the parent until they end; PR_SET_PDEATHSIG is
 * the backstop, not the rule: it fires when the forking *thread* ends). */
/* Exit statuses of a server that could not serve: the errno, or this. */
#define SERVER_STATUS_OTHER 126
#define SERVER_START_GRACE 1.0      /* seconds a failed start waits for its server's status */

static void manager_child(int lfd, int watch, pid_t parent, const mp_manager *m)
{
    int keep[3], n = 0;
    keep[n++] = lfd;
    if (watch >= 0)
        keep[n++] = watch;
    if (arena_fd() >= 0)
        keep[n++] = arena_fd();
    close_all_but(keep, n);                  /* no other manager's sockets */
    proc_set_name("mproc-manager");
    int parent_fd = proc_pidfd_open(parent);
    if (parent_fd < 0 && watch < 0)
        proc_set_pdeathsig(SIGKILL);
    if (getppid() != parent) {              /* it died as it started us: no one to serve */
        struct sock_file f;
        sock_file_of(lfd, &f);
        sock_file_remove(&f);
        _exit(0);
    }
    struct manager_server_opts so = { .listen_fd = lfd, .authkey = m->key, .authkey_len = m->keylen,
                                      .dicts = m->dicts,
                                      .stop_fd = parent_fd >= 0 ? parent_fd : watch };
    int rc = manager_serve(&so);
    _exit(rc == 0 ? 0 : rc < 0 && rc > -SERVER_STATUS_OTHER ? -rc : SERVER_STATUS_OTHER);
}

/* The server's own failure to start, told by its exit status (manager_child):
 * -errno, MP_EBROKEN for another, or 0 if it has not exited within timeout
 * (then it is still ours to shut down). Reaps it if it has. */
static int server_start_failure(mp_manager *m, double timeout)
{
    mp_deadline d = deadline_in(timeout);
    siginfo_t si;
    int r;
    while ((r = proc_wait_pid(m->server_pid, &si, true)) == 0 && !deadline_passed(&d))
        poll(NULL, 0, 1);
    if (r != 1)
        return 0;
    m->server_pid = 0;              /* reaped: nothing to shut down */
    if (si.si_code == CLD_EXITED && si.si_status > 0 && si.si_status < SERVER_STATUS_OTHER)
        return -si.si_status;
    return MP_EBROKEN;
}

/* Forks the server through the process layer's fork lock (no other child
 * of the library inherits the listener or the watch pipe). */
static int manager_fork(mp_manager *m, int lfd)
{
    int pipefd[2] = { -1, -1 };
    pid_t parent = getpid();
    process_fork_lock();
    if (!proc_have_pidfd() && pipe2(pipefd, O_CLOEXEC) < 0) {
        process_fork_unlock();
        return errno_to_mp(errno);
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        manager_child(lfd, pipefd[0], parent, m);
    int err = errno;
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    process_fork_unlock();
    if (pid < 0) {
        if (pipefd[1] >= 0)
            close(pipefd[1]);
        return errno_to_mp(err);
    }
    m->server_pid = pid;
    m->watch_fd = pipefd[1];
    return 0;
}

static int manager_default_address(char *buf, size_t cap)
{
    uint64_t r;
    if (getrandom(&r, sizeof r, 0) != sizeof r)
        return mp_fail(errno ? -errno : -EAGAIN, NULL, "no random address: getrandom failed");
    snprintf(buf, cap, "unix:@mproc-manager-%d-%016llx", (int)getpid(), (unsigned long long)r);
    return 0;
}

int mp_manager_start(mp_manager **out, const mp_manager_opts *o)
{
    mp_manager_opts none = { 0 };
    if (!o)
        o = &none;
    if (!out)
        return mp_fail(MP_EINVAL, __func__, "m (where the manager goes) is NULL");
    if (o->address && strlen(o->address) >= WIRE_MAX_ADDRESS)
        return mp_fail(MP_EINVAL, __func__, "opts.address is longer than %d bytes",
                       WIRE_MAX_ADDRESS - 1);
    uint8_t random_key[MANAGER_KEY_LEN];
    const void *key = o->authkey;
    size_t keylen = o->authkey_len;
    if (key && keylen == 0)            /* an empty key would let anyone in */
        return mp_fail(MP_EINVAL, __func__, "opts.authkey_len is 0: an empty authkey would let "
                       "anyone in; give a key, or NULL for a random one");
    if (key && keylen > WIRE_MAX_AUTHKEY)
        return mp_fail(MP_EINVAL, __func__, "opts.authkey_len %zu is more than %d", keylen,
                       WIRE_MAX_AUTHKEY);
    if (!key) {          /* like Python: a manager always has an authkey */
        if (keylen)
            return mp_fail(MP_EINVAL, __func__, "opts.authkey is NULL but opts.authkey_len is "
                           "%zu", keylen);
        if (getrandom(random_key, sizeof random_key, 0) != sizeof random_key)
            return mp_fail(errno ? -errno : -EAGAIN, __func__, "no random authkey: getrandom "
                           "failed");
        key = random_key;
        keylen = sizeof random_key;
    }
    char wanted[WIRE_MAX_ADDRESS], actual[WIRE_MAX_ADDRESS];
    int rc = 0;
    if (o->address)
        snprintf(wanted, sizeof wanted, "%s", o->address);
    else
        rc = manager_default_address(wanted, sizeof wanted);
    int lfd;
    if (rc < 0)
        return mp_fail_code(rc, __func__);
    if ((rc = wire_listen(wanted, &lfd, actual, sizeof actual)) == MP_EINVAL)
        return mp_fail_code(rc, __func__);
    if (rc < 0)
        return mp_fail(rc, __func__, "cannot listen on \"%s\": %s%s", wanted, mp_strerror(rc),
                       rc == -EADDRINUSE ? " (another server has it, or a file was left there "
                       "by one that was killed: remove it)" : "");
    struct sock_file file;
    sock_file_of(lfd, &file);           /* none (empty): tcp, an abstract name */
    mp_manager *m = NULL;
    if ((rc = manager_alloc(&m, actual, key, keylen)) < 0 || (rc = manager_resolve(m)) < 0) {
        if (m)
            manager_release(m);
        close(lfd);
        sock_file_remove(&file);
        return mp_fail_code(rc, __func__);
    }
    m->file = file;
    m->dicts = shstore_new();       /* none (no room): dicts go through the server */
    rc = manager_fork(m, lfd);
    close(lfd);
    if (rc < 0) {
        sock_file_remove(&file);
        manager_release(m);
        return mp_fail_code(rc, __func__);
    }
    if ((rc = manager_connect_now(m)) < 0) {   /* our own key: the server failed */
        int why = server_start_failure(m, SERVER_START_GRACE);
        if (m->server_pid > 0)
            mp_manager_shutdown(m);
        else
            sock_file_remove(&file);
        manager_release(m);
        if (why && why != MP_EBROKEN)
            return mp_fail(why, __func__, "the manager's server could not start: %s",
                           mp_strerror(why));
        if (why)
            return mp_fail(why, __func__, "the manager's server died as it started");
        return mp_fail(rc > -4096 ? rc : MP_EBROKEN, __func__, "the manager's server started, "
                       "but its starter could not connect to it: %s", mp_strerror(rc));
    }
    *out = m;
    return 0;
}

const char *mp_manager_address(const mp_manager *m)
{
    if (manager_ok(m))
        return m->address;
    mp_fail_code(MP_EINVAL, __func__);
    return NULL;
}

const void *mp_manager_authkey(const mp_manager *m, size_t *len)
{
    if (!manager_ok(m)) {
        mp_fail_code(MP_EINVAL, __func__);
        return NULL;
    }
    if (len)
        *len = m->keylen;
    return m->key;
}

struct shstore *manager_dicts(const mp_manager *m)
{
    return manager_ok(m) ? m->dicts : NULL;
}

pid_t mp_manager_pid(const mp_manager *m)
{
    return manager_ok(m) && m->server_pid > 0 ? m->server_pid : -1;
}

/* Waits for our server child to exit; SIGKILL when it will not. Without
 * pidfds it polls for the end. */
static void manager_reap(pid_t pid, double timeout)
{
    mp_deadline d = deadline_in(timeout);
    int pfd = proc_pidfd_open(pid);
    siginfo_t si;
    int r = 0;
    if (pfd >= 0) {
        r = proc_poll_fd(pfd, &d) == 1 ? 0 : -1;
    } else {
        while ((r = proc_wait_pid(pid, &si, true)) == 0 && !deadline_passed(&d))
            poll(NULL, 0, 1);
        if (r != 0)
            return;              /* reaped (or not ours): the pid may be someone else's now */
        r = -1;
    }
    if (r < 0)
        proc_signal(pfd, pid, SIGKILL);
    if (pfd >= 0)
        close(pfd);
    proc_wait_pid(pid, &si, false);
}

int mp_manager_shutdown(mp_manager *m)
{
    if (!manager_ok(m))
        return mp_fail_code(MP_EINVAL, __func__);
    if (m->server_pid <= 0 || m->creator != getpid())
        return mp_fail_code(MP_ESTATE, __func__);       /* only the process that started the server stops it */
    if (m->shut)
        return 0;
    struct mconn *c = mconn_of(m);
    mp_deadline d = deadline_in(MANAGER_CONNECT_TIMEOUT_S);
    if (c && mconn_begin(c, m, &d) == 0) {
        struct menc e;
        struct mmsg rep;
        enc_begin(&e, &c->req, 1);
        enc_int(&e, OP_SHUTDOWN);
        if (e.rc == 0)
            mconn_roundtrip(c, &rep, &d);
    }
    if (c) {
        mconn_drop(c);
        mconn_end(c);
    }
    manager_reap(m->server_pid, 5.0);
    shstore_close(m->dicts);         /* what a killed server left */
    if (m->watch_fd >= 0)
        close(m->watch_fd);
    m->watch_fd = -1;
    sock_file_remove(&m->file);         /* not a file someone bound there since */
    m->shut = true;
    return 0;
}

void mp_manager_free(mp_manager *m)
{
    if (!manager_ok(m))
        return;
    if (m->creator != getpid()) {
        mconn_forget(m);      /* an inherited handle: the creator owns it */
        return;
    }
    if (m->server_pid > 0 && !m->shut)
        mp_manager_shutdown(m);
    manager_release(m);
}

/* ------------------------------------------------------------------ proxies */

static int dict_call(struct proxy *p, int op, const struct mval *args, size_t n, enum mtype want,
                     mp_buf *out, struct mval *num);

/* Opens a proxy: checks arguments, sends the kind's OPEN op (which creates
 * the object when missing). own: the proxy gets its own connection. */
static int proxy_open(mp_manager *m, const char *name, uint32_t magic, int op, bool own,
                      const struct mval *args, size_t n, void **out)
{
    if (!manager_ok(m))
        return MP_EINVAL;
    if (!name || !out)
        return mp_fail(MP_EINVAL, NULL, "%s is NULL", name ? "where the handle goes" : "name");
    if (!msg_name_ok((const uint8_t *)name, strnlen(name, MSG_MAX_NAME + 1)))
        return mp_fail(MP_EINVAL, NULL, "name must be 1 to %d bytes of UTF-8 without NUL",
                       MSG_MAX_NAME);
    struct proxy *p = arena_alloc(sizeof *p);
    if (!p)
        return MP_ENOMEM;
    p->magic = magic;
    p->creator = getpid();
    p->m = m;
    p->own = own;
    p->nlen = strlen(name);
    memcpy(p->name, name, p->nlen + 1);
    int rc = magic == MAGIC_DICT ? dict_call(p, op, args, n, MV_NONE, NULL, NULL)
                                 : proxy_simple(p, op, args, n, NULL);
    if (rc < 0) {
        if (own)
            mconn_forget(p);
        p->magic = MAGIC_FREED;
        arena_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

static void proxy_free(struct proxy *p, uint32_t magic)
{
    if (!p || p->magic != magic)      /* its manager may be gone already */
        return;
    if (p->own)
        mconn_forget(p);
    if (p->creator != getpid())
        return;               /* an inherited handle: the creator owns it */
    p->magic = MAGIC_FREED;
    arena_free(p);
}

/* A dict call, and what its reply carries: want is the value's type
 * (MV_NONE: nothing), bytes go into out, a number into *num. A process
 * sharing the server's arena runs it on the store itself, under the store's
 * lock (shdict.h); any other goes through the server. Either way the same
 * codes: MP_ETYPE for a value of another type, MP_EBROKEN once the server
 * is gone or shut down. */
static int dict_call(struct proxy *p, int op, const struct mval *args, size_t n, enum mtype want,
                     mp_buf *out, struct mval *num)
{
    struct mmsg m = { .n = 2 + n };
    struct mval v;
    struct shstore *direct = p->m->dicts;
    struct mconn *c = NULL;
    void *owned = NULL;
    int rc;
    if (direct) {
        m.v[0] = int_arg(op);
        m.v[1] = (struct mval){ .type = MV_TEXT, .p = (const uint8_t *)p->name, .len = p->nlen };
        for (size_t i = 0; i < n; i++)
            m.v[2 + i] = args[i];
        if (shstore_lock(direct) < 0)
            return manager_gone(p->m);
        rc = shstore_live(direct) ? shdict_exec(direct, &m, &v, &owned) : manager_gone(p->m);
    } else {
        if (!(c = proxy_conn(p)))
            return MP_ENOMEM;
        rc = proxy_call(p, c, op, args, n, &m, NULL);
        if (rc == 0 && want != MV_NONE && m.n != 2)
            rc = MP_EPROTO;
        v = m.v[1];
    }
    if (rc == 0 && want != MV_NONE && v.type != want)
        rc = MP_ETYPE;
    if (rc == 0 && out) {
        out->len = 0;
        rc = mp_buf_append(out, v.p, v.len);
    } else if (rc == 0 && num) {
        *num = v;
    }
    if (direct)
        shstore_unlock(direct);
    else
        mconn_end(c);
    free(owned);
    return rc;
}

int mp_dict_open(mp_manager *m, const char *name, mp_dict **d)
{
    return mp_fail_code(proxy_open(m, name, MAGIC_DICT, OP_DICT_OPEN, false, NULL, 0, (void **)d), __func__);
}

static int dict_set_val(mp_dict *d, const char *key, struct mval v)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)d, MAGIC_DICT)) < 0 || (rc = key_check(key)) < 0 ||
        (v.type == MV_BYTES && (rc = bytes_check("val", "len", v.p, v.len)) < 0))
        return rc;
    struct mval args[2] = { text_arg(key), v };
    return dict_call((struct proxy *)d, OP_DICT_SET, args, 2, MV_NONE, NULL, NULL);
}

int mp_dict_set(mp_dict *d, const char *key, const void *val, size_t len)
{
    return mp_fail_code(dict_set_val(d, key, bytes_arg(val, len)), __func__);
}

int mp_dict_set_i64(mp_dict *d, const char *key, int64_t v)
{
    return mp_fail_code(dict_set_val(d, key, int_arg(v)), __func__);
}

int mp_dict_set_f64(mp_dict *d, const char *key, double v)
{
    return mp_fail_code(dict_set_val(d, key, (struct mval){ .type = MV_FLOAT, .f = v }), __func__);
}

int mp_dict_get(mp_dict *d, const char *key, mp_buf *val)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)d, MAGIC_DICT)) < 0 || (rc = key_check(key)) < 0 ||
        (rc = out_check(val, "val (where the value goes)")) < 0)
        return mp_fail_code(rc, __func__);
    struct mval args[1] = { text_arg(key) };
    return mp_fail_code(dict_call((struct proxy *)d, OP_DICT_GET, args, 1, MV_BYTES, val, NULL), __func__);
}

/* Gets a typed scalar: MP_ETYPE when the stored value has another type. */
static int dict_get_scalar(mp_dict *d, const char *key, enum mtype want, struct mval *out)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)d, MAGIC_DICT)) < 0 || (rc = key_check(key)) < 0)
        return rc;
    struct mval args[1] = { text_arg(key) };
    return dict_call((struct proxy *)d, OP_DICT_GET, args, 1, want, NULL, out);
}

/* A typed get's message: which key held what it did not want. */
static int dict_get_result(int rc, const char *fn, const char *key, const char *want)
{
    if (rc == MP_ETYPE)
        return mp_fail(rc, fn, "the value of \"%s\" is not %s (it was set as another "
                       "type)", key, want);
    return mp_fail_code(rc, fn);
}

int mp_dict_get_i64(mp_dict *d, const char *key, int64_t *v)
{
    struct mval got;
    if (!v)
        return mp_fail(MP_EINVAL, __func__, "v (where the value goes) is NULL");
    int rc = dict_get_scalar(d, key, MV_INT, &got);
    if (rc == 0)
        *v = got.i;
    return dict_get_result(rc, __func__, key, "an integer");
}

int mp_dict_get_f64(mp_dict *d, const char *key, double *v)
{
    struct mval got;
    if (!v)
        return mp_fail(MP_EINVAL, __func__, "v (where the value goes) is NULL");
    int rc = dict_get_scalar(d, key, MV_FLOAT, &got);
    if (rc == 0)
        *v = got.f;
    return dict_get_result(rc, __func__, key, "a float");
}

int mp_dict_del(mp_dict *d, const char *key)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)d, MAGIC_DICT)) < 0 || (rc = key_check(key)) < 0)
        return mp_fail_code(rc, __func__);
    struct mval args[1] = { text_arg(key) };
    return mp_fail_code(dict_call((struct proxy *)d, OP_DICT_DEL, args, 1, MV_NONE, NULL, NULL), __func__);
}

int mp_dict_len(mp_dict *d, size_t *n)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)d, MAGIC_DICT)) < 0 ||
        (rc = out_check(n, "n (where the length goes)")) < 0)
        return mp_fail_code(rc, __func__);
    struct mval v;
    rc = dict_call((struct proxy *)d, OP_DICT_LEN, NULL, 0, MV_INT, NULL, &v);
    if (rc == 0 && v.i < 0)
        rc = mp_fail(MP_EPROTO, __func__, "the server sent a negative length");
    else if (rc == 0)
        *n = (size_t)v.i;
    return mp_fail_code(rc, __func__);
}

int mp_dict_keys(mp_dict *d, mp_buf *keys)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)d, MAGIC_DICT)) < 0 ||
        (rc = out_check(keys, "keys (where the keys go)")) < 0)
        return mp_fail_code(rc, __func__);
    return mp_fail_code(dict_call((struct proxy *)d, OP_DICT_KEYS, NULL, 0, MV_BYTES, keys, NULL), __func__);
}

int mp_dict_clear(mp_dict *d)
{
    int rc = proxy_check((struct proxy *)d, MAGIC_DICT);
    if (rc < 0)
        return mp_fail_code(rc, __func__);
    return mp_fail_code(dict_call((struct proxy *)d, OP_DICT_CLEAR, NULL, 0, MV_NONE, NULL, NULL), __func__);
}

int mp_dict_incr(mp_dict *d, const char *key, int64_t delta, int64_t *result)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)d, MAGIC_DICT)) < 0 || (rc = key_check(key)) < 0)
        return mp_fail_code(rc, __func__);
    struct mval args[2] = { text_arg(key), int_arg(delta) }, v;
    rc = dict_call((struct proxy *)d, OP_DICT_INCR, args, 2, MV_INT, NULL, &v);
    if (rc == 0 && result)
        *result = v.i;
    if (rc == MP_ERANGE)
        return mp_fail(rc, __func__, "adding %lld to the value of \"%s\" would overflow a 64-bit "
                       "integer; nothing was changed", (long long)delta, key);
    if (rc == MP_ETYPE)
        return mp_fail(rc, __func__, "the value of \"%s\" is not an integer (set by mp_dict_set "
                       "or mp_dict_set_f64?); nothing was changed", key);
    return mp_fail_code(rc, __func__);
}

int mp_dict_cas(mp_dict *d, const char *key, const void *expect, size_t elen,
                const void *val, size_t vlen)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)d, MAGIC_DICT)) < 0 || (rc = key_check(key)) < 0 ||
        (rc = bytes_check("expect", "elen", expect, elen)) < 0 ||
        (rc = bytes_check("val", "vlen", val, vlen)) < 0)
        return mp_fail_code(rc, __func__);
    struct mval args[3] = { text_arg(key),
                            expect ? bytes_arg(expect, elen) : (struct mval){ .type = MV_NULL },
                            bytes_arg(val, vlen) };
    return mp_fail_code(dict_call((struct proxy *)d, OP_DICT_CAS, args, 3, MV_NONE, NULL, NULL), __func__);
}

void mp_dict_free(mp_dict *d)
{
    proxy_free((struct proxy *)d, MAGIC_DICT);
}

/* ------------------------------------------------------------------ lists */

int mp_list_open(mp_manager *m, const char *name, mp_list **l)
{
    return mp_fail_code(proxy_open(m, name, MAGIC_LIST, OP_LIST_OPEN, false, NULL, 0, (void **)l), __func__);
}

int mp_list_append(mp_list *l, const void *val, size_t len)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)l, MAGIC_LIST)) < 0 ||
        (rc = bytes_check("val", "len", val, len)) < 0)
        return mp_fail_code(rc, __func__);
    struct mval args[1] = { bytes_arg(val, len) };
    return mp_fail_code(proxy_simple((struct proxy *)l, OP_LIST_APPEND, args, 1, NULL), __func__);
}

int mp_list_get(mp_list *l, long i, mp_buf *val)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)l, MAGIC_LIST)) < 0 ||
        (rc = out_check(val, "val (where the value goes)")) < 0)
        return mp_fail_code(rc, __func__);
    struct mval args[1] = { int_arg(i) };
    return mp_fail_code(proxy_bytes((struct proxy *)l, OP_LIST_GET, args, 1, val, NULL), __func__);
}

int mp_list_set(mp_list *l, long i, const void *val, size_t len)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)l, MAGIC_LIST)) < 0 ||
        (rc = bytes_check("val", "len", val, len)) < 0)
        return mp_fail_code(rc, __func__);
    struct mval args[2] = { int_arg(i), bytes_arg(val, len) };
    return mp_fail_code(proxy_simple((struct proxy *)l, OP_LIST_SET, args, 2, NULL), __func__);
}

int mp_list_pop(mp_list *l, long i, mp_buf *val)
{
    int rc = proxy_check((struct proxy *)l, MAGIC_LIST);
    if (rc < 0)
        return mp_fail_code(rc, __func__);
    struct mval args[1] = { int_arg(i) };
    return mp_fail_code(proxy_bytes((struct proxy *)l, OP_LIST_POP, args, 1, val, NULL), __func__);
}

int mp_list_len(mp_list *l, size_t *n)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)l, MAGIC_LIST)) < 0 ||
        (rc = out_check(n, "n (where the length goes)")) < 0)
        return mp_fail_code(rc, __func__);
    int64_t v;
    rc = proxy_int((struct proxy *)l, OP_LIST_LEN, NULL, 0, &v);
    if (rc == 0)
        *n = (size_t)v;
    return mp_fail_code(rc, __func__);
}

void mp_list_free(mp_list *l)
{
    proxy_free((struct proxy *)l, MAGIC_LIST);
}

/* ------------------------------------------------------------------ queues */

int mp_manager_queue(mp_manager *m, const char *name, size_t maxsize, mp_mqueue **q)
{
    if (maxsize > INT64_MAX)
        return mp_fail(MP_EINVAL, __func__, "maxsize %zu is over INT64_MAX; use 0 for no bound",
                       maxsize);
    struct mval args[1] = { int_arg((int64_t)maxsize) };
    return mp_fail_code(proxy_open(m, name, MAGIC_MQUEUE, OP_QUEUE_OPEN, true, args, 1, (void **)q), __func__);
}

int mp_mqueue_put(mp_mqueue *q, const void *data, size_t len, double timeout)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)q, MAGIC_MQUEUE)) < 0 ||
        (rc = bytes_check("data", "len", data, len)) < 0 || (rc = timeout_check(timeout)) < 0)
        return mp_fail_code(rc, __func__);
    struct mval args[2] = { bytes_arg(data, len), { 0 } };
    return mp_fail_code(proxy_blocking((struct proxy *)q, OP_QUEUE_PUT, args, 2, 1, timeout, MP_EFULL, NULL), __func__);
}

int mp_mqueue_get(mp_mqueue *q, mp_buf *out, double timeout)
{
    int rc;
    if ((rc = proxy_check((struct proxy *)q, MAGIC_MQUEUE)) < 0 ||
        (rc = out_check(out, "out (where the item goes)")) < 0 || (rc = timeout_check(timeout)) < 0)
        return mp_fail_code(rc, __func__);
    struct mval args[1] = { { 0 } };
    return mp_fail_code(proxy_blocking((struct proxy *)q, OP_QUEUE_GET, args, 1, 0, timeout, MP_EEMPTY, out), __func__);
}

void mp_mqueue_free(mp_mqueue *q)
{
    proxy_free((struct proxy *)q, MAGIC_MQUEUE);
}

/* ------------------------------------------------------------------ locks */

int mp_manager_lock(mp_manager *m, const char *name, mp_lock **l)
{
    return mp_fail_code(proxy_open(m, name, MAGIC_MLOCK, OP_LOCK_OPEN, true, NULL, 0, (void **)l), __func__);
}

static bool held_by_this_thread(struct proxy *p)
{
    struct mconn *c = proxy_conn(p);
    return c && atomic_load(&c->holder) == thread_token();
}

/* The lock's holder is a thread: the server tells connections apart, and
 * this process's connection for the handle tells its threads apart. The
 * holder waiting for ever for itself is refused, as a local Lock refuses
 * it; another thread, another process, or this thread through another
 * handle (another connection) waits. A timed acquire waits out its time. */
int mlock_acquire(mp_lock *l, double timeout)
{
    struct proxy *p = (struct proxy *)l;
    int rc;
    if ((rc = proxy_check(p, MAGIC_MLOCK)) < 0 || (rc = timeout_check(timeout)) < 0)
        return rc;
    if (deadline_in(timeout).forever && held_by_this_thread(p))
        return mp_fail(-EDEADLK, NULL, "this thread holds this manager lock already (through "
                       "this handle) and would wait for itself forever; release it first");
    struct mval args[1] = { { 0 } };
    return proxy_blocking(p, OP_LOCK_ACQUIRE, args, 1, 0, timeout, MP_ETIMEDOUT, NULL);
}

int mlock_release(mp_lock *l)
{
    struct proxy *p = (struct proxy *)l;
    int rc = proxy_check(p, MAGIC_MLOCK);
    if (rc < 0)
        return rc;
    rc = proxy_simple(p, OP_LOCK_RELEASE, NULL, 0, NULL);
    if (rc == MP_EINVAL)
        return mp_fail(rc, NULL, "this manager lock is not held through this handle's "
                       "connection (a lock is released by the handle that took it, in the "
                       "process that took it)");
    return rc;
}

void mlock_free(mp_lock *l)
{
    proxy_free((struct proxy *)l, MAGIC_MLOCK);
}
