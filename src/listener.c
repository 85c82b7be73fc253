/* listener.c - Listener and Client: addresses as strings, sockets, and the
 * authkey handshake on every new connection.
 *
 * "unix:/path", "unix:@abstract", "tcp:HOST:PORT", "tcp:[v6]:PORT". The
 * listening socket is non-blocking, so several processes may share one
 * listener (a pre-started set of workers) and each waits with poll; the
 * accepted sockets are blocking. Like CPython, the listener challenges then
 * answers, the client answers then challenges. Unlike CPython, a listener
 * runs the handshakes of all its new connections at once (each within
 * HANDSHAKE_TIMEOUT), so a peer that connects and says nothing delays
 * the others by HANDSHAKE_PATIENCE at most, and freeing it wakes the
 * threads inside accept.
 */
#include "conn_internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define HANDSHAKE_TIMEOUT 30.0
/* How long a new handshake has to itself before the next connection is
 * taken from the backlog: a client that answers at once is served
 * before this process takes more (a burst spreads over the processes
 * sharing the listener, and none waits in the handshakes of one that went
 * off to serve another), and a flood of new connections cannot push one
 * out before it has had time to answer. A handshake that has had its
 * patience unfinished says the peers ahead are slow or silent: the next
 * admission then takes up to HANDSHAKES_BATCH at once, so a stream of
 * silent peers, however fast, cannot outpace the intake and push a client
 * behind it past its timeout (HANDSHAKES_MAX is twice that: each of them
 * has a whole patience before it can be dropped for a newer one). */
#define HANDSHAKE_PATIENCE 0.1
#define HANDSHAKES_BATCH (HANDSHAKES_MAX / 2)
/* With no descriptor free for a new connection (EMFILE and the like), how
 * often accept looks again: the connection stays in the backlog, and a
 * call returns the error only when its timeout passes. */
#define ACCEPT_RETRY_S 0.01
#define ADDRESS_MAX 128

struct mp_listener {
    struct fdhandle h;
    pid_t creator;
    bool unlink_path;          /* file is ours to remove: at free, or at our exit */
    struct sock_file file;
    char address[ADDRESS_MAX];
    bool has_key;              /* false: no handshake (authkey NULL) */
    size_t keylen;             /* 0 with has_key: the handshake with an empty key */
    uint8_t *key;              /* in the arena too */
};
_Static_assert(offsetof(struct mp_listener, h) == 0, "the registry sees a listener as its fdhandle");

/* ------------------------------------------------------------------ addresses */

/* Parse errors are recorded without a call's name (mp_fail with fn NULL):
 * the listener, the client and the manager put theirs in front. */
#define ADDRESS_FORMS "use tcp:HOST:PORT, unix:/path or unix:@name"

static int parse_unix(const char *rest, struct sockaddress *out)
{
    struct sockaddr_un *un = (struct sockaddr_un *)&out->ss;
    size_t n = strlen(rest);
    if (n == 0)
        return mp_fail(MP_EINVAL, NULL, "address \"unix:\" names no path; %s", ADDRESS_FORMS);
    if (n >= sizeof un->sun_path)
        return mp_fail(MP_EINVAL, NULL, "unix address \"%.40s...\" is %zu bytes, longer than the "
                       "%zu a socket path may have; use a shorter path or unix:@name",
                       rest, n, sizeof un->sun_path - 1);
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, rest, n);
    if (rest[0] == '@')
        un->sun_path[0] = '\0';        /* abstract: no file, gone with the socket */
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (rest[0] == '@' ? 0 : 1));
    return 0;
}

