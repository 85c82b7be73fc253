/* test_auth.c - the authkey handshake: C against C in both generations of
 * the protocol, malformed and hostile peers, and the machine's real python3
 * (multiprocessing.connection's Client and Listener, plus a hand-written
 * 3.12 {sha256} peer in tests/interop/peer.py) in both directions.
 * MPROC_WHITEBOX: links the static library to reach conn_internal.h.
 */
#include "testutil.h"

#include "conn_internal.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char KEY[] = "secret key";
static const char OTHER[] = "another key";

/* ------------------------------------------------------------------ C against C */

struct side { int fd; const char *key; const char *digest; bool deliver_first; };

/* One side of the handshake on a raw descriptor: the listener's order
 * (deliver, answer) or the client's (answer, deliver). */
static int run_side(void *p)
{
    struct side *s = p;
    mp_deadline d = deadline_in(10 * tu_slow());
    size_t kl = strlen(s->key);
    int rc;
    if (s->deliver_first) {
        rc = auth_deliver_challenge(s->fd, s->key, kl, s->digest, &d);
        if (rc == 0)
            rc = auth_answer_challenge(s->fd, s->key, kl, &d);
    } else {
        rc = auth_answer_challenge(s->fd, s->key, kl, &d);
        if (rc == 0)
            rc = auth_deliver_challenge(s->fd, s->key, kl, s->digest, &d);
    }
    return rc == 0 ? 0 : rc == MP_EAUTH ? 3 : 4;
}

/* Runs a listener side here and a client side in a child: their codes. */
static void handshake(const char *lkey, const char *ckey, const char *digest, int *lcode, int *ccode)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct side client = { sv[1], ckey, digest, false };
    pid_t pid = tu_fork(run_side, &client);
    close(sv[1]);
    struct side listener = { sv[0], lkey, digest, true };
    *lcode = run_side(&listener);
    close(sv[0]);
    *ccode = tu_wait(pid, 20);
}

static void test_handshake_succeeds_with_each_digest_and_legacy_md5(void **state)
{
    (void)state;
    static const char *digests[] = { "sha256", "md5", "sha384", "sha3_256", "sha3_384", NULL };
    for (size_t i = 0; i < sizeof digests / sizeof digests[0]; i++) {
        int l, c;
        handshake(KEY, KEY, digests[i], &l, &c);
        assert_int_equal(l, 0);
        assert_int_equal(c, 0);
    }
}

static void test_wrong_key_fails_on_both_sides(void **state)
{
    (void)state;
    const char *digests[] = { "sha256", NULL };
    for (int i = 0; i < 2; i++) {
        int l, c;
        handshake(KEY, OTHER, digests[i], &l, &c);
        assert_int_equal(l, 3);
        assert_int_equal(c, 3);
    }
}

static void test_deliver_refuses_unknown_digest_name(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    TU_ASSERT_RC(auth_deliver_challenge(sv[0], KEY, 3, "sha1", NULL), MP_EINVAL);
    TU_ASSERT_RC(auth_deliver_challenge(sv[0], KEY, 3, "much_too_long", NULL), MP_EINVAL);
    close(sv[0]);
    close(sv[1]);
}

/* ------------------------------------------------------------------ hostile peers */

static void send_frame_raw(int fd, const void *p, size_t n)
{
    TU_OK(conn_send_frame(fd, p, n));
}

/* Answers whatever the peer sent first on fd with the challenge `msg`. */
static int answer_crafted(const void *msg, size_t n, bool close_after)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    if (n)
        send_frame_raw(sv[1], msg, n);
    if (close_after)
        shutdown(sv[1], SHUT_WR);
    mp_deadline d = deadline_in(0.2);
    int rc = auth_answer_challenge(sv[0], KEY, strlen(KEY), &d);
    close(sv[0]);
    close(sv[1]);
    return rc;
}

static void test_answer_refuses_malformed_challenges(void **state)
{
    (void)state;
    char big[300];
    memset(big, 'x', sizeof big);
    memcpy(big, "#CHALLENGE#", 11);
    TU_ASSERT_RC(answer_crafted("#WELCOME#", 9, true), MP_EAUTH);              /* no challenge */
    TU_ASSERT_RC(answer_crafted("#CHALLENGE#short", 16, true), MP_EAUTH);      /* < 20 bytes */
    TU_ASSERT_RC(answer_crafted("#CHALLENGE#{sha1}0123456789012345678901234", 42, true), MP_EAUTH);
    TU_ASSERT_RC(answer_crafted("#CHALLENGE#0123456789012345678901", 33, true), MP_EAUTH); /* 22: no prefix */
    TU_ASSERT_RC(answer_crafted(big, sizeof big, true), MP_EAUTH);             /* over 256 */
    TU_ASSERT_RC(answer_crafted(NULL, 0, true), MP_EEOF);      /* peer left: no verdict */
    TU_ASSERT_RC(answer_crafted(NULL, 0, false), MP_ETIMEDOUT);                /* peer silent */
}

