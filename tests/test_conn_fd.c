/* test_conn_fd.c - descriptors over connections, and connections over
 * descriptors: mp_conn_send_fd/mp_conn_recv_fd (Python's send_handle and
 * recv_handle, checked against the machine's python3) and mp_conn_from_fd
 * (Python's Connection(fd)), with their refusals: the wrong kind of conn or
 * descriptor, a message where a descriptor should be, several descriptors
 * where one was announced, a peer that leaves.
 */
#include "testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Both ends of a unix socketpair, wrapped. */
static void conn_pair(mp_conn **a, mp_conn **b)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    TU_OK(mp_conn_from_fd(a, sv[0]));
    TU_OK(mp_conn_from_fd(b, sv[1]));
}

static int open_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static bool same_file(int a, int b)
{
    struct stat sa, sb;
    return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_ino == sb.st_ino &&
           sa.st_dev == sb.st_dev;
}

static void check_passes_a_pipe_end(mp_conn *tx, mp_conn *rx)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    TU_OK(mp_conn_send_fd(tx, p[1]));
    int got = -1;
    TU_OK(mp_conn_recv_fd(rx, &got, MP_FOREVER));
    assert_true(got >= 0 && got != p[1]);
    assert_true(same_file(got, p[1]));
    assert_true(fcntl(got, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(write(got, "hi", 2), 2);     /* the same pipe, through the new number */
    char buf[4];
    assert_int_equal(read(p[0], buf, sizeof buf), 2);
    close(got);
    close(p[0]);
    close(p[1]);
}

static void test_send_fd_hands_over_the_same_open_file(void **state)
{
    (void)state;
    mp_conn *a, *b;
    conn_pair(&a, &b);
    check_passes_a_pipe_end(a, b);
    check_passes_a_pipe_end(b, a);
    mp_conn_close(a);
    mp_conn_close(b);
}

/* recv_fd keeps its timeout: nothing sent, MP_ETIMEDOUT on time; a bad
 * timeout is refused; a descriptor sent later still arrives. */
static void test_recv_fd_times_out_on_time(void **state)
{
    (void)state;
    mp_conn *a, *b;
    conn_pair(&a, &b);
    int got = -1;
    double t0 = tu_now();
    TU_ASSERT_RC(mp_conn_recv_fd(b, &got, 0.2), MP_ETIMEDOUT);
    double took = tu_now() - t0;
    assert_true(took >= 0.19 && took < 0.2 + 1.0 * tu_slow());
    TU_ASSERT_RC(mp_conn_recv_fd(b, &got, 0), MP_ETIMEDOUT);
    TU_ASSERT_RC(mp_conn_recv_fd(b, &got, -0.5), MP_EINVAL);
    int p[2];
    assert_int_equal(pipe(p), 0);
    TU_OK(mp_conn_send_fd(a, p[1]));
    TU_OK(mp_conn_recv_fd(b, &got, 5 * tu_slow()));
    assert_true(same_file(got, p[1]));
    close(got);
    close(p[0]);
    close(p[1]);
    mp_conn_close(a);
    mp_conn_close(b);
}

/* The receiver's read-ahead takes the descriptor's byte along with the
 * message before it; the descriptor still reaches recv_fd, in order. */
static void test_descriptor_between_messages_survives_read_ahead(void **state)
{
    (void)state;
    mp_conn *a, *b;
    conn_pair(&a, &b);
    int p[2];
    assert_int_equal(pipe(p), 0);
    TU_OK(mp_conn_send_bytes(a, "before", 6));
    TU_OK(mp_conn_send_fd(a, p[0]));
    TU_OK(mp_conn_send_bytes(a, "after", 5));
    char buf[16];
    size_t len;
    int got = -1;
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_memory_equal(buf, "before", 6);
    TU_OK(mp_conn_recv_fd(b, &got, MP_FOREVER));
    assert_true(same_file(got, p[0]));
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_memory_equal(buf, "after", 5);

    /* a descriptor asked for while a message is next: refused, nothing taken */
    TU_OK(mp_conn_send_bytes(a, "msg", 3));
    TU_ASSERT_RC(mp_conn_recv_fd(b, &got, MP_FOREVER), MP_ESTATE);
    assert_non_null(strstr(mp_last_error(), "a message comes before any descriptor"));
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_memory_equal(buf, "msg", 3);
    TU_OK(mp_conn_send_bytes(a, "one", 3));
    TU_OK(mp_conn_send_bytes(a, "two", 3));
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));   /* "two" is next */
    TU_ASSERT_RC(mp_conn_recv_fd(b, &got, MP_FOREVER), MP_ESTATE);
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_memory_equal(buf, "two", 3);
    close(p[0]);
    close(p[1]);
    mp_conn_close(a);
    mp_conn_close(b);
}