static int parse_tcp(const char *rest, bool passive, struct sockaddress *out)
{
    char host[ADDRESS_MAX];
    const char *port;
    if (rest[0] == '[') {
        const char *end = strchr(rest, ']');
        if (!end || end[1] != ':' || (size_t)(end - rest - 1) >= sizeof host)
            return mp_fail(MP_EINVAL, NULL, "address \"tcp:%.*s\" is not tcp:[v6]:PORT",
                           ADDRESS_MAX, rest);
        memcpy(host, rest + 1, (size_t)(end - rest - 1));
        host[end - rest - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(rest, ':');
        if (!colon || (size_t)(colon - rest) >= sizeof host)
            return mp_fail(MP_EINVAL, NULL, "address \"tcp:%.*s\" has no port; use tcp:HOST:PORT "
                           "(port 0: any free one)", ADDRESS_MAX, rest);
        memcpy(host, rest, (size_t)(colon - rest));
        host[colon - rest] = '\0';
        port = colon + 1;
    }
    char *end;
    long p = strtol(port, &end, 10);
    if (!host[0])
        return mp_fail(MP_EINVAL, NULL, "address \"tcp:%.*s\" has no host; use tcp:HOST:PORT, "
                       "e.g. tcp:127.0.0.1:%s", ADDRESS_MAX, rest, port);
    if (!isdigit((unsigned char)port[0]) || *end || p > 65535)   /* strtol takes " 80", "+80" */
        return mp_fail(MP_EINVAL, NULL, "address \"tcp:%.*s\": port \"%s\" is not a number "
                       "from 0 to 65535", ADDRESS_MAX, rest, port);
    if (p == 0 && !passive)         /* a SYN to port 0 goes unanswered: the call would hang */
        return mp_fail(MP_EINVAL, NULL, "address \"tcp:%.*s\": port 0 means \"any free one\" "
                       "to a listener only; connect to the port it got (mp_listener_address)",
                       ADDRESS_MAX, rest);
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0) };
    struct addrinfo *ai;
    int gai = getaddrinfo(host, port, &hints, &ai);
    int err = errno;
    if (gai == EAI_AGAIN)           /* the resolver did not answer: not the address's fault */
        return mp_fail(-EAGAIN, NULL, "address \"tcp:%.*s\": host \"%s\" could not be looked "
                       "up now (%s); try again later", ADDRESS_MAX, rest, host, gai_strerror(gai));
    if (gai == EAI_MEMORY || (gai == EAI_SYSTEM && err == ENOMEM))
        return mp_fail(MP_ENOMEM, NULL, "no memory to look up host \"%s\"", host);
    if (gai == EAI_SYSTEM)
        return mp_fail(err ? -err : MP_EINVAL, NULL, "address \"tcp:%.*s\": looking up host "
                       "\"%s\" failed: %s", ADDRESS_MAX, rest, host, mp_strerror(-err));
    if (gai != 0)
        return mp_fail(MP_EINVAL, NULL, "address \"tcp:%.*s\": host \"%s\" not found (%s)",
                       ADDRESS_MAX, rest, host, gai_strerror(gai));
    memcpy(&out->ss, ai->ai_addr, ai->ai_addrlen);
    out->len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

int sock_parse_address(const char *address, bool passive, struct sockaddress *out)
{
    memset(out, 0, sizeof *out);
    if (!address)
        return mp_fail(MP_EINVAL, NULL, "address is NULL; %s", ADDRESS_FORMS);
    if (strncmp(address, "unix:", 5) == 0)
        return parse_unix(address + 5, out);
    if (strncmp(address, "tcp:", 4) == 0)
        return parse_tcp(address + 4, passive, out);
    if (address[0] == '/' || address[0] == '@')
        return mp_fail(MP_EINVAL, NULL, "address \"%.*s\" has no scheme; use unix:%.*s",
                       ADDRESS_MAX, address, ADDRESS_MAX, address);
    return mp_fail(MP_EINVAL, NULL, "address \"%.*s\" has no scheme; %s", ADDRESS_MAX, address,
                   ADDRESS_FORMS);
}

bool sock_file_of(int fd, struct sock_file *f)
{
    struct sockaddr_un un;
    socklen_t len = sizeof un;
    struct stat st;
    f->path[0] = '\0';
    if (getsockname(fd, (struct sockaddr *)&un, &len) != 0 || un.sun_family != AF_UNIX ||
        len <= offsetof(struct sockaddr_un, sun_path) || !un.sun_path[0])
        return false;
    size_t n = len - offsetof(struct sockaddr_un, sun_path);
    n = n < sizeof f->path ? n : sizeof f->path - 1;
    memcpy(f->path, un.sun_path, n);
    f->path[n] = '\0';
    if (stat(f->path, &st) != 0) {
        f->path[0] = '\0';
        return false;
    }
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    return true;
}

