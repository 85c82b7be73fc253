/* test_conn.c - pipes, framing, mp_wait, listeners and clients.
 *
 * Frames are checked against what CPython's multiprocessing.connection puts
 * on the wire; the peer is often a raw descriptor writing crafted bytes
 * (half a header, a lying length) to prove the reader's failure paths.
 * MPROC_WHITEBOX: links the static library to reach conn_internal.h.
 */
#include "testutil.h"

#include "conn_internal.h"
#include "platform/platform.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
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

/* A length no buffer can have, or one running past the process's memory,
 * is refused before a byte moves: the stream stays whole. */
static void check_impossible_lengths(mp_conn *tx, mp_conn *rx)
{
    size_t lens[] = { SIZE_MAX, SIZE_MAX - 11, (size_t)PTRDIFF_MAX + 1 };
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        TU_ASSERT_RC(mp_conn_send_bytes(tx, "x", lens[i]), MP_ETOOBIG);
        assert_non_null(strstr(mp_last_error(), "more than any buffer can hold"));
    }
    if (!RUNNING_ON_VALGRIND) {          /* there valgrind reports such a range itself */
        TU_ASSERT_RC(mp_conn_send_bytes(tx, "x", (size_t)1 << 44), MP_EINVAL);
        assert_non_null(strstr(mp_last_error(), "runs past this process's memory"));
    }
    TU_OK(mp_conn_send_bytes(tx, "ok", 2));
    char buf[8];
    size_t len;
    TU_OK(mp_conn_recv_bytes(rx, buf, sizeof buf, &len));
    assert_int_equal(len, 2);
    assert_memory_equal(buf, "ok", 2);
}

static void test_send_refuses_impossible_lengths_without_crashing(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));           /* ring ends */
    check_impossible_lengths(a, b);
    mp_conn_close(a);
    mp_conn_close(b);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    TU_OK(conn_from_fd(&a, sv[0], true, true));   /* descriptor ends */
    TU_OK(conn_from_fd(&b, sv[1], true, true));
    check_impossible_lengths(a, b);
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
    assert_true(out.cap <= ((size_t)64 << 10));
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

    /* A 64-bit length no process can hold is as malformed: not MP_ETOOBIG,
     * whose message stays pending for a bigger buffer. */
    c = conn_with_raw_peer(&peer);
    write_raw(peer, "\xff\xff\xff\xff\x80\0\0\0\0\0\0\0", 12);
    char buf[16];
    size_t len = 7;
    TU_ASSERT_RC(mp_conn_recv_bytes(c, buf, sizeof buf, &len), MP_EPROTO);
    assert_non_null(strstr(mp_last_error(), "malformed frame header"));
    close(peer);
    mp_conn_close(c);
    mp_buf_free(&out);
}

/* ------------------------------------------------------------------ no memory for a body */

/* mp_buf_reserve refuses one growth to refuse_from bytes or more (0: none). */
static _Atomic size_t refuse_from;

static bool refuse_once(size_t cap)
{
    size_t at = atomic_load(&refuse_from);
    return at && cap >= at && atomic_compare_exchange_strong(&refuse_from, &at, 0);
}

static void refuse_growth_to(size_t cap)
{
    atomic_store(&refuse_from, cap);
    mp__buf_refuse_alloc = refuse_once;
}

static void *send_big_then_next_then_close(void *p)
{
    int fd = *(int *)p;
    size_t size = (size_t)1 << 20;
    char *big = malloc(size);
    memset(big, 'b', size);              /* read as a header: a 1.6 GB length */
    int rc = big ? conn_send_frame(fd, big, size) : MP_ENOMEM;
    if (rc == 0)
        rc = conn_send_frame(fd, "next", 4);
    free(big);
    close(fd);
    return (void *)(intptr_t)rc;
}

/* The next message on c is "next". */
static void expect_next(mp_conn *c)
{
    char buf[8];
    size_t len;
    TU_OK(mp_conn_recv_bytes(c, buf, sizeof buf, &len));
    assert_int_equal(len, 4);
    assert_memory_equal(buf, "next", 4);
}

/* The body outgrows the first chunk and one growth finds no memory: that
 * message is dropped, whole, and the next receive gets the next one. */
static void test_recv_buf_without_memory_drops_the_message_and_keeps_sync(void **state)
{
    (void)state;
    int peer;
    mp_conn *c = conn_with_raw_peer(&peer);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, send_big_then_next_then_close, &peer), 0);
    mp_buf out = { 0 };
    refuse_growth_to((size_t)256 << 10);
    TU_ASSERT_RC(mp_conn_recv_buf(c, &out, 0), MP_ENOMEM);
    mp__buf_refuse_alloc = NULL;
    assert_int_equal(atomic_load(&refuse_from), 0);     /* refused halfway, not before */
    tu_last_error_has("1048576 bytes", "dropped", "stays usable", NULL);
    TU_OK(mp_conn_recv_buf(c, &out, 0));
    assert_int_equal(out.len, 4);
    assert_memory_equal(out.data, "next", 4);
    TU_ASSERT_RC(mp_conn_recv_buf(c, &out, 0), MP_EEOF);
    void *sent;
    pthread_join(t, &sent);
    assert_int_equal((intptr_t)sent, 0);
    mp_buf_free(&out);
    mp_conn_close(c);
}

/* A small message read ahead whole with the next: it is dropped from the
 * read-ahead, which then holds just the next message (ready). */