static void test_answer_to_legacy_challenge_is_bare_md5(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    const char *challenge = "#CHALLENGE#0123456789abcdefghij";     /* 20 bytes: Python 3.11 */
    send_frame_raw(sv[1], challenge, strlen(challenge));
    send_frame_raw(sv[1], "#WELCOME#", 9);
    mp_deadline d = deadline_in(5);
    TU_OK(auth_answer_challenge(sv[0], KEY, strlen(KEY), &d));
    mp_buf answer = { 0 };
    TU_OK(conn_recv_frame(sv[1], &answer, 256, &d));
    uint8_t want[16];
    unsigned wl;
    HMAC(EVP_md5(), KEY, (int)strlen(KEY), (const uint8_t *)challenge + 11, 20, want, &wl);
    assert_int_equal(answer.len, 16);
    assert_memory_equal(answer.data, want, 16);
    mp_buf_free(&answer);
    close(sv[0]);
    close(sv[1]);
}

/* The challenger's side: reads our challenge, sends `answer_kind`, returns rc. */
static int deliver_against(const char *answer_kind)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    mp_buf ch = { 0 };
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        mp_deadline d = deadline_in(5);
        if (conn_recv_frame(sv[1], &ch, 256, &d) != 0)
            _exit(1);
        const uint8_t *m = (const uint8_t *)ch.data + 11;
        size_t ml = ch.len - 11;
        uint8_t out[128] = { 0 };
        unsigned n = 0;
        size_t pre = 0;
        if (strcmp(answer_kind, "bare-md5") == 0) {
            HMAC(EVP_md5(), KEY, (int)strlen(KEY), m, ml, out, &n);
        } else if (strcmp(answer_kind, "prefixed-md5") == 0) {
            memcpy(out, "{md5}", pre = 5);
            HMAC(EVP_md5(), KEY, (int)strlen(KEY), m, ml, out + pre, &n);
        } else if (strcmp(answer_kind, "bare-sha256") == 0) {
            HMAC(EVP_sha256(), KEY, (int)strlen(KEY), m, ml, out, &n);
        } else {
            memcpy(out, "{sha999}", pre = 8);
            n = 16;
        }
        conn_send_frame(sv[1], out, pre + n);
        conn_recv_frame(sv[1], &ch, 256, &d);      /* #WELCOME# or #FAILURE# */
        _exit(0);
    }
    close(sv[1]);
    mp_deadline d = deadline_in(10);
    int rc = auth_deliver_challenge(sv[0], KEY, strlen(KEY), "sha256", &d);
    assert_int_equal(tu_wait(pid, 10), 0);
    close(sv[0]);
    return rc;
}

static void test_deliver_accepts_answers_where_cpython_does(void **state)
{
    (void)state;
    TU_OK(deliver_against("bare-md5"));             /* a Python 3.11 client */
    TU_OK(deliver_against("prefixed-md5"));         /* any allowed digest, prefixed */
    TU_ASSERT_RC(deliver_against("bare-sha256"), MP_EAUTH);   /* 32 bytes, no prefix */
    TU_ASSERT_RC(deliver_against("unknown"), MP_EAUTH);
}

/* ------------------------------------------------------------------ listener and client */

struct client_arg { const char *address; const char *key; };

static int child_client(void *p)
{
    struct client_arg *a = p;
    mp_conn *c;
    int rc = mp_client(&c, a->address, a->key, a->key ? strlen(a->key) : 0, 10 * tu_slow());
    if (rc != 0)
        return rc == MP_EAUTH ? 3 : rc == MP_EEOF ? 6 : 4;
    rc = mp_conn_send_bytes(c, "payload", 7);
    mp_conn_close(c);
    return rc == 0 ? 0 : 5;
}

/* A child client with a's key connects; the listener accepts it and gets its payload. */
static void accept_payload_from(mp_listener *l, struct client_arg *a)
{
    pid_t pid = tu_fork(child_client, a);
    mp_conn *c;
    TU_OK(mp_listener_accept(l, &c, 10 * tu_slow()));
    char buf[16];
    size_t len;
    TU_OK(mp_conn_recv_bytes(c, buf, sizeof buf, &len));
    assert_memory_equal(buf, "payload", 7);
    assert_int_equal(tu_wait(pid, 10), 0);
    mp_conn_close(c);
}

static void test_listener_and_client_authenticate_each_other(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    struct client_arg good = { mp_listener_address(l), KEY }, bad = { mp_listener_address(l), OTHER };
    accept_payload_from(l, &good);
    mp_conn *c;
    pid_t pid = tu_fork(child_client, &bad);
    c = NULL;
    TU_ASSERT_RC(mp_listener_accept(l, &c, 10 * tu_slow()), MP_EAUTH);
    assert_null(c);                                 /* no connection, no data */
    assert_int_equal(tu_wait(pid, 10), 3);          /* MP_EAUTH in the client too */
    mp_listener_free(l);
}

static void test_client_without_key_meets_a_challenge_and_is_refused(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    struct client_arg none = { mp_listener_address(l), NULL };
    pid_t pid = tu_fork(child_client, &none);
    mp_conn *c;
    TU_ASSERT_RC(mp_listener_accept(l, &c, 10 * tu_slow()), MP_EAUTH);
    assert_int_equal(tu_wait(pid, 10), 0);   /* it connected and sent, unauthenticated */
    mp_listener_free(l);
}

/* CPython 3.13's rule: authkey None skips the handshake, b"" runs it with
 * an empty key. So NULL and ("", 0) are different promises. */
