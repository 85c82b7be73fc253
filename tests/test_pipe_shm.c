/* test_pipe_shm.c - the shared-memory transport of mp_pipe: frames in byte
 * rings in the arena, the descriptor carrying only doorbells and EOF.
 *
 * Peers are forked children; every wait is bounded (tu_wait, the watchdog),
 * so a lost doorbell or a wedged ring fails instead of hanging.
 * MPROC_WHITEBOX: links the static library to reach conn_internal.h.
 */
#include "testutil.h"

#include "conn_internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)

/* Sizes crossing every path: empty, small, exactly the ring, one more
 * (streamed), several MiB. */
static const size_t sizes[] = { 0, 64, 1, PIPE_RING_SIZE - 4, PIPE_RING_SIZE + 1, 5 * MIB, 64, 0,
                                3 * PIPE_RING_SIZE, 7, 2 * MIB + 3, 64 };
#define NSIZES (sizeof sizes / sizeof sizes[0])

static unsigned char pattern(size_t msg, size_t i)
{
    return (unsigned char)(msg * 31 + i * 7 + (i >> 12));
}

static int send_numbered(mp_conn *c, size_t msg, size_t size)
{
    unsigned char *p = malloc(size ? size : 1);
    for (size_t i = 0; i < size; i++)
        p[i] = pattern(msg, i);
    int rc = mp_conn_send_bytes(c, p, size);
    free(p);
    return rc;
}

static bool is_numbered(const mp_buf *b, size_t msg, size_t size)
{
    if (b->len != size)
        return false;
    for (size_t i = 0; i < size; i++)
        if (((unsigned char *)b->data)[i] != pattern(msg, i))
            return false;
    return true;
}

static int child_sends_every_size(void *arg)
{
    mp_conn *c = arg;
    for (size_t i = 0; i < NSIZES; i++)
        if (send_numbered(c, i, sizes[i]) != 0)
            return 1;
    return 0;
}

/* ------------------------------------------------------------------ order and EOF */

static void receive_every_size_then_eof(bool duplex)
{
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, duplex));
    pid_t pid = tu_fork(child_sends_every_size, b);
    mp_conn_close(b);                         /* the child holds the only writer */
    mp_buf in = { 0 };
    for (size_t i = 0; i < NSIZES; i++) {
        TU_OK(mp_conn_recv_buf(a, &in, 0));
        assert_true(is_numbered(&in, i, sizes[i]));
    }
    assert_int_equal(tu_wait(pid, 30 * tu_slow()), 0);
    TU_ASSERT_RC(mp_conn_recv_buf(a, &in, 0), MP_EEOF);
    assert_int_equal(mp_conn_poll(a, 0), 1);  /* EOF counts as ready */
    mp_buf_free(&in);
    mp_conn_close(a);
}

static void test_messages_of_every_size_arrive_in_order_duplex(void **state)
{
    (void)state;
    receive_every_size_then_eof(true);
}

static void test_messages_of_every_size_arrive_in_order_one_way(void **state)
{
    (void)state;
    receive_every_size_then_eof(false);
}

static int child_sends_three_and_exits(void *arg)
{
    for (int i = 0; i < 3; i++)
        if (send_numbered(arg, (size_t)i, 100) != 0)
            return 1;
    return 0;
}

static void test_reader_drains_the_ring_before_eof(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, false));
    pid_t pid = tu_fork(child_sends_three_and_exits, b);
    mp_conn_close(b);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);   /* gone before we read */
    mp_buf in = { 0 };
    for (size_t i = 0; i < 3; i++) {
        TU_OK(mp_conn_recv_buf(a, &in, 0));
        assert_true(is_numbered(&in, i, 100));
    }
    TU_ASSERT_RC(mp_conn_recv_buf(a, &in, 0), MP_EEOF);
    mp_buf_free(&in);
    mp_conn_close(a);
}

/* ------------------------------------------------------------------ killed writers */

static bool sleeps(void *arg)
{
    return tu_proc_state(*(pid_t *)arg) == 'S';
}

static int child_sends_8mib(void *arg)
{
    send_numbered(arg, 0, 8 * MIB);
    return 1;
}

