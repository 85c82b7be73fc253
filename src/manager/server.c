/* server.c - the manager server: one accept loop, one thread per client.
 *
 * A client thread authenticates its peer, then loops: receive a frame
 * (spinning briefly before it sleeps, so a chatty client gets microsecond
 * round trips), decode, execute on the store, reply. A client of the same
 * family may move its requests to a shared-memory channel (channel.h); the
 * thread then serves that instead. Any malformed request gets an MP_EPROTO
 * reply; an oversized or unreadable frame closes that connection only. When
 * a client goes, the locks it held are released and marked so the next
 * acquirer gets MP_EOWNERDEAD.
 *
 * Peers that have not proved the key are kept on a short leash: a
 * handshake deadline, a cap on connections still in the handshake (the
 * oldest is dropped for a newcomer, so a flood cannot keep anyone out) and
 * a smaller cap per TCP source address. At the descriptor limit the accept
 * loop frees a spare descriptor to accept and drop the pending connection
 * instead of spinning on a listening socket that stays readable.
 */
#include "conn_internal.h"
#include "manager/channel.h"
#include "manager/manager_internal.h"
#include "manager/protocol.h"
#include "manager/pyproto.h"
#include "manager/store.h"
#include "manager/wire.h"
#include "platform/platform.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct server {
    struct store *store;
    struct pyreg *py;            /* Python clients' object table (pyobj.c) */
    const void *key;
    size_t keylen;
    int handshake_ms;
    int wake[2];                 /* a SHUTDOWN request writes here */
    int spare;                   /* /dev/null, given up to accept at EMFILE */
    pthread_mutex_t mu;          /* guards the client lists */
    pthread_cond_t gone;         /* a client thread has finished */
    struct client *clients;
    int nclients;
    struct client *hs_head, *hs_tail;   /* in the handshake, oldest first */
    int nhs;
};

/* A TCP peer's address without its port (unix peers have none). */
struct source {
    uint8_t addr[16];
    uint8_t len;                 /* 0: not TCP */
};

struct client {
    struct server *srv;
    struct client *prev, *next;
    struct client *hs_prev, *hs_next;
    bool in_hs;                  /* on the handshake list */
    struct source src;
    struct wire w;
    mp_buf in, out;
    struct channel *ch;          /* attached: requests come through it */
    uint32_t seq;                /* last request served on ch */
    bool peer_dead;              /* its socket died: nobody else holds ch */
    bool item;                   /* c->out carries an item taken from queue item_name */
    uint8_t item_name_len;
    char item_name[MSG_MAX_NAME];
};

int manager_decode_request(const uint8_t *data, size_t len)
{
    struct mmsg m;
    int rc = msg_decode(data, len, &m);
    return rc < 0 ? rc : msg_check_request(&m);
}

/* Sends c->out; a client that reads nothing for MANAGER_REPLY_TIMEOUT_S is
 * cut off (a thread must not block on it for ever). */
static int client_send(struct client *c)
{
    mp_deadline d = deadline_in(MANAGER_REPLY_TIMEOUT_S);
    return wire_send(&c->w, c->out.data, c->out.len, &d);
}

static int client_reply_status(struct client *c, int status)
{
    struct menc e;
    enc_begin(&e, &c->out, 1);
    enc_int(&e, status);
    return e.rc < 0 ? e.rc : client_send(c);
}

/* Takes over a client's shared-memory channel: only if it lies in our
 * arena, carries the nonce the client sent over the socket (so the memory
 * is really shared), and no other connection has it. */
static int client_attach(struct client *c, const struct mmsg *req)
{
    struct channel *ch = (struct channel *)(uintptr_t)req->v[1].i;
    uint32_t magic = CHANNEL_MAGIC;
    arena_handed_over();
    if (c->ch || (uintptr_t)ch % _Alignof(struct channel) != 0 ||
        !arena_contains(ch, sizeof *ch) || ch->nonce != (uint64_t)req->v[2].i ||
        !atomic_compare_exchange_strong(&ch->magic, &magic, CHANNEL_ATTACHED))
        return MP_EINVAL;
    uint64_t start = 0;
    if (proc_task_start(getpid(), &start) == 1) {
        ch->server_start = start;
        ch->server_pid = getpid();
    }
    c->ch = ch;
    c->seq = atomic_load(&ch->req_seq);
    return 0;
}

