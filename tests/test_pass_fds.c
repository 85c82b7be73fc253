/* test_pass_fds.c - mp_process_opts.pass_fds: descriptors a child keeps at
 * the same numbers under fork, spawn and the fork server. A pipe and a
 * socket are passed and used in the child, at numbers chosen to cross the
 * ones the fork server's child receives them at; bad lists are refused with
 * a message naming the entry.
 */
#include "testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

struct fds_arg {
    int pipe_w;        /* the child writes "pipe" here */
    int sock;          /* the child reads one byte and answers it + 1 */
    int unpassed;      /* open in the parent, close-on-exec, not passed */
    dev_t unpassed_dev;
    ino_t unpassed_ino;
    bool exec_method;  /* spawn or forkserver: passed ones lose FD_CLOEXEC */
};

/* 0 when all went well, else which step failed. */
static int uses_passed_fds(void *p)
{
    const struct fds_arg *a = p;
    int fl_pipe = fcntl(a->pipe_w, F_GETFD), fl_sock = fcntl(a->sock, F_GETFD);
    if (fl_pipe < 0 || fl_sock < 0)
        return 10;
    if (a->exec_method && ((fl_pipe | fl_sock) & FD_CLOEXEC))
        return 11;
    struct stat st;            /* that number may hold one of the library's own now */
    if (a->exec_method && fstat(a->unpassed, &st) == 0 && st.st_dev == a->unpassed_dev &&
        st.st_ino == a->unpassed_ino)
        return 12;             /* nothing but what was asked for */
    if (write(a->pipe_w, "pipe", 4) != 4)
        return 13;
    char c;
    if (read(a->sock, &c, 1) != 1)
        return 14;
    c++;
    if (write(a->sock, &c, 1) != 1)
        return 15;
    return 0;
}

/* Moves fd to number at, a number not in use, close-on-exec. */
static int move_to(int fd, int at)
{
    assert_true(fcntl(at, F_GETFD) < 0);
    assert_int_equal(dup3(fd, at, O_CLOEXEC), at);
    close(fd);
    return at;
}

enum layout { AS_OPENED, HIGH, SWAPPED };

