/* pymanager_canned.c - the limit for bench/pymanager.py's rows: a server that
 * does no work (contenders "canned-threads" and "canned-epoll").
 *
 * Python's manager client spends its own CPU on every call (pickling, the
 * proxy, two system calls) and waits for its reply to wake it. No server
 * can make a call cost less than that. These servers show how close to it
 * a server can get: each answers every request frame at once with the same
 * canned reply, ('#RETURN', b'12345678'), read by the client as a dict
 * get's value, a set's None or a queue get's item alike. bench/pymanager.py
 * --canned connects its proxies straight to it (no handshake, no object
 * made: neither is timed) and times the same calls as against the real
 * servers.
 *
 * Two ways to serve, the best of each measured here:
 *   threads  a thread per connection, as mproc-manager: while there are
 *            fewer connections than CPUs it polls its socket with recv for
 *            50 us (a sched_yield every eighth) before it sleeps in poll;
 *   epoll    one thread for every connection, level-triggered.
 */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define SPIN_NS 50000

static const unsigned char reply[] = {   /* pickle protocol 4 of ('#RETURN', b'12345678') */
    0x80, 0x04, 0x95, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x8c, 0x07, 0x23, 0x52,
    0x45, 0x54, 0x55, 0x52, 0x4e, 0x94, 0x43, 0x08, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37,
    0x38, 0x94, 0x86, 0x94, 0x2e,
};
static unsigned char frame[4 + sizeof reply];

struct client {
    int fd;
    size_t have;
    unsigned char buf[65536];
};

static _Atomic int connections;
static long ncpu;

/* Answers every whole frame in c->buf; false when the client is gone. */
static bool answer(struct client *c)
{
    size_t off = 0;
    while (c->have - off >= 4) {
        uint32_t len;
        memcpy(&len, c->buf + off, 4);
        len = ntohl(len);
        if (len > sizeof c->buf - 4)
            return false;                       /* not the bench's client */
        if (c->have - off < 4 + (size_t)len)
            break;
        off += 4 + len;
        if (send(c->fd, frame, sizeof frame, MSG_NOSIGNAL) != (ssize_t)sizeof frame)
            return false;
    }
    memmove(c->buf, c->buf + off, c->have - off);
    c->have -= off;
    return true;
}

static void *serve_one(void *arg)
{
    struct client *c = arg;
    atomic_fetch_add(&connections, 1);
    double spin_start = 0;
    for (unsigned looks = 0;;) {
        ssize_t n = recv(c->fd, c->buf + c->have, sizeof c->buf - c->have, MSG_DONTWAIT);
        if (n > 0) {
            c->have += (size_t)n;
            if (!answer(c))
                break;
            looks = 0;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            break;
        if (looks == 0)
            spin_start = bench_now();
        if (atomic_load(&connections) < ncpu && (bench_now() - spin_start) * 1e9 < SPIN_NS) {
            if ((++looks & 7) == 0)
                sched_yield();
            continue;
        }
        struct pollfd p = { .fd = c->fd, .events = POLLIN };
        poll(&p, 1, -1);
        looks = 0;
    }
    atomic_fetch_sub(&connections, 1);
    close(c->fd);
    free(c);
    return NULL;
}

static void serve_threads(int ls)
{
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0)
            continue;
        struct client *c = calloc(1, sizeof *c);
        pthread_t t;
        if (!c)
            _exit(1);
        c->fd = fd;
        if (pthread_create(&t, NULL, serve_one, c) != 0)
            _exit(1);
        pthread_detach(t);
    }
}

static void serve_epoll(int ls)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL }, evs[64];
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) != 0)
        _exit(1);
    for (;;) {
        int k = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < k; i++) {
            struct client *c = evs[i].data.ptr;
            if (!c) {
                int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                if (fd < 0 || !(c = calloc(1, sizeof *c)))
                    continue;
                c->fd = fd;
                struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                continue;
            }
            ssize_t n = recv(c->fd, c->buf + c->have, sizeof c->buf - c->have, 0);
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (n <= 0 || (c->have += (size_t)n, !answer(c))) {
                close(c->fd);                   /* closing drops it from the set */
                free(c);
            }
        }
    }
}

/* Serves in a child on an abstract socket and runs the client code against
 * it, its rows named `name`. */
static int run(const char *name, bool epoll, int argc, char **argv)
{
    char addr[64];
    snprintf(addr, sizeof addr, "mproc-canned-%d-%s", (int)getpid(), name);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path + 1, addr, strlen(addr));
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(addr));
    int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (epoll ? SOCK_NONBLOCK : 0), 0);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, salen) != 0 || listen(ls, 128) != 0) {
        perror("pymanager_canned: listen");
        return 1;
    }
    pid_t server = fork();
    if (server == 0) {
        if (epoll)
            serve_epoll(ls);
        else
            serve_threads(ls);
        _exit(0);
    }
    close(ls);
    char script[4200], at[80];
    bench_script_path("pymanager.py", script, sizeof script);
    snprintf(at, sizeof at, "unix:@%s", addr);
    char *args[] = { "python3", script, "--canned", at, (char *)name };
    int rc = bench_run_python(args, 5, argc, argv);
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    return rc;
}

int main(int argc, char **argv)
{
    uint32_t len = htonl(sizeof reply);
    memcpy(frame, &len, 4);
    memcpy(frame + 4, reply, sizeof reply);
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int rc = run("canned-threads", false, argc, argv);
    return run("canned-epoll", true, argc, argv) | rc;
}
