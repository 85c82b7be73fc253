/* tcp_relay.h - a test-only TCP relay on 127.0.0.1 that misbehaves on
 * request, to put network faults between a client and a server.
 *
 * relay_start listens on a free port and forwards each connection to the
 * target port. relay_set switches every connection at once:
 *   RELAY_PASS       forward both ways;
 *   RELAY_PAUSE      read nothing: bytes wait in the kernel's buffers, as
 *                    with a server host that stopped;
 *   RELAY_BLACKHOLE  read and throw away both ways: nothing ever arrives;
 *   RELAY_HALF_OPEN  close the server side, keep the client side open and
 *                    silent (a peer that vanished without a reset).
 * hang_ups, whatever the mode: the next that many connections are closed
 * once the server's first bytes have reached the client, as a server
 * drops a handshake it has begun (to make room in a flood).
 * One thread does it all with poll; everything it holds is freed by
 * relay_stop.
 */
#ifndef MPROC_TEST_TCP_RELAY_H
#define MPROC_TEST_TCP_RELAY_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { RELAY_PASS, RELAY_PAUSE, RELAY_BLACKHOLE, RELAY_HALF_OPEN };
enum { RELAY_MAX_PAIRS = 64 };

struct relay {
    int lfd, port, target;
    pthread_t thread;
    _Atomic int mode;
    _Atomic bool stop;
    _Atomic int hang_ups;
    int cfd[RELAY_MAX_PAIRS], sfd[RELAY_MAX_PAIRS];   /* -1: slot free / side closed */
    bool doomed[RELAY_MAX_PAIRS];                      /* one of the hang_ups */
};

/* A blocking TCP connection to 127.0.0.1:port, or -1. */
static int tcp_connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    return -1;
}

static void relay_close_pair(struct relay *r, int i)
{
    if (r->cfd[i] >= 0)
        close(r->cfd[i]);
    if (r->sfd[i] >= 0)
        close(r->sfd[i]);
    r->cfd[i] = r->sfd[i] = -1;
}

/* Moves what one side has to the other (or to nowhere); false at EOF. */
static bool relay_pump(int from, int to)
{
    char buf[65536];
    ssize_t n = recv(from, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        return false;
    for (ssize_t off = 0; to >= 0 && n > 0 && off < n;) {
        ssize_t w = send(to, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return false;
        off += w;
    }
    return true;
}

static void *relay_main(void *arg)
{
    struct relay *r = arg;
    while (!atomic_load(&r->stop)) {
        int mode = atomic_load(&r->mode);
        struct pollfd p[1 + 2 * RELAY_MAX_PAIRS];
        int who[1 + 2 * RELAY_MAX_PAIRS];
        int n = 0;
        p[n++] = (struct pollfd){ .fd = r->lfd, .events = POLLIN };
        for (int i = 0; i < RELAY_MAX_PAIRS; i++) {
            if (r->cfd[i] < 0)
                continue;
            if (mode == RELAY_HALF_OPEN && r->sfd[i] >= 0) {
                close(r->sfd[i]);
                r->sfd[i] = -1;
            }
            short ev = mode == RELAY_PAUSE ? 0 : POLLIN;
            who[n] = i;
            p[n++] = (struct pollfd){ .fd = r->cfd[i], .events = ev };
            if (r->sfd[i] >= 0) {
                who[n] = -1 - i;
                p[n++] = (struct pollfd){ .fd = r->sfd[i], .events = ev };
            }
        }
        if (poll(p, (nfds_t)n, 20) <= 0)
            continue;
        if (p[0].revents & POLLIN) {
            int c = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
            int slot = -1;
            for (int i = 0; i < RELAY_MAX_PAIRS && slot < 0; i++)
                slot = r->cfd[i] < 0 ? i : -1;
            int s = c >= 0 && slot >= 0 ? tcp_connect_port(r->target) : -1;
            if (s >= 0) {
                r->cfd[slot] = c;
                r->sfd[slot] = s;
                int h = atomic_load(&r->hang_ups);
                r->doomed[slot] = h > 0 && atomic_compare_exchange_strong(&r->hang_ups, &h, h - 1);
            } else if (c >= 0) {
                close(c);
            }
        }
        for (int k = 1; k < n; k++) {
            if (!p[k].revents)
                continue;
            int i = who[k] >= 0 ? who[k] : -1 - who[k];
            if (r->cfd[i] < 0)
                continue;
            bool client_side = who[k] >= 0;
            int from = client_side ? r->cfd[i] : r->sfd[i];
            int to = mode == RELAY_PASS ? (client_side ? r->sfd[i] : r->cfd[i]) : -1;
            if (from >= 0 && !relay_pump(from, to)) {
                if (mode == RELAY_HALF_OPEN && !client_side)
                    continue;
                relay_close_pair(r, i);
            } else if (!client_side && r->doomed[i]) {
                r->doomed[i] = false;
                relay_close_pair(r, i);
            }
        }
    }
    return NULL;
}

/* 0, or -1 when the relay cannot listen. */
static int relay_start(struct relay *r, int target_port)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < RELAY_MAX_PAIRS; i++)
        r->cfd[i] = r->sfd[i] = -1;
    r->target = target_port;
    r->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    if (r->lfd < 0 || bind(r->lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(r->lfd, 64) < 0 ||
        getsockname(r->lfd, (struct sockaddr *)&a, &len) < 0)
        return -1;
    r->port = ntohs(a.sin_port);
    return pthread_create(&r->thread, NULL, relay_main, r) == 0 ? 0 : -1;
}

static void relay_set(struct relay *r, int mode)
{
    atomic_store(&r->mode, mode);
    usleep(50 * 1000);          /* a poll round: the thread has seen it */
}

static void relay_stop(struct relay *r)
{
    atomic_store(&r->stop, true);
    pthread_join(r->thread, NULL);
    for (int i = 0; i < RELAY_MAX_PAIRS; i++)
        relay_close_pair(r, i);
    close(r->lfd);
}

#endif