void sock_file_remove(const struct sock_file *f)
{
    struct stat st;
    if (f->path[0] && stat(f->path, &st) == 0 && st.st_dev == f->dev && st.st_ino == f->ino)
        unlink(f->path);
}

void sock_format_address(int fd, const char *asked, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN];
    snprintf(out, cap, "%s", asked);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(out, cap, "tcp:%s:%u", host, ntohs(in->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(out, cap, "tcp:[%s]:%u", host, ntohs(in6->sin6_port));
    }
}

/* ------------------------------------------------------------------ listener */

int sock_listen_on(const struct sockaddress *a)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return errno_to_mp(errno);
    int one = 1;
    if (a->ss.ss_family != AF_UNIX)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0 || listen(fd, SOMAXCONN) != 0) {
        int err = errno;
        close(fd);
        return errno_to_mp(err);
    }
    return fd;
}

/* ------------------------------------------------------------------ this process's side
 *
 * Each process that accepts on a listener keeps a record of its own (a
 * process-local list): a descriptor that mp_listener_free signals, so a
 * thread inside accept returns MP_ECLOSED at once (closing the listening
 * socket would not wake its poll), and with a key, the handshakes under
 * way. A keyed accept takes every connection waiting in the backlog and
 * runs their handshakes side by side (auth_server_step), each by its own
 * deadline, and returns the first that ends well; a call that times out
 * leaves the rest to the next call. They are this process's, as their
 * sockets are. One thread runs the handshakes at a time; another waits
 * its turn by its own deadline. */
enum { HANDSHAKES_MAX = 64 };   /* more: the oldest one is dropped */

struct handshake {
    int fd;
    mp_deadline until;
    mp_deadline patient;         /* the next connection waits for this one until then */
    struct auth_server a;
};

struct local {
    const mp_listener *l;
    int closed_fd;               /* an eventfd, readable once the listener is freed */
    int users;                   /* accept calls inside, under sets.mu */
    _Atomic bool closed;         /* the listener was freed: callers leave */
    pthread_mutex_t drive;       /* held by the thread running the handshakes */
    int n;                       /* under way, oldest first */
    struct handshake hs[HANDSHAKES_MAX];
    struct local *next;
};

static struct {
    pthread_mutex_t mu;          /* the list, users, and each record's sockets; nothing
                                  * is taken under it */
    pthread_cond_t left;         /* a user of a closed record left */
    struct local *head;
} sets = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL };

static void sets_lock(void) { pthread_mutex_lock(&sets.mu); }
static void sets_unlock(void) { pthread_mutex_unlock(&sets.mu); }

static void local_free(struct local *loc)
{
    for (int i = 0; i < loc->n; i++)
        close(loc->hs[i].fd);
    close(loc->closed_fd);
    pthread_mutex_destroy(&loc->drive);
    free(loc);
}

/* The child's copies of the parent's sockets: the parent goes on with
 * those handshakes, the child closes its copies. */
static void sets_fork_child(void)
{
    struct local *loc = sets.head;
    sets.head = NULL;
    while (loc) {
        struct local *next = loc->next;
        pthread_mutex_init(&loc->drive, NULL);   /* another thread may have held it */
        local_free(loc);
        loc = next;
    }
    sets_unlock();                /* taken by this same thread in prepare */
}

MP_SETUP_CONSTRUCTOR static void listener_fork_hooks(void)
{
    fork_hook_set(FORK_LISTENER, sets_lock, sets_unlock, sets_fork_child);
}

/* This process's record for l, made on first use, with one more user;
 * NULL if it cannot be made (out of memory or descriptors). */
static struct local *local_enter(const mp_listener *l)
{
    sets_lock();
    struct local *loc = sets.head;
    while (loc && loc->l != l)
        loc = loc->next;
    if (!loc && (loc = calloc(1, sizeof *loc))) {
        loc->closed_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (loc->closed_fd < 0) {
            free(loc);
            loc = NULL;
        } else {
            loc->l = l;
            pthread_mutex_init(&loc->drive, NULL);
            loc->next = sets.head;
            sets.head = loc;
        }
    }
    if (loc)
        loc->users++;
    sets_unlock();
    return loc;
}

static void local_leave(struct local *loc)
{
    sets_lock();
    if (--loc->users == 0 && atomic_load(&loc->closed))
        pthread_cond_broadcast(&sets.left);
    sets_unlock();
}