static void test_empty_key_runs_the_handshake_and_null_skips_it(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", "", 0));
    struct client_arg empty = { mp_listener_address(l), "" }, none = { mp_listener_address(l), NULL },
                      some = { mp_listener_address(l), KEY };
    accept_payload_from(l, &empty);
    mp_conn *c;
    pid_t pid = tu_fork(child_client, &none);        /* no handshake: its payload is no answer */
    TU_ASSERT_RC(mp_listener_accept(l, &c, 10 * tu_slow()), MP_EAUTH);
    assert_int_equal(tu_wait(pid, 10), 0);
    pid = tu_fork(child_client, &some);
    TU_ASSERT_RC(mp_listener_accept(l, &c, 10 * tu_slow()), MP_EAUTH);
    assert_int_equal(tu_wait(pid, 10), 3);
    mp_listener_free(l);

    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", NULL, 0));   /* and a keyless listener */
    empty.address = mp_listener_address(l);
    pid = tu_fork(child_client, &empty);
    TU_OK(mp_listener_accept(l, &c, 10 * tu_slow()));
    mp_conn_close(c);                          /* no challenge came: the client gives up, */
    assert_int_equal(tu_wait(pid, 20), 6);     /* MP_EEOF, as Python's raises EOFError */
    mp_listener_free(l);
}

/* ------------------------------------------------------------------ python3 */

static bool have_python(void)
{
    return system("python3 -c 'import multiprocessing.connection' >/dev/null 2>&1") == 0;
}

/* Starts tests/interop/peer.py MODE ADDRESS KEYHEX with stdout on *out. */
static pid_t python_peer(const char *mode, const char *address, const char *key, int *out)
{
    char script[512], hex[128];
    snprintf(hex, sizeof hex, "%s", key ? "" : "-");      /* "": the empty key b"" */
    const char *src = getenv("MPROC_SOURCE_DIR");
    snprintf(script, sizeof script, "%s/tests/interop/peer.py", src ? src : ".");
    for (size_t i = 0; key && key[i]; i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned char)key[i]);
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        execlp("python3", "python3", script, mode, address, hex, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    *out = p[0];
    return pid;
}