static void test_writer_killed_mid_long_message_gives_reader_eeof(void **state)
{
    (void)state;
    for (int duplex = 0; duplex <= 1; duplex++) {
        mp_conn *a, *b;
        TU_OK(mp_pipe(&a, &b, duplex));
        pid_t pid = tu_fork(child_sends_8mib, b);   /* fills the ring, waits for room */
        mp_conn_close(b);
        assert_true(tu_wait_for(sleeps, &pid, 10 * tu_slow()));
        kill(pid, SIGKILL);
        assert_int_equal(tu_wait(pid, 10 * tu_slow()), -SIGKILL);
        mp_buf in = { 0 };
        TU_ASSERT_RC(mp_conn_recv_buf(a, &in, 0), MP_EEOF);   /* half a message, then nobody */
        TU_ASSERT_RC(mp_conn_recv_buf(a, &in, 0), MP_EEOF);
        mp_buf_free(&in);
        mp_conn_close(a);
    }
}

/* Another writer of the same end is left: the reader may already hold the
 * first part of the torn frame, so nothing may follow it. */
static void test_stream_torn_by_a_killed_writer_ends_for_every_holder(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    pid_t pid = tu_fork(child_sends_8mib, b);
    assert_true(tu_wait_for(sleeps, &pid, 10 * tu_slow()));
    kill(pid, SIGKILL);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), -SIGKILL);
    TU_ASSERT_RC(mp_conn_send_bytes(b, "next", 4), -EPIPE);   /* we still hold b */
    TU_ASSERT_RC(mp_conn_send_bytes(b, "next", 4), -EPIPE);
    mp_buf in = { 0 };
    TU_ASSERT_RC(mp_conn_recv_buf(a, &in, 0), MP_EEOF);
    assert_int_equal(mp_conn_poll(a, 0), 1);
    int fd = mp_conn_fileno(a);
    assert_int_equal(mp_wait(&fd, 1, NULL, 0), 1);
    TU_OK(mp_conn_send_bytes(a, "back", 4));                   /* the other way is whole */
    TU_OK(mp_conn_recv_buf(b, &in, 0));
    assert_memory_equal(in.data, "back", 4);
    mp_buf_free(&in);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void die_at_once(int sig)
{
    (void)sig;
    raise(SIGKILL);
}

/* Receives into a buffer whose second half is not mapped: the copy faults
 * there, and the reader dies with the receive lock held, mid-body. */
static int child_dies_reading(void *arg)
{
    struct sigaction sa = { .sa_handler = die_at_once };
    sigaction(SIGSEGV, &sa, NULL);
    char *trap = mmap(NULL, 8 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (trap == MAP_FAILED || mprotect(trap + 2 * MIB, 6 * MIB, PROT_NONE) != 0)
        return 1;
    size_t len;
    mp_conn_recv_bytes(arg, trap, 8 * MIB, &len);
    return 2;
}

static int child_sends_long_then_short(void *arg)
{
    return send_numbered(arg, 1, 6 * MIB) == 0 && send_numbered(arg, 2, 100) == 0 ? 0 : 1;
}

static void test_reader_killed_mid_message_loses_only_that_message(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, false));
    pid_t reader = tu_fork(child_dies_reading, a);
    pid_t writer = tu_fork(child_sends_long_then_short, b);
    mp_conn_close(b);
    assert_int_equal(tu_wait(reader, 20 * tu_slow()), -SIGKILL);
    mp_buf in = { 0 };
    TU_OK(mp_conn_recv_buf(a, &in, 0));            /* the rest of message 1 is dropped */
    assert_true(is_numbered(&in, 2, 100));
    assert_int_equal(tu_wait(writer, 20 * tu_slow()), 0);
    TU_ASSERT_RC(mp_conn_recv_buf(a, &in, 0), MP_EEOF);
    mp_buf_free(&in);
    mp_conn_close(a);
}

static int child_sends_1000(void *arg)
{
    send_numbered(arg, 1, 1000);
    return 1;
}

static int child_sends_1mib(void *arg)
{
    send_numbered(arg, 1, MIB);
    return 1;
}

/* A frame that fits is committed whole, and a long one streams only once
 * a chunk fits: a writer killed before either leaves no byte of its
 * frame, and its send lock is taken over (the stream is not torn). */