/* At l's free in this process: wakes the accept calls inside, which
 * return MP_ECLOSED without touching l again, waits for them to leave (a
 * moment; at most LISTENER_LEAVE_S, should one be held up), then closes
 * the handshakes under way. */
#define LISTENER_LEAVE_S 2
static void local_close(const mp_listener *l)
{
    sets_lock();
    struct local *loc = sets.head;
    while (loc && loc->l != l)
        loc = loc->next;
    if (!loc || atomic_load(&loc->closed)) {
        sets_unlock();
        return;
    }
    atomic_store(&loc->closed, true);
    uint64_t one = 1;
    ssize_t w = write(loc->closed_fd, &one, sizeof one);
    MP_UNUSED(w);
    struct timespec at;
    clock_gettime(CLOCK_REALTIME, &at);
    at.tv_sec += LISTENER_LEAVE_S;
    int e = 0;
    while (loc->users > 0 && e == 0)
        e = pthread_cond_timedwait(&sets.left, &sets.mu, &at);
    /* Unlinked only now: a fork while we waited closed the child's copies. */
    struct local **link = &sets.head;
    while (*link != loc)
        link = &(*link)->next;
    *link = loc->next;
    if (loc->users == 0)      /* else left to the process: a user may still be inside */
        local_free(loc);      /* under sets.mu: a fork sees the sockets or none */
    sets_unlock();
}

/* Takes handshake i out, closing its socket unless keep; sets.mu held,
 * so that a fork never sees the record half changed. */
static int hs_remove_locked(struct local *loc, int i, bool keep)
{
    int fd = loc->hs[i].fd;
    if (!keep)
        close(fd);
    memmove(&loc->hs[i], &loc->hs[i + 1], (size_t)(loc->n - i - 1) * sizeof loc->hs[0]);
    loc->n--;
    return fd;
}

static int hs_remove(struct local *loc, int i, bool keep)
{
    sets_lock();
    int fd = hs_remove_locked(loc, i, keep);
    sets_unlock();
    return fd;
}

static void listener_destroy(mp_listener *l)
{
    local_close(l);
    l->h.magic = MAGIC_FREED;
    arena_free(l->key);
    arena_free(l);
}

void listener_destroy_unheld(struct fdhandle *h)
{
    listener_destroy((mp_listener *)h);
}

/* Like CPython's Finalize for a Listener: a unix listener's file goes when
 * its creator exits, freed or not. */
static void remove_own_file(struct fdhandle *h)
{
    mp_listener *l = (mp_listener *)h;
    if (h->magic == MAGIC_LISTENER && l->unlink_path && l->creator == getpid()) {
        l->unlink_path = false;
        sock_file_remove(&l->file);
    }
}

static void listeners_at_exit(void)
{
    fdreg_each(remove_own_file);
}

static pthread_once_t exit_hook_once = PTHREAD_ONCE_INIT;

static void exit_hook_register(void)
{
    atexit(listeners_at_exit);
}

static int listener_fill(mp_listener *l, const char *address, const struct sockaddress *a,
                         const void *authkey, size_t keylen)
{
    if (a->ss.ss_family == AF_UNIX && sock_file_of(l->h.fd, &l->file)) {
        l->unlink_path = true;
        pthread_once(&exit_hook_once, exit_hook_register);
    }
    l->creator = getpid();
    sock_format_address(l->h.fd, address, l->address, sizeof l->address);
    atomic_init(&l->h.refs, 1);
    atomic_init(&l->h.immortal, 0);
    l->has_key = authkey != NULL;
    if (authkey && keylen) {
        if (!(l->key = arena_alloc(keylen)))
            return MP_ENOMEM;
        memcpy(l->key, authkey, keylen);
        l->keylen = keylen;
    }
    l->h.magic = MAGIC_LISTENER;
    return fdhandle_register(&l->h);
}

/* The MP_EINVAL for a key length without a key. */
static int fail_keylen(const char *fn, size_t keylen)
{
    return mp_fail(MP_EINVAL, fn, "authkey is NULL but keylen is %zu; pass NULL, 0 for no "
                   "handshake, or the key and its length", keylen);
}

