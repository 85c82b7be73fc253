/* server.c - the manager server: one accept loop, one thread per client.
 *
 * A client thread authenticates its peer, then loops: receive a frame
 * (spinning briefly before it sleeps, so a chatty client gets microsecond
 * round trips), decode, execute on the store, reply. Any malformed frame
 * gets an MP_EPROTO reply; an oversized or unreadable one closes that
 * connection only. When a client goes, the locks it held are released and
 * marked so the next acquirer gets MP_EOWNERDEAD.
 */
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
    _Atomic int clients;
};

struct client {
    struct server *srv;
    struct wire w;
    mp_buf out;
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

/* Executes one frame and sends its reply. */
static int client_serve_frame(struct client *c, const uint8_t *data, size_t len, bool *shutdown)
{
    struct mmsg req;
    int rc = msg_decode(data, len, &req);
    if (rc == 0)
        rc = msg_check_request(&req);
    if (rc < 0)
        return client_reply_status(c, rc);
    struct sreply r;
    store_exec(c->srv->store, (struct store_owner *)c, &req, &r);
    struct menc e;
    enc_begin(&e, &c->out, r.v.type == MV_NONE ? 1 : 2);
    enc_int(&e, r.status);
    if (r.v.type != MV_NONE)
        enc_val(&e, &r.v);
    store_done(c->srv->store, &r);
    *shutdown = req.v[0].i == OP_SHUTDOWN;
    if (e.rc < 0)
        return client_reply_status(c, e.rc);
    return wire_send(&c->w, c->out.data, c->out.len);
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    struct server *srv = c->srv;
    mp_deadline d = deadline_in(MANAGER_AUTH_TIMEOUT_S);
    bool authed = wire_auth_server(&c->w, srv->key, srv->keylen, &d) == 0;
    bool shutdown = false;
    while (authed && !shutdown) {
        const uint8_t *data;
        size_t len;
        int rc = wire_recv(&c->w, &data, &len, WIRE_MAX_FRAME, NULL);
        if (rc == MP_ETOOBIG)
            client_reply_status(c, rc);
        if (rc < 0 || client_serve_frame(c, data, len, &shutdown) < 0)
            break;
    }
    if (authed)
        store_owner_gone(srv->store, (struct store_owner *)c);
    if (shutdown) {
        char b = 1;
        ssize_t n = write(srv->wake[1], &b, 1);
        MP_UNUSED(n);
    }
    wire_close(&c->w);
    mp_buf_free(&c->out);
    free(c);
    atomic_fetch_sub(&srv->clients, 1);
    return NULL;
}

static void server_accept(struct server *srv, int lfd, pthread_attr_t *attr)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    struct client *c = NULL;
    if (atomic_fetch_add(&srv->clients, 1) < MANAGER_MAX_CLIENTS)
        c = calloc(1, sizeof *c);
    pthread_t t;
    if (c) {
        c->srv = srv;
        wire_init(&c->w, fd, MANAGER_SPIN_NS);
        if (pthread_create(&t, attr, client_main, c) == 0)
            return;
        free(c);
    }
    close(fd);
    atomic_fetch_sub(&srv->clients, 1);
}

int manager_serve(const struct manager_server_opts *o)
{
    struct server srv = { .key = o->authkey, .keylen = o->authkey_len };
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
    /* Client threads still use the store: the process exits next, so it is
     * deliberately not freed. */
    pthread_attr_destroy(&attr);
    return 0;
}