/* Python's send_handle pattern: read a request, then hand the socket on.
 * A receive reads exactly its frame (as Python's does), so the messages
 * already sent behind it stay in the socket for whoever wraps the
 * descriptor next; none of them stays behind in the old handle. */
static void test_descriptor_handed_on_after_a_receive_carries_the_messages_behind_it(void **state)
{
    (void)state;
    mp_conn *a, *b, *c;
    conn_pair(&a, &b);
    for (int i = 1; i <= 5; i++) {
        char m[8];
        TU_OK(mp_conn_send_bytes(a, m, (size_t)snprintf(m, sizeof m, "msg%d", i)));
    }
    TU_OK(mp_conn_send_bytes(a, NULL, 0));
    char buf[16];
    size_t len;
    TU_OK(mp_conn_recv_bytes(b, buf, sizeof buf, &len));
    assert_int_equal(len, 4);
    assert_memory_equal(buf, "msg1", 4);
    TU_OK(mp_conn_from_fd(&c, dup(mp_conn_fileno(b))));
    mp_conn_close(b);
    for (int i = 2; i <= 5; i++) {
        char want[8];
        snprintf(want, sizeof want, "msg%d", i);
        assert_int_equal(mp_conn_poll(c, 5.0), 1);
        TU_OK(mp_conn_recv_bytes(c, buf, sizeof buf, &len));
        assert_int_equal(len, 4);
        assert_memory_equal(buf, want, 4);
    }
    TU_OK(mp_conn_recv_bytes(c, buf, sizeof buf, &len));
    assert_int_equal(len, 0);
    mp_conn_close(a);
    mp_conn_close(c);
}

/* A child started before the file existed gets it through the conn. */
static int child_writes_to_received_fd(void *arg)
{
    mp_conn *c = arg;
    int fd;
    if (mp_conn_recv_fd(c, &fd, MP_FOREVER) != 0)
        return 1;
    int ok = write(fd, "from child", 10) == 10;
    close(fd);
    return ok && mp_conn_send_bytes(c, "done", 4) == 0 ? 0 : 2;
}

static void test_descriptor_reaches_a_running_child(void **state)
{
    (void)state;
    mp_conn *a, *b;
    conn_pair(&a, &b);
    pid_t pid = tu_fork(child_writes_to_received_fd, b);
    char path[] = "/tmp/mproc-conn-fd-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    TU_OK(mp_conn_send_fd(a, fd));
    char buf[16];
    size_t len;
    TU_OK(mp_conn_recv_bytes(a, buf, sizeof buf, &len));
    assert_int_equal(tu_wait(pid, 30), 0);
    assert_int_equal(pread(fd, buf, sizeof buf, 0), 10);
    assert_memory_equal(buf, "from child", 10);
    close(fd);
    mp_conn_close(a);
    mp_conn_close(b);
}