/* Why a socket could not listen on or connect to address, and what helps. */
static int fail_socket(int rc, const char *fn, const char *verb, const char *address)
{
    const char *hint = "";
    struct stat st;
    if (rc == -EADDRINUSE && strncmp(address, "unix:/", 6) == 0)
        hint = stat(address + 5, &st) == 0 && !S_ISSOCK(st.st_mode)
                   ? "; the path exists and is no socket file: pick another path"
                   : "; the file exists: remove a stale one, or pick another path";
    else if (rc == -EADDRINUSE)
        hint = "; another socket has it: pick another address, or port 0";
    else if (rc == -ENOENT && strcmp(verb, "listen on") == 0)
        hint = "; the socket file's directory does not exist";
    else if (rc == -ECONNREFUSED || rc == -ENOENT)
        hint = "; is the listener started, and is the address the one it reports?";
    else if (rc == -EACCES)
        hint = "; the directory or port needs permissions this process lacks";
    else if (rc == MP_ETIMEDOUT)
        hint = " in time; the listener is busy or unreachable";
    return mp_fail(rc, fn, "cannot %s \"%s\": %s%s", verb, address,
                   rc == MP_ETIMEDOUT ? "no answer" : mp_strerror(rc), hint);
}

int mp_listener_new(mp_listener **out, const char *address, const void *authkey, size_t keylen)
{
    struct sockaddress a;
    if (!out)
        return mp_fail(MP_EINVAL, __func__, "l (where the listener goes) is NULL");
    if (!authkey && keylen)
        return fail_keylen(__func__, keylen);
    int rc = sock_parse_address(address, true, &a);
    if (rc != 0)
        return mp_fail_code(rc, __func__);
    if (strlen(address) >= ADDRESS_MAX)
        return mp_fail(MP_EINVAL, __func__, "address is %zu bytes long; at most %d",
                       strlen(address), ADDRESS_MAX - 1);
    mp_listener *l = arena_alloc(sizeof *l);
    if (!l)
        return mp_fail(MP_ENOMEM, __func__, "the shared arena is full");
    int fd = sock_listen_on(&a);
    if (fd < 0) {
        arena_free(l);
        return fail_socket(fd, __func__, "listen on", address);
    }
    l->h.fd = fd;
    rc = listener_fill(l, address, &a, authkey, keylen);
    if (rc != 0) {
        if (l->unlink_path)
            sock_file_remove(&l->file);
        close(fd);
        listener_destroy(l);
        return mp_fail_code(rc, __func__);
    }
    *out = l;
    return 0;
}

static int listener_check(const mp_listener *l)
{
    return l && l->h.magic == MAGIC_LISTENER ? 0 : MP_EINVAL;
}

/* accept4's failures that the next moment may mend (a descriptor, a
 * buffer freed): the connection stays in the backlog meanwhile. */