static void test_writer_killed_waiting_for_room_leaves_no_bytes(void **state)
{
    (void)state;
    int (*senders[])(void *) = { child_sends_1000, child_sends_1mib };
    for (int i = 0; i < 2; i++) {
        mp_conn *a, *b;
        TU_OK(mp_pipe(&a, &b, true));
        size_t fill = PIPE_RING_SIZE - 4 - 500;
        TU_OK(send_numbered(b, 0, fill));
        pid_t pid = tu_fork(senders[i], b);            /* neither fits in 500 bytes */
        assert_true(tu_wait_for(sleeps, &pid, 10 * tu_slow()));
        kill(pid, SIGKILL);
        assert_int_equal(tu_wait(pid, 10 * tu_slow()), -SIGKILL);
        mp_buf in = { 0 };
        TU_OK(mp_conn_recv_buf(a, &in, 0));
        assert_true(is_numbered(&in, 0, fill));
        TU_OK(send_numbered(b, 2, 300));
        TU_OK(mp_conn_recv_buf(a, &in, 0));
        assert_true(is_numbered(&in, 2, 300));
        assert_int_equal(mp_conn_poll(a, 0), 0);
        mp_buf_free(&in);
        mp_conn_close(a);
        mp_conn_close(b);
    }
}

static int child_sends_8mib_without_reading(void *arg)
{
    mp_conn **ends = arg;
    mp_conn_close(ends[0]);                        /* or it would be a reader itself */
    int rc = send_numbered(ends[1], 0, 8 * MIB);
    return rc == -EPIPE ? 0 : 1;
}

static int child_holds_the_reader(void *arg)
{
    (void)arg;
    pause();
    return 0;
}

static void test_send_to_a_reader_gone_is_epipe(void **state)
{
    (void)state;
    for (int duplex = 0; duplex <= 1; duplex++) {
        mp_conn *ends[2];                          /* closed by its last holder */
        TU_OK(mp_pipe(&ends[0], &ends[1], duplex));
        pid_t pid = tu_fork(child_sends_8mib_without_reading, ends);
        mp_conn_close(ends[1]);
        assert_true(tu_wait_for(sleeps, &pid, 10 * tu_slow()));
        mp_conn_close(ends[0]);                    /* the sender waiting for room learns it */
        assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);

        TU_OK(mp_pipe(&ends[0], &ends[1], duplex)); /* its last holder killed */
        pid = tu_fork(child_holds_the_reader, NULL);
        mp_conn_close(ends[0]);
        kill(pid, SIGKILL);
        assert_int_equal(tu_wait(pid, 10 * tu_slow()), -SIGKILL);
        TU_ASSERT_RC(send_numbered(ends[1], 0, 8 * MIB), -EPIPE);
        mp_conn_close(ends[1]);
    }
}

/* ------------------------------------------------------------------ waking */

static void test_doorbell_rings_only_for_a_sleeping_reader(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    struct pollfd p = { .fd = mp_conn_fileno(b), .events = POLLIN };
    TU_OK(mp_conn_send_bytes(a, "one", 3));
    assert_int_equal(poll(&p, 1, 0), 0);           /* nobody sleeps: no syscall, no byte */
    assert_int_equal(mp_conn_poll(b, 0), 1);       /* the message is in shared memory */
    char buf[8];
    size_t len;
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_int_equal(mp_conn_poll(b, 0), 0);       /* raises the flag, then times out */
    TU_OK(mp_conn_send_bytes(a, "two", 3));
    assert_int_equal(poll(&p, 1, 0), 1);           /* the doorbell */
    assert_int_equal(mp_conn_poll(b, 0), 1);
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_int_equal(mp_conn_poll(b, 0), 0);       /* a spent doorbell is not a message */
    int fd = mp_conn_fileno(b);
    assert_int_equal(mp_wait(&fd, 1, NULL, 0), 0);
    mp_conn_close(a);
    mp_conn_close(b);
}

/* Runs in a spawned child (a fresh exec of this test) or a fork server's
 * child: its end of the pipe reached it through the argument, not through
 * its own fork, so only the family's list of crossed handles lets mp_wait
 * know it reads a ring. */
static int spawned_waits_on_its_end(void *arg)
{
    mp_conn *c = *(mp_conn **)arg;
    int fd = mp_conn_fileno(c);
    bool ready = true;
    char buf[8];
    size_t len;
    if (mp_wait(&fd, 1, &ready, 0.2) != 0 || ready)
        return 10;                                  /* nothing sent yet */
    if (mp_conn_send_bytes(c, "ready", 5) != 0)
        return 11;
    if (mp_wait(&fd, 1, &ready, 30) != 1 || !ready)
        return 12;                                  /* woken by the parent's send */
    if (mp_conn_recv_bytes(c, buf, sizeof buf, &len) != 0 || len != 3 || memcmp(buf, "one", 3))
        return 13;
    if (mp_wait(&fd, 1, &ready, 0.3) != 0 || ready)
        return 14;                                  /* no stale doorbell counts as ready */
    return mp_conn_send_bytes(c, "done", 4) == 0 ? 0 : 15;
}