static void test_send_fd_refuses_conns_that_cannot_carry_descriptors(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, true));
    TU_ASSERT_RC(mp_conn_send_fd(a, 0), MP_EINVAL);
    assert_non_null(strstr(mp_last_error(), "mp_conn_send_fd: the ends of mp_pipe"));
    int got;
    TU_ASSERT_RC(mp_conn_recv_fd(b, &got, MP_FOREVER), MP_EINVAL);
    mp_conn_close(a);
    mp_conn_close(b);

    mp_listener *l;
    TU_OK(mp_listener_new(&l, "tcp:127.0.0.1:0", NULL, 0));
    TU_OK(mp_client(&a, mp_listener_address(l), NULL, 0, 10));
    TU_ASSERT_RC(mp_conn_send_fd(a, 0), MP_EINVAL);
    assert_non_null(strstr(mp_last_error(), "not a unix socket"));
    mp_conn_close(a);
    mp_listener_free(l);

    int p[2];
    assert_int_equal(pipe(p), 0);
    TU_OK(mp_conn_from_fd(&a, p[1]));
    TU_ASSERT_RC(mp_conn_send_fd(a, 0), MP_EINVAL);
    assert_non_null(strstr(mp_last_error(), "a pipe"));
    mp_conn_close(a);
    close(p[0]);

    conn_pair(&a, &b);
    TU_ASSERT_RC(mp_conn_send_fd(a, 987), -EBADF);
    assert_non_null(strstr(mp_last_error(), "fd 987 is not an open descriptor"));
    TU_ASSERT_RC(mp_conn_send_fd(NULL, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_conn_recv_fd(b, NULL, MP_FOREVER), MP_EINVAL);
    mp_conn_close(a);
    mp_conn_close(b);
}

/* Raw bytes and descriptors, as a hostile or foreign peer would send them. */
static void send_raw(int sock, uint8_t byte, const int *fds, int n)
{
    union { struct cmsghdr h; char space[CMSG_SPACE(sizeof(int) * 4)]; } u;
    memset(&u, 0, sizeof u);
    struct iovec v = { &byte, 1 };
    struct msghdr m = { .msg_iov = &v, .msg_iovlen = 1 };
    if (n) {
        m.msg_control = &u;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(h), fds, sizeof(int) * (size_t)n);
    }
    assert_int_equal(sendmsg(sock, &m, 0), 1);
}

static void test_recv_fd_refuses_what_python_would_not_send(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    mp_conn *c;
    TU_OK(mp_conn_from_fd(&c, sv[0]));
    int fds[3] = { 0, 1, 2 }, got = -1;
    TU_OK(mp_conn_poll(c, 0));                   /* the conn's first call makes its close signal */
    int before = open_fd_count();
    send_raw(sv[1], 3, fds, 3);                  /* three where Python sends one */
    TU_ASSERT_RC(mp_conn_recv_fd(c, &got, MP_FOREVER), MP_EPROTO);
    assert_non_null(strstr(mp_last_error(), "sent 3 descriptor(s)"));
    send_raw(sv[1], 2, fds, 1);                  /* one, announced as two */
    TU_ASSERT_RC(mp_conn_recv_fd(c, &got, MP_FOREVER), MP_EPROTO);
    assert_int_equal(open_fd_count(), before);   /* every one closed again */
    assert_int_equal(got, -1);
    close(sv[1]);                                /* the peer leaves: EOF */
    TU_ASSERT_RC(mp_conn_recv_fd(c, &got, MP_FOREVER), MP_EEOF);
    mp_conn_close(c);
}

static void test_conn_from_fd_takes_sockets_and_pipes_only(void **state)
{
    (void)state;
    mp_conn *c;
    int file = open("/proc/self/stat", O_RDONLY);
    TU_ASSERT_RC(mp_conn_from_fd(&c, file), MP_EINVAL);
    assert_non_null(strstr(mp_last_error(), "a regular file, not a connected socket or a pipe"));
    close(file);
    TU_ASSERT_RC(mp_conn_from_fd(&c, file), -EBADF);
    TU_ASSERT_RC(mp_conn_from_fd(&c, -1), -EBADF);
    TU_ASSERT_RC(mp_conn_from_fd(NULL, 0), MP_EINVAL);

    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    TU_ASSERT_RC(mp_conn_from_fd(&c, s), MP_EINVAL);
    assert_non_null(strstr(mp_last_error(), "not connected"));
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    snprintf(un.sun_path + 1, sizeof un.sun_path - 1, "mproc-conn-fd-%d", (int)getpid());
    assert_int_equal(bind(s, (struct sockaddr *)&un, sizeof un), 0);
    assert_int_equal(listen(s, 1), 0);
    TU_ASSERT_RC(mp_conn_from_fd(&c, s), MP_EINVAL);
    assert_non_null(strstr(mp_last_error(), "listening socket"));
    close(s);
    s = socket(AF_UNIX, SOCK_DGRAM, 0);
    TU_ASSERT_RC(mp_conn_from_fd(&c, s), MP_EINVAL);
    assert_non_null(strstr(mp_last_error(), "not a stream socket"));
    close(s);

    int p[2];
    assert_int_equal(pipe(p), 0);
    mp_conn *r, *w;
    TU_OK(mp_conn_from_fd(&r, p[0]));
    TU_OK(mp_conn_from_fd(&w, p[1]));
    assert_true(fcntl(p[0], F_GETFD) & FD_CLOEXEC);
    TU_ASSERT_RC(mp_conn_send_bytes(r, "x", 1), MP_EINVAL);     /* a read end only reads */
    TU_OK(mp_conn_send_bytes(w, "framed", 6));
    char buf[8];
    size_t len;
    TU_OK(mp_conn_recv_bytes(r, buf, sizeof buf, &len));
    assert_int_equal(len, 6);
    mp_conn_close(w);                                           /* closes p[1] */
    TU_ASSERT_RC(mp_conn_recv_bytes(r, buf, sizeof buf, &len), MP_EEOF);
    mp_conn_close(r);
    assert_int_equal(fcntl(p[0], F_GETFD), -1);                 /* the conn owned it */
}