static bool out_of_resources(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

/* Waits for and takes one connection (no key); EAGAIN means a sibling
 * process sharing the listener took it first. Out of resources, it looks
 * again every ACCEPT_RETRY_S and returns that error at d. */
static int accept_one(mp_listener *l, struct local *loc, const mp_deadline *d)
{
    int starved = 0;                /* the last accept4's lack: returned at d */
    for (;;) {
        mp_deadline retry = deadline_in(ACCEPT_RETRY_S);
        const mp_deadline *wake = starved && deadline_left(&retry) < deadline_left(d) ? &retry : d;
        struct pollfd p[2] = { { .fd = l->h.fd, .events = starved ? 0 : POLLIN },
                               { .fd = loc->closed_fd, .events = POLLIN } };
        int r = fd_poll_all(p, 2, wake);
        if (r < 0)
            return r;
        if (p[1].revents || (p[0].revents & POLLNVAL))
            return MP_ECLOSED;
        if (r == 0 && deadline_passed(d))
            return starved ? starved : MP_ETIMEDOUT;
        int fd = accept4(l->h.fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            return fd;
        starved = out_of_resources(errno) ? errno_to_mp(errno) : 0;
        if (!starved && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
            errno != ECONNABORTED)
            return errno_to_mp(errno);
        if (deadline_passed(d))
            return starved ? starved : MP_ETIMEDOUT;
    }
}

/* A client's handshake gets what is left of the caller's timeout, at most
 * HANDSHAKE_TIMEOUT. */
static mp_deadline handshake_deadline(const mp_deadline *d)
{
    double left = deadline_left(d);
    return deadline_in(left < HANDSHAKE_TIMEOUT ? left : HANDSHAKE_TIMEOUT);
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);   /* fails harmlessly on unix */
}

/* Takes a connection waiting on l, if one still is (a sibling process
 * may have taken it), and sends its challenge; the oldest handshake makes
 * room when HANDSHAKES_MAX are under way. The socket joins the record
 * under sets.mu in the same breath as accept4 makes it, so a fork child
 * finds every copy it has to close. 1 taken, 0 none was waiting, or why
 * accept or the first send failed. */
static int hs_admit(mp_listener *l, struct local *loc)
{
    sets_lock();
    int fd = accept4(l->h.fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    int err = errno;
    if (fd >= 0) {
        if (loc->n == HANDSHAKES_MAX)
            hs_remove_locked(loc, 0, false);
        loc->hs[loc->n++].fd = fd;
    }
    sets_unlock();
    if (fd < 0)
        return err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED
                   ? 0 : errno_to_mp(err);
    struct handshake *h = &loc->hs[loc->n - 1];
    set_nodelay(fd);
    h->until = deadline_in(HANDSHAKE_TIMEOUT);
    h->patient = deadline_in(HANDSHAKE_PATIENCE);
    int rc = auth_server_start(&h->a, fd);
    if (rc != 0)
        hs_remove(loc, loc->n - 1, false);
    return rc != 0 ? rc : 1;
}

/* Runs the handshakes and admits new connections (one at a time, each
 * once the one before has had HANDSHAKE_PATIENCE) until one ends well (its
 * socket, blocking again) or d passes; a handshake that fails or runs out
 * of time ends the call with its error. */
static int hs_run(mp_listener *l, struct local *loc, const mp_deadline *d)
{
    struct pollfd p[2 + HANDSHAKES_MAX];
    int starved = 0;                /* hs_admit's last lack: returned at d */
    mp_deadline retry = { 0 };
    for (;;) {
        mp_deadline wake = *d;
        for (int i = 0; i < loc->n; i++) {
            if (deadline_passed(&loc->hs[i].until)) {
                hs_remove(loc, i, false);
                return MP_ETIMEDOUT;
            }
            if (wake.forever || deadline_left(&loc->hs[i].until) < deadline_left(&wake))
                wake = loc->hs[i].until;
            p[2 + i] = (struct pollfd){ .fd = loc->hs[i].fd, .events = POLLIN };
        }
        const mp_deadline *youngest = loc->n ? &loc->hs[loc->n - 1].patient : NULL;
        if (starved && (!youngest || deadline_left(&retry) > deadline_left(youngest)))
            youngest = &retry;      /* no descriptor: look again a little later */
        bool admit = !youngest || deadline_passed(youngest);
        if (!admit && (wake.forever || deadline_left(youngest) < deadline_left(&wake)))
            wake = *youngest;
        p[0] = (struct pollfd){ .fd = l->h.fd, .events = admit ? POLLIN : 0 };
        p[1] = (struct pollfd){ .fd = loc->closed_fd, .events = POLLIN };
        int r = fd_poll_all(p, 2 + (size_t)loc->n, &wake);
        if (r < 0)
            return r;
        if (p[1].revents || (p[0].revents & POLLNVAL))
            return MP_ECLOSED;
        for (int i = 0; r > 0 && i < loc->n; i++) {
            if (!p[2 + i].revents)
                continue;
            int rc = auth_server_step(&loc->hs[i].a, loc->hs[i].fd, l->key, l->keylen);
            if (rc == 1)
                continue;
            int fd = hs_remove(loc, i, rc == 0);
            if (rc != 0)
                return rc;
            int flags = fcntl(fd, F_GETFL);
            if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
                close(fd);
                return errno_to_mp(errno);
            }
            return fd;
        }
        if (p[0].revents & POLLIN) {
            /* one, or a batch behind a handshake that had its patience */
            int batch = loc->n ? HANDSHAKES_BATCH : 1, rc = 1;
            for (int i = 0; i < batch && rc == 1; i++)
                rc = hs_admit(l, loc);
            starved = out_of_resources(-rc) ? rc : 0;
            if (starved)
                retry = deadline_in(ACCEPT_RETRY_S);
            else if (rc < 0)
                return rc;
        }
        if (deadline_passed(d))
            return starved ? starved : MP_ETIMEDOUT;
    }
}

/* A keyed listener's next connection whose handshake ended well. */
static int accept_keyed(mp_listener *l, struct local *loc, const mp_deadline *d)
{
    int e = d->forever ? pthread_mutex_lock(&loc->drive) : mutex_clocklock(&loc->drive, &d->at);
    if (e != 0)
        return MP_ETIMEDOUT;
    int rc = atomic_load(&loc->closed) ? MP_ECLOSED : hs_run(l, loc, d);
    pthread_mutex_unlock(&loc->drive);
    return rc;
}

/* Why a handshake failed, from the side that ran it. */
static int fail_handshake(int rc, const char *fn, const char *peer)
{
    if (rc == MP_EEOF)
        return mp_fail(MP_EAUTH, fn, "%s hung up during the authkey handshake: the keys differ, "
                       "or it expects none", peer);
    if (rc == MP_EAUTH)
        return mp_fail(rc, fn, "authkey handshake with %s failed: the keys differ, or one side "
                       "expects none (authkey NULL: no handshake; \"\" with length 0: an "
                       "empty key)", peer);
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, fn, "%s did not finish the authkey handshake in time", peer);
    return mp_fail_code(rc, fn);
}