static void child_waits_on_a_pipe_end_it_got_as_argument(mp_start_method method)
{
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    mp_process *p;
    TU_OK(mp_process_new(&p, spawned_waits_on_its_end, &b,
                         &(mp_process_opts){ .method = method, .arg_size = sizeof b }));
    TU_OK(mp_process_start(p));
    char buf[8];
    size_t len;
    assert_int_equal(mp_conn_poll(a, 30 * tu_slow()), 1);
    TU_OK(mp_conn_recv_bytes(a, buf, sizeof buf, &len));
    assert_memory_equal(buf, "ready", 5);
    assert_true(tu_wait_asleep(mp_process_pid(p), 10));   /* the child sleeps in mp_wait */
    TU_OK(mp_conn_send_bytes(a, "one", 3));
    assert_int_equal(mp_conn_poll(a, 30 * tu_slow()), 1);
    TU_OK(mp_conn_recv_bytes(a, buf, sizeof buf, &len));
    assert_memory_equal(buf, "done", 4);
    TU_OK(mp_process_join(p, 30 * tu_slow()));
    int code = -1;
    TU_OK(mp_process_exitcode(p, &code));
    assert_int_equal(code, 0);
    mp_process_free(p);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_spawned_child_waits_on_a_pipe_end_it_got_as_argument(void **state)
{
    (void)state;
    child_waits_on_a_pipe_end_it_got_as_argument(MP_SPAWN);
}

static void test_forkserver_child_waits_on_a_pipe_end_it_got_as_argument(void **state)
{
    (void)state;
    child_waits_on_a_pipe_end_it_got_as_argument(MP_FORKSERVER);
}

struct late { mp_conn *c; pid_t waiter; };

static int child_sends_once_parent_sleeps(void *arg)
{
    struct late *l = arg;
    double end = tu_now() + 10 * tu_slow();
    while (tu_proc_state(l->waiter) != 'S' && tu_now() < end)
        usleep(1000);
    return mp_conn_send_bytes(l->c, "late", 4) == 0 ? 0 : 1;
}

static void test_wait_and_poll_wake_on_a_message_sent_while_they_sleep(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    struct late l = { a, getpid() };
    int fd = mp_conn_fileno(b);
    bool ready = false;
    char buf[8];
    size_t len;
    pid_t pid = tu_fork(child_sends_once_parent_sleeps, &l);
    assert_int_equal(mp_wait(&fd, 1, &ready, 20 * tu_slow()), 1);
    assert_true(ready);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));

    pid = tu_fork(child_sends_once_parent_sleeps, &l);
    assert_int_equal(mp_conn_poll(b, 20 * tu_slow()), 1);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_memory_equal(buf, "late", 4);

    pid = tu_fork(child_sends_once_parent_sleeps, &l);
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));   /* recv asleep on the doorbell */
    assert_memory_equal(buf, "late", 4);
    assert_int_equal(tu_wait(pid, 10 * tu_slow()), 0);
    mp_conn_close(a);
    mp_conn_close(b);
}

/* ------------------------------------------------------------------ both ways, shared ends */

struct sender { mp_conn *c; int rc; };

static void *send_every_size(void *arg)
{
    struct sender *s = arg;
    s->rc = child_sends_every_size(s->c);
    return NULL;
}

/* Sends every size from a thread while receiving every size here. */
static int exchange_every_size(mp_conn *c)
{
    struct sender s = { c, -1 };
    pthread_t t;
    if (pthread_create(&t, NULL, send_every_size, &s) != 0)
        return 1;
    mp_buf in = { 0 };
    int rc = 0;
    for (size_t i = 0; i < NSIZES && rc == 0; i++)
        if (mp_conn_recv_buf(c, &in, 0) != 0 || !is_numbered(&in, i, sizes[i]))
            rc = 2;
    pthread_join(t, NULL);
    mp_buf_free(&in);
    return rc ? rc : s.rc;
}