static void passes_a_pipe_and_a_socket(mp_start_method method, enum layout how)
{
    int pp[2], sv[2];
    assert_int_equal(pipe2(pp, O_CLOEXEC), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int w = pp[1], s = sv[1];
    if (how == HIGH) {
        w = move_to(w, 700);
        s = move_to(s, 701);
    } else if (how == SWAPPED) {          /* each where the other was: the numbers cross */
        int tmp = fcntl(w, F_DUPFD_CLOEXEC, 600);
        assert_true(tmp >= 600);
        assert_int_equal(dup3(s, w, O_CLOEXEC), w);
        assert_int_equal(dup3(tmp, s, O_CLOEXEC), s);
        close(tmp);
        int t = w;
        w = s;
        s = t;
    }
    int unpassed = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_true(unpassed >= 0);
    struct stat st;
    assert_int_equal(fstat(unpassed, &st), 0);
    struct fds_arg a = { w, s, unpassed, st.st_dev, st.st_ino, method != MP_FORK };
    int fds[] = { w, s };
    mp_process *p = NULL;
    TU_OK(mp_process_new(&p, uses_passed_fds, &a,
                         &(mp_process_opts){ .method = method, .arg_size = sizeof a,
                                             .pass_fds = fds, .n_pass_fds = 2 }));
    TU_OK(mp_process_start(p));
    close(w);                  /* the child's copies are all that is left */
    close(s);
    assert_int_equal(write(sv[0], "A", 1), 1);
    char got[8] = { 0 };
    ssize_t n = read(sv[0], got, 1);
    TU_OK(mp_process_join(p, 20 * tu_slow()));
    int code = -1;
    TU_OK(mp_process_exitcode(p, &code));
    if (code != 0 || n != 1)
        fail_msg("layout %d: the child exited %d (see uses_passed_fds), its answer %zd bytes",
                 (int)how, code, n);
    assert_int_equal(got[0], 'B');
    memset(got, 0, sizeof got);
    assert_int_equal(read(pp[0], got, sizeof got), 4);
    assert_string_equal(got, "pipe");
    assert_int_equal(read(pp[0], got, sizeof got), 0);    /* EOF: no copy left open anywhere */
    TU_OK(mp_process_free(p));
    close(pp[0]);
    close(sv[0]);
    close(unpassed);
}

static void passes_at_every_kind_of_number(mp_start_method method)
{
    passes_a_pipe_and_a_socket(method, AS_OPENED);
    passes_a_pipe_and_a_socket(method, HIGH);
    passes_a_pipe_and_a_socket(method, SWAPPED);
}

static void test_fork_child_keeps_passed_fds(void **state)
{
    (void)state;
    passes_at_every_kind_of_number(MP_FORK);
}

static void test_spawn_child_keeps_passed_fds(void **state)
{
    (void)state;
    passes_at_every_kind_of_number(MP_SPAWN);
}

static void test_forkserver_child_gets_passed_fds_at_their_numbers(void **state)
{
    (void)state;
    passes_at_every_kind_of_number(MP_FORKSERVER);
}

/* ------------------------------------------------------------------ refusals */

static int returns_zero(void *arg)
{
    (void)arg;
    return 0;
}

static void refused(const int *fds, size_t n, int code, const char *fragment)
{
    mp_process *p = (mp_process *)&p;
    int rc = mp_process_new(&p, returns_zero, NULL,
                            &(mp_process_opts){ .pass_fds = fds, .n_pass_fds = n });
    if (rc != code)
        fail_msg("rc %d (%s), wanted %d", rc, mp_errname(rc), code);
    assert_ptr_equal(p, (mp_process *)&p);              /* untouched */
    if (!strstr(mp_last_error(), fragment))
        fail_msg("mp_last_error() = \"%s\" lacks \"%s\"", mp_last_error(), fragment);
    assert_non_null(strstr(mp_last_error(), "mp_process_new: "));
}

static void test_bad_pass_fds_are_refused_naming_the_entry(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    int closed = dup(p[0]);
    close(closed);
    refused((int[]){ p[0], -1 }, 2, MP_EINVAL, "opts.pass_fds[1] is -1");
    refused((int[]){ p[0], p[1], p[0] }, 3, MP_EINVAL, "[0] and [2] are both");
    refused((int[]){ p[1], closed }, 2, -EBADF, "which is not open");
    refused(NULL, 1, MP_EINVAL, "opts.pass_fds is NULL");
    static int many[MP_PASS_FDS_MAX + 1];
    refused(many, MP_PASS_FDS_MAX + 1, MP_EINVAL, "at most");
    close(p[0]);
    close(p[1]);
}

static void test_pass_fd_closed_before_start_is_refused_at_start(void **state)
{
    (void)state;
    static const mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    for (size_t i = 0; i < 3; i++) {
        int p[2];
        assert_int_equal(pipe(p), 0);
        mp_process *proc = NULL;
        TU_OK(mp_process_new(&proc, returns_zero, NULL,
                             &(mp_process_opts){ .method = methods[i], .pass_fds = p,
                                                 .n_pass_fds = 2 }));
        close(p[1]);
        assert_int_equal(mp_process_start(proc), -EBADF);
        assert_non_null(strstr(mp_last_error(), "mp_process_start: opts.pass_fds[1]"));
        assert_int_equal(mp_process_join(proc, 0), MP_ESTATE);   /* it never started */
        TU_OK(mp_process_free(proc));
        close(p[0]);
    }
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fork_child_keeps_passed_fds),
        cmocka_unit_test(test_spawn_child_keeps_passed_fds),
        cmocka_unit_test(test_forkserver_child_gets_passed_fds_at_their_numbers),
        cmocka_unit_test(test_bad_pass_fds_are_refused_naming_the_entry),
        cmocka_unit_test(test_pass_fd_closed_before_start_is_refused_at_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