static void test_message_dropped_without_memory_leaves_the_next_read_ahead(void **state)
{
    (void)state;
    int peer;
    mp_conn *c = conn_with_raw_peer(&peer);
    uint8_t wire[4 + 1000 + 8];
    memcpy(wire, "\0\0\x03\xe8", 4);
    memset(wire + 4, 'x', 1000);
    memcpy(wire + 1004, "\0\0\0\4next", 8);
    write_raw(peer, wire, sizeof wire);
    mp_buf out = { 0 };
    refuse_growth_to(1000);
    TU_ASSERT_RC(mp_conn_recv_buf(c, &out, 0), MP_ENOMEM);
    mp__buf_refuse_alloc = NULL;
    int fd = mp_conn_fileno(c);
    bool ready;
    assert_int_equal(mp_conn_poll(c, 0), 1);
    assert_int_equal(mp_wait(&fd, 1, &ready, 0), 1);
    expect_next(c);
    assert_int_equal(mp_conn_poll(c, 0), 0);
    mp_buf_free(&out);
    close(peer);
    mp_conn_close(c);
}

/* The peer is still sending the dropped message: its bytes make neither
 * mp_conn_poll nor mp_wait ready, and a descriptor sent after it is the
 * next thing mp_conn_recv_fd gets. */
static void test_rest_of_a_dropped_message_is_not_ready_and_comes_out_first(void **state)
{
    (void)state;
    int peer;
    mp_conn *c = conn_with_raw_peer(&peer);
    size_t size = (size_t)150 << 10, first = (size_t)80 << 10;
    uint8_t head[FRAME_HEADER_MAX];
    size_t n = frame_header_encode(size, head);
    char *body = malloc(size);
    assert_non_null(body);
    memset(body, 'r', size);
    write_raw(peer, head, n);
    write_raw(peer, body, first);
    mp_buf out = { 0 };
    refuse_growth_to((size_t)128 << 10);            /* after the first 64 KiB */
    TU_ASSERT_RC(mp_conn_recv_buf(c, &out, 0), MP_ENOMEM);
    mp__buf_refuse_alloc = NULL;
    int fd = mp_conn_fileno(c);
    bool ready;
    assert_int_equal(mp_conn_poll(c, 0), 0);        /* only the dropped message's bytes */
    assert_int_equal(mp_wait(&fd, 1, &ready, 0), 0);
    assert_false(ready);
    write_raw(peer, body + first, size - first);
    mp_conn *p;
    TU_OK(conn_from_fd(&p, peer, true, true));
    int sent = open("/dev/null", O_RDONLY | O_CLOEXEC), got = -1;
    TU_OK(mp_conn_send_fd(p, sent));
    TU_OK(mp_conn_send_bytes(p, "next", 4));
    TU_OK(mp_conn_recv_fd(c, &got, 5 * tu_slow()));
    struct stat a, b;
    assert_int_equal(fstat(sent, &a), 0);
    assert_int_equal(fstat(got, &b), 0);
    assert_true(a.st_dev == b.st_dev && a.st_ino == b.st_ino);
    assert_int_equal(mp_conn_poll(c, 5 * tu_slow()), 1);
    expect_next(c);
    close(sent);
    close(got);
    free(body);
    mp_buf_free(&out);
    mp_conn_close(p);
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
    int p[2];                                      /* the raw framing call too */
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    close(p[0]);
    TU_ASSERT_RC(conn_send_frame(p[1], "x", 1), -EPIPE);
    close(p[1]);
}

static void test_buffered_messages_count_as_ready(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    for (int i = 0; i < 3; i++)
        TU_OK(mp_conn_send_bytes(a, "msg", 3));
    char buf[8];
    size_t len;
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));   /* one read took all three */
    int fd = mp_conn_fileno(b);
    bool ready;
    assert_int_equal(mp_conn_poll(b, 0), 1);
    assert_int_equal(mp_wait(&fd, 1, &ready, 0), 1);
    assert_true(ready);
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_int_equal(mp_conn_poll(b, 0), 0);
    assert_int_equal(mp_wait(&fd, 1, &ready, 0), 0);
    assert_false(ready);
    mp_conn_close(a);
    mp_conn_close(b);
}

static int child_reads_two(void *p)
{
    char buf[8];
    size_t len;
    for (int i = 1; i <= 2; i++)
        if (mp_conn_recv_bytes(p, buf, sizeof buf, &len) != 0 || len != 1 || buf[0] != '0' + i)
            return i;
    return 0;
}

static void test_processes_sharing_a_conn_read_one_stream(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    for (char m = '0'; m <= '4'; m++)
        TU_OK(mp_conn_send_bytes(a, &m, 1));
    char buf[8];
    size_t len;
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));   /* '0', the rest read ahead */
    assert_int_equal(buf[0], '0');
    pid_t pid = tu_fork(child_reads_two, b);                 /* '1', '2' from the shared buffer */
    assert_int_equal(tu_wait(pid, 10), 0);
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_int_equal(buf[0], '3');
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_int_equal(buf[0], '4');
    mp_conn_close(a);
    mp_conn_close(b);
}

struct sender_arg { mp_conn *c; char tag; };

static void *send_many(void *p)
{
    struct sender_arg *a = p;
    char msg[300];
    memset(msg, a->tag, sizeof msg);
    for (int i = 0; i < 2000; i++)
        if (mp_conn_send_bytes(a->c, msg, 1 + (size_t)i % sizeof msg) != 0)
            return (void *)1;
    return NULL;
}

