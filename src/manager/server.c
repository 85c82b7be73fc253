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
 */
#include "manager/channel.h"
#include "manager/manager_internal.h"
#include "manager/protocol.h"
#include "manager/store.h"
#include "manager/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct server {
    struct store *store;
    const void *key;
    size_t keylen;
    int wake[2];                 /* a SHUTDOWN request writes here */
    pthread_mutex_t mu;          /* guards the client list */
    pthread_cond_t gone;         /* a client thread has finished */
    struct client *clients;
    int nclients;
};

struct client {
    struct server *srv;
    struct client *prev, *next;
    struct wire w;
    mp_buf in, out;
    struct channel *ch;          /* attached: requests come through it */
    uint32_t seq;                /* last request served on ch */
    bool peer_dead;              /* its socket died: nobody else holds ch */
};

int manager_decode_request(const uint8_t *data, size_t len)
{
    struct mmsg m;
    int rc = msg_decode(data, len, &m);
    return rc < 0 ? rc : msg_check_request(&m);
}

static int client_reply_status(struct client *c, int status)
{
    struct menc e;
    enc_begin(&e, &c->out, 1);
    enc_int(&e, status);
    return e.rc < 0 ? e.rc : wire_send(&c->w, c->out.data, c->out.len);
}

/* Takes over a client's shared-memory channel: only if it lies in our
 * arena, carries the nonce the client sent over the socket (so the memory
 * is really shared), and no other connection has it. */
static int client_attach(struct client *c, const struct mmsg *req)
{
    struct channel *ch = (struct channel *)(uintptr_t)req->v[1].i;
    uint32_t magic = CHANNEL_MAGIC;
    if (c->ch || (uintptr_t)ch % _Alignof(struct channel) != 0 ||
        !arena_contains(ch, sizeof *ch) || ch->nonce != (uint64_t)req->v[2].i ||
        !atomic_compare_exchange_strong(&ch->magic, &magic, CHANNEL_ATTACHED))
        return MP_EINVAL;
    c->ch = ch;
    c->seq = atomic_load(&ch->req_seq);
    return 0;
}

/* Executes one request; its encoded reply is left in c->out. */
static void client_exec(struct client *c, const uint8_t *data, size_t len, bool *shutdown)
{
    struct mmsg req;
    struct menc e;
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
                         CHANNEL_SERVER_SLICE_MS, c->w.fd) < 0) {
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
            if (len > CHANNEL_BUF || mp_buf_reserve(&c->in, len ? len : 1) < 0)
                return;
            memcpy(c->in.data, ch->buf, len);
            data = c->in.data;
        }
        client_exec(c, data, n, shutdown);
        bool big = c->out.len > CHANNEL_BUF;
        if (!big)
            memcpy(ch->buf, c->out.data, c->out.len);
        ch->resp_len = big ? CHANNEL_VIA_SOCKET : (uint32_t)c->out.len;
        /* posted before a big send, or both sides would wait on each other */
        channel_post(&ch->resp_seq, c->seq, &ch->client_sleeping);
        if (big && wire_send(&c->w, c->out.data, c->out.len) < 0)
            return;
    }
}

/* Unlinks, closes and frees c; the last thing its thread does. */
static void client_remove(struct client *c)
{
    struct server *srv = c->srv;
    pthread_mutex_lock(&srv->mu);
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
    mp_deadline d = deadline_in(MANAGER_AUTH_TIMEOUT_S);
    bool authed = wire_auth_server(&c->w, srv->key, srv->keylen, &d) == 0;
    bool shutdown = false;
    while (authed && !shutdown && !c->ch) {
        const uint8_t *data;
        size_t len;
        int rc = wire_recv(&c->w, &data, &len, WIRE_MAX_FRAME, NULL);
        if (rc == MP_ETOOBIG)
            client_reply_status(c, rc);
        if (rc < 0)
            break;
        client_exec(c, data, len, &shutdown);
        if (wire_send(&c->w, c->out.data, c->out.len) < 0)
            break;
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

static void server_accept(struct server *srv, int lfd, pthread_attr_t *attr)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    struct client *c = calloc(1, sizeof *c);
    pthread_mutex_lock(&srv->mu);
    pthread_t t;
    if (c && srv->nclients < MANAGER_MAX_CLIENTS) {
        c->srv = srv;
        wire_init(&c->w, fd, MANAGER_SPIN_NS);
        if (pthread_create(&t, attr, client_main, c) == 0) {
            c->next = srv->clients;
            if (c->next)
                c->next->prev = c;
            srv->clients = c;
            srv->nclients++;
            c = NULL;
            fd = -1;
        }
    }
    pthread_mutex_unlock(&srv->mu);
    free(c);
    if (fd >= 0)
        close(fd);
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

int manager_serve(const struct manager_server_opts *o)
{
    struct server srv = { .key = o->authkey, .keylen = o->authkey_len,
                          .mu = PTHREAD_MUTEX_INITIALIZER, .gone = PTHREAD_COND_INITIALIZER };
    int rc = store_new(&srv.store, 0);
    if (rc < 0)
        return rc;
    if (pipe2(srv.wake, O_CLOEXEC) < 0) {
        store_free(srv.store);
        return errno_to_mp(errno);
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    struct pollfd pfd[3] = { { o->listen_fd, POLLIN, 0 }, { srv.wake[0], POLLIN, 0 },
                             { o->stop_fd, POLLIN, 0 } };
    for (;;) {
        if (poll(pfd, o->stop_fd >= 0 ? 3 : 2, -1) < 0 && errno != EINTR)
            break;
        if (pfd[1].revents || (o->stop_fd >= 0 && pfd[2].revents))
            break;
        if (pfd[0].revents & POLLIN)
            server_accept(&srv, o->listen_fd, &attr);
    }
    pthread_attr_destroy(&attr);
    /* A thread that outlives the drain still uses the store: then it is
     * left to the process exit that follows. */
    if (server_drain(&srv))
        store_free(srv.store);
    close(srv.wake[0]);
    close(srv.wake[1]);
    return 0;
}