int mp_listener_accept(mp_listener *l, mp_conn **c, double timeout)
{
    if (listener_check(l) != 0)
        return mp_fail_handle(__func__, "listener", l);
    if (!c)
        return mp_fail(MP_EINVAL, __func__, "c (where the connection goes) is NULL");
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    mp_deadline d = deadline_in(timeout);
    bool keyed = l->has_key;
    struct local *loc = local_enter(l);
    if (!loc)
        return mp_fail(errno == ENOMEM ? MP_ENOMEM : errno_to_mp(errno), __func__,
                       "cannot make this process's record of the listener");
    int fd = keyed ? accept_keyed(l, loc, &d) : accept_one(l, loc, &d);
    local_leave(loc);
    if (fd == MP_ECLOSED)              /* l may be gone: not touched again */
        return mp_fail(fd, __func__, "the listener was freed during the call");
    if (fd == MP_ETIMEDOUT && deadline_passed(&d))
        return mp_fail(fd, __func__, "no client %s %s within %g s",
                       keyed ? "finished the authkey handshake with" : "connected to",
                       l->address, timeout);
    if (fd == MP_ETIMEDOUT)       /* not ours: a handshake's own time ran out */
        return mp_fail(MP_EAUTH, __func__, "a client connected but did not finish the authkey "
                       "handshake within %g s", HANDSHAKE_TIMEOUT);
    if (fd < 0 && out_of_resources(-fd))
        return mp_fail(fd, __func__, "a connection waited, but this process had no %s for "
                       "it until the timeout (%s); it stays in the backlog", fd == -EMFILE ||
                       fd == -ENFILE ? "descriptor" : "memory", mp_errname(fd));
    if (fd < 0 && keyed)
        return fail_handshake(fd, __func__, "a client");
    if (fd < 0)
        return mp_fail_code(fd, __func__);
    if (!keyed)
        set_nodelay(fd);
    int rc = conn_from_fd_until(c, fd, true, true, &d);
    if (rc != 0)
        close(fd);
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, __func__, "another process held the shared arena's lock until the "
                       "timeout (is it stopped?)");
    return mp_fail_code(rc, __func__);
}

const char *mp_listener_address(const mp_listener *l)
{
    if (listener_check(l) != 0) {
        mp_fail_handle(__func__, "listener", l);
        return NULL;
    }
    return l->address;
}

int mp_listener_fileno(const mp_listener *l)
{
    return listener_check(l) == 0 ? l->h.fd : mp_fail_handle(__func__, "listener", l);
}

/* Like CPython's Finalize, only the creating process removes the path. */
void mp_listener_free(mp_listener *l)
{
    if (listener_check(l) != 0)
        return;
    remove_own_file(&l->h);
    local_close(l);
    if (fdhandle_release(&l->h))
        listener_destroy(l);
}