/* The store asks before it hands a queue item to a getter: is the client
 * still there and still waiting? (On a channel, a client that gave up has
 * posted its hang-up.) A unix socket client whose get did not wait was
 * there a moment ago, and if it died since, the reply cannot be sent (its
 * socket is closed: EPIPE) and the item goes back: no system call to ask.
 * Over TCP a send after the peer's FIN still succeeds, so a TCP client is
 * always asked. */
static bool client_wants(struct store_owner *owner, bool waited)
{
    struct client *c = (struct client *)owner;
    if (c->ch && atomic_load(&c->ch->req_seq) != c->seq)
        return false;
    if (!waited && !c->ch && c->src.len == 0)
        return true;
    return channel_peer_alive(c->w.fd);
}

/* Puts back the queue item of a reply that could not be delivered. */
static void client_return_item(struct client *c)
{
    struct mmsg rep;
    if (!c->item || msg_decode(c->out.data, c->out.len, &rep) < 0 || rep.n != 2)
        return;
    struct mval name = { .type = MV_TEXT, .p = (const uint8_t *)c->item_name, .len = c->item_name_len };
    store_unget(c->srv->store, &name, &rep.v[1]);
    c->item = false;
}

/* Executes one request; its encoded reply is left in c->out. */
static void client_exec(struct client *c, const uint8_t *data, size_t len, bool *shutdown)
{
    struct mmsg req;
    struct menc e;
    c->item = false;
    int rc = msg_decode(data, len, &req);
    if (rc == 0)
        rc = msg_check_request(&req);
    if (rc == 0 && req.v[0].i == OP_ATTACH)
        rc = client_attach(c, &req);
    else if (rc == 0) {
        struct sreply r;
        store_exec(c->srv->store, (struct store_owner *)c, &req, &r);
        enc_begin(&e, &c->out, r.v.type == MV_NONE ? 1 : 2);
        enc_int(&e, r.status);
        if (r.v.type != MV_NONE)
            enc_val(&e, &r.v);
        if (e.rc == 0 && r.status == 0 && req.v[0].i == OP_QUEUE_GET) {
            c->item = true;
            c->item_name_len = (uint8_t)req.v[1].len;
            memcpy(c->item_name, req.v[1].p, req.v[1].len);
        } else if (e.rc < 0 && r.status == 0 && req.v[0].i == OP_QUEUE_GET) {
            store_unget_locked(c->srv->store, &req.v[1], &r.v);
        }
        store_done(c->srv->store, &r);
        *shutdown = req.v[0].i == OP_SHUTDOWN;
        if (e.rc == 0)
            return;
        rc = e.rc;
    }
    enc_begin(&e, &c->out, 1);
    enc_int(&e, rc);
}

