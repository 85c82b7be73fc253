/* test_conn.c - pipes, framing, mp_wait, listeners and clients.
 *
 * Frames are checked against what CPython's multiprocessing.connection puts
 * on the wire; the peer is often a raw descriptor writing crafted bytes
 * (half a header, a lying length) to prove the reader's failure paths.
 * MPROC_WHITEBOX: links the static library to reach conn_internal.h.
 */
#include "testutil.h"

#include "conn_internal.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* A conn on one end of a socketpair, the raw other end for crafted bytes. */
static mp_conn *conn_with_raw_peer(int *peer)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    mp_conn *c;
    TU_OK(conn_from_fd(&c, sv[0], true, true));
    *peer = sv[1];
    return c;
}

static void write_raw(int fd, const void *p, size_t n)
{
    assert_int_equal(write(fd, p, n), (ssize_t)n);
}

/* ------------------------------------------------------------------ pipes */

static void test_pipe_duplex_carries_messages_both_ways(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    char buf[64];
    size_t len;
    TU_OK(mp_conn_send_bytes(a, "ping", 4));
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_int_equal(len, 4);
    assert_memory_equal(buf, "ping", 4);
    TU_OK(mp_conn_send_bytes(b, "pong!", 5));
    TU_OK(mp_conn_send_bytes(b, NULL, 0));
    TU_OK(mp_conn_recv_bytes(a, buf, sizeof buf, &len));
    assert_int_equal(len, 5);
    TU_OK(mp_conn_recv_bytes(a, NULL, 0, &len));   /* an empty message is a message */
    assert_int_equal(len, 0);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_pipe_one_way_a_receives_b_sends(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, false));
    char buf[8];
    size_t len;
    TU_ASSERT_RC(mp_conn_send_bytes(a, "x", 1), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_recv_bytes(b, buf, sizeof buf, &len), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_poll(b, 0), MP_EINVAL);
    TU_OK(mp_conn_send_bytes(b, "one", 3));
    TU_OK(mp_conn_recv_bytes(a, buf, sizeof buf, &len));
    assert_memory_equal(buf, "one", 3);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_calls_refuse_bad_arguments_with_einval(void **state)
{
    (void)state;
    mp_conn *a, *b;
    mp_buf out = { 0 };
    size_t len;
    char buf[4];
    TU_ASSERT_RC(mp_pipe(NULL, &b, true), MP_EINVAL);
    TU_ASSERT_RC(mp_pipe(&a, NULL, true), MP_EINVAL);
    TU_OK(mp_pipe(&a, &b, true));
    TU_ASSERT_RC(mp_conn_send_bytes(NULL, "x", 1), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_send_bytes(a, NULL, 1), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_recv_bytes(a, buf, sizeof buf, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_recv_bytes(a, NULL, 4, &len), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_recv_bytes(NULL, buf, 4, &len), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_recv_buf(a, NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_recv_buf(NULL, &out, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_poll(NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_poll(a, 0.0 / 0.0), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_fileno(NULL), MP_EINVAL);
    assert_true(mp_conn_fileno(a) >= 0);
    mp_conn_close(NULL);
    TU_ASSERT_RC(conn_from_fd(&a, -1, true, true), MP_EINVAL);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_closed_unshared_handle_is_refused(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    mp_conn_close(a);
    TU_ASSERT_RC(mp_conn_send_bytes(a, "x", 1), MP_EINVAL);   /* freed: magic is gone */
    mp_conn_close(a);                                          /* second close: no-op */
    mp_conn_close(b);
}

static void test_descriptors_are_close_on_exec(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, false));
    assert_true(fcntl(mp_conn_fileno(a), F_GETFD) & FD_CLOEXEC);
    assert_true(fcntl(mp_conn_fileno(b), F_GETFD) & FD_CLOEXEC);
    mp_conn_close(a);
    mp_conn_close(b);
}

/* ------------------------------------------------------------------ frames */

static void test_frame_header_matches_cpython(void **state)
{
    (void)state;
    uint8_t h[FRAME_HEADER_MAX];
    assert_int_equal(frame_header_encode(5, h), 4);
    assert_memory_equal(h, "\0\0\0\5", 4);
    assert_int_equal(frame_header_encode(0x7fffffff, h), 4);
    assert_memory_equal(h, "\x7f\xff\xff\xff", 4);
    /* struct.pack("!i", -1) + struct.pack("!Q", 0x80000000) */
    assert_int_equal(frame_header_encode(0x80000000u, h), 12);
    assert_memory_equal(h, "\xff\xff\xff\xff\0\0\0\0\x80\0\0\0", 12);
    assert_int_equal(frame_header_encode(0x123456789aULL, h), 12);
    assert_memory_equal(h + 4, "\0\0\0\x12\x34\x56\x78\x9a", 8);
}

static void test_send_writes_cpython_frame(void **state)
{
    (void)state;
    int peer;
    mp_conn *c = conn_with_raw_peer(&peer);
    TU_OK(mp_conn_send_bytes(c, "abc", 3));
    char got[7];
    assert_int_equal(read(peer, got, 7), 7);
    assert_memory_equal(got, "\0\0\0\3abc", 7);
    close(peer);
    mp_conn_close(c);
}

static void test_recv_accepts_64bit_length_form(void **state)
{
    (void)state;
    int peer;
    mp_conn *c = conn_with_raw_peer(&peer);
    write_raw(peer, "\xff\xff\xff\xff\0\0\0\0\0\0\0\3xyz", 15);
    char buf[8];
    size_t len;
    TU_OK(mp_conn_recv_bytes(c, buf, sizeof buf, &len));
    assert_int_equal(len, 3);
    assert_memory_equal(buf, "xyz", 3);
    close(peer);
    mp_conn_close(c);
}

static void test_recv_bytes_etoobig_sets_len_and_keeps_message(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    TU_OK(mp_conn_send_bytes(a, "0123456789", 10));
    char small[4], big[16];
    size_t len = 0;
    TU_ASSERT_RC(mp_conn_recv_bytes(b, small, sizeof small, &len), MP_ETOOBIG);
    assert_int_equal(len, 10);
    assert_int_equal(mp_conn_poll(b, 0), 1);        /* still there */
    TU_OK(mp_conn_recv_bytes(b, big, sizeof big, &len));
    assert_int_equal(len, 10);
    assert_memory_equal(big, "0123456789", 10);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_recv_buf_checks_maxlen_before_allocating(void **state)
{
    (void)state;
    int peer;
    mp_conn *c = conn_with_raw_peer(&peer);
    /* claims 1 GiB (and the 64-bit form claims 2^62) but sends nothing more */
    write_raw(peer, "\x40\0\0\0", 4);
    mp_buf out = { 0 };
    TU_ASSERT_RC(mp_conn_recv_buf(c, &out, 1 << 20), MP_ETOOBIG);
    assert_null(out.data);                          /* nothing allocated */
    size_t len;
    TU_ASSERT_RC(mp_conn_recv_bytes(c, NULL, 0, &len), MP_ETOOBIG);   /* pending */
    assert_int_equal(len, (size_t)1 << 30);
    close(peer);
    mp_conn_close(c);

    c = conn_with_raw_peer(&peer);
    write_raw(peer, "\xff\xff\xff\xff\x40\0\0\0\0\0\0\0", 12);
    TU_ASSERT_RC(mp_conn_recv_buf(c, &out, 1 << 20), MP_ETOOBIG);
    assert_null(out.data);
    close(peer);
    mp_conn_close(c);
}

static void test_recv_buf_without_limit_grows_only_with_bytes_sent(void **state)
{
    (void)state;
    int peer;
    mp_conn *c = conn_with_raw_peer(&peer);
    /* a liar: claims 2^62 bytes, sends 5, closes. No 4 EiB allocation. */
    write_raw(peer, "\xff\xff\xff\xff\x40\0\0\0\0\0\0\0hello", 17);
    close(peer);
    mp_buf out = { 0 };
    TU_ASSERT_RC(mp_conn_recv_buf(c, &out, 0), MP_EEOF);
    assert_true(out.cap <= ((size_t)32 << 20));
    mp_buf_free(&out);
    mp_conn_close(c);
}

static void test_recv_buf_reuses_buffer_and_replaces_contents(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    mp_buf out = { 0 };
    TU_OK(mp_conn_send_bytes(a, "first message", 13));
    TU_OK(mp_conn_send_bytes(a, "two", 3));
    TU_OK(mp_conn_recv_buf(b, &out, 0));
    assert_int_equal(out.len, 13);
    TU_OK(mp_conn_recv_buf(b, &out, 3));            /* exactly maxlen is allowed */
    assert_int_equal(out.len, 3);
    assert_memory_equal(out.data, "two", 3);
    mp_buf_free(&out);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_recv_returns_eeof_when_peer_closes(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, false));
    TU_OK(mp_conn_send_bytes(b, "last", 4));
    mp_conn_close(b);
    char buf[8];
    size_t len;
    mp_buf out = { 0 };
    TU_OK(mp_conn_recv_bytes(a, buf, sizeof buf, &len));
    TU_ASSERT_RC(mp_conn_recv_bytes(a, buf, sizeof buf, &len), MP_EEOF);
    TU_ASSERT_RC(mp_conn_recv_buf(a, &out, 0), MP_EEOF);
    assert_int_equal(mp_conn_poll(a, 0), 1);        /* EOF counts as ready */
    mp_conn_close(a);
}

static void test_truncated_header_is_eeof(void **state)
{
    (void)state;
    int peer;
    mp_conn *c = conn_with_raw_peer(&peer);
    write_raw(peer, "\0\0", 2);
    close(peer);
    char buf[8];
    size_t len;
    TU_ASSERT_RC(mp_conn_recv_bytes(c, buf, sizeof buf, &len), MP_EEOF);
    mp_conn_close(c);

    c = conn_with_raw_peer(&peer);                   /* half of the 64-bit length */
    write_raw(peer, "\xff\xff\xff\xff\0\0\0", 7);
    close(peer);
    mp_buf out = { 0 };
    TU_ASSERT_RC(mp_conn_recv_buf(c, &out, 0), MP_EEOF);
    mp_conn_close(c);
}

static void test_truncated_body_is_eeof(void **state)
{
    (void)state;
    int peer;
    mp_conn *c = conn_with_raw_peer(&peer);
    write_raw(peer, "\0\0\0\x0a" "half", 8);
    close(peer);
    char buf[16];
    size_t len;
    TU_ASSERT_RC(mp_conn_recv_bytes(c, buf, sizeof buf, &len), MP_EEOF);
    mp_conn_close(c);
}

static void test_negative_length_is_eproto(void **state)
{
    (void)state;
    int peer;
    mp_conn *c = conn_with_raw_peer(&peer);
    write_raw(peer, "\xff\xff\xff\xfe", 4);
    mp_buf out = { 0 };
    TU_ASSERT_RC(mp_conn_recv_buf(c, &out, 0), MP_EPROTO);
    close(peer);
    mp_conn_close(c);
}

static void test_poll_times_out_then_sees_data(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    assert_int_equal(mp_conn_poll(b, 0), 0);
    double t0 = tu_now();
    assert_int_equal(mp_conn_poll(b, 0.05), 0);
    assert_true(tu_now() - t0 >= 0.045);
    TU_OK(mp_conn_send_bytes(a, "x", 1));
    assert_int_equal(mp_conn_poll(b, MP_FOREVER), 1);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_send_to_closed_peer_is_epipe_not_sigpipe(void **state)
{
    (void)state;
    for (int duplex = 0; duplex <= 1; duplex++) {
        mp_conn *a, *b;
        TU_OK(mp_pipe(&a, &b, duplex));
        mp_conn_close(a);
        TU_ASSERT_RC(mp_conn_send_bytes(b, "x", 1), -EPIPE);   /* and we are alive */
        sigset_t pending;
        sigpending(&pending);
        assert_false(sigismember(&pending, SIGPIPE));
        mp_conn_close(b);
    }
}

/* ------------------------------------------------------------------ children */

struct echo_arg { mp_conn *c; size_t size; };

static int child_echo_checksum(void *p)
{
    struct echo_arg *e = p;
    mp_buf in = { 0 };
    if (mp_conn_recv_buf(e->c, &in, 0) != 0 || in.len != e->size)
        return 1;
    uint64_t sum = 0;
    for (size_t i = 0; i < in.len; i++)
        sum += ((unsigned char *)in.data)[i];
    mp_buf_free(&in);
    return mp_conn_send_bytes(e->c, &sum, sizeof sum) == 0 ? 0 : 2;
}

static void test_big_message_crosses_to_a_child(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    struct echo_arg e = { b, (size_t)48 << 20 };
    pid_t pid = tu_fork(child_echo_checksum, &e);
    mp_conn_close(b);             /* the child keeps its copy: the handle stays valid there */
    unsigned char *big = malloc(e.size);
    uint64_t sum = 0;
    for (size_t i = 0; i < e.size; i++)
        sum += big[i] = (unsigned char)(i * 7);
    TU_OK(mp_conn_send_bytes(a, big, e.size));
    uint64_t got;
    size_t len;
    TU_OK(mp_conn_recv_bytes(a, &got, sizeof got, &len));
    assert_int_equal(got, sum);
    assert_int_equal(tu_wait(pid, 30), 0);
    free(big);
    mp_conn_close(a);
}

static int child_closes_then_exits(void *p)
{
    mp_conn_close(p);
    return 0;
}

static void test_handle_survives_close_in_the_other_process(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    pid_t pid = tu_fork(child_closes_then_exits, a);
    assert_int_equal(tu_wait(pid, 10), 0);
    TU_OK(mp_conn_send_bytes(a, "still mine", 10));   /* the child's close freed nothing */
    char buf[16];
    size_t len;
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_keep_across_exec_clears_cloexec_on_live_connections(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, false));
    int other = open("/dev/null", O_RDONLY | O_CLOEXEC);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "test -e /proc/$$/fd/%d && test -e /proc/$$/fd/%d && ! test -e /proc/$$/fd/%d",
             mp_conn_fileno(a), mp_conn_fileno(b), other);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        conn_keep_across_exec();
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    assert_int_equal(tu_wait(pid, 10), 0);
    close(other);
    mp_conn_close(a);
    mp_conn_close(b);
}

/* ------------------------------------------------------------------ mp_wait */

static void test_wait_reports_which_pipes_are_ready(void **state)
{
    (void)state;
    mp_conn *r[3], *w[3];
    int fds[3];
    for (int i = 0; i < 3; i++) {
        TU_OK(mp_pipe(&r[i], &w[i], false));
        fds[i] = mp_conn_fileno(r[i]);
    }
    bool ready[3];
    assert_int_equal(mp_wait(fds, 3, ready, 0.02), 0);
    assert_false(ready[0] || ready[1] || ready[2]);
    TU_OK(mp_conn_send_bytes(w[1], "b", 1));
    mp_conn_close(w[2]);                         /* EOF is ready too */
    assert_int_equal(mp_wait(fds, 3, ready, MP_FOREVER), 2);
    assert_false(ready[0]);
    assert_true(ready[1] && ready[2]);
    assert_int_equal(mp_wait(fds, 3, NULL, 0), 2);
    for (int i = 0; i < 3; i++) {
        mp_conn_close(r[i]);
        if (i != 2)
            mp_conn_close(w[i]);
    }
}

static int child_exits_quickly(void *p)
{
    (void)p;
    return 0;
}

static void test_wait_sees_a_process_end_through_a_pidfd(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    pid_t pid = tu_fork(child_exits_quickly, NULL);
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        tu_wait(pid, 10);
        skip();
    }
    int fds[2] = { mp_conn_fileno(a), pidfd };
    bool ready[2];
    assert_int_equal(mp_wait(fds, 2, ready, 10 * tu_slow()), 1);
    assert_false(ready[0]);
    assert_true(ready[1]);
    assert_int_equal(tu_wait(pid, 10), 0);
    close(pidfd);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_wait_validates_and_times_out(void **state)
{
    (void)state;
    int bad = -1;
    bool ready;
    TU_ASSERT_RC(mp_wait(NULL, 1, &ready, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_wait(&bad, 1, &ready, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_wait(NULL, 0, NULL, 0.0 / 0.0), MP_EINVAL);
    double t0 = tu_now();
    assert_int_equal(mp_wait(NULL, 0, NULL, 0.03), 0);
    assert_true(tu_now() - t0 >= 0.025);
}

/* ------------------------------------------------------------------ listener / client */

struct client_arg { const char *address; const char *msg; };

static int child_client_says(void *p)
{
    struct client_arg *a = p;
    mp_conn *c;
    int rc = mp_client(&c, a->address, NULL, 0, 10);
    if (rc != 0)
        return 10;
    char buf[64];
    size_t len;
    if (mp_conn_send_bytes(c, a->msg, strlen(a->msg)) != 0 || mp_conn_recv_bytes(c, buf, sizeof buf, &len) != 0)
        return 11;
    mp_conn_close(c);
    return len == 2 && memcmp(buf, "ok", 2) == 0 ? 0 : 12;
}

/* Accepts one client in a child that sends msg, answers "ok". */
static void round_trip_through(mp_listener *l)
{
    struct client_arg arg = { mp_listener_address(l), "hi there" };
    pid_t pid = tu_fork(child_client_says, &arg);
    mp_conn *c;
    TU_OK(mp_listener_accept(l, &c, 10 * tu_slow()));
    char buf[64];
    size_t len;
    TU_OK(mp_conn_recv_bytes(c, buf, sizeof buf, &len));
    assert_int_equal(len, 8);
    assert_memory_equal(buf, "hi there", 8);
    TU_OK(mp_conn_send_bytes(c, "ok", 2));
    assert_int_equal(tu_wait(pid, 10), 0);
    mp_conn_close(c);
}

static void test_tcp_v4_port_zero_reports_the_port_it_got(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", NULL, 0));
    const char *addr = mp_listener_address(l);
    assert_non_null(addr);
    assert_memory_equal(addr, "tcp:127.0.0.1:", 14);
    assert_true(atoi(addr + 14) > 0);
    assert_true(mp_listener_fileno(l) >= 0);
    round_trip_through(l);
    mp_listener_free(l);
}

static void test_tcp_v6_when_available(void **state)
{
    (void)state;
    mp_listener *l;
    if (mp_listener_new(&l, "tcp:[::1]:0", NULL, 0) != 0)
        skip();                                    /* no IPv6 loopback here */
    assert_memory_equal(mp_listener_address(l), "tcp:[::1]:", 10);
    round_trip_through(l);
    mp_listener_free(l);
}

static void test_unix_path_listener_removes_its_file(void **state)
{
    (void)state;
    char path[64], addr[80];
    snprintf(path, sizeof path, "/tmp/mproc-test-%d.sock", (int)getpid());
    snprintf(addr, sizeof addr, "unix:%s", path);
    mp_listener *l;
    TU_OK(mp_listener_new(&l, addr, NULL, 0));
    assert_string_equal(mp_listener_address(l), addr);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    TU_ASSERT_RC(mp_listener_new(&(mp_listener *){ NULL }, addr, NULL, 0), -EADDRINUSE);
    round_trip_through(l);
    mp_listener_free(l);
    assert_int_equal(stat(path, &st), -1);
}

static void test_unix_abstract_listener(void **state)
{
    (void)state;
    char addr[80];
    snprintf(addr, sizeof addr, "unix:@mproc-test-%d", (int)getpid());
    mp_listener *l;
    TU_OK(mp_listener_new(&l, addr, NULL, 0));
    round_trip_through(l);
    mp_listener_free(l);
}

static void test_accept_times_out(void **state)
{
    (void)state;
    mp_listener *l;
    mp_conn *c;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", NULL, 0));
    TU_ASSERT_RC(mp_listener_accept(l, &c, 0), MP_ETIMEDOUT);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_listener_accept(l, &c, 0.05), MP_ETIMEDOUT);
    assert_true(tu_now() - t0 >= 0.045);
    TU_ASSERT_RC(mp_listener_accept(l, NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_listener_accept(NULL, &c, 0), MP_EINVAL);
    mp_listener_free(l);
    mp_listener_free(NULL);
}

static void test_bad_addresses_are_einval(void **state)
{
    (void)state;
    static const char *bad[] = { "", "unix:", "tcp:", "tcp:127.0.0.1", "tcp:127.0.0.1:x",
                                 "tcp:127.0.0.1:70000", "tcp:[::1:5", "tcp::80", "udp:1.2.3.4:5",
                                 ("unix:/tmp/a-path-that-is-far-too-long-for-a-unix-socket-address-"
                                  "because-sun-path-holds-only-one-hundred-and-eight-bytes.sock") };
    mp_listener *l;
    mp_conn *c;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        TU_ASSERT_RC(mp_listener_new(&l, bad[i], NULL, 0), MP_EINVAL);
        TU_ASSERT_RC(mp_client(&c, bad[i], NULL, 0, 1), MP_EINVAL);
    }
    TU_ASSERT_RC(mp_listener_new(&l, NULL, NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_listener_new(NULL, "tcp:127.0.0.1:0", NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_listener_new(&l, "tcp:127.0.0.1:0", NULL, 4), MP_EINVAL);
    TU_ASSERT_RC(mp_client(NULL, "tcp:127.0.0.1:1", NULL, 0, 1), MP_EINVAL);
    assert_null(mp_listener_address(NULL));
    TU_ASSERT_RC(mp_listener_fileno(NULL), MP_EINVAL);
}

static void test_client_reports_refused_and_missing(void **state)
{
    (void)state;
    mp_listener *l;
    mp_conn *c;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", NULL, 0));
    char addr[128];
    snprintf(addr, sizeof addr, "%s", mp_listener_address(l));
    mp_listener_free(l);                                      /* the port is free again */
    TU_ASSERT_RC(mp_client(&c, addr, NULL, 0, 5), -ECONNREFUSED);
    TU_ASSERT_RC(mp_client(&c, "unix:/nonexistent/mproc.sock", NULL, 0, 5), -ENOENT);
}

struct worker_arg { mp_listener *l; };

static int child_accepts_one(void *p)
{
    struct worker_arg *w = p;
    mp_conn *c;
    if (mp_listener_accept(w->l, &c, 20 * tu_slow()) != 0)
        return 20;
    char buf[64];
    size_t len;
    int rc = mp_conn_recv_bytes(c, buf, sizeof buf, &len) == 0 && mp_conn_send_bytes(c, "ok", 2) == 0;
    mp_conn_close(c);
    mp_listener_free(w->l);
    return rc ? 0 : 21;
}

static void test_forked_workers_share_one_listener(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", NULL, 0));
    struct worker_arg w = { l };
    pid_t workers[2], clients[2];
    struct client_arg arg = { mp_listener_address(l), "work" };
    for (int i = 0; i < 2; i++)
        workers[i] = tu_fork(child_accepts_one, &w);
    for (int i = 0; i < 2; i++)
        clients[i] = tu_fork(child_client_says, &arg);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tu_wait(clients[i], 30), 0);
        assert_int_equal(tu_wait(workers[i], 30), 0);
    }
    TU_ASSERT_RC(mp_listener_accept(l, &(mp_conn *){ NULL }, 0), MP_ETIMEDOUT);
    mp_listener_free(l);
}

int main(void)
{
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipe_duplex_carries_messages_both_ways),
        cmocka_unit_test(test_pipe_one_way_a_receives_b_sends),
        cmocka_unit_test(test_calls_refuse_bad_arguments_with_einval),
        cmocka_unit_test(test_closed_unshared_handle_is_refused),
        cmocka_unit_test(test_descriptors_are_close_on_exec),
        cmocka_unit_test(test_frame_header_matches_cpython),
        cmocka_unit_test(test_send_writes_cpython_frame),
        cmocka_unit_test(test_recv_accepts_64bit_length_form),
        cmocka_unit_test(test_recv_bytes_etoobig_sets_len_and_keeps_message),
        cmocka_unit_test(test_recv_buf_checks_maxlen_before_allocating),
        cmocka_unit_test(test_recv_buf_without_limit_grows_only_with_bytes_sent),
        cmocka_unit_test(test_recv_buf_reuses_buffer_and_replaces_contents),
        cmocka_unit_test(test_recv_returns_eeof_when_peer_closes),
        cmocka_unit_test(test_truncated_header_is_eeof),
        cmocka_unit_test(test_truncated_body_is_eeof),
        cmocka_unit_test(test_negative_length_is_eproto),
        cmocka_unit_test(test_poll_times_out_then_sees_data),
        cmocka_unit_test(test_send_to_closed_peer_is_epipe_not_sigpipe),
        cmocka_unit_test(test_big_message_crosses_to_a_child),
        cmocka_unit_test(test_handle_survives_close_in_the_other_process),
        cmocka_unit_test(test_keep_across_exec_clears_cloexec_on_live_connections),
        cmocka_unit_test(test_wait_reports_which_pipes_are_ready),
        cmocka_unit_test(test_wait_sees_a_process_end_through_a_pidfd),
        cmocka_unit_test(test_wait_validates_and_times_out),
        cmocka_unit_test(test_tcp_v4_port_zero_reports_the_port_it_got),
        cmocka_unit_test(test_tcp_v6_when_available),
        cmocka_unit_test(test_unix_path_listener_removes_its_file),
        cmocka_unit_test(test_unix_abstract_listener),
        cmocka_unit_test(test_accept_times_out),
        cmocka_unit_test(test_bad_addresses_are_einval),
        cmocka_unit_test(test_client_reports_refused_and_missing),
        cmocka_unit_test(test_forked_workers_share_one_listener),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