static void test_threads_sending_at_once_never_interleave_frames(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    pthread_t t[2];
    struct sender_arg args[2] = { { a, 'x' }, { a, 'y' } };
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, send_many, &args[i]), 0);
    mp_buf in = { 0 };
    for (int i = 0; i < 4000; i++) {
        TU_OK(mp_conn_recv_buf(b, &in, 300));
        const char *d = in.data;
        for (size_t j = 1; j < in.len; j++)
            assert_int_equal(d[j], d[0]);          /* one sender's bytes only */
    }
    for (int i = 0; i < 2; i++) {
        void *rc;
        pthread_join(t[i], &rc);
        assert_null(rc);
    }
    assert_int_equal(mp_conn_poll(b, 0), 0);
    mp_buf_free(&in);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_conn_whose_descriptor_was_closed_reports_eclosed(void **state)
{
    (void)state;
    int raw;
    mp_conn *a = conn_with_raw_peer(&raw);
    close(mp_conn_fileno(a));                      /* behind the handle's back */
    char buf[4];
    size_t len;
    TU_ASSERT_RC(mp_conn_send_bytes(a, "x", 1), MP_ECLOSED);
    TU_ASSERT_RC(mp_conn_recv_bytes(a, buf, sizeof buf, &len), MP_ECLOSED);
    TU_ASSERT_RC(mp_conn_poll(a, 0), MP_ECLOSED);
    close(raw);
    mp_conn_close(a);

    /* A pipe end needs its descriptor only to wait: sends into free room in
     * shared memory still succeed (when the reader sleeps the doorbell
     * fails: MP_ECLOSED), every wait reports the loss. */
    mp_conn *b;
    TU_OK(mp_pipe(&a, &b, true));
    close(mp_conn_fileno(a));
    TU_ASSERT_RC(mp_conn_recv_bytes(a, buf, sizeof buf, &len), MP_ECLOSED);
    TU_ASSERT_RC(mp_conn_poll(a, 0), MP_ECLOSED);
    mp_conn_close(a);
    mp_conn_close(b);
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

static void on_usr1(int sig)
{
    (void)sig;
}

struct pester { pthread_t target; pid_t child; _Atomic bool stop; };

static void *pester_with_signals(void *p)
{
    struct pester *ps = p;
    while (!atomic_load(&ps->stop)) {
        pthread_kill(ps->target, SIGUSR1);     /* the sender */
        kill(ps->child, SIGUSR1);              /* the receiver, same handler */
        sched_yield();
    }
    return NULL;
}

/* Sends size bytes to a child that answers their checksum, under a storm
 * of signals if asked. */
static void big_exchange(size_t size, bool signals)
{
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    struct echo_arg e = { b, size };
    pid_t pid = tu_fork(child_echo_checksum, &e);
    mp_conn_close(b);             /* the child keeps its copy: the handle stays valid there */
    struct pester ps = { pthread_self(), pid, false };
    pthread_t t;
    if (signals)
        assert_int_equal(pthread_create(&t, NULL, pester_with_signals, &ps), 0);
    unsigned char *big = malloc(size);
    uint64_t sum = 0, got;
    for (size_t i = 0; i < size; i++)
        sum += big[i] = (unsigned char)(i * 7);
    TU_OK(mp_conn_send_bytes(a, big, size));
    size_t len;
    TU_OK(mp_conn_recv_bytes(a, &got, sizeof got, &len));
    if (signals) {
        atomic_store(&ps.stop, true);
        pthread_join(t, NULL);
    }
    assert_int_equal(got, sum);
    assert_int_equal(tu_wait(pid, 30), 0);
    free(big);
    mp_conn_close(a);
}

static void test_big_message_crosses_to_a_child(void **state)
{
    (void)state;
    big_exchange((size_t)48 << 20, false);
}

static void test_big_send_and_receive_survive_signals(void **state)
{
    (void)state;
    struct sigaction sa = { .sa_handler = on_usr1 }, old;   /* no SA_RESTART: EINTR */
    sigaction(SIGUSR1, &sa, &old);
    /* Valgrind runs one thread at a time and delivers each signal slowly:
     * a smaller message still crosses a storm of them, in seconds, not minutes. */
    big_exchange((size_t)(RUNNING_ON_VALGRIND ? 4 : 32) << 20, true);
    sigaction(SIGUSR1, &old, NULL);
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
        fdreg_keep_across_exec();
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    assert_int_equal(tu_wait(pid, 10), 0);
    close(other);
    mp_conn_close(a);
    mp_conn_close(b);
}

/* A target for mp_process: echoes one message back, upper-cased. */
int conn_test_child_echoes(void *arg)
{
    mp_conn *c = *(mp_conn **)arg;
    char buf[64];
    size_t len;
    if (mp_conn_recv_bytes(c, buf, sizeof buf, &len) != 0)
        return 1;
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)(buf[i] >= 'a' && buf[i] <= 'z' ? buf[i] - 32 : buf[i]);
    int rc = mp_conn_send_bytes(c, buf, len);
    mp_conn_close(c);
    return rc == 0 ? 0 : 2;
}

/* Under the fork server the child comes from a process that never had the
 * pipe: the request carries it there, at the same descriptor number. */