static int child_exchanges(void *arg)
{
    return exchange_every_size(arg);
}

static void test_duplex_pipe_carries_both_directions_at_once(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    pid_t pid = tu_fork(child_exchanges, b);
    assert_int_equal(exchange_every_size(a), 0);
    assert_int_equal(tu_wait(pid, 30 * tu_slow()), 0);
    mp_conn_close(a);
    mp_conn_close(b);
}

static int child_talks_to_itself(void *arg)
{
    mp_conn **ends = arg;
    mp_buf in = { 0 };
    for (size_t i = 0; i < 4; i++)                 /* all of it fits in the ring */
        if (send_numbered(ends[0], i, 1000 * i) != 0)
            return 1;
    for (size_t i = 0; i < 4; i++)
        if (mp_conn_recv_buf(ends[1], &in, 0) != 0 || !is_numbered(&in, i, 1000 * i))
            return 2;
    mp_buf_free(&in);
    mp_conn_close(ends[0]);
    mp_conn_close(ends[1]);
    return 0;
}

static void test_forked_child_holding_both_ends_uses_them_and_frees_nothing(void **state)
{
    (void)state;
    mp_conn *ends[2];
    TU_OK(mp_pipe(&ends[0], &ends[1], true));
    assert_int_equal(tu_wait(tu_fork(child_talks_to_itself, ends), 10 * tu_slow()), 0);
    char buf[8];
    size_t len;
    TU_OK(mp_conn_send_bytes(ends[1], "still", 5));
    TU_OK(mp_conn_recv_bytes(ends[0], buf, sizeof buf, &len));
    assert_memory_equal(buf, "still", 5);
    mp_conn_close(ends[0]);
    mp_conn_close(ends[1]);
}

static int child_sends_5mib(void *arg)
{
    return send_numbered(arg, 9, 5 * MIB) == 0 ? 0 : 1;
}

/* The header of a streamed message is read, its body stays in the ring
 * (and behind it, with the writer) until a buffer big enough comes. */
static void test_etoobig_keeps_a_streamed_message_pending(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, false));
    pid_t pid = tu_fork(child_sends_5mib, b);
    char small[16];
    size_t len = 0;
    TU_ASSERT_RC(mp_conn_recv_bytes(a, small, sizeof small, &len), MP_ETOOBIG);
    assert_int_equal(len, 5 * MIB);
    mp_buf in = { 0 };
    TU_ASSERT_RC(mp_conn_recv_buf(a, &in, MIB), MP_ETOOBIG);
    assert_null(in.data);
    assert_int_equal(mp_conn_poll(a, 0), 1);
    TU_OK(mp_conn_recv_buf(a, &in, 0));
    assert_true(is_numbered(&in, 9, 5 * MIB));
    assert_int_equal(tu_wait(pid, 30 * tu_slow()), 0);
    mp_buf_free(&in);
    mp_conn_close(a);
    mp_conn_close(b);
}

int main(void)
{
    tu_watchdog(180);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_messages_of_every_size_arrive_in_order_duplex),
        cmocka_unit_test(test_messages_of_every_size_arrive_in_order_one_way),
        cmocka_unit_test(test_reader_drains_the_ring_before_eof),
        cmocka_unit_test(test_writer_killed_mid_long_message_gives_reader_eeof),
        cmocka_unit_test(test_stream_torn_by_a_killed_writer_ends_for_every_holder),
        cmocka_unit_test(test_writer_killed_waiting_for_room_leaves_no_bytes),
        cmocka_unit_test(test_reader_killed_mid_message_loses_only_that_message),
        cmocka_unit_test(test_send_to_a_reader_gone_is_epipe),
        cmocka_unit_test(test_doorbell_rings_only_for_a_sleeping_reader),
        cmocka_unit_test(test_spawned_child_waits_on_a_pipe_end_it_got_as_argument),
        cmocka_unit_test(test_forkserver_child_waits_on_a_pipe_end_it_got_as_argument),
        cmocka_unit_test(test_wait_and_poll_wake_on_a_message_sent_while_they_sleep),
        cmocka_unit_test(test_duplex_pipe_carries_both_directions_at_once),
        cmocka_unit_test(test_forked_child_holding_both_ends_uses_them_and_frees_nothing),
        cmocka_unit_test(test_etoobig_keeps_a_streamed_message_pending),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