/* ------------------------------------------------------------------ client */

/* TCP: a non-blocking connect, then poll for the handshake's end. */
static int connect_tcp(int fd, const struct sockaddress *a, const mp_deadline *d)
{
    if (fcntl(fd, F_SETFL, O_NONBLOCK) != 0)
        return errno_to_mp(errno);
    int rc = 0;
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) != 0) {
        rc = errno == EINPROGRESS || errno == EINTR ? 0 : errno_to_mp(errno);
        if (rc == 0) {
            int r = fd_poll(fd, POLLOUT, d);
            rc = r < 0 ? r : r == 0 ? MP_ETIMEDOUT : 0;
        }
        int err = 0;
        socklen_t len = sizeof err;
        if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err)
            rc = errno_to_mp(err);
    }
    if (rc == 0 && fcntl(fd, F_SETFL, 0) != 0)
        rc = errno_to_mp(errno);
    return rc;
}

/* Unix: a non-blocking connect fails at once (EAGAIN) while the listener's
 * backlog is full, so connect blocking, bounded by SO_SNDTIMEO, which
 * Linux applies to that wait. */
static int connect_unix(int fd, const struct sockaddress *a, const mp_deadline *d)
{
    struct timeval tv = { 0, 0 };
    if (!d->forever) {
        double left = deadline_left(d);
        tv.tv_sec = (time_t)left;
        tv.tv_usec = (suseconds_t)((left - (double)tv.tv_sec) * 1e6);
        if (tv.tv_sec == 0 && tv.tv_usec == 0)
            tv.tv_usec = 1;                   /* 0 would mean forever */
    }
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = 0;
    while (rc == 0 && connect(fd, (const struct sockaddr *)&a->ss, a->len) != 0) {
        if (errno == EISCONN)
            break;
        if (errno != EINTR)
            rc = errno == EAGAIN || errno == EINPROGRESS ? MP_ETIMEDOUT : errno_to_mp(errno);
    }
    struct timeval none = { 0, 0 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
    return rc;
}

int sock_connect_by(const struct sockaddress *a, const mp_deadline *d)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno_to_mp(errno);
    int rc = a->ss.ss_family == AF_UNIX ? connect_unix(fd, a, d) : connect_tcp(fd, a, d);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    set_nodelay(fd);
    return fd;
}

int mp_client(mp_conn **c, const char *address, const void *authkey, size_t keylen, double timeout)
{
    struct sockaddress a;
    if (!c)
        return mp_fail(MP_EINVAL, __func__, "c (where the connection goes) is NULL");
    if (!authkey && keylen)
        return fail_keylen(__func__, keylen);
    if (!timeout_valid(timeout))
        return mp_fail_timeout(__func__, timeout);
    int rc = sock_parse_address(address, false, &a);
    if (rc != 0)
        return mp_fail_code(rc, __func__);
    mp_deadline d = deadline_in(timeout);
    int fd = sock_connect_by(&a, &d);
    if (fd < 0)
        return fail_socket(fd, __func__, "connect to", address);
    if (authkey) {
        mp_deadline hd = handshake_deadline(&d);
        rc = auth_answer_challenge(fd, authkey, keylen, &hd);
        if (rc == 0)
            rc = auth_deliver_challenge(fd, authkey, keylen, AUTH_DEFAULT_DIGEST, &hd);
    }
    if (rc != 0) {
        close(fd);
        char peer[ADDRESS_MAX + 16];
        snprintf(peer, sizeof peer, "\"%s\"", address);
        /* No verdict on the key, as Python's Client raises EOFError. */
        if (rc == MP_EEOF)
            return mp_fail(rc, __func__, "%s hung up during the authkey handshake, with no "
                           "verdict on the key: it ended, or dropped the connection to make "
                           "room (another key gets \"#FAILURE#\": MP_EAUTH)", peer);
        return fail_handshake(rc, __func__, peer);
    }
    rc = conn_from_fd_until(c, fd, true, true, &d);
    if (rc != 0)
        close(fd);
    if (rc == MP_ETIMEDOUT)
        return mp_fail(rc, __func__, "another process held the shared arena's lock until the "
                       "timeout (is it stopped?)");
    return mp_fail_code(rc, __func__);
}