static void test_conn_reaches_children_under_every_start_method(void **state)
{
    (void)state;
    mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    for (int m = 0; m < 3; m++) {
        mp_conn *a, *b;
        TU_OK(mp_pipe(&a, &b, true));
        mp_process *p;
        mp_process_opts o = { .method = methods[m], .arg_size = sizeof b };
        TU_OK(mp_process_new(&p, conn_test_child_echoes, &b, &o));
        TU_OK(mp_process_start(p));
        mp_conn_close(b);                      /* Python's child_conn.close() in the parent */
        char buf[64];
        size_t len;
        TU_OK(mp_conn_send_bytes(a, "across", 6));
        TU_OK(mp_conn_recv_bytes(a, buf, sizeof buf, &len));
        assert_memory_equal(buf, "ACROSS", 6);
        TU_OK(mp_process_join(p, 20 * tu_slow()));
        int code;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, 0);
        TU_ASSERT_RC(mp_conn_recv_bytes(a, buf, sizeof buf, &len), MP_EEOF);   /* no copy left open */
        TU_OK(mp_process_free(p));
        mp_conn_close(a);
    }
}

static bool child_sleeps(void *arg)
{
    return tu_proc_state(*(pid_t *)arg) == 'S';
}

static int child_receives_forever(void *arg)
{
    char buf[8];
    size_t len;
    mp_conn_recv_bytes(arg, buf, sizeof buf, &len);
    return 1;
}

static void test_receiver_killed_while_waiting_does_not_wedge_the_conn(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    pid_t pid = tu_fork(child_receives_forever, b);   /* holds b's receive lock, asleep */
    assert_true(tu_wait_for(child_sleeps, &pid, 10));
    kill(pid, SIGKILL);
    assert_int_equal(tu_wait(pid, 10), -SIGKILL);
    TU_OK(mp_conn_send_bytes(a, "after", 5));
    char buf[8];
    size_t len;
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));   /* the dead owner's lock is taken over */
    assert_memory_equal(buf, "after", 5);
    mp_conn_close(a);
    mp_conn_close(b);
}

static int child_sends_too_much(void *arg)
{
    size_t size = (size_t)8 << 20;
    char *big = calloc(1, size);
    mp_conn_send_bytes(arg, big, size);
    return 1;
}

/* On a socket conn (an mp_pipe end keeps frames in shared memory: see
 * test_pipe_shm.c for a writer killed there). */
static void test_sender_killed_mid_frame_does_not_wedge_other_senders(void **state)
{
    (void)state;
    int raw;
    mp_conn *a = conn_with_raw_peer(&raw);
    pid_t pid = tu_fork(child_sends_too_much, a);   /* blocks with a's send lock held */
    assert_true(tu_wait_for(child_sleeps, &pid, 10));
    kill(pid, SIGKILL);
    assert_int_equal(tu_wait(pid, 10), -SIGKILL);
    char sink[65536];
    while (recv(raw, sink, sizeof sink, MSG_DONTWAIT) > 0)
        ;                                            /* drop the torn frame */
    TU_OK(mp_conn_send_bytes(a, "next", 4));         /* lock recovered, not deadlocked */
    assert_int_equal(recv(raw, sink, sizeof sink, 0), 8);
    assert_memory_equal(sink, "\0\0\0\4next", 8);
    close(raw);
    mp_conn_close(a);
}

/* What a fork server's child does with the descriptors sent to it. */
static int child_adopts_sent_descriptors(void *arg)
{
    mp_conn **ends = arg;
    int want[2] = { mp_conn_fileno(ends[0]), mp_conn_fileno(ends[1]) };
    int live[8];
    if (fdreg_live_fds(NULL, live, 8) < 2)
        return 1;
    int got[2] = { dup(want[0]), dup(want[1]) };          /* as if they came by SCM_RIGHTS */
    close(want[1]);
    dup2(open("/dev/null", O_RDONLY), want[0]);           /* a number taken by something else */
    if (proc_place_fds(got, want, 2) != 0)
        return 2;
    if (fcntl(got[0], F_GETFD) != -1 || fcntl(got[1], F_GETFD) != -1)
        return 3;                                          /* the received copies are gone */
    char buf[8];
    size_t len;
    if (mp_conn_send_bytes(ends[1], "adopted", 7) != 0 || mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len) != 0)
        return 4;
    return len == 7 && memcmp(buf, "adopted", 7) == 0 ? 0 : 5;
}

static void test_place_fds_puts_descriptors_back_at_their_numbers(void **state)
{
    (void)state;
    mp_conn *ends[2];
    TU_OK(mp_pipe(&ends[0], &ends[1], true));
    assert_int_equal(tu_wait(tu_fork(child_adopts_sent_descriptors, ends), 10), 0);
    int one = 0;
    TU_ASSERT_RC(proc_place_fds(&one, &one, PROC_FDS_MAX + 1), MP_EINVAL);
    mp_conn_close(ends[0]);
    mp_conn_close(ends[1]);
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

/* More descriptors than half the descriptor limit: poll() refuses more
 * entries than the limit, and a wait must not ask it for two per plain
 * descriptor (Python's connection.wait takes them all). */
static void test_wait_takes_more_descriptors_than_half_the_limit(void **state)
{
    (void)state;
    enum { PIPES = 300 };
    struct rlimit was, lim;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &was), 0);
    lim = was;
    lim.rlim_cur = 1024 < was.rlim_max ? 1024 : was.rlim_max;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);
    int fds[2 * PIPES];
    static bool ready[2 * PIPES];
    for (int i = 0; i < PIPES; i++) {
        assert_int_equal(pipe(fds + 2 * i), 0);
    }
    assert_int_equal(mp_wait(fds, 2 * PIPES, ready, 0.01), 0);
    assert_int_equal(write(fds[2 * 150 + 1], "x", 1), 1);
    assert_int_equal(mp_wait(fds, 2 * PIPES, ready, MP_FOREVER), 1);
    for (int i = 0; i < 2 * PIPES; i++)
        assert_int_equal(ready[i], i == 2 * 150);
    for (int i = 0; i < 2 * PIPES; i++)
        close(fds[i]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &was), 0);
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