/* Serves requests arriving through the channel until the peer goes. */
static void client_serve_channel(struct client *c, bool *shutdown)
{
    struct channel *ch = c->ch;
    while (!*shutdown) {
        if (channel_wait(&ch->req_seq, c->seq, &ch->server_sleeping, MANAGER_SPIN_NS,
                         MANAGER_SERVER_SLICE, c->w.fd, NULL) < 0) {
            c->peer_dead = true;
            return;
        }
        c->seq = atomic_load(&ch->req_seq);
        uint32_t len = ch->req_len;
        if (len == CHANNEL_BYE)
            return;
        const uint8_t *data;
        size_t n = len;
        if (len == CHANNEL_VIA_SOCKET) {
            if (wire_recv(&c->w, &data, &n, WIRE_MAX_FRAME, NULL) < 0)
                return;
        } else {
            /* copied first: the peer could rewrite shared memory while we decode */
            const uint8_t *msg = channel_msg(ch, ch->req_inline, len);
            if (!msg || mp_buf_reserve(&c->in, len ? len : 1) < 0)
                return;
            memcpy(c->in.data, msg, len);
            data = c->in.data;
        }
        client_exec(c, data, n, shutdown);
        if (c->item && !client_wants((struct store_owner *)c, true)) {
            client_return_item(c);       /* it gave up or died while we worked */
            c->peer_dead = !channel_peer_alive(c->w.fd);
            return;
        }
        ch->resp_len = channel_put(ch, ch->resp_inline, c->out.data, c->out.len);
        bool big = ch->resp_len == CHANNEL_VIA_SOCKET;
        /* posted before a big send, or both sides would wait on each other */
        channel_post(&ch->resp_seq, c->seq, &ch->client_sleeping);
        if (big && client_send(c) < 0) {
            client_return_item(c);
            return;
        }
        wire_trim(&c->w);
        wire_buf_trim(&c->out);
        wire_buf_trim(&c->in);
    }
}

/* Takes c off the handshake list; srv->mu held. */
static void hs_unlink(struct server *srv, struct client *c)
{
    if (!c->in_hs)
        return;
    if (c->hs_prev)
        c->hs_prev->hs_next = c->hs_next;
    else
        srv->hs_head = c->hs_next;
    if (c->hs_next)
        c->hs_next->hs_prev = c->hs_prev;
    else
        srv->hs_tail = c->hs_prev;
    c->hs_prev = c->hs_next = NULL;
    c->in_hs = false;
    srv->nhs--;
}

/* Ends a connection still in the handshake: its thread fails out of it. */
static void hs_drop(struct server *srv, struct client *c)
{
    hs_unlink(srv, c);
    shutdown(c->w.fd, SHUT_RDWR);
}

/* Makes room for one more handshake from src, dropping the oldest ones
 * (from that source first); srv->mu held. */
static void hs_admit(struct server *srv, struct client *c)
{
    if (c->src.len) {
        int same = 0;
        struct client *oldest = NULL;
        for (struct client *h = srv->hs_head; h; h = h->hs_next) {
            if (h->src.len == c->src.len && memcmp(h->src.addr, c->src.addr, c->src.len) == 0) {
                oldest = oldest ? oldest : h;
                same++;
            }
        }
        if (same >= MANAGER_MAX_HANDSHAKES_PER_SOURCE)
            hs_drop(srv, oldest);
    }
    if (srv->nhs >= MANAGER_MAX_HANDSHAKES)
        hs_drop(srv, srv->hs_head);
    c->in_hs = true;
    c->hs_prev = srv->hs_tail;
    if (srv->hs_tail)
        srv->hs_tail->hs_next = c;
    else
        srv->hs_head = c;
    srv->hs_tail = c;
    srv->nhs++;
}

/* Connections from the same TCP source address; srv->mu held. */
static int source_count(struct server *srv, const struct source *src)
{
    int n = 0;
    for (struct client *c = srv->clients; c; c = c->next)
        n += c->src.len == src->len && memcmp(c->src.addr, src->addr, src->len) == 0;
    return n;
}