/* The first line a python listener prints: its address. */
static void read_line(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        struct pollfd p = { fd, POLLIN, 0 };
        assert_int_equal(poll(&p, 1, (int)(20000 * tu_slow())), 1);
        assert_int_equal(read(fd, buf + n, 1), 1);
        if (buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = '\0';
}

/* Serves the python client: two messages echoed upper-cased. */
static void serve_python(mp_conn *c)
{
    mp_buf in = { 0 };
    for (int i = 0; i < 2; i++) {
        TU_OK(mp_conn_recv_buf(c, &in, 0));
        for (size_t j = 0; j < in.len; j++) {
            char *ch = (char *)in.data + j;
            if (*ch >= 'a' && *ch <= 'z')
                *ch = (char)(*ch - 32);
        }
        TU_OK(mp_conn_send_bytes(c, in.data, in.len));
    }
    mp_buf_free(&in);
}

static void python_client_against_listener(const char *mode, const char *lkey, const char *pkey,
                                           int want_rc, int want_exit)
{
    if (!have_python())
        skip();
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", lkey, lkey ? strlen(lkey) : 0));
    int out;
    pid_t pid = python_peer(mode, mp_listener_address(l), pkey, &out);
    mp_conn *c;
    TU_ASSERT_RC(mp_listener_accept(l, &c, 30 * tu_slow()), want_rc);
    if (want_rc == 0) {
        serve_python(c);
        mp_conn_close(c);
    }
    assert_int_equal(tu_wait(pid, 30), want_exit);
    close(out);
    mp_listener_free(l);
}

static void test_python_client_talks_to_mproc_listener(void **state)
{
    (void)state;
    python_client_against_listener("client", KEY, KEY, 0, 0);
    python_client_against_listener("client", NULL, NULL, 0, 0);    /* authkey=None */
}

/* Python's Client(authkey=b"") answers a challenge with an empty key. */
static void test_python_client_with_empty_key_runs_the_handshake(void **state)
{
    (void)state;
    python_client_against_listener("client", "", "", 0, 0);
    python_client_against_listener("client", "", KEY, MP_EAUTH, 3);
}

static void test_python_client_with_wrong_key_is_refused(void **state)
{
    (void)state;
    python_client_against_listener("client", KEY, OTHER, MP_EAUTH, 3);
}

static void test_python312_sha256_client_talks_to_mproc_listener(void **state)
{
    (void)state;
    python_client_against_listener("client312", KEY, KEY, 0, 0);
    python_client_against_listener("client312", KEY, OTHER, MP_EAUTH, 3);
}

static void client_against_python_listener(const char *mode, const char *address, const char *ckey,
                                           const char *pkey, int want_rc, int want_exit)
{
    if (!have_python())
        skip();
    int out;
    pid_t pid = python_peer(mode, address, pkey, &out);
    char bound[256];
    read_line(out, bound, sizeof bound);
    mp_conn *c;
    TU_ASSERT_RC(mp_client(&c, bound, ckey, ckey ? strlen(ckey) : 0, 30 * tu_slow()), want_rc);
    if (want_rc == 0) {
        mp_buf in = { 0 };
        TU_OK(mp_conn_send_bytes(c, "hello from c", 12));
        TU_OK(mp_conn_recv_buf(c, &in, 0));
        assert_int_equal(in.len, 12);
        assert_memory_equal(in.data, "HELLO FROM C", 12);
        size_t big = (size_t)3 << 20;
        char *data = malloc(big);
        memset(data, 'q', big);
        TU_OK(mp_conn_send_bytes(c, data, big));
        TU_OK(mp_conn_recv_buf(c, &in, big));
        assert_int_equal(in.len, big);
        assert_int_equal(((char *)in.data)[big - 1], 'Q');
        free(data);
        mp_buf_free(&in);
        mp_conn_close(c);
    }
    assert_int_equal(tu_wait(pid, 30), want_exit);
    close(out);
}

/* A unix listener's file goes when its creator exits without freeing it
 * (CPython's Finalize), and not when a child that inherited it exits. */
static int exits_at_once(void *arg)
{
    (void)arg;
    exit(0);
}

static int makes_a_listener_and_leaves(void *arg)
{
    mp_listener *l;
    if (mp_listener_new(&l, arg, NULL, 0) != 0)
        return 1;
    const char *path = (const char *)arg + strlen("unix:");
    if (tu_wait(tu_fork(exits_at_once, NULL), 10) != 0 || access(path, F_OK) != 0)
        return 2;                      /* a forked child's exit left it */
    exit(0);                           /* no mp_listener_free; atexit runs */
}

static void test_listener_file_goes_when_its_creator_exits(void **state)
{
    (void)state;
    char addr[96];
    snprintf(addr, sizeof addr, "unix:/tmp/mproc-auth-exit-%d.sock", (int)getpid());
    assert_int_equal(tu_wait(tu_fork(makes_a_listener_and_leaves, addr), 10 * tu_slow()), 0);
    assert_int_equal(access(addr + strlen("unix:"), F_OK), -1);
}

static void test_mproc_client_talks_to_python_listener(void **state)
{
    (void)state;
    char path[80];
    snprintf(path, sizeof path, "unix:/tmp/mproc-auth-%d.sock", (int)getpid());
    client_against_python_listener("listener", path, KEY, KEY, 0, 0);
    client_against_python_listener("listener", "tcp:127.0.0.1:0", KEY, KEY, 0, 0);
    snprintf(path, sizeof path, "unix:@mproc-auth-%d", (int)getpid());
    client_against_python_listener("listener", path, NULL, NULL, 0, 0);
}

static void test_mproc_client_with_wrong_key_is_refused_by_python(void **state)
{
    (void)state;
    client_against_python_listener("listener", "tcp:127.0.0.1:0", OTHER, KEY, MP_EAUTH, 3);
}

static void test_mproc_client_talks_to_python312_sha256_listener(void **state)
{
    (void)state;
    client_against_python_listener("listener312", "tcp:127.0.0.1:0", KEY, KEY, 0, 0);
    client_against_python_listener("listener312", "tcp:127.0.0.1:0", OTHER, KEY, MP_EAUTH, 3);
}

static void test_mproc_client_with_empty_key_meets_python312_listener(void **state)
{
    (void)state;
    client_against_python_listener("listener312", "tcp:127.0.0.1:0", "", "", 0, 0);
    client_against_python_listener("listener312", "tcp:127.0.0.1:0", "", KEY, MP_EAUTH, 3);
}

/* ------------------------------------------------------------------ a listener's handshakes side by side */

/* A raw TCP socket connected to l, which then says nothing. */
/* The loopback address of a "tcp:127.0.0.1:PORT" listener. */
static struct sockaddr_in loopback_of(const mp_listener *l)
{
    return (struct sockaddr_in){ .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                 .sin_port = htons((uint16_t)atoi(strrchr(mp_listener_address(l), ':') + 1)) };
}

static int connect_raw(mp_listener *l)
{
    struct sockaddr_in sin = loopback_of(l);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    return fd;
}

/* Writes a frame one byte at a time, a millisecond apart. */
static bool trickle(int fd, const void *p, size_t n)
{
    uint8_t buf[FRAME_HEADER_MAX + 256];
    size_t h = frame_header_encode(n, buf);
    memcpy(buf + h, p, n);
    for (size_t i = 0; i < h + n; i++) {
        if (write(fd, buf + i, 1) != 1)
            return false;
        usleep(1000);
    }
    return true;
}

struct slow_client { mp_listener *l; double pause; };

/* The client's side written out by hand: a pause before its answer,
 * every frame a byte at a time, and its first message in the same write
 * as its last handshake frame. */
static int slow_client(void *arg)
{
    struct slow_client *sc = arg;
    int fd = connect_raw(sc->l);
    mp_deadline d = deadline_in(20 * tu_slow());
    mp_buf m = { 0 };
    if (conn_recv_frame(fd, &m, 256, &d) != 0 || m.len < 11 + 8)
        return 1;
    usleep((useconds_t)(sc->pause * 1e6));
    uint8_t out[64];
    unsigned n;
    memcpy(out, "{sha256}", 8);                    /* the listener asks for sha256 */
    HMAC(EVP_sha256(), KEY, (int)strlen(KEY), (const uint8_t *)m.data + 11, m.len - 11, out + 8, &n);
    if (!trickle(fd, out, 8 + n) || conn_recv_frame(fd, &m, 256, &d) != 0 ||
        m.len != 9 || memcmp(m.data, "#WELCOME#", 9) != 0)
        return 2;
    static const char challenge[] = "#CHALLENGE#{sha256}0123456789012345678901234567890123456789";
    if (!trickle(fd, challenge, strlen(challenge)) || conn_recv_frame(fd, &m, 256, &d) != 0)
        return 3;
    uint8_t want[32];
    HMAC(EVP_sha256(), KEY, (int)strlen(KEY), (const uint8_t *)challenge + 11, strlen(challenge) - 11,
         want, &n);
    if (m.len != 8 + n || memcmp((uint8_t *)m.data + 8, want, n) != 0)
        return 4;
    uint8_t last[2 * FRAME_HEADER_MAX + 16];
    size_t h = frame_header_encode(9, last);
    memcpy(last + h, "#WELCOME#", 9);
    size_t h2 = frame_header_encode(5, last + h + 9);
    memcpy(last + h + 9 + h2, "hello", 5);
    if (write(fd, last, h + 9 + h2 + 5) != (ssize_t)(h + 9 + h2 + 5))
        return 5;
    if (conn_recv_frame(fd, &m, 256, &d) != 0 || m.len != 2 || memcmp(m.data, "ok", 2) != 0)
        return 6;
    mp_buf_free(&m);
    close(fd);
    return 0;
}

/* Takes the client's "hello" on c and answers "ok". */
static void greet(mp_conn *c)
{
    char b[16];
    size_t n;
    assert_int_equal(mp_conn_poll(c, 10 * tu_slow()), 1);
    TU_OK(mp_conn_recv_bytes(c, b, sizeof b, &n));
    assert_int_equal(n, 5);
    assert_memory_equal(b, "hello", 5);
    TU_OK(mp_conn_send_bytes(c, "ok", 2));
    mp_conn_close(c);
}

/* A client that connects within timeout, says "hello" and wants "ok". */
static int client_says_hello(mp_listener *l, double timeout)
{
    mp_conn *c;
    if (mp_client(&c, mp_listener_address(l), KEY, strlen(KEY), timeout) != 0 ||
        mp_conn_send_bytes(c, "hello", 5) != 0)
        return 1;
    char b[16];
    size_t n;
    int rc = mp_conn_poll(c, 20 * tu_slow()) == 1 && mp_conn_recv_bytes(c, b, sizeof b, &n) == 0 &&
             n == 2 ? 0 : 2;
    mp_conn_close(c);
    return rc;
}

static int quick_client(void *arg)
{
    return client_says_hello(arg, 20 * tu_slow());
}

/* Peers that connect and say nothing, more of them than the listener runs
 * at once: the client behind them is served, within the call. */
static void test_listener_serves_a_client_behind_silent_ones(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    int silent[70];
    for (int i = 0; i < 70; i++)
        silent[i] = connect_raw(l);
    pid_t pid = tu_fork(quick_client, l);
    mp_conn *c;
    TU_OK(mp_listener_accept(l, &c, 20 * tu_slow()));
    greet(c);
    assert_int_equal(tu_wait(pid, 20), 0);
    for (int i = 0; i < 70; i++)
        close(silent[i]);
    mp_listener_free(l);
}

/* A slow client's handshake goes on across accept calls that time out,
 * and across a fork whose child accepts too (the handshake is the
 * parent's); it is read a byte at a time, and never past its end. */
static void test_listener_handshake_goes_on_across_calls_and_forks(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    struct slow_client sc = { l, 0.6 };
    pid_t pid = tu_fork(slow_client, &sc);
    mp_conn *c;
    TU_ASSERT_RC(mp_listener_accept(l, &c, 0.2), MP_ETIMEDOUT);   /* the challenge went out */
    pid_t child = fork();             /* accepting while the answer comes in */
    if (child == 0)
        _exit(mp_listener_accept(l, &c, 1.5) == MP_ETIMEDOUT ? 0 : 1);
    assert_int_equal(tu_wait(child, 10), 0);
    TU_OK(mp_listener_accept(l, &c, 20 * tu_slow()));
    greet(c);
    assert_int_equal(tu_wait(pid, 20), 0);
    mp_listener_free(l);
}

/* Freeing the listener closes the handshakes still under way. */
static void test_listener_free_closes_its_handshakes(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    int fd = connect_raw(l);
    mp_conn *c;
    TU_ASSERT_RC(mp_listener_accept(l, &c, 0.2), MP_ETIMEDOUT);
    mp_buf m = { 0 };
    mp_deadline d = deadline_in(5 * tu_slow());
    TU_OK(conn_recv_frame(fd, &m, 256, &d));           /* the challenge: it is under way */
    assert_memory_equal(m.data, "#CHALLENGE#", 11);
    mp_listener_free(l);
    TU_ASSERT_RC(conn_recv_frame(fd, &m, 256, &d), MP_EEOF);
    mp_buf_free(&m);
    close(fd);
}

static int wrong_key_client(void *arg)
{
    mp_listener *l = arg;
    mp_conn *c;
    return mp_client(&c, mp_listener_address(l), OTHER, strlen(OTHER), 20 * tu_slow()) == MP_EAUTH
               ? 0 : 1;
}

/* A wrong key fails the call that sees it; the good client beside it is
 * served by the next. */
static void test_listener_wrong_key_beside_a_good_client(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    pid_t bad = tu_fork(wrong_key_client, l);
    struct slow_client sc = { l, 0 };
    pid_t good = tu_fork(slow_client, &sc);
    mp_conn *c;
    int rc = mp_listener_accept(l, &c, 20 * tu_slow());
    if (rc == MP_EAUTH)
        rc = mp_listener_accept(l, &c, 20 * tu_slow());
    else                              /* the good one came first: the bad one next */
        TU_ASSERT_RC(mp_listener_accept(l, &(mp_conn *){ NULL }, 20 * tu_slow()), MP_EAUTH);
    TU_OK(rc);
    greet(c);
    assert_int_equal(tu_wait(good, 20), 0);
    assert_int_equal(tu_wait(bad, 20), 0);
    mp_listener_free(l);
}


/* Holds its copy of the listener (inherited by fork) until the pipe's
 * write end is closed. */
static int hold_listener(void *arg)
{
    int *pfd = arg;
    close(pfd[1]);
    char b;
    while (read(pfd[0], &b, 1) > 0)
        ;
    return 0;
}

/* A keyed listener held by a forked child too (until pfd[1] closes), and a
 * raw peer (*fd) whose handshake is under way: its challenge is in *m. */
static mp_process *handshake_beside_a_holder(mp_listener **l, int pfd[2], int *fd, mp_buf *m)
{
    TU_OK(mp_listener_new(l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
    mp_process *holder = tu_start_fork(hold_listener, pfd, 2 * sizeof *pfd);
    close(pfd[0]);
    *fd = connect_raw(*l);
    mp_conn *c;
    TU_ASSERT_RC(mp_listener_accept(*l, &c, 0.2), MP_ETIMEDOUT);
    mp_deadline d = deadline_in(5 * tu_slow());
    TU_OK(conn_recv_frame(*fd, m, 256, &d));
    return holder;
}

/* Freeing the listener in this process closes this process's handshakes
 * even while another process still holds the listener. */
static void test_listener_free_closes_its_handshakes_while_a_child_holds_it(void **state)
{
    (void)state;
    mp_listener *l;
    int pfd[2], fd;
    mp_buf m = { 0 };
    mp_process *holder = handshake_beside_a_holder(&l, pfd, &fd, &m);
    mp_listener_free(l);                                /* the child still holds it */
    mp_deadline d2 = deadline_in(2 * tu_slow());
    int rc = conn_recv_frame(fd, &m, 256, &d2);
    close(pfd[1]);
    assert_int_equal(tu_join_free(holder, 10), 0);
    mp_buf_free(&m);
    close(fd);
    TU_ASSERT_RC(rc, MP_EEOF);
}

/* A listener freed while a child held it leaves nothing behind for a new
 * listener of this process: its accept never returns an old one's peer. */
static void test_new_listener_never_returns_an_old_ones_handshake(void **state)
{
    (void)state;
    mp_listener *l;
    int pfd[2], fd;
    mp_buf m = { 0 };
    mp_process *holder = handshake_beside_a_holder(&l, pfd, &fd, &m);
    mp_conn *c = NULL;
    mp_listener_free(l);
    close(pfd[1]);
    assert_int_equal(tu_join_free(holder, 10), 0);      /* the last holder: l is gone */
    mp_listener *l2, *others[64];
    int k = 0;
    TU_OK(mp_listener_new(&l2, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    while (l2 != l && k < 64) {                /* the arena hands out l's block again */
        others[k++] = l2;
        TU_OK(mp_listener_new(&l2, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    }
    while (k > 0)
        mp_listener_free(others[--k]);
    if (l2 != l) {                             /* the check would check nothing */
        mp_listener_free(l2);
        mp_buf_free(&m);
        close(fd);
        skip();
    }
    /* the old peer answers its challenge correctly, late */
    uint8_t out[64];
    unsigned n;
    memcpy(out, "{sha256}", 8);
    HMAC(EVP_sha256(), KEY, (int)strlen(KEY), (const uint8_t *)m.data + 11, m.len - 11, out + 8, &n);
    if (conn_send_frame(fd, out, 8 + n) == 0 &&      /* fails once the socket is closed */
        conn_send_frame(fd, "#CHALLENGE#{sha256}0123456789012345678901234567890123456789", 59) == 0)
        conn_send_frame(fd, "#WELCOME#", 9);
    int rc = mp_listener_accept(l2, &c, 0.5);
    if (rc == 0)
        mp_conn_close(c);
    mp_listener_free(l2);
    mp_buf_free(&m);
    close(fd);
    TU_ASSERT_RC(rc, MP_ETIMEDOUT);
}


/* Accepts on l until stop is set: every peer hangs up, so every
 * handshake is admitted and soon removed again. */
struct churn { mp_listener *l; _Atomic bool stop; int port; };

static void *churn_accept(void *arg)
{
    struct churn *ch = arg;
    while (!ch->stop) {
        mp_conn *c;
        if (mp_listener_accept(ch->l, &c, 0.05) == 0)
            mp_conn_close(c);
    }
    return NULL;
}

static void *churn_connect(void *arg)
{
    struct churn *ch = arg;
    while (!ch->stop) {
        int fd = connect_raw(ch->l);
        usleep(200);
        close(fd);
    }
    return NULL;
}

/* In a fork child: the accepted sockets of the listener's port it holds
 * (the listening socket aside). */
static int accepted_sockets_held(int port)
{
    int n = 0;
    for (int fd = 3; fd < 1024; fd++) {
        struct sockaddr_in sin;
        socklen_t len = sizeof sin;
        int listening = 0;
        socklen_t ll = sizeof listening;
        if (getsockname(fd, (struct sockaddr *)&sin, &len) == 0 && sin.sin_family == AF_INET &&
            ntohs(sin.sin_port) == port &&
            getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) == 0 && !listening)
            n++;
    }
    return n;
}

static int count_strays(void *arg)
{
    return accepted_sockets_held(*(int *)arg) ? 1 : 0;
}

/* A fork while another thread admits and drops handshakes: the child
 * closes every handshake socket it inherits, never one fewer. */
static void test_fork_child_closes_every_handshake_socket_it_inherits(void **state)
{
    (void)state;
    struct churn ch = { .stop = false };
    TU_OK(mp_listener_new(&ch.l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    ch.port = atoi(strrchr(mp_listener_address(ch.l), ':') + 1);
    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, churn_accept, &ch), 0);
    assert_int_equal(pthread_create(&b, NULL, churn_connect, &ch), 0);
    int forks = 0, strays = 0;
    double until = tu_now() + 2 * tu_slow();
    while (tu_now() < until && strays == 0) {
        strays += tu_wait(tu_fork(count_strays, &ch.port), 10) != 0;
        forks++;
    }
    ch.stop = true;
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    mp_listener_free(ch.l);
    assert_int_equal(strays, 0);
    assert_true(forks > 20);          /* the check had its chances */
}


/* A client ahead of a flood of peers that connect and say nothing, more
 * of them than the listener runs at once: it is not pushed out before it
 * could answer, and is served within the call. */
static void test_listener_serves_a_client_ahead_of_silent_ones(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    pid_t pid = tu_fork(quick_client, l);
    assert_true(tu_wait_asleep(pid, 10));          /* connected, waiting for its challenge */
    int silent[100];
    for (int i = 0; i < 100; i++)
        silent[i] = connect_raw(l);
    mp_conn *c;
    TU_OK(mp_listener_accept(l, &c, 10 * tu_slow()));
    greet(c);
    assert_int_equal(tu_wait(pid, 20), 0);
    for (int i = 0; i < 100; i++)
        close(silent[i]);
    mp_listener_free(l);
}

/* Connects and says nothing, 50 times a second, for the seconds given;
 * the sockets stay open until it exits. */
static int floods_with_silent_peers(void *arg)
{
    mp_listener *l = arg;
    struct sockaddr_in sin = loopback_of(l);
    for (double until = tu_now() + 4; tu_now() < until;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0)
            return 1;
        usleep(20 * 1000);
    }
    return 0;
}

static int client_within_3s(void *arg)
{
    return client_says_hello(arg, 3 * tu_slow());
}

/* Silent peers arriving faster than one per HANDSHAKE_PATIENCE, without
 * end: a listener that admitted one per patience fell further behind
 * every second, and a client that came after a second of it waited
 * behind all of them. Once a handshake has had its patience, the next
 * admission takes many at once: intake keeps up, the client is served. */
static void test_listener_keeps_up_with_a_stream_of_silent_peers(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    pid_t flood = tu_fork(floods_with_silent_peers, l);
    mp_conn *c;
    TU_ASSERT_RC(mp_listener_accept(l, &c, 1.0), MP_ETIMEDOUT);   /* a second of the flood */
    pid_t pid = tu_fork(client_within_3s, l);
    int rc;
    double until = tu_now() + 10 * tu_slow();
    do                                  /* MP_EAUTH: a silent peer hung up */
        rc = mp_listener_accept(l, &c, 10 * tu_slow());
    while (rc == MP_EAUTH && tu_now() < until);
    TU_OK(rc);
    greet(c);
    assert_int_equal(tu_wait(pid, 20), 0);
    assert_int_equal(tu_wait(flood, 20), 0);
    mp_listener_free(l);
}

static int accepts_with_no_descriptor_free(void *arg)
{
    bool keyed = arg != NULL;
    mp_listener *l;
    if (mp_listener_new(&l, "tcp:127.0.0.1:0", keyed ? KEY : NULL, keyed ? strlen(KEY) : 0) != 0)
        return 10;
    mp_conn *c;
    if (mp_listener_accept(l, &c, 0) != MP_ETIMEDOUT)   /* this process's record is made */
        return 15;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);   /* a client waits in the backlog */
    struct sockaddr_in sin = loopback_of(l);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0)
        return 11;
    if (!tu_exhaust_fds())
        return 12;
    double t0 = tu_now();
    int rc = mp_listener_accept(l, &c, 0.3);
    double took = tu_now() - t0;
    if (rc != -EMFILE)
        return 13;
    return took >= 0.29 ? 0 : 14;        /* the timeout holds: no return at once to spin on */
}

/* With no descriptor free, accept4 fails at once and the connection stays
 * in the backlog: accept waits out its timeout (looking again now and
 * then), then says why, instead of returning at once for a loop to spin. */
static void test_accept_with_no_descriptor_free_waits_its_timeout_then_says_emfile(void **state)
{
    (void)state;
    assert_int_equal(tu_wait(tu_fork(accepts_with_no_descriptor_free, NULL), 20), 0);
    assert_int_equal(tu_wait(tu_fork(accepts_with_no_descriptor_free, (void *)1), 20), 0);
}

/* A worker process that accepts one connection and keeps it, unanswered,
 * until the pipe's write end closes. */
static int busy_worker(void *arg)
{
    int *pfd = arg;
    close(pfd[1]);
    mp_listener *l = *(mp_listener **)(pfd + 2);
    mp_conn *c;
    if (mp_listener_accept(l, &c, 20 * tu_slow()) != 0)
        return 1;
    char b;
    while (read(pfd[0], &b, 1) > 0)
        ;
    char buf[16];
    size_t n;
    int rc = mp_conn_poll(c, 10 * tu_slow()) == 1 && mp_conn_recv_bytes(c, buf, sizeof buf, &n) == 0 &&
             mp_conn_send_bytes(c, "ok", 2) == 0 ? 0 : 2;
    mp_conn_close(c);
    return rc;
}

/* A worker process that serves connections until a call times out. */
static int serving_worker(void *arg)
{
    mp_listener *l = arg;
    int served = 0;
    mp_conn *c;
    while (mp_listener_accept(l, &c, 2 * tu_slow()) == 0) {
        char buf[16];
        size_t n;
        if (mp_conn_poll(c, 10 * tu_slow()) == 1 && mp_conn_recv_bytes(c, buf, sizeof buf, &n) == 0)
            mp_conn_send_bytes(c, "ok", 2);
        mp_conn_close(c);
        served++;
    }
    return served;
}

/* Two pre-started workers share a keyed listener; one goes off to serve
 * a connection for long. A burst of clients is served by the other
 * meanwhile: none waits in the busy one's handshakes. That holds for
 * clients that answer within HANDSHAKE_PATIENCE (0.1 s); under a
 * sanitizer's slowdown they do not, and the busy worker may take a second
 * one before its first is through, so the case runs in plain builds. */
static void test_listener_burst_goes_to_the_idle_worker(void **state)
{
    (void)state;
    if (tu_slow() > 1)
        skip();
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)));
    int arg[2 + sizeof(mp_listener *) / sizeof(int) + 1];
    assert_int_equal(pipe2(arg, O_CLOEXEC), 0);
    memcpy(arg + 2, &l, sizeof l);
    pid_t busy = tu_fork(busy_worker, arg);
    close(arg[0]);
    pid_t idle = tu_fork(serving_worker, l);
    assert_true(tu_wait_asleep(busy, 10) && tu_wait_asleep(idle, 10));
    enum { CLIENTS = 5 };
    pid_t cl[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        cl[i] = tu_fork(quick_client, l);
    int done = 0, held = -1;
    for (int i = 0; i < CLIENTS; i++) {
        int code = tu_wait(cl[i], 3 * tu_slow());
        if (code == 0)
            done++;
        else if (code == TU_TIMEOUT && held < 0)
            held = i;                  /* the busy worker's own client, killed */
    }
    close(arg[1]);
    int code = tu_wait(busy, 20);
    assert_true(code == 0 || (held >= 0 && code == 2));   /* its client may be gone */
    assert_int_equal(tu_wait(idle, 30), done);
    mp_listener_free(l);
    assert_int_equal(done, CLIENTS - 1);
}

int main(void)
{
    tu_watchdog(200);
    signal(SIGPIPE, SIG_DFL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_succeeds_with_each_digest_and_legacy_md5),
        cmocka_unit_test(test_wrong_key_fails_on_both_sides),
        cmocka_unit_test(test_deliver_refuses_unknown_digest_name),
        cmocka_unit_test(test_answer_refuses_malformed_challenges),
        cmocka_unit_test(test_answer_to_legacy_challenge_is_bare_md5),
        cmocka_unit_test(test_deliver_accepts_answers_where_cpython_does),
        cmocka_unit_test(test_listener_and_client_authenticate_each_other),
        cmocka_unit_test(test_client_without_key_meets_a_challenge_and_is_refused),
        cmocka_unit_test(test_empty_key_runs_the_handshake_and_null_skips_it),
        cmocka_unit_test(test_python_client_talks_to_mproc_listener),
        cmocka_unit_test(test_python_client_with_wrong_key_is_refused),
        cmocka_unit_test(test_python_client_with_empty_key_runs_the_handshake),
        cmocka_unit_test(test_mproc_client_with_empty_key_meets_python312_listener),
        cmocka_unit_test(test_python312_sha256_client_talks_to_mproc_listener),
        cmocka_unit_test(test_mproc_client_talks_to_python_listener),
        cmocka_unit_test(test_mproc_client_with_wrong_key_is_refused_by_python),
        cmocka_unit_test(test_mproc_client_talks_to_python312_sha256_listener),
        cmocka_unit_test(test_listener_serves_a_client_behind_silent_ones),
        cmocka_unit_test(test_listener_handshake_goes_on_across_calls_and_forks),
        cmocka_unit_test(test_listener_free_closes_its_handshakes),
        cmocka_unit_test(test_listener_wrong_key_beside_a_good_client),
        cmocka_unit_test(test_listener_free_closes_its_handshakes_while_a_child_holds_it),
        cmocka_unit_test(test_new_listener_never_returns_an_old_ones_handshake),
        cmocka_unit_test(test_fork_child_closes_every_handshake_socket_it_inherits),
        cmocka_unit_test(test_listener_serves_a_client_ahead_of_silent_ones),
        cmocka_unit_test(test_listener_keeps_up_with_a_stream_of_silent_peers),
        cmocka_unit_test(test_accept_with_no_descriptor_free_waits_its_timeout_then_says_emfile),
        cmocka_unit_test(test_listener_burst_goes_to_the_idle_worker),
        cmocka_unit_test(test_listener_file_goes_when_its_creator_exits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