static int child_waits_for_a_message(void *arg)
{
    char buf[8];
    size_t len;
    return mp_conn_recv_bytes(*(mp_conn **)arg, buf, sizeof buf, &len) == 0 ? 7 : 1;
}

static void test_wait_sees_a_conn_and_a_process_sentinel(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    mp_process *p;
    TU_OK(mp_process_new(&p, child_waits_for_a_message, &b, &(mp_process_opts){ .arg_size = sizeof b }));
    TU_OK(mp_process_start(p));
    int fds[2] = { mp_conn_fileno(a), mp_process_sentinel(p) };
    bool ready[2];
    assert_int_equal(mp_wait(fds, 2, ready, 0.02), 0);       /* child waits, nothing to read */
    TU_OK(mp_conn_send_bytes(a, "go", 2));
    assert_int_equal(mp_wait(fds + 1, 1, ready + 1, 20 * tu_slow()), 1);
    assert_true(ready[1]);
    TU_OK(mp_process_join(p, 10));
    int code;
    TU_OK(mp_process_exitcode(p, &code));
    assert_int_equal(code, 7);
    TU_OK(mp_process_free(p));
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

static void test_accept_gives_up_on_a_silent_client(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", "key", 3));
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                               .sin_port = htons((uint16_t)atoi(strrchr(mp_listener_address(l), ':') + 1)) };
    int raw = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(raw, (struct sockaddr *)&sin, sizeof sin), 0);   /* then says nothing */
    mp_conn *c;
    double t0 = tu_now();
    TU_ASSERT_RC(mp_listener_accept(l, &c, 0.3), MP_ETIMEDOUT);   /* the handshake shares the timeout */
    assert_true(tu_now() - t0 < 10 * tu_slow());
    close(raw);
    mp_listener_free(l);
}

struct accepting { mp_listener *l; int rc; _Atomic pid_t tid; };

static void *accept_forever(void *arg)
{
    struct accepting *a = arg;
    mp_conn *c;
    atomic_store(&a->tid, (pid_t)syscall(SYS_gettid));
    a->rc = mp_listener_accept(a->l, &c, MP_FOREVER);
    return NULL;
}

/* A thread inside accept with no timeout, the listener freed by another:
 * the accept returns MP_ECLOSED (closing the socket alone would not wake
 * its poll), with and without a key, and a handshake under way is closed. */
static void test_free_wakes_a_thread_inside_accept(void **state)
{
    (void)state;
    for (int keyed = 0; keyed < 2; keyed++) {
        struct accepting a = { NULL, 1, 0 };
        TU_OK(mp_listener_new(&a.l, "tcp:127.0.0.1:0", keyed ? "key" : NULL, keyed ? 3 : 0));
        int raw = -1;
        if (keyed) {                   /* a silent peer: its handshake is under way */
            struct sockaddr_in sin = { .sin_family = AF_INET,
                                       .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                       .sin_port = htons((uint16_t)atoi(strrchr(mp_listener_address(a.l), ':') + 1)) };
            raw = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            assert_int_equal(connect(raw, (struct sockaddr *)&sin, sizeof sin), 0);
        }
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, accept_forever, &a), 0);
        for (double t0 = tu_now(); !atomic_load(&a.tid) && tu_now() - t0 < 10;)
            sched_yield();
        assert_true(tu_wait_asleep(atomic_load(&a.tid), 10));   /* inside accept */
        mp_listener_free(a.l);
        struct timespec at;
        clock_gettime(CLOCK_REALTIME, &at);
        at.tv_sec += (time_t)(10 * tu_slow());
        assert_int_equal(pthread_timedjoin_np(t, NULL, &at), 0);
        TU_ASSERT_RC(a.rc, MP_ECLOSED);
        if (keyed) {
            char buf[256];
            ssize_t n;
            while ((n = read(raw, buf, sizeof buf)) > 0)     /* the challenge, then EOF */
                ;
            assert_int_equal(n, 0);
            close(raw);
        }
    }
}

static void test_client_waits_for_room_in_a_full_unix_backlog(void **state)
{
    (void)state;
    char name[64];
    snprintf(name, sizeof name, "@mproc-backlog-%d", (int)getpid());
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    memcpy(un.sun_path, name, strlen(name));
    un.sun_path[0] = '\0';
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name));
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(bind(l, (struct sockaddr *)&un, len), 0);
    assert_int_equal(listen(l, 0), 0);                     /* never accepts */
    int fill[4], n = 0;
    for (; n < 4; n++) {
        fill[n] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (connect(fill[n], (struct sockaddr *)&un, len) != 0) {
            close(fill[n]);
            break;                                         /* the backlog is full */
        }
    }
    assert_true(n < 4);
    char addr[80];
    snprintf(addr, sizeof addr, "unix:%s", name);
    mp_conn *c;
    double t0 = tu_now();
    TU_ASSERT_RC(mp_client(&c, addr, NULL, 0, 0.2), MP_ETIMEDOUT);   /* waited, not EAGAIN */
    assert_true(tu_now() - t0 >= 0.15);
    for (int i = 0; i < n; i++)
        close(fill[i]);
    close(l);
}