/* Unlinks, closes and frees c; the last thing its thread does. */
static void client_remove(struct client *c)
{
    struct server *srv = c->srv;
    pthread_mutex_lock(&srv->mu);
    hs_unlink(srv, c);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nclients--;
    wire_close(&c->w);
    mp_buf_free(&c->in);
    mp_buf_free(&c->out);
    if (c->ch && (c->peer_dead || atomic_fetch_sub(&c->ch->refs, 1) == 1)) {
        /* a release the next owner's CAS on magic pairs with (ThreadSanitizer
         * cannot see the client process that reuses the memory in between) */
        atomic_store_explicit(&c->ch->magic, 0, memory_order_release);
        arena_free(c->ch);
    }
    free(c);
    pthread_cond_broadcast(&srv->gone);
    pthread_mutex_unlock(&srv->mu);
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    struct server *srv = c->srv;
    mp_deadline d = deadline_in(srv->handshake_ms / 1000.0);
    bool authed = wire_auth_server(&c->w, srv->key, srv->keylen, &d) == 0;
    pthread_mutex_lock(&srv->mu);
    authed = authed && c->in_hs;      /* dropped meanwhile: its socket is shut */
    hs_unlink(srv, c);
    pthread_mutex_unlock(&srv->mu);
    bool shutdown = false, first = true;
    while (authed && !shutdown && !c->ch) {
        const uint8_t *data;
        size_t len;
        int rc = wire_recv(&c->w, &data, &len, WIRE_MAX_FRAME, NULL);
        if (rc == MP_ETOOBIG)
            client_reply_status(c, rc);
        if (rc < 0)
            break;
        if (first && py_is_request(data, len)) {     /* a Python client: pickles from here on */
            py_serve(srv->py, (struct store_owner *)c, &c->w, data, len, &shutdown);
            break;
        }
        first = false;
        client_exec(c, data, len, &shutdown);
        if (client_send(c) < 0) {
            client_return_item(c);
            break;
        }
        wire_buf_trim(&c->out);
    }
    if (c->ch)
        client_serve_channel(c, &shutdown);
    if (authed)
        store_owner_gone(srv->store, (struct store_owner *)c);
    if (shutdown) {
        char b = 1;
        ssize_t n = write(srv->wake[1], &b, 1);
        MP_UNUSED(n);
    }
    client_remove(c);
    return NULL;
}