/* ------------------------------------------------------------------ python3 */

static const char python_peer[] =
    "import os, sys\n"
    "from multiprocessing.connection import Connection\n"
    "from multiprocessing.reduction import send_handle, recv_handle\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "assert conn.recv_bytes() == b'take this'\n"
    "h = recv_handle(conn)\n"
    "os.write(h, b'from python')\n"
    "os.close(h)\n"
    "r, w = os.pipe()\n"
    "os.write(w, b'to c')\n"
    "conn.send_bytes(b'here')\n"
    "send_handle(conn, r, os.getppid())\n"
    "conn.send_bytes(b'done')\n";

static void test_descriptors_pass_both_ways_with_python(void **state)
{
    (void)state;
    if (system("python3 -c 'import multiprocessing.reduction' >/dev/null 2>&1") != 0)
        skip();
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);   /* sv[1] inherited */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        char num[16];
        snprintf(num, sizeof num, "%d", sv[1]);
        execlp("python3", "python3", "-c", python_peer, num, (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    mp_conn *c;
    TU_OK(mp_conn_from_fd(&c, sv[0]));
    int p[2];
    assert_int_equal(pipe(p), 0);
    TU_OK(mp_conn_send_bytes(c, "take this", 9));
    TU_OK(mp_conn_send_fd(c, p[1]));
    char buf[32];
    size_t len;
    TU_OK(mp_conn_recv_bytes(c, buf, sizeof buf, &len));
    assert_memory_equal(buf, "here", 4);
    assert_int_equal(read(p[0], buf, sizeof buf), 11);
    assert_memory_equal(buf, "from python", 11);
    int got;
    TU_OK(mp_conn_recv_fd(c, &got, MP_FOREVER));
    assert_int_equal(read(got, buf, sizeof buf), 4);
    assert_memory_equal(buf, "to c", 4);
    TU_OK(mp_conn_recv_bytes(c, buf, sizeof buf, &len));
    assert_memory_equal(buf, "done", 4);
    assert_int_equal(tu_wait(pid, 30), 0);
    close(got);
    close(p[0]);
    close(p[1]);
    mp_conn_close(c);
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_send_fd_hands_over_the_same_open_file),
        cmocka_unit_test(test_descriptor_between_messages_survives_read_ahead),
        cmocka_unit_test(test_descriptor_handed_on_after_a_receive_carries_the_messages_behind_it),
        cmocka_unit_test(test_recv_fd_times_out_on_time),
        cmocka_unit_test(test_descriptor_reaches_a_running_child),
        cmocka_unit_test(test_send_fd_refuses_conns_that_cannot_carry_descriptors),
        cmocka_unit_test(test_recv_fd_refuses_what_python_would_not_send),
        cmocka_unit_test(test_conn_from_fd_takes_sockets_and_pipes_only),
        cmocka_unit_test(test_descriptors_pass_both_ways_with_python),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