static void test_bad_addresses_are_einval(void **state)
{
    (void)state;
    static const char *bad[] = { "", "unix:", "tcp:", "tcp:127.0.0.1", "tcp:127.0.0.1:x",
                                 "tcp:127.0.0.1:70000", "tcp:[::1:5", "tcp::80", "udp:1.2.3.4:5",
                                 "tcp:127.0.0.1: 80", "tcp:127.0.0.1:+80", "tcp:127.0.0.1:-1",
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

/* ------------------------------------------------------------------ closing under a call */

/* What a thread does inside a conn while another closes it. */
enum inside_op { INSIDE_RECV, INSIDE_POLL, INSIDE_SEND_BIG, INSIDE_WAIT };

struct inside {
    mp_conn *c;
    enum inside_op op;
    int other_fd;                /* INSIDE_WAIT: a second descriptor that never gets ready */
    _Atomic pid_t tid;
    int rc;
    char error[256];             /* the call's mp_last_error */
    bool ready[2];
    pthread_t t;
};

#define BIG_SEND ((size_t)16 << 20)          /* more than any socket buffer holds */

static void *call_inside(void *p)
{
    struct inside *in = p;
    atomic_store(&in->tid, (pid_t)syscall(SYS_gettid));
    char buf[64];
    size_t len;
    if (in->op == INSIDE_RECV) {
        in->rc = mp_conn_recv_bytes(in->c, buf, sizeof buf, &len);
    } else if (in->op == INSIDE_POLL) {
        in->rc = mp_conn_poll(in->c, 30);
    } else if (in->op == INSIDE_SEND_BIG) {
        char *big = calloc(1, BIG_SEND);
        in->rc = mp_conn_send_bytes(in->c, big, BIG_SEND);
        free(big);
    } else {
        int fds[2] = { mp_conn_fileno(in->c), in->other_fd };
        in->rc = mp_wait(fds, 2, in->ready, MP_FOREVER);
    }
    snprintf(in->error, sizeof in->error, "%s", mp_last_error());
    return NULL;
}

/* Starts op on c in a thread and returns once that thread sleeps in the
 * kernel (inside the call, waiting). */
static void start_inside(struct inside *in, mp_conn *c, enum inside_op op)
{
    in->c = c;
    in->op = op;
    in->rc = 1;
    atomic_store(&in->tid, 0);
    assert_int_equal(pthread_create(&in->t, NULL, call_inside, in), 0);
    for (double t0 = tu_now(); !atomic_load(&in->tid) && tu_now() - t0 < 10;)
        sched_yield();
    assert_true(tu_wait_asleep(atomic_load(&in->tid), 10));
}

/* Joins the thread within a bound: a call that closing did not wake fails
 * here instead of hanging. */
static int join_inside(struct inside *in)
{
    struct timespec at;
    clock_gettime(CLOCK_REALTIME, &at);
    at.tv_sec += (time_t)(5 * tu_slow());
    assert_int_equal(pthread_timedjoin_np(in->t, NULL, &at), 0);
    return in->rc;
}

/* Closes c and says how long it took: close returns once the calls inside
 * have left, so this is how long they took to notice. */
static double close_timed(mp_conn *c)
{
    double t0 = tu_now();
    mp_conn_close(c);
    return tu_now() - t0;
}

/* "At once": woken, not let go by close's bound of 2 s (CALLS_LEAVE_S)
 * on the calls still inside. A wake takes well under a millisecond; the
 * margin is for a loaded machine, not for the code. */
#define PROMPT 1.0

/* A thread doing op on a conn with a silent peer, and the close that
 * wakes it: prompt, MP_ECLOSED; the message of the call it ended. */
static void expect_close_wakes(enum inside_op op, char *error, size_t cap)
{
    int raw;
    struct inside in;
    start_inside(&in, conn_with_raw_peer(&raw), op);   /* the peer reads nothing */
    assert_true(close_timed(in.c) < PROMPT);
    TU_ASSERT_RC(join_inside(&in), MP_ECLOSED);
    snprintf(error, cap, "%s", in.error);
    close(raw);
}

static void test_close_wakes_a_thread_in_recv_forever(void **state)
{
    (void)state;
    char error[256];
    expect_close_wakes(INSIDE_RECV, error, sizeof error);
    assert_non_null(strstr(error, "closed by mp_conn_close during the call"));
}

static void test_close_wakes_a_thread_in_poll_with_a_timeout(void **state)
{
    (void)state;
    char error[256];
    expect_close_wakes(INSIDE_POLL, error, sizeof error);
}

static void test_close_wakes_a_thread_sending_into_a_full_buffer(void **state)
{
    (void)state;
    char error[256];
    expect_close_wakes(INSIDE_SEND_BIG, error, sizeof error);
}

/* One thread holds the receive lock, the other waits for it; a third
 * polls. Every one of them leaves. */
static void test_close_wakes_every_thread_inside(void **state)
{
    (void)state;
    int raw;
    mp_conn *c = conn_with_raw_peer(&raw);
    struct inside in[3];
    start_inside(&in[0], c, INSIDE_RECV);
    start_inside(&in[1], c, INSIDE_RECV);
    start_inside(&in[2], c, INSIDE_POLL);
    assert_true(close_timed(c) < PROMPT);
    for (int i = 0; i < 3; i++)
        TU_ASSERT_RC(join_inside(&in[i]), MP_ECLOSED);
    close(raw);
}

static void test_close_wakes_mp_wait_and_marks_the_conn_ready(void **state)
{
    (void)state;
    int raw, idle[2];
    assert_int_equal(pipe2(idle, O_CLOEXEC), 0);
    struct inside in = { .other_fd = idle[0] };
    start_inside(&in, conn_with_raw_peer(&raw), INSIDE_WAIT);
    assert_true(close_timed(in.c) < PROMPT);
    assert_int_equal(join_inside(&in), 1);
    assert_true(in.ready[0]);
    assert_false(in.ready[1]);
    close(raw);
    close(idle[0]);
    close(idle[1]);
}

/* The same for the ends of mp_pipe, whose calls wait on its rings: each
 * call inside leaves at once, and none touches the end's descriptor
 * number afterwards, which the next descriptor made takes (it reads a
 * pipe(2) made there right after the close, whose bytes stay whole). */
static void test_close_wakes_every_call_inside_a_pipe_end(void **state)
{
    (void)state;
    enum inside_op ops[] = { INSIDE_RECV, INSIDE_POLL, INSIDE_SEND_BIG, INSIDE_WAIT };
    for (size_t k = 0; k < 5; k++) {
        mp_conn *a, *b;
        TU_OK(mp_pipe(&a, &b, true));
        int idle[2];
        assert_int_equal(pipe2(idle, O_CLOEXEC), 0);
        struct inside in[2] = { { .other_fd = idle[0] }, { .other_fd = idle[0] } };
        int n = k < 4 ? 1 : 2;             /* the last round: two receivers at once */
        for (int i = 0; i < n; i++)
            start_inside(&in[i], a, k < 4 ? ops[k] : INSIDE_RECV);
        int fd = mp_conn_fileno(a);
        assert_true(close_timed(a) < PROMPT);
        int next[2];
        assert_int_equal(pipe2(next, O_CLOEXEC), 0);
        assert_true(next[0] == fd || next[1] == fd);   /* the number went to it */
        assert_int_equal(write(next[1], "whole", 5), 5);
        for (int i = 0; i < n; i++) {
            int rc = join_inside(&in[i]);
            if (ops[k % 4] == INSIDE_WAIT) {
                assert_int_equal(rc, 1);
                assert_true(in[i].ready[0]);
            } else {
                TU_ASSERT_RC(rc, MP_ECLOSED);
            }
        }
        char got[8];
        assert_int_equal(read(next[0], got, sizeof got), 5);
        assert_memory_equal(got, "whole", 5);
        mp_buf rest = { 0 };               /* a send cut short ends the stream, cleanly */
        TU_ASSERT_RC(mp_conn_recv_buf(b, &rest, 0), MP_EEOF);
        mp_buf_free(&rest);
        mp_conn_close(b);
        for (int i = 0; i < 2; i++) {
            close(next[i]);
            close(idle[i]);
        }
    }
}

/* The peer is a process with a client conn that waits for its end of the
 * stream: the close wakes our receiver and hangs up on the peer. */
static int peer_waits_for_eof(void *arg)
{
    mp_conn *c;
    if (mp_client(&c, arg, NULL, 0, 10) != 0)
        return 2;
    char buf[8];
    size_t len;
    return mp_conn_recv_bytes(c, buf, sizeof buf, &len) == MP_EEOF ? 0 : 3;
}

static void test_close_wakes_a_receiver_while_the_peer_process_lives(void **state)
{
    (void)state;
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", NULL, 0));
    char address[128];
    snprintf(address, sizeof address, "%s", mp_listener_address(l));
    mp_process *peer = tu_start_fork(peer_waits_for_eof, address, sizeof address);
    mp_conn *c;
    TU_OK(mp_listener_accept(l, &c, 10));
    struct inside in;
    start_inside(&in, c, INSIDE_RECV);
    assert_true(close_timed(c) < PROMPT);
    TU_ASSERT_RC(join_inside(&in), MP_ECLOSED);
    assert_int_equal(tu_join_free(peer, 10), 0);
    mp_listener_free(l);
}

/* Calls made after the close fail, even though the conn lives on in a
 * child and its descriptor number went to another file meanwhile. */
static int child_holds_until_eof(void *p)
{
    int *gate = p;
    char byte;
    close(gate[1]);
    return read(gate[0], &byte, 1) == 0 ? 0 : 1;
}

static void test_calls_after_close_fail_while_another_process_holds_the_conn(void **state)
{
    (void)state;
    int raw, gate[2];
    assert_int_equal(pipe2(gate, O_CLOEXEC), 0);
    mp_conn *c = conn_with_raw_peer(&raw);
    pid_t pid = tu_fork(child_holds_until_eof, gate);
    close(gate[0]);
    int fd = mp_conn_fileno(c);
    mp_conn_close(c);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    int reuse = dup3(null, fd, O_CLOEXEC);            /* the conn's number, another file now */
    assert_int_equal(reuse, fd);
    close(null);
    char buf[8];
    size_t len;
    TU_ASSERT_RC(mp_conn_recv_bytes(c, buf, sizeof buf, &len), MP_ECLOSED);
    TU_ASSERT_RC(mp_conn_poll(c, 0), MP_ECLOSED);
    TU_ASSERT_RC(mp_conn_send_bytes(c, "x", 1), MP_ECLOSED);
    tu_last_error_has("closed in this process", NULL);
    mp_conn_close(c);                                  /* a second close: nothing */
    close(reuse);
    close(gate[1]);
    assert_int_equal(tu_wait(pid, 10), 0);
    close(raw);
}

/* A child forked while a thread of ours is inside a call gets a working
 * copy: not closing, no eventfd of ours, and it can send and receive once
 * our thread has left. */
static int eventfds_open(void)
{
    int n = 0;
    char path[64], link[64];
    for (int fd = 0; fd < 1024; fd++) {
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t k = readlink(path, link, sizeof link - 1);
        if (k > 0) {
            link[k] = '\0';
            n += strstr(link, "eventfd") != NULL;
        }
    }
    return n;
}

static int child_uses_its_copy(void *p)
{
    mp_conn *c = p;
    if (eventfds_open() != 0)
        return 1;
    if (mp_conn_send_bytes(c, "hi", 2) != 0)
        return 2;
    char buf[8];
    size_t len;
    if (mp_conn_recv_bytes(c, buf, sizeof buf, &len) != 0 || len != 2 || memcmp(buf, "yo", 2))
        return 3;
    return mp_conn_poll(c, 0) == 0 ? 0 : 4;
}

static void test_child_forked_while_a_thread_is_inside_keeps_a_working_conn(void **state)
{
    (void)state;
    int raw;
    struct inside in;
    start_inside(&in, conn_with_raw_peer(&raw), INSIDE_RECV);
    pid_t pid = tu_fork(child_uses_its_copy, in.c);
    uint8_t frame[6];
    size_t got = 0;
    while (got < sizeof frame) {
        ssize_t r = read(raw, frame + got, sizeof frame - got);
        assert_true(r > 0);
        got += (size_t)r;
    }
    assert_memory_equal(frame + 4, "hi", 2);           /* the child sent while we were inside */
    assert_true(close_timed(in.c) < PROMPT);
    TU_ASSERT_RC(join_inside(&in), MP_ECLOSED);
    write_raw(raw, "\0\0\0\2yo", 6);                    /* now the child's receive gets the lock */
    assert_int_equal(tu_wait(pid, 10), 0);
    close(raw);
}

int main(void)
{
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipe_duplex_carries_messages_both_ways),
        cmocka_unit_test(test_pipe_one_way_a_receives_b_sends),
        cmocka_unit_test(test_calls_refuse_bad_arguments_with_einval),
        cmocka_unit_test(test_send_refuses_impossible_lengths_without_crashing),
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
        cmocka_unit_test(test_recv_buf_without_memory_drops_the_message_and_keeps_sync),
        cmocka_unit_test(test_message_dropped_without_memory_leaves_the_next_read_ahead),
        cmocka_unit_test(test_rest_of_a_dropped_message_is_not_ready_and_comes_out_first),
        cmocka_unit_test(test_poll_times_out_then_sees_data),
        cmocka_unit_test(test_send_to_closed_peer_is_epipe_not_sigpipe),
        cmocka_unit_test(test_buffered_messages_count_as_ready),
        cmocka_unit_test(test_processes_sharing_a_conn_read_one_stream),
        cmocka_unit_test(test_threads_sending_at_once_never_interleave_frames),
        cmocka_unit_test(test_receiver_killed_while_waiting_does_not_wedge_the_conn),
        cmocka_unit_test(test_sender_killed_mid_frame_does_not_wedge_other_senders),
        cmocka_unit_test(test_conn_whose_descriptor_was_closed_reports_eclosed),
        cmocka_unit_test(test_big_message_crosses_to_a_child),
        cmocka_unit_test(test_big_send_and_receive_survive_signals),
        cmocka_unit_test(test_handle_survives_close_in_the_other_process),
        cmocka_unit_test(test_keep_across_exec_clears_cloexec_on_live_connections),
        cmocka_unit_test(test_conn_reaches_children_under_every_start_method),
        cmocka_unit_test(test_place_fds_puts_descriptors_back_at_their_numbers),
        cmocka_unit_test(test_wait_reports_which_pipes_are_ready),
        cmocka_unit_test(test_wait_takes_more_descriptors_than_half_the_limit),
        cmocka_unit_test(test_wait_sees_a_process_end_through_a_pidfd),
        cmocka_unit_test(test_wait_sees_a_conn_and_a_process_sentinel),
        cmocka_unit_test(test_wait_validates_and_times_out),
        cmocka_unit_test(test_tcp_v4_port_zero_reports_the_port_it_got),
        cmocka_unit_test(test_tcp_v6_when_available),
        cmocka_unit_test(test_unix_path_listener_removes_its_file),
        cmocka_unit_test(test_unix_abstract_listener),
        cmocka_unit_test(test_accept_times_out),
        cmocka_unit_test(test_accept_gives_up_on_a_silent_client),
        cmocka_unit_test(test_free_wakes_a_thread_inside_accept),
        cmocka_unit_test(test_client_waits_for_room_in_a_full_unix_backlog),
        cmocka_unit_test(test_bad_addresses_are_einval),
        cmocka_unit_test(test_client_reports_refused_and_missing),
        cmocka_unit_test(test_forked_workers_share_one_listener),
        cmocka_unit_test(test_close_wakes_a_thread_in_recv_forever),
        cmocka_unit_test(test_close_wakes_a_thread_in_poll_with_a_timeout),
        cmocka_unit_test(test_close_wakes_a_thread_sending_into_a_full_buffer),
        cmocka_unit_test(test_close_wakes_every_thread_inside),
        cmocka_unit_test(test_close_wakes_mp_wait_and_marks_the_conn_ready),
        cmocka_unit_test(test_close_wakes_every_call_inside_a_pipe_end),
        cmocka_unit_test(test_close_wakes_a_receiver_while_the_peer_process_lives),
        cmocka_unit_test(test_calls_after_close_fail_while_another_process_holds_the_conn),
        cmocka_unit_test(test_child_forked_while_a_thread_is_inside_keeps_a_working_conn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