static void source_of(const struct sockaddr_storage *ss, struct source *src)
{
    memset(src, 0, sizeof *src);
    if (ss->ss_family == AF_INET) {
        memcpy(src->addr, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        src->len = 4;
    } else if (ss->ss_family == AF_INET6) {
        memcpy(src->addr, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
        src->len = 16;
    }
}

/* Accepts one connection. At the descriptor limit the spare descriptor
 * makes room to accept it and hang up at once (else the listening socket
 * stays readable and the loop spins); false: back off a moment. */
static bool server_accept(struct server *srv, int lfd, pthread_attr_t *attr)
{
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    int fd = accept4(lfd, (struct sockaddr *)&ss, &sslen, SOCK_CLOEXEC);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
        if (srv->spare < 0)
            return false;
        close(srv->spare);
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            close(fd);
        srv->spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
        return srv->spare >= 0;
    }
    if (fd < 0)
        return errno != ENOBUFS && errno != ENOMEM;
    if (sslen > sizeof ss)
        ss.ss_family = AF_UNSPEC;
    wire_keepalive(fd);
    struct client *c = calloc(1, sizeof *c);
    pthread_mutex_lock(&srv->mu);
    pthread_t t;
    if (c && srv->nclients < MANAGER_MAX_CLIENTS) {
        c->srv = srv;
        source_of(&ss, &c->src);
        wire_init(&c->w, fd, MANAGER_SPIN_NS);
        if ((!c->src.len || source_count(srv, &c->src) < MANAGER_MAX_PER_SOURCE) &&
            pthread_create(&t, attr, client_main, c) == 0) {
            c->next = srv->clients;
            if (c->next)
                c->next->prev = c;
            srv->clients = c;
            srv->nclients++;
            hs_admit(srv, c);
            c = NULL;
            fd = -1;
        }
    }
    pthread_mutex_unlock(&srv->mu);
    free(c);
    if (fd >= 0)
        close(fd);
    return true;
}

/* Hangs up on every client and waits (bounded) for their threads to go, so
 * the store can be freed; a thread inside a wait leaves within one slice. */
static bool server_drain(struct server *srv)
{
    pthread_mutex_lock(&srv->mu);
    for (struct client *c = srv->clients; c; c = c->next)
        shutdown(c->w.fd, SHUT_RDWR);
    struct timespec at;
    clock_gettime(CLOCK_REALTIME, &at);
    at.tv_sec += 2;
    int rc = 0;
    while (srv->nclients > 0 && rc == 0)
        rc = pthread_cond_timedwait(&srv->gone, &srv->mu, &at);
    bool drained = srv->nclients == 0;
    pthread_mutex_unlock(&srv->mu);
    return drained;
}

static void *probe_main(void *arg)
{
    return arg;
}

/* 0 if this process can start a thread, else the error (EAGAIN at the
 * process limit). */
static int thread_probe(void)
{
    pthread_t t;
    int err = pthread_create(&t, NULL, probe_main, NULL);
    if (err == 0)
        pthread_join(t, NULL);
    return err;
}

int manager_serve(const struct manager_server_opts *o)
{
    struct server srv = { .key = o->authkey, .keylen = o->authkey_len,
                          .handshake_ms = o->handshake_ms > 0 ? o->handshake_ms : MANAGER_HANDSHAKE_MS,
                          .mu = PTHREAD_MUTEX_INITIALIZER, .gone = PTHREAD_COND_INITIALIZER };
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    if (o->authkey_len == 0 && getsockname(o->listen_fd, (struct sockaddr *)&ss, &sslen) == 0 &&
        (ss.ss_family == AF_INET || ss.ss_family == AF_INET6))
        return MP_EINVAL;        /* TCP without a key: anyone who can connect would be in */
    /* A unix address's file goes with the server, however it ends or its
     * client ended (Python's server removes it at shutdown): unless
     * someone has bound the path again since. */
    struct sock_file file;
    sock_file_of(o->listen_fd, &file);
    int rc = store_new_shared(&srv.store, o->dicts, o->max_bytes, client_wants);
    if (rc == 0 && (rc = pyreg_new(&srv.py, srv.store)) < 0)
        store_free(srv.store);
    if (rc == 0 && pipe2(srv.wake, O_CLOEXEC) < 0) {
        rc = errno_to_mp(errno);
        pyreg_free(srv.py);
        store_free(srv.store);
    }
    if (rc < 0) {
        sock_file_remove(&file);
        return rc;
    }
    /* A server that can serve no one fails now, saying why, not at its
     * first client: it needs its spare descriptor, one for a client and a
     * thread per client. */
    srv.spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int probe = srv.spare < 0 ? -1 : open("/dev/null", O_RDONLY | O_CLOEXEC);
    int err = probe < 0 ? errno : thread_probe();
    if (probe >= 0)
        close(probe);
    if (err) {
        if (srv.spare >= 0)
            close(srv.spare);
        close(srv.wake[0]);
        close(srv.wake[1]);
        pyreg_free(srv.py);
        store_free(srv.store);
        sock_file_remove(&file);
        return errno_to_mp(err);
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    struct pollfd pfd[3] = { { o->listen_fd, POLLIN, 0 }, { srv.wake[0], POLLIN, 0 },
                             { o->stop_fd, POLLIN, 0 } };
    int backoff = -1;
    for (;;) {
        pfd[0].fd = backoff < 0 ? o->listen_fd : -1;   /* backing off: not accepting */
        pfd[0].revents = 0;
        if (poll(pfd, o->stop_fd >= 0 ? 3 : 2, backoff) < 0 && errno != EINTR)
            break;
        if (pfd[1].revents || (o->stop_fd >= 0 && pfd[2].revents))
            break;
        backoff = -1;
        if ((pfd[0].revents & POLLIN) && !server_accept(&srv, o->listen_fd, &attr))
            backoff = 50;
        if (srv.spare < 0)
            srv.spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    pthread_attr_destroy(&attr);
    /* A thread that outlives the drain still uses the store: then it is
     * left to the process exit that follows. */
    if (server_drain(&srv)) {
        pyreg_free(srv.py);
        store_free(srv.store);
    }
    close(srv.wake[0]);
    close(srv.wake[1]);
    if (srv.spare >= 0)
        close(srv.spare);
    sock_file_remove(&file);
    return 0;
}
