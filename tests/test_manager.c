/* test_manager.c - managers: named dicts, lists, queues and locks served by
 * a server process, reached by address and authkey from any process; what
 * happens when a client or the server dies, and when a peer sends garbage. */
#include "testutil.h"
#include "proc_stats.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* Manager locks are driven through mp_lock_*, which the sync area provides;
 * weak so this file links before it lands (those tests are skipped then). */
#pragma weak mp_lock_acquire
#pragma weak mp_lock_release
#pragma weak mp_lock_free

/* Sanitizers keep freed memory in quarantine: RSS says little there. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RSS_SLACK_KB (256 * 1024)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define RSS_SLACK_KB (256 * 1024)
#endif
#endif
#ifndef RSS_SLACK_KB
#define RSS_SLACK_KB 4096
#endif

static mp_manager *start(void)
{
    mp_manager *m = NULL;
    TU_OK(mp_manager_start(&m, NULL));
    assert_non_null(m);
    return m;
}

static mp_dict *open_dict(mp_manager *m, const char *name)
{
    mp_dict *d = NULL;
    TU_OK(mp_dict_open(m, name, &d));
    return d;
}

/* ------------------------------------------------------------------ lifecycle */

static void test_manager_start_gives_address_authkey_and_pid(void **state)
{
    mp_manager *m = start();
    assert_non_null(strstr(mp_manager_address(m), "unix:@"));
    size_t len = 0;
    assert_non_null(mp_manager_authkey(m, &len));
    assert_int_equal(len, 32);
    assert_true(mp_manager_pid(m) > 0);
    TU_OK(mp_manager_shutdown(m));
    assert_true(tu_pid_gone(mp_manager_pid(m)));
    TU_OK(mp_manager_shutdown(m));          /* twice is harmless */
    mp_manager_free(m);
    mp_manager_free(NULL);
}

static void *start_in_thread(void *arg)
{
    return mp_manager_start((mp_manager **)arg, NULL) == 0 ? arg : NULL;
}

static void test_manager_outlives_the_thread_that_started_it(void **state)
{
#if TU_TSAN
    skip();         /* ThreadSanitizer cannot run threads after a multi-threaded fork */
#endif
    if (RUNNING_ON_VALGRIND)
        skip();     /* no pidfd_open there: the server falls back to PDEATHSIG */
    mp_manager *m = NULL;
    pthread_t t;
    void *ok = NULL;
    TU_OK(pthread_create(&t, NULL, start_in_thread, &m));
    TU_OK(pthread_join(t, &ok));
    assert_non_null(ok);
    mp_dict *d = open_dict(m, "d");
    TU_OK(mp_dict_set(d, "k", "v", 1));         /* the server is still there */
    mp_dict_free(d);
    mp_manager_free(m);
}

/* Dead, or a zombie no one has reaped yet. */
static bool server_gone(void *arg)
{
    pid_t pid = *(pid_t *)arg;
    char path[64], state = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    if (fscanf(f, "%*d %*s %c", &state) != 1)
        state = 0;
    fclose(f);
    return state == 'Z' || state == 'X';
}

static int child_start_and_wait(void *arg)
{
    int *fds = arg;
    mp_manager *m = NULL;
    if (mp_manager_start(&m, NULL) != 0)
        return 10;
    pid_t pid = mp_manager_pid(m);
    if (write(fds[1], &pid, sizeof pid) != sizeof pid)
        return 11;
    for (;;)
        pause();
}

static void test_manager_server_exits_when_its_starter_is_killed(void **state)
{
    int fds[2];
    TU_OK(pipe(fds));
    pid_t starter = tu_fork(child_start_and_wait, fds);
    pid_t server = -1;
    assert_int_equal(read(fds[0], &server, sizeof server), sizeof server);
    assert_false(server_gone(&server));
    kill(starter, SIGKILL);
    assert_int_equal(tu_wait(starter, 5), -SIGKILL);
    assert_true(tu_wait_for(server_gone, &server, 5));
    close(fds[0]);
    close(fds[1]);
}

static void test_manager_connect_by_address_and_key_sees_same_objects(void **state)
{
    mp_manager *m = start(), *other = NULL;
    size_t klen;
    const void *key = mp_manager_authkey(m, &klen);
    TU_OK(mp_manager_connect(&other, mp_manager_address(m), key, klen));
    mp_dict *a = open_dict(m, "shared"), *b = open_dict(other, "shared");
    TU_OK(mp_dict_set(a, "k", "v1", 2));
    mp_buf got = { 0 };
    TU_OK(mp_dict_get(b, "k", &got));
    assert_memory_equal(got.data, "v1", 2);
    TU_ASSERT_RC(mp_manager_shutdown(other), MP_ESTATE);   /* only the starter stops it */
    mp_buf_free(&got);
    mp_dict_free(a);
    mp_dict_free(b);
    mp_manager_free(other);
    mp_manager_free(m);
}

static void test_manager_tcp_address_with_port_zero_gets_a_port(void **state)
{
    mp_manager *m = NULL, *c = NULL;
    TU_OK(mp_manager_start(&m, &(mp_manager_opts){ .address = "tcp:127.0.0.1:0",
                                                    .authkey = "k", .authkey_len = 1 }));
    assert_null(strstr(mp_manager_address(m), ":0\0"));
    assert_non_null(strstr(mp_manager_address(m), "tcp:127.0.0.1:"));
    TU_OK(mp_manager_connect(&c, mp_manager_address(m), "k", 1));
    mp_dict *d = open_dict(c, "t");
    int64_t v;
    TU_OK(mp_dict_incr(d, "n", 3, &v));
    assert_int_equal(v, 3);
    mp_dict_free(d);
    mp_manager_free(c);
    mp_manager_free(m);
}

static void test_manager_unix_path_address_is_removed_at_shutdown(void **state)
{
    char path[64], addr[80];
    snprintf(path, sizeof path, "/tmp/mproc-test-mgr-%d.sock", (int)getpid());
    snprintf(addr, sizeof addr, "unix:%s", path);
    mp_manager *m = NULL;
    TU_OK(mp_manager_start(&m, &(mp_manager_opts){ .address = addr }));
    assert_int_equal(access(path, F_OK), 0);
    mp_manager_free(m);
    assert_int_equal(access(path, F_OK), -1);
}

/* A starter that returns without shutdown, or is killed: the server goes,
 * and takes its file with it. One shut down does not take the file of a
 * manager started at the same path since. */
static int starts_and_leaves(void *arg)
{
    mp_manager *m;
    if (mp_manager_start(&m, &(mp_manager_opts){ .address = arg }) != 0)
        return 1;
    if (strstr(arg, "killed"))
        raise(SIGKILL);
    return 0;                          /* no shutdown, no free */
}

static bool file_gone(void *path)
{
    return access(path, F_OK) != 0;
}

static void test_manager_unix_file_goes_however_its_starter_ends(void **state)
{
    (void)state;
    const char *how[] = { "left", "killed" };
    for (int i = 0; i < 2; i++) {
        char path[96], addr[112];
        snprintf(path, sizeof path, "/tmp/mproc-test-mgr-%d-%s.sock", (int)getpid(), how[i]);
        snprintf(addr, sizeof addr, "unix:%s", path);
        int code = tu_wait(tu_fork(starts_and_leaves, addr), 10 * tu_slow());
        assert_int_equal(code, i ? -SIGKILL : 0);
        assert_true(tu_wait_for(file_gone, path, 10 * tu_slow()));
    }
    char path[96], addr[112];
    snprintf(path, sizeof path, "/tmp/mproc-test-mgr-%d-again.sock", (int)getpid());
    snprintf(addr, sizeof addr, "unix:%s", path);
    mp_manager *old, *now;
    TU_OK(mp_manager_start(&old, &(mp_manager_opts){ .address = addr }));
    TU_OK(mp_manager_shutdown(old));   /* removes the file; its server goes after */
    TU_OK(mp_manager_start(&now, &(mp_manager_opts){ .address = addr }));
    usleep(300 * 1000);
    assert_int_equal(access(path, F_OK), 0);
    mp_manager_free(old);
    TU_OK(unlink(path));               /* someone removed it, and a third started there */
    mp_manager *third;
    TU_OK(mp_manager_start(&third, &(mp_manager_opts){ .address = addr }));
    TU_OK(mp_manager_shutdown(now));   /* not the third's file */
    assert_int_equal(access(path, F_OK), 0);
    mp_dict *d = open_dict(third, "d");
    TU_OK(mp_dict_set(d, "k", "v", 1));
    mp_dict_free(d);
    mp_manager_free(now);
    mp_manager_free(third);
    assert_true(file_gone(path));
}

/* At the descriptor or process limit a start says so at once (-EMFILE,
 * -EAGAIN), whether the starter or its server meets it: never MP_EBROKEN,
 * never after the connect timeout. Exit code: 0, or which check failed. */
static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n - 1;                       /* the directory's own */
}

static int start_within(int resource, rlim_t lim, int shortage, bool *short_seen)
{
    struct rlimit rl;
    getrlimit(resource, &rl);
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = lim;
    setrlimit(resource, &rl);
    double t0 = tu_now();
    mp_manager *m;
    char path[96], addr[112];           /* a file: a failed start must not leave it */
    snprintf(path, sizeof path, "/tmp/mproc-test-mgr-%d-limit.sock", (int)getpid());
    snprintf(addr, sizeof addr, "unix:%s", path);
    int rc = mp_manager_start(&m, &(mp_manager_opts){ .address = addr });
    double took = tu_now() - t0;
    rl.rlim_cur = was;
    setrlimit(resource, &rl);
    if (rc == 0) {
        mp_manager_shutdown(m);
        mp_manager_free(m);
    }
    if ((rc != 0 && rc != shortage) || took > 3 || access(path, F_OK) == 0)
        return fprintf(stderr, "limit %d: %s after %.1f s (%s): %s\n", (int)lim,
                       mp_errname(rc), took, access(path, F_OK) == 0 ? "file left" : "no file",
                       mp_last_error()), 1;
    *short_seen |= rc == shortage;
    return 0;
}

static int starts_at_limits(void *arg)
{
    (void)arg;
    bool seen = false;
    int base = open_fds();
    for (int extra = 1; extra <= 10; extra++)
        if (start_within(RLIMIT_NOFILE, (rlim_t)(base + extra), -EMFILE, &seen) != 0)
            return 1;
    if (!seen)
        return 2;
    if (getuid() != 0 || setgid(65534) != 0 || setuid(65534) != 0)
        return 0;                       /* RLIMIT_NPROC binds only the unprivileged */
    seen = false;
    for (rlim_t lim = 1; lim <= 3; lim++)
        if (start_within(RLIMIT_NPROC, lim, -EAGAIN, &seen) != 0)
            return 3;
    return seen ? 0 : 4;
}

static void test_manager_start_at_the_descriptor_or_process_limit_says_so_at_once(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)            /* which keeps descriptors of its own */
        skip();
    assert_int_equal(tu_wait(tu_fork(starts_at_limits, NULL), 120), 0);
}

/* A peer that is no manager: accepts, sends one frame that is no
 * challenge, and waits to be hung up on. */
static void *not_a_manager(void *arg)
{
    int lfd = *(int *)arg, fd = accept(lfd, NULL, NULL);
    if (fd >= 0) {
        static const char frame[] = "\0\0\0\x05hello";
        ssize_t sent = send(fd, frame, sizeof frame - 1, MSG_NOSIGNAL);
        char b[64];
        while (sent > 0 && read(fd, b, sizeof b) > 0)
            ;
        close(fd);
    }
    return NULL;
}

/* The refusal says which way the handshake failed: a wrong key (the
 * server's #FAILURE#), or a peer that does not speak the protocol (it was
 * "refused the authkey" either way). */
static void test_a_peer_that_is_no_manager_is_told_apart_from_a_wrong_key(void **state)
{
    (void)state;
    char addr[64];
    snprintf(addr, sizeof addr, "unix:@mproc-notmgr-%d", (int)getpid());
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    size_t n = strlen(addr + 5);
    memcpy(un.sun_path, addr + 5, n);
    un.sun_path[0] = '\0';
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    TU_OK(bind(lfd, (struct sockaddr *)&un, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)));
    TU_OK(listen(lfd, 4));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, not_a_manager, &lfd), 0);
    mp_manager *c = NULL;
    TU_ASSERT_RC(mp_manager_connect(&c, addr, "key", 3), MP_EAUTH);
    tu_last_error_has("no #CHALLENGE#: it does not speak this protocol", NULL);
    assert_null(c);
    pthread_join(t, NULL);
    close(lfd);
}

static void test_manager_wrong_authkey_is_refused_with_eauth(void **state)
{
    mp_manager *m = NULL, *c = NULL;
    TU_OK(mp_manager_start(&m, &(mp_manager_opts){ .authkey = "right", .authkey_len = 5 }));
    mp_dict *d = open_dict(m, "secret");
    TU_OK(mp_dict_set(d, "k", "v", 1));
    TU_ASSERT_RC(mp_manager_connect(&c, mp_manager_address(m), "wrong", 5), MP_EAUTH);
    tu_last_error_has("#FAILURE#): the authkeys differ (authkey of 5 bytes", NULL);
    assert_null(c);
    TU_ASSERT_RC(mp_manager_connect(&c, mp_manager_address(m), NULL, 0), MP_EAUTH);
    mp_dict_free(d);
    mp_manager_free(m);
}

static void test_manager_bad_arguments_are_einval(void **state)
{
    mp_manager *m = NULL;
    TU_ASSERT_RC(mp_manager_start(NULL, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_manager_start(&m, &(mp_manager_opts){ .address = "nowhere:x" }), MP_EINVAL);
    TU_ASSERT_RC(mp_manager_start(&m, &(mp_manager_opts){ .authkey_len = 3 }), MP_EINVAL);
    TU_ASSERT_RC(mp_manager_start(&m, &(mp_manager_opts){ .authkey = "", .authkey_len = 0 }), MP_EINVAL);
    TU_ASSERT_RC(mp_manager_connect(&m, NULL, "k", 1), MP_EINVAL);
    assert_true(mp_manager_connect(&m, "unix:@mproc-nobody-here", "k", 1) < 0);
    assert_null(mp_manager_address(NULL));
    TU_ASSERT_RC(mp_manager_shutdown(NULL), MP_EINVAL);
    m = start();
    mp_dict *d = NULL;
    char longname[300];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    TU_ASSERT_RC(mp_dict_open(m, longname, &d), MP_EINVAL);
    TU_ASSERT_RC(mp_dict_open(m, "", &d), MP_EINVAL);
    TU_ASSERT_RC(mp_dict_open(m, "bad\xff", &d), MP_EINVAL);          /* not UTF-8 */
    TU_ASSERT_RC(mp_dict_open(m, "\xc0\x80", &d), MP_EINVAL);        /* overlong NUL */
    TU_ASSERT_RC(mp_dict_open(m, "\xed\xa0\x80", &d), MP_EINVAL);    /* a surrogate */
    TU_ASSERT_RC(mp_dict_open(m, "cut\xe2\x82", &d), MP_EINVAL);      /* cut short */
    longname[255] = '\0';
    TU_OK(mp_dict_open(m, longname, &d));                             /* 255 bytes: fine */
    mp_dict_free(d);
    TU_OK(mp_dict_open(m, "caf\xc3\xa9 \xf0\x9f\x98\x80", &d));       /* UTF-8: fine */
    mp_dict_free(d);
    TU_ASSERT_RC(mp_dict_open(NULL, "x", &d), MP_EINVAL);
    TU_ASSERT_RC(mp_dict_set(NULL, "k", "v", 1), MP_EINVAL);
    TU_ASSERT_RC(mp_dict_get(NULL, "k", &(mp_buf){ 0 }), MP_EINVAL);
    TU_ASSERT_RC(mp_list_append(NULL, "v", 1), MP_EINVAL);
    TU_ASSERT_RC(mp_mqueue_put(NULL, "v", 1, 0), MP_EINVAL);
    d = open_dict(m, "d");
    TU_ASSERT_RC(mp_dict_set(d, NULL, "v", 1), MP_EINVAL);
    TU_ASSERT_RC(mp_dict_set(d, "k", NULL, 1), MP_EINVAL);
    TU_ASSERT_RC(mp_dict_set(d, "k", "v", (size_t)17 * 1024 * 1024), MP_ETOOBIG);
    TU_ASSERT_RC(mp_dict_get_i64(d, "k", NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_dict_set(d, "", "empty key is fine", 17), 0);
    /* The reason is told, not only the code. */
    TU_OK(mp_dict_set_i64(d, "top", INT64_MAX));
    TU_ASSERT_RC(mp_dict_incr(d, "top", 1, NULL), MP_ERANGE);
    tu_last_error_has("mp_dict_incr: adding 1 to the value of \"top\" would overflow", NULL);
    TU_ASSERT_RC(mp_dict_incr(d, "", 1, NULL), MP_ETYPE);
    tu_last_error_has("mp_dict_incr: the value of \"\" is not an integer", NULL);
    mp_mqueue *mq = NULL;
    TU_ASSERT_RC(mp_manager_queue(m, "q", SIZE_MAX, &mq), MP_EINVAL);
    tu_last_error_has("mp_manager_queue: maxsize", "over INT64_MAX", NULL);
    TU_OK(mp_manager_queue(m, "q", 0, &mq));
    TU_ASSERT_RC(mp_mqueue_get(mq, NULL, 0), MP_EINVAL);
    tu_last_error_has("mp_mqueue_get: out (where the item goes) is NULL", NULL);
    TU_ASSERT_RC(mp_mqueue_get(mq, &(mp_buf){ 0 }, -2), MP_EINVAL);
    tu_last_error_has("mp_mqueue_get", NULL);
    mp_mqueue_free(mq);
    /* A length past the caller's memory is refused, not a fault in the copy
     * (under valgrind, valgrind reports such a range itself). */
    if (!RUNNING_ON_VALGRIND) {
        char *small = tu_page_before_hole();
        TU_ASSERT_RC(mp_dict_set(d, "k", small, (size_t)8 << 20), MP_EINVAL);
        tu_last_error_has("mp_dict_set: val..val+8388608 runs past this process's memory", NULL);
        TU_ASSERT_RC(mp_dict_cas(d, "k", small, (size_t)8 << 20, "v", 1), MP_EINVAL);
        mp_list *l = NULL;
        TU_OK(mp_list_open(m, "l", &l));
        TU_ASSERT_RC(mp_list_append(l, small, (size_t)8 << 20), MP_EINVAL);
        mp_list_free(l);
        mp_mqueue *q = NULL;
        TU_OK(mp_manager_queue(m, "q", 0, &q));
        TU_ASSERT_RC(mp_mqueue_put(q, small, (size_t)8 << 20, 0), MP_EINVAL);
        mp_mqueue_free(q);
    }
    mp_dict_free(d);
    mp_manager_free(m);
}

static void test_proxy_calls_check_sizes_and_handles(void **state)
{
    mp_manager *m = start();
    mp_list *l = NULL;
    mp_mqueue *q = NULL;
    mp_dict *d = open_dict(m, "d");
    TU_OK(mp_list_open(m, "l", &l));
    TU_OK(mp_manager_queue(m, "q", 0, &q));
    size_t big = (size_t)17 * 1024 * 1024;
    TU_ASSERT_RC(mp_list_append(l, "x", big), MP_ETOOBIG);
    TU_ASSERT_RC(mp_list_set(l, 0, "x", big), MP_ETOOBIG);
    TU_ASSERT_RC(mp_mqueue_put(q, "x", big, 0), MP_ETOOBIG);
    TU_ASSERT_RC(mp_dict_cas(d, "k", NULL, 1, "v", 1), MP_EINVAL);
    TU_ASSERT_RC(mp_list_get(l, 0, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_list_len(NULL, &(size_t){ 0 }), MP_EINVAL);
    TU_ASSERT_RC(mp_dict_len(d, NULL), MP_EINVAL);
    TU_ASSERT_RC(mp_dict_keys(NULL, &(mp_buf){ 0 }), MP_EINVAL);
    TU_ASSERT_RC(mp_mqueue_get(NULL, &(mp_buf){ 0 }, 0), MP_EINVAL);
    TU_ASSERT_RC(mp_manager_queue(NULL, "q", 0, &q), MP_EINVAL);
    TU_ASSERT_RC(mp_manager_lock(NULL, "l", &(mp_lock *){ NULL }), MP_EINVAL);
    TU_ASSERT_RC(mp_list_open(m, NULL, &l), MP_EINVAL);
    mp_list_free(l);
    mp_mqueue_free(q);
    mp_mqueue_free(NULL);
    mp_list_free(NULL);
    mp_dict_free(NULL);
    mp_dict_free(d);
    mp_manager_free(m);
}

/* Every proxy call's argument error names the argument and the rule, as
 * the local calls' do. */
static void test_proxy_argument_errors_name_the_argument_and_the_rule(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "d");
    mp_list *l = NULL;
    mp_mqueue *q = NULL;
    TU_OK(mp_list_open(m, "l", &l));
    TU_OK(mp_manager_queue(m, "q", 0, &q));
    size_t big = (size_t)17 * 1024 * 1024;
    TU_ASSERT_RC(mp_mqueue_put(q, "x", 1, NAN), MP_EINVAL);
    tu_last_error_has("mp_mqueue_put: timeout", "not a number", NULL);
    TU_ASSERT_RC(mp_mqueue_put(q, "x", 1, -0.5), MP_EINVAL);
    tu_last_error_has("mp_mqueue_put: timeout", "negative", NULL);
    TU_ASSERT_RC(mp_mqueue_put(q, NULL, 3, 0), MP_EINVAL);
    tu_last_error_has("mp_mqueue_put: data is NULL but len is 3", NULL);
    TU_ASSERT_RC(mp_mqueue_put(q, "x", big, 0), MP_ETOOBIG);
    tu_last_error_has("mp_mqueue_put: len 17825792 is more than", NULL);
    TU_ASSERT_RC(mp_mqueue_put(NULL, "x", big, 0), MP_EINVAL);     /* the handle first */
    tu_last_error_has("mp_mqueue_put: the handle is NULL", NULL);
    TU_ASSERT_RC(mp_list_get(l, 0, NULL), MP_EINVAL);
    tu_last_error_has("mp_list_get: val (where the value goes) is NULL", NULL);
    TU_ASSERT_RC(mp_list_len(l, NULL), MP_EINVAL);
    tu_last_error_has("mp_list_len: n (where the length goes) is NULL", NULL);
    TU_ASSERT_RC(mp_list_len(NULL, &(size_t){ 0 }), MP_EINVAL);
    tu_last_error_has("mp_list_len: the handle is NULL", NULL);
    TU_ASSERT_RC(mp_list_pop(NULL, -1, NULL), MP_EINVAL);
    tu_last_error_has("mp_list_pop: the handle is NULL", NULL);
    TU_ASSERT_RC(mp_list_append(l, NULL, 2), MP_EINVAL);
    tu_last_error_has("mp_list_append: val is NULL but len is 2", NULL);
    TU_ASSERT_RC(mp_list_set(l, 0, "x", big), MP_ETOOBIG);
    tu_last_error_has("mp_list_set: len 17825792 is more than", NULL);
    TU_ASSERT_RC(mp_dict_get(d, "k", NULL), MP_EINVAL);
    tu_last_error_has("mp_dict_get: val (where the value goes) is NULL", NULL);
    TU_ASSERT_RC(mp_dict_len(d, NULL), MP_EINVAL);
    tu_last_error_has("mp_dict_len: n (where the length goes) is NULL", NULL);
    TU_ASSERT_RC(mp_dict_keys(d, NULL), MP_EINVAL);
    tu_last_error_has("mp_dict_keys: keys (where the keys go) is NULL", NULL);
    TU_ASSERT_RC(mp_dict_del(d, NULL), MP_EINVAL);
    tu_last_error_has("mp_dict_del: key is NULL", NULL);
    TU_ASSERT_RC(mp_dict_incr(d, NULL, 1, NULL), MP_EINVAL);
    tu_last_error_has("mp_dict_incr: key is NULL", NULL);
    TU_ASSERT_RC(mp_dict_clear(NULL), MP_EINVAL);
    tu_last_error_has("mp_dict_clear: the handle is NULL", NULL);
    TU_ASSERT_RC(mp_dict_cas(d, "k", NULL, 1, "v", 1), MP_EINVAL);
    tu_last_error_has("mp_dict_cas: expect is NULL but elen is 1", NULL);
    TU_ASSERT_RC(mp_dict_cas(d, "k", "e", big, "v", 1), MP_ETOOBIG);
    tu_last_error_has("mp_dict_cas: elen 17825792 is more than", NULL);
    TU_ASSERT_RC(mp_dict_cas(d, "k", NULL, 0, NULL, 1), MP_EINVAL);
    tu_last_error_has("mp_dict_cas: val is NULL but vlen is 1", NULL);
    mp_lock *lk = NULL;
    TU_OK(mp_manager_lock(m, "lk", &lk));
    TU_ASSERT_RC(mp_lock_acquire(lk, NAN), MP_EINVAL);
    tu_last_error_has("mp_lock_acquire: timeout", "not a number", NULL);
    mp_lock_free(lk);
    mp_mqueue_free(q);
    mp_list_free(l);
    mp_dict_free(d);
    mp_manager_free(m);
}

/* As mp_future_result takes a NULL out: the item is removed, not copied. */
static void test_list_pop_with_null_val_discards_the_item(void **state)
{
    mp_manager *m = start();
    mp_list *l = NULL;
    TU_OK(mp_list_open(m, "l", &l));
    TU_OK(mp_list_append(l, "a", 1));
    TU_OK(mp_list_append(l, "b", 1));
    TU_OK(mp_list_pop(l, -1, NULL));
    size_t n = 0;
    TU_OK(mp_list_len(l, &n));
    assert_int_equal(n, 1);
    mp_buf b = { 0 };
    TU_OK(mp_list_get(l, 0, &b));
    assert_int_equal(b.len, 1);
    assert_memory_equal(b.data, "a", 1);
    TU_OK(mp_list_pop(l, 0, NULL));
    TU_ASSERT_RC(mp_list_pop(l, 0, NULL), MP_ERANGE);
    mp_buf_free(&b);
    mp_list_free(l);
    mp_manager_free(m);
}

static void test_calls_after_shutdown_return_ebroken(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "d");
    mp_mqueue *q = NULL;
    TU_OK(mp_manager_queue(m, "q", 0, &q));
    TU_OK(mp_manager_shutdown(m));
    TU_ASSERT_RC(mp_dict_set(d, "k", "v", 1), MP_EBROKEN);
    TU_ASSERT_RC(mp_mqueue_get(q, &(mp_buf){ 0 }, 1), MP_EBROKEN);
    mp_dict *again = NULL;
    TU_ASSERT_RC(mp_dict_open(m, "d", &again), MP_EBROKEN);
    mp_mqueue_free(q);
    mp_dict_free(d);
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ dicts */

static void test_dict_set_get_del_len_keys_clear(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "d");
    mp_buf b = { 0 };
    TU_ASSERT_RC(mp_dict_get(d, "a", &b), MP_ENOTFOUND);
    TU_ASSERT_RC(mp_dict_del(d, "a"), MP_ENOTFOUND);
    TU_OK(mp_dict_set(d, "a", "1", 1));
    TU_OK(mp_dict_set(d, "b", "22", 2));
    TU_OK(mp_dict_set(d, "b", "333", 3));      /* replaces */
    TU_OK(mp_dict_set(d, "z", NULL, 0));       /* an empty value */
    TU_OK(mp_dict_get(d, "b", &b));
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "333", 3);
    TU_OK(mp_dict_get(d, "z", &b));
    assert_int_equal(b.len, 0);
    size_t n = 0;
    TU_OK(mp_dict_len(d, &n));
    assert_int_equal(n, 3);
    TU_OK(mp_dict_keys(d, &b));
    assert_int_equal(b.len, 6);                /* "a\0b\0z\0" */
    int seen = 0;
    for (size_t at = 0; at < b.len; at += strlen((char *)b.data + at) + 1)
        seen |= 1 << (((char *)b.data)[at] - 'a') % 26;
    assert_int_equal(seen, 1 | 2 | 1 << 25);
    TU_OK(mp_dict_del(d, "a"));
    TU_ASSERT_RC(mp_dict_get(d, "a", &b), MP_ENOTFOUND);
    TU_OK(mp_dict_clear(d));
    TU_OK(mp_dict_len(d, &n));
    assert_int_equal(n, 0);
    TU_OK(mp_dict_keys(d, &b));
    assert_int_equal(b.len, 0);
    mp_buf_free(&b);
    mp_dict_free(d);
    mp_manager_free(m);
}

/* Keys are listed oldest first, as a Python dict's: a replace keeps a
 * key's place, a delete and a new set put it last. */
static void test_dict_keys_list_oldest_first(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "order");
    mp_buf b = { 0 };
    TU_OK(mp_dict_set_i64(d, "c", 1));
    TU_OK(mp_dict_set_i64(d, "a", 2));
    TU_OK(mp_dict_set_i64(d, "b", 3));
    TU_OK(mp_dict_set(d, "c", "4", 1));        /* replaced, by another type too */
    TU_OK(mp_dict_del(d, "a"));
    TU_OK(mp_dict_set_i64(d, "a", 5));
    TU_OK(mp_dict_keys(d, &b));
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.data, "c\0b\0a\0", 6);
    mp_buf_free(&b);
    mp_dict_free(d);
    mp_manager_free(m);
}

static void test_dict_typed_values_return_etype_on_mismatch(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "typed");
    int64_t i;
    double f;
    mp_buf b = { 0 };
    TU_OK(mp_dict_set_i64(d, "i", -1234567890123LL));
    TU_OK(mp_dict_set_f64(d, "f", 2.5));
    TU_OK(mp_dict_set(d, "b", "xy", 2));
    TU_OK(mp_dict_get_i64(d, "i", &i));
    assert_true(i == -1234567890123LL);
    TU_OK(mp_dict_get_f64(d, "f", &f));
    assert_true(f == 2.5);
    TU_ASSERT_RC(mp_dict_get_i64(d, "f", &i), MP_ETYPE);
    tu_last_error_has("mp_dict_get_i64: the value of \"f\" is not an integer", NULL);
    TU_ASSERT_RC(mp_dict_get_i64(d, "b", &i), MP_ETYPE);
    TU_ASSERT_RC(mp_dict_get_f64(d, "i", &f), MP_ETYPE);
    TU_ASSERT_RC(mp_dict_get(d, "i", &b), MP_ETYPE);
    TU_ASSERT_RC(mp_dict_get_i64(d, "missing", &i), MP_ENOTFOUND);
    TU_OK(mp_dict_set_i64(d, "b", 7));          /* a key may change type */
    TU_OK(mp_dict_get_i64(d, "b", &i));
    assert_int_equal(i, 7);
    mp_buf_free(&b);
    mp_dict_free(d);
    mp_manager_free(m);
}

static void test_dict_incr_starts_at_zero_and_checks_type_and_overflow(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "c");
    int64_t v = 0;
    TU_OK(mp_dict_incr(d, "n", 5, &v));
    assert_int_equal(v, 5);
    TU_OK(mp_dict_incr(d, "n", -7, &v));
    assert_int_equal(v, -2);
    TU_OK(mp_dict_incr(d, "n", 1, NULL));
    TU_OK(mp_dict_get_i64(d, "n", &v));
    assert_int_equal(v, -1);
    TU_OK(mp_dict_set(d, "s", "x", 1));
    TU_ASSERT_RC(mp_dict_incr(d, "s", 1, &v), MP_ETYPE);
    TU_OK(mp_dict_set_i64(d, "big", INT64_MAX));
    TU_ASSERT_RC(mp_dict_incr(d, "big", 1, &v), MP_ERANGE);
    TU_OK(mp_dict_get_i64(d, "big", &v));
    assert_true(v == INT64_MAX);
    mp_dict_free(d);
    mp_manager_free(m);
}

static void test_dict_cas_swaps_only_on_expected_value(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "cas");
    mp_buf b = { 0 };
    TU_OK(mp_dict_cas(d, "k", NULL, 0, "one", 3));          /* absent -> set */
    TU_ASSERT_RC(mp_dict_cas(d, "k", NULL, 0, "two", 3), MP_ECONFLICT);
    TU_ASSERT_RC(mp_dict_cas(d, "k", "zzz", 3, "two", 3), MP_ECONFLICT);
    TU_OK(mp_dict_cas(d, "k", "one", 3, "two", 3));
    TU_OK(mp_dict_get(d, "k", &b));
    assert_memory_equal(b.data, "two", 3);
    TU_ASSERT_RC(mp_dict_cas(d, "absent", "x", 1, "y", 1), MP_ECONFLICT);
    TU_OK(mp_dict_set_i64(d, "i", 1));
    TU_ASSERT_RC(mp_dict_cas(d, "i", "x", 1, "y", 1), MP_ETYPE);
    mp_buf_free(&b);
    mp_dict_free(d);
    mp_manager_free(m);
}

/* A 4 MiB value goes into d under "v" and comes back whole. */
static void check_big_value(mp_dict *d)
{
    size_t n = 4 * 1024 * 1024;
    char *val = malloc(n);
    for (size_t i = 0; i < n; i++)
        val[i] = (char)(i * 7);
    TU_OK(mp_dict_set(d, "v", val, n));
    mp_buf b = { 0 };
    TU_OK(mp_dict_get(d, "v", &b));
    assert_int_equal(b.len, n);
    assert_memory_equal(b.data, val, n);
    free(val);
    mp_buf_free(&b);
}

static void test_dict_holds_large_values(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "big");
    check_big_value(d);
    mp_dict_free(d);
    mp_manager_free(m);
}

/* A client that reaches the server by address has its dicts stored by the
 * server in the server's own arena: big values and many keys there too. */
static void test_dict_through_the_server_holds_large_values_and_many_keys(void **state)
{
    mp_manager *m = start(), *c = NULL;
    size_t klen;
    const void *key = mp_manager_authkey(m, &klen);
    TU_OK(mp_manager_connect(&c, mp_manager_address(m), key, klen));
    mp_dict *d = open_dict(c, "big");
    check_big_value(d);
    for (int i = 0; i < 5000; i++) {
        char k[32];
        snprintf(k, sizeof k, "key%d", i);
        TU_OK(mp_dict_set_i64(d, k, i));
    }
    size_t len;
    TU_OK(mp_dict_len(d, &len));
    assert_int_equal(len, 5001);
    mp_dict_free(d);
    mp_manager_free(c);
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ lists */

static void test_list_append_get_set_pop_with_negative_indices(void **state)
{
    mp_manager *m = start();
    mp_list *l = NULL;
    TU_OK(mp_list_open(m, "l", &l));
    mp_buf b = { 0 };
    size_t n = 9;
    TU_OK(mp_list_len(l, &n));
    assert_int_equal(n, 0);
    TU_ASSERT_RC(mp_list_get(l, 0, &b), MP_ERANGE);
    TU_ASSERT_RC(mp_list_pop(l, -1, &b), MP_ERANGE);
    TU_OK(mp_list_append(l, "a", 1));
    TU_OK(mp_list_append(l, "bb", 2));
    TU_OK(mp_list_append(l, "ccc", 3));
    TU_OK(mp_list_get(l, -1, &b));
    assert_memory_equal(b.data, "ccc", 3);
    TU_OK(mp_list_get(l, -3, &b));
    assert_memory_equal(b.data, "a", 1);
    TU_ASSERT_RC(mp_list_get(l, 3, &b), MP_ERANGE);
    TU_ASSERT_RC(mp_list_get(l, -4, &b), MP_ERANGE);
    TU_OK(mp_list_set(l, 1, "BB", 2));
    TU_ASSERT_RC(mp_list_set(l, 5, "x", 1), MP_ERANGE);
    TU_OK(mp_list_pop(l, 0, &b));
    assert_memory_equal(b.data, "a", 1);
    TU_OK(mp_list_get(l, 0, &b));
    assert_memory_equal(b.data, "BB", 2);
    TU_OK(mp_list_pop(l, -1, &b));
    assert_memory_equal(b.data, "ccc", 3);
    TU_OK(mp_list_len(l, &n));
    assert_int_equal(n, 1);
    mp_buf_free(&b);
    mp_list_free(l);
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ queues */

static void test_mqueue_is_fifo_and_bounded(void **state)
{
    mp_manager *m = start();
    mp_mqueue *q = NULL;
    TU_OK(mp_manager_queue(m, "q", 2, &q));
    mp_buf b = { 0 };
    TU_ASSERT_RC(mp_mqueue_get(q, &b, 0), MP_EEMPTY);
    double t0 = tu_now();
    TU_ASSERT_RC(mp_mqueue_get(q, &b, 0.25), MP_EEMPTY);
    assert_true(tu_now() - t0 >= 0.24);
    TU_OK(mp_mqueue_put(q, "1", 1, 0));
    TU_OK(mp_mqueue_put(q, "2", 1, 0));
    TU_ASSERT_RC(mp_mqueue_put(q, "3", 1, 0), MP_EFULL);
    TU_ASSERT_RC(mp_mqueue_put(q, "3", 1, 0.15), MP_EFULL);
    TU_OK(mp_mqueue_get(q, &b, 0));
    assert_memory_equal(b.data, "1", 1);
    TU_OK(mp_mqueue_put(q, "3", 1, 0));
    TU_OK(mp_mqueue_get(q, &b, 1));
    assert_memory_equal(b.data, "2", 1);
    TU_OK(mp_mqueue_get(q, &b, 1));
    assert_memory_equal(b.data, "3", 1);
    TU_ASSERT_RC(mp_mqueue_get(q, &b, NAN), MP_EINVAL);
    mp_buf_free(&b);
    mp_mqueue_free(q);
    mp_manager_free(m);
}

struct qctx { mp_mqueue *q; mp_manager *m; };

/* The first queue op fixes the bound; a later open with another maxsize
 * does not change it (docs/manager-protocol.md, section 4). */
static void test_mqueue_bound_is_fixed_by_the_first_op(void **state)
{
    mp_manager *m = start();
    mp_mqueue *q1 = NULL, *q2 = NULL, *q3 = NULL, *q4 = NULL;
    TU_OK(mp_manager_queue(m, "unbounded", 0, &q1));
    TU_OK(mp_manager_queue(m, "unbounded", 1, &q2));
    TU_OK(mp_mqueue_put(q2, "a", 1, 0));
    TU_OK(mp_mqueue_put(q2, "b", 1, 0));              /* still unbounded */
    TU_OK(mp_manager_queue(m, "bounded", 1, &q3));
    TU_OK(mp_manager_queue(m, "bounded", 0, &q4));
    TU_OK(mp_mqueue_put(q4, "a", 1, 0));
    TU_ASSERT_RC(mp_mqueue_put(q4, "b", 1, 0), MP_EFULL);   /* still bounded by 1 */
    mp_mqueue_free(q1);
    mp_mqueue_free(q2);
    mp_mqueue_free(q3);
    mp_mqueue_free(q4);
    mp_manager_free(m);
}

/* A key listing over one value's limit is refused with MP_ETOOBIG, and the
 * connection stays usable. */
static void test_dict_keys_too_big_is_etoobig_and_the_connection_lives(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "big");
    char *key = malloc(65536 + 1);
    assert_non_null(key);
    for (int i = 0; i < 260; i++) {                   /* 260 x 64 KiB > 16 MiB of keys */
        memset(key, 'a' + i % 26, 65536);
        snprintf(key, 8, "%05d", i);
        key[5] = 'k';
        key[65536] = '\0';
        TU_OK(mp_dict_set_i64(d, key, i));
    }
    free(key);
    mp_buf keys = { 0 };
    TU_ASSERT_RC(mp_dict_keys(d, &keys), MP_ETOOBIG);
    size_t n = 0;
    TU_OK(mp_dict_len(d, &n));
    assert_int_equal(n, 260);
    TU_OK(mp_dict_clear(d));
    TU_OK(mp_dict_set(d, "k", "v", 1));
    TU_OK(mp_dict_keys(d, &keys));
    assert_int_equal(keys.len, 2);
    mp_buf_free(&keys);
    mp_dict_free(d);
    mp_manager_free(m);
}

static void on_alarm(int sig) { (void)sig; }

/* Shutting down a server that does not answer ends (the server is killed)
 * though signals keep interrupting the wait. */
static void test_shutdown_of_a_stopped_server_survives_signals(void **state)
{
    if (RUNNING_ON_VALGRIND)
        skip();
    mp_manager *m = start();
    pid_t srv = mp_manager_pid(m);
    struct sigaction sa = { .sa_handler = on_alarm }, old;
    sigaction(SIGALRM, &sa, &old);              /* no SA_RESTART: calls get EINTR */
    struct itimerval it = { { 0, 20000 }, { 0, 20000 } }, off = { { 0, 0 }, { 0, 0 } };
    setitimer(ITIMER_REAL, &it, NULL);
    TU_OK(kill(srv, SIGSTOP));
    double t0 = tu_now();
    TU_OK(mp_manager_shutdown(m));
    setitimer(ITIMER_REAL, &off, NULL);
    sigaction(SIGALRM, &old, NULL);
    assert_true(tu_now() - t0 < 12 * tu_slow());
    assert_true(tu_pid_gone(srv));
    mp_manager_free(m);
}

static int child_put_later(void *arg)
{
    struct qctx *c = arg;
    mp_dict *d = NULL;
    int64_t v;
    /* wait until the parent is blocked, proven by its flag in the dict */
    if (mp_dict_open(c->m, "flags", &d) < 0)
        return 10;
    while (mp_dict_get_i64(d, "waiting", &v) != 0)
        ;
    return mp_mqueue_put(c->q, "wake", 4, 5) == 0 ? 0 : 11;
}

static void test_mqueue_blocked_get_wakes_on_put_from_another_process(void **state)
{
    mp_manager *m = start();
    struct qctx c = { .m = m };
    TU_OK(mp_manager_queue(m, "q", 0, &c.q));
    pid_t pid = tu_fork(child_put_later, &c);
    mp_dict *d = open_dict(m, "flags");
    TU_OK(mp_dict_set_i64(d, "waiting", 1));
    mp_buf b = { 0 };
    TU_OK(mp_mqueue_get(c.q, &b, MP_FOREVER));
    assert_memory_equal(b.data, "wake", 4);
    assert_int_equal(tu_wait(pid, 10), 0);
    mp_buf_free(&b);
    mp_dict_free(d);
    mp_mqueue_free(c.q);
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ locks */

static void skip_without_sync(void)
{
    if (!mp_lock_acquire || !mp_lock_release || !mp_lock_free)
        skip();
}

static void test_mlock_acquire_release_and_errors(void **state)
{
    skip_without_sync();
    mp_manager *m = start();
    mp_lock *a = NULL, *b = NULL;
    TU_OK(mp_manager_lock(m, "L", &a));
    TU_OK(mp_manager_lock(m, "L", &b));          /* two holders-to-be, one lock */
    TU_ASSERT_RC(mp_lock_release(a), MP_EINVAL);        /* not held */
    TU_OK(mp_lock_acquire(a, MP_FOREVER));
    TU_ASSERT_RC(mp_lock_acquire(b, 0), MP_ETIMEDOUT);
    TU_ASSERT_RC(mp_lock_acquire(b, 0.15), MP_ETIMEDOUT);
    TU_ASSERT_RC(mp_lock_release(b), MP_EINVAL);        /* not the owner */
    TU_OK(mp_lock_release(a));
    TU_OK(mp_lock_acquire(b, 1));
    TU_OK(mp_lock_release(b));
    mp_lock_free(a);
    mp_lock_free(b);
    mp_manager_free(m);
}

/* A thread taking a manager lock it holds already, through the handle it
 * took it with, would wait for itself: refused at once for MP_FOREVER, as
 * a local Lock refuses it, and a timeout still runs out. */
static int child_acquires_twice(void *arg)
{
    mp_lock *l = arg;
    if (mp_lock_acquire(l, 0) != 0)
        return 10;
    if (mp_lock_acquire(l, MP_FOREVER) != -EDEADLK)
        return 11;
    return mp_lock_release(l) == 0 ? 0 : 12;
}

static void test_mlock_acquired_again_by_its_holder_thread_is_edeadlk_at_once(void **state)
{
    skip_without_sync();
    mp_manager *m = start();
    mp_lock *l = NULL, *other = NULL;
    TU_OK(mp_manager_lock(m, "L", &l));
    TU_OK(mp_manager_lock(m, "L", &other));
    /* in a child first: before the fix the second acquire never returned */
    assert_int_equal(tu_wait(tu_fork(child_acquires_twice, l), 5 * tu_slow()), 0);
    TU_OK(mp_lock_acquire(l, 0));
    double t0 = tu_now();
    TU_ASSERT_RC(mp_lock_acquire(l, MP_FOREVER), -EDEADLK);
    assert_true(tu_now() - t0 < 0.5 * tu_slow());
    tu_last_error_has("mp_lock_acquire", "holds this manager lock already", NULL);
    t0 = tu_now();
    TU_ASSERT_RC(mp_lock_acquire(l, 0.2), MP_ETIMEDOUT);
    assert_true(tu_now() - t0 >= 0.2);
    TU_ASSERT_RC(mp_lock_acquire(l, 0), MP_ETIMEDOUT);
    TU_ASSERT_RC(mp_lock_acquire(other, 0), MP_ETIMEDOUT);   /* still held */
    TU_OK(mp_lock_release(l));
    TU_ASSERT_RC(mp_lock_release(l), MP_EINVAL);
    tu_last_error_has("mp_lock_release: this manager lock is not held through this handle", NULL);
    TU_OK(mp_lock_acquire(l, MP_FOREVER));                /* free again: taken, not refused */
    TU_OK(mp_lock_release(l));
    mp_lock_free(other);
    mp_lock_free(l);
    mp_manager_free(m);
}

/* The holder is a thread of a process: another process with the same
 * handle, another thread of the holder's process, and a thread started
 * after the holder ended (its pthread_t may be the holder's) all wait for
 * the lock instead of being refused. */
struct ended { pid_t pid; int status; };

static bool child_ended(void *arg)
{
    struct ended *e = arg;
    return waitpid(e->pid, &e->status, WNOHANG) == e->pid;
}

static int child_acquires_forever(void *arg)
{
    mp_lock *l = arg;
    if (mp_lock_acquire(l, MP_FOREVER) != 0)
        return 10;
    return mp_lock_release(l) == 0 ? 0 : 11;
}

struct mlock_waiter { mp_lock *l; _Atomic int rc; bool release; };

static void *thread_acquires(void *arg)
{
    struct mlock_waiter *w = arg;
    int rc = mp_lock_acquire(w->l, w->release ? MP_FOREVER : 0);
    if (rc == 0 && w->release)
        rc = mp_lock_release(w->l);
    atomic_store(&w->rc, rc);
    return NULL;
}

static bool waiter_done(void *arg)
{
    return atomic_load(&((struct mlock_waiter *)arg)->rc) != 1;
}

/* Starts a thread that acquires l for ever (then releases it), and checks
 * that it waits while the lock is held; the caller releases it then. */
static pthread_t start_blocked_acquirer(struct mlock_waiter *w, mp_lock *l)
{
    *w = (struct mlock_waiter){ .l = l, .rc = 1, .release = true };
    pthread_t t;
    TU_OK(pthread_create(&t, NULL, thread_acquires, w));
    assert_false(tu_wait_for(waiter_done, w, 0.3));
    return t;
}

static void finish_blocked_acquirer(struct mlock_waiter *w, pthread_t t)
{
    assert_true(tu_wait_for(waiter_done, w, 5 * tu_slow()));
    assert_int_equal(atomic_load(&w->rc), 0);
    TU_OK(pthread_join(t, NULL));
}

static void test_mlock_holder_is_a_thread_others_wait_and_are_not_refused(void **state)
{
    skip_without_sync();
    mp_manager *m = start();
    mp_lock *l = NULL;
    TU_OK(mp_manager_lock(m, "L", &l));
    TU_OK(mp_lock_acquire(l, 0));
    /* another process, the same handle (forked before any thread here) */
    struct ended e = { tu_fork(child_acquires_forever, l), 0 };
    assert_true(tu_wait_asleep(e.pid, 5));
    assert_false(tu_wait_for(child_ended, &e, 0.3));
    TU_OK(mp_lock_release(l));
    assert_int_equal(tu_wait(e.pid, 5 * tu_slow()), 0);
    /* another thread of this process */
    TU_OK(mp_lock_acquire(l, 0));
    struct mlock_waiter w;
    pthread_t t = start_blocked_acquirer(&w, l);
    TU_OK(mp_lock_release(l));
    finish_blocked_acquirer(&w, t);
    /* a thread that ended holding it: the handle's connection still holds
     * it, and a new thread waits for it until a release on the connection */
    struct mlock_waiter gone = { .l = l, .rc = 1, .release = false };
    TU_OK(pthread_create(&t, NULL, thread_acquires, &gone));
    TU_OK(pthread_join(t, NULL));
    TU_OK(atomic_load(&gone.rc));
    t = start_blocked_acquirer(&w, l);
    TU_OK(mp_lock_release(l));
    finish_blocked_acquirer(&w, t);
    TU_OK(mp_lock_acquire(l, 0));                     /* released by the waiter */
    TU_OK(mp_lock_release(l));
    mp_lock_free(l);
    mp_manager_free(m);
}

struct lctx { mp_manager *m; int ready[2]; int hold[2]; };

static int child_hold_lock_forever(void *arg)
{
    struct lctx *c = arg;
    mp_lock *l = NULL;
    if (mp_manager_lock(c->m, "L", &l) < 0 || mp_lock_acquire(l, 5) < 0)
        return 10;
    char x = 1;
    if (write(c->ready[1], &x, 1) != 1)
        return 11;
    for (;;)
        pause();
}

static void test_mlock_held_by_killed_client_gives_eownerdead(void **state)
{
    skip_without_sync();
    mp_manager *m = start();
    struct lctx c = { .m = m };
    TU_OK(pipe(c.ready));
    pid_t pid = tu_fork(child_hold_lock_forever, &c);
    char x;
    assert_int_equal(read(c.ready[0], &x, 1), 1);
    mp_lock *l = NULL;
    TU_OK(mp_manager_lock(m, "L", &l));
    TU_ASSERT_RC(mp_lock_acquire(l, 0), MP_ETIMEDOUT);
    kill(pid, SIGKILL);
    assert_int_equal(tu_wait(pid, 5), -SIGKILL);
    TU_ASSERT_RC(mp_lock_acquire(l, 5), MP_EOWNERDEAD);
    TU_OK(mp_lock_release(l));
    TU_OK(mp_lock_acquire(l, 0));                /* consistent again */
    TU_OK(mp_lock_release(l));
    close(c.ready[0]);
    close(c.ready[1]);
    mp_lock_free(l);
    mp_manager_free(m);
}

/* Holds the lock, forks a child that outlives us with the inherited handle,
 * and waits to be killed. */
static int child_hold_lock_then_fork(void *arg)
{
    struct lctx *c = arg;
    mp_lock *l = NULL;
    if (mp_manager_lock(c->m, "L", &l) < 0 || mp_lock_acquire(l, 5) < 0)
        return 10;
    pid_t grandchild = fork();
    if (grandchild == 0) {
        char x;
        ssize_t n = read(c->hold[0], &x, 1);    /* until the test lets go */
        _exit(n < 0 ? 1 : 0);
    }
    char x = 1;
    if (write(c->ready[1], &x, 1) != 1)
        return 11;
    for (;;)
        pause();
}

static void test_mlock_of_killed_holder_is_freed_though_its_child_lives(void **state)
{
    skip_without_sync();
    mp_manager *m = start();
    struct lctx c = { .m = m };
    TU_OK(pipe(c.ready));
    TU_OK(pipe(c.hold));
    pid_t pid = tu_fork(child_hold_lock_then_fork, &c);
    char x;
    assert_int_equal(read(c.ready[0], &x, 1), 1);
    kill(pid, SIGKILL);
    assert_int_equal(tu_wait(pid, 5), -SIGKILL);
    mp_lock *l = NULL;
    TU_OK(mp_manager_lock(m, "L", &l));
    TU_ASSERT_RC(mp_lock_acquire(l, 5), MP_EOWNERDEAD);
    TU_OK(mp_lock_release(l));
    assert_int_equal(write(c.hold[1], "x", 1), 1);     /* let the grandchild go */
    close(c.ready[0]);
    close(c.ready[1]);
    close(c.hold[0]);
    close(c.hold[1]);
    mp_lock_free(l);
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ many processes */

struct ictx { mp_dict *d; int n; };

static int child_incr(void *arg)
{
    struct ictx *c = arg;
    for (int i = 0; i < c->n; i++)
        if (mp_dict_incr(c->d, "total", 1, NULL) != 0)
            return 10;
    return 0;
}

static void test_dict_incr_from_8_processes_is_exact(void **state)
{
    mp_manager *m = start();
    struct ictx c = { .d = open_dict(m, "counter"), .n = 500 };
    pid_t pids[8];
    for (int i = 0; i < 8; i++)
        pids[i] = tu_fork(child_incr, &c);      /* children reconnect by themselves */
    for (int i = 0; i < 8; i++)
        assert_int_equal(tu_wait(pids[i], 60), 0);
    int64_t v = 0;
    TU_OK(mp_dict_get_i64(c.d, "total", &v));
    assert_int_equal(v, 8 * 500);
    mp_dict_free(c.d);
    mp_manager_free(m);
}

struct fdctx { pid_t pid; int want; };

static bool fds_back_to(void *arg)
{
    struct fdctx *c = arg;
    return proc_fd_count(c->pid) <= c->want;
}

static void connect_and_leave(mp_manager *m, int rounds)
{
    size_t klen;
    const void *key = mp_manager_authkey(m, &klen);
    for (int i = 0; i < rounds; i++) {
        mp_manager *c = NULL;
        TU_OK(mp_manager_connect(&c, mp_manager_address(m), key, klen));
        mp_dict *d = open_dict(c, "churn");
        TU_OK(mp_dict_incr(d, "n", 1, NULL));
        mp_dict_free(d);
        mp_manager_free(c);
    }
}

static void test_500_clients_connecting_and_leaving_leave_no_fds_or_memory(void **state)
{
    mp_manager *m = start();
    pid_t srv = mp_manager_pid(m);
    connect_and_leave(m, 500);                   /* warm-up: thread stacks, tables */
    struct fdctx c = { srv, proc_fd_count(srv) };
    assert_true(tu_wait_for(fds_back_to, &c, 10));
    c.want = proc_fd_count(srv);
    long rss0 = proc_rss_kb(srv);
    connect_and_leave(m, 500);
    assert_true(tu_wait_for(fds_back_to, &c, 10));
    long rss1 = proc_rss_kb(srv);
    print_message("server private RSS %ld kB -> %ld kB\n", rss0, rss1);
    if (!RUNNING_ON_VALGRIND)           /* whose own bookkeeping grows */
        assert_true(rss1 - rss0 < RSS_SLACK_KB);
    mp_dict *d = open_dict(m, "churn");
    int64_t n;
    TU_OK(mp_dict_get_i64(d, "n", &n));
    assert_int_equal(n, 1000);
    mp_dict_free(d);
    mp_manager_free(m);
}

struct rss_below { pid_t pid; long kb; };

static bool rss_is_below(void *arg)
{
    struct rss_below *b = arg;
    return proc_rss_kb(b->pid) < b->kb;
}

/* One big request from each of 9 clients, which then stay connected and
 * idle: the server keeps no buffer the size of a request past its reply
 * (8 x 16 MiB and more before, outside --max-memory: any client with the
 * key could make the server hold a frame's worth per connection). */
static void test_idle_clients_leave_no_request_sized_buffers_in_the_server(void **state)
{
    (void)state;
    if (RUNNING_ON_VALGRIND)            /* whose RSS says nothing; 144 MiB of requests */
        skip();
    mp_manager *m = start();
    pid_t srv = mp_manager_pid(m);
    size_t klen, big = (size_t)16 << 20;
    const void *key = mp_manager_authkey(m, &klen);
    char *value = calloc(1, big);
    assert_non_null(value);
    /* A sanitizer's RSS says nothing either: there the test only runs the
     * server's give-back path, and two clients are enough for that. */
    bool measured = RSS_SLACK_KB <= 4 * 1024;
    int n = measured ? 9 : 2;
    mp_manager *c[9];
    struct rss_below below = { srv, 4 * 1024 };
    long rss0 = proc_rss_kb(srv);
    for (int i = 0; i < n; i++) {
        TU_OK(mp_manager_connect(&c[i], mp_manager_address(m), key, klen));
        mp_list *l;
        TU_OK(mp_list_open(c[i], "empty", &l));
        TU_ASSERT_RC(mp_list_set(l, 0, value, big), MP_ERANGE);   /* stores nothing */
        mp_list_free(l);
    }
    /* The server gives a buffer back just after its reply, and the kernel's
     * count of resident pages follows a moment later. */
    below.kb += rss0;
    if (measured)
        assert_true(tu_wait_for(rss_is_below, &below, 10));
    print_message("server private RSS %ld kB -> %ld kB with %d idle clients\n",
                  rss0, proc_rss_kb(srv), n);
    for (int i = 0; i < n; i++)
        mp_manager_free(c[i]);
    free(value);
    mp_manager_free(m);
}

static void test_server_stays_responsive_with_500_connected_clients(void **state)
{
    if (RUNNING_ON_VALGRIND)
        skip();     /* 500 server threads under valgrind miss the 5 s handshake limit */
    mp_manager *m = start();
    size_t klen;
    const void *key = mp_manager_authkey(m, &klen);
    enum { N = 500 };
    mp_manager **cs = calloc(N, sizeof *cs);
    mp_dict **ds = calloc(N, sizeof *ds);
    for (int i = 0; i < N; i++) {
        TU_OK(mp_manager_connect(&cs[i], mp_manager_address(m), key, klen));
        ds[i] = open_dict(cs[i], "many");
    }
    for (int i = 0; i < N; i += 7)
        TU_OK(mp_dict_incr(ds[i], "n", 1, NULL));
    mp_dict *d = open_dict(m, "many");
    int64_t n;
    TU_OK(mp_dict_get_i64(d, "n", &n));
    assert_int_equal(n, (N + 6) / 7);
    for (int i = 0; i < N; i++) {
        mp_dict_free(ds[i]);
        mp_manager_free(cs[i]);
    }
    free(cs);
    free(ds);
    mp_dict_free(d);
    mp_manager_free(m);
}

static void *thread_incr(void *arg)
{
    for (int i = 0; i < 500; i++)
        if (mp_dict_incr(arg, "n", 1, NULL) != 0)
            return NULL;
    return arg;
}

static void test_threads_share_one_handle_safely(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "threads");
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        TU_OK(pthread_create(&t[i], NULL, thread_incr, d));
    for (int i = 0; i < 4; i++) {
        void *ok = NULL;
        TU_OK(pthread_join(t[i], &ok));
        assert_non_null(ok);
    }
    int64_t n;
    TU_OK(mp_dict_get_i64(d, "n", &n));
    assert_int_equal(n, 2000);
    mp_dict_free(d);
    mp_manager_free(m);
}

/* A thread waiting on a queue for ever holds the handle's connection for
 * one slice of the server's at a time (or, with the server stopped, for as
 * long as a reply may take): another thread's call on the same handle
 * still keeps its own deadline, and still gets its turn. A stopped server
 * may also answer a call MP_ETIMEDOUT (its reply came too late). */
struct forever_get { mp_mqueue *q; int rc; };

static void *get_forever(void *arg)
{
    struct forever_get *g = arg;
    mp_buf b = { 0 };
    g->rc = mp_mqueue_get(g->q, &b, MP_FOREVER);
    mp_buf_free(&b);
    return NULL;
}

static void test_timed_calls_keep_their_deadline_beside_a_forever_call_on_one_handle(void **state)
{
    (void)state;
    mp_manager *m = start();
    pid_t srv = mp_manager_pid(m);
    mp_mqueue *q;
    TU_OK(mp_manager_queue(m, "q", 0, &q));
    struct forever_get g = { q, 1 };
    pthread_t t;
    TU_OK(pthread_create(&t, NULL, get_forever, &g));
    usleep(300000);                    /* its slices under way */
    mp_buf b = { 0 };
    for (int stopped = 0; stopped < 2; stopped++) {
        if (stopped)
            TU_OK(kill(srv, SIGSTOP));
        for (int i = 0; i < 3; i++) {
            double t0 = tu_now();
            int rc = mp_mqueue_get(q, &b, 0.2);    /* Python's queue.Empty */
            assert_true(rc == MP_EEMPTY || (stopped && rc == MP_ETIMEDOUT));
            assert_true(tu_now() - t0 < 0.2 + 0.3 * tu_slow());
        }
        if (stopped)
            TU_OK(kill(srv, SIGCONT));
    }
    TU_OK(mp_mqueue_put(q, "x", 1, 0.5 * tu_slow()));   /* a turn, not only a timeout */
    TU_OK(pthread_join(t, NULL));
    assert_int_equal(g.rc, 0);
    mp_buf_free(&b);
    mp_mqueue_free(q);
    mp_manager_free(m);
}

static int child_uses_inherited_handle(void *arg)
{
    mp_dict *d = arg;
    return mp_dict_set(d, "from-child", "yes", 3) == 0 ? 0 : 10;
}

static void test_handles_created_before_fork_work_in_the_child(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "inherit");
    TU_OK(mp_dict_set(d, "before", "1", 1));
    assert_int_equal(tu_wait(tu_fork(child_uses_inherited_handle, d), 10), 0);
    mp_buf b = { 0 };
    TU_OK(mp_dict_get(d, "from-child", &b));       /* parent's connection intact */
    assert_memory_equal(b.data, "yes", 3);
    mp_buf_free(&b);
    mp_dict_free(d);
    mp_manager_free(m);
}

static int target_set_from_child(void *arg)
{
    mp_dict *d = arg;
    int rc = mp_dict_set(d, "spawned", "yes", 3);
    mp_dict_free(d);             /* an inherited handle: only our connection goes */
    return rc == 0 ? 0 : 10;
}

static void test_handles_work_in_spawned_and_forked_processes(void **state)
{
    if (RUNNING_ON_VALGRIND)
        skip();     /* spawn re-executes valgrind itself; join returns early there */
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "inherit");
    mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        mp_dict_del(d, "spawned");
        mp_process *p = NULL;
        TU_OK(mp_process_new(&p, target_set_from_child, d, &(mp_process_opts){ .method = methods[i] }));
        TU_OK(mp_process_start(p));
        TU_OK(mp_process_join(p, 30));
        int code = -1;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, 0);
        TU_OK(mp_process_free(p));
        mp_buf b = { 0 };
        TU_OK(mp_dict_get(d, "spawned", &b));       /* and the handle still works here */
        assert_memory_equal(b.data, "yes", 3);
        mp_buf_free(&b);
    }
    mp_dict_free(d);
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ server death */

static bool is_gone_error(int rc) { return rc == MP_EBROKEN || rc == MP_EEOF; }

static int child_blocked_get(void *arg)
{
    mp_mqueue *q = arg;
    mp_buf b = { 0 };
    int rc = mp_mqueue_get(q, &b, MP_FOREVER);
    return is_gone_error(rc) ? 0 : 10;
}

struct kctx { mp_manager *m; int ready[2]; };

static int child_blocked_acquire(void *arg)
{
    struct kctx *c = arg;
    mp_lock *l = NULL;
    if (mp_manager_lock(c->m, "held", &l) < 0)
        return 11;
    char x = 1;
    if (write(c->ready[1], &x, 1) != 1)
        return 12;
    int rc = mp_lock_acquire(l, MP_FOREVER);
    return is_gone_error(rc) ? 0 : 10;
}

static void test_server_killed_makes_every_call_fail_within_a_second(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "d");
    mp_mqueue *q = NULL;
    TU_OK(mp_manager_queue(m, "q", 0, &q));
    bool locks = mp_lock_acquire != NULL;
    struct kctx kc = { .m = m };
    TU_OK(pipe(kc.ready));
    mp_lock *held = NULL;
    pid_t acq = -1;
    if (locks) {
        TU_OK(mp_manager_lock(m, "held", &held));
        TU_OK(mp_lock_acquire(held, 1));
        acq = tu_fork(child_blocked_acquire, &kc);
        char x;
        assert_int_equal(read(kc.ready[0], &x, 1), 1);
    }
    pid_t getter = tu_fork(child_blocked_get, q);
    mp_buf b = { 0 };
    TU_OK(mp_dict_set(d, "k", "v", 1));
    pid_t srv = mp_manager_pid(m);
    kill(srv, SIGKILL);
    double t0 = tu_now();
    assert_true(tu_wait_for(server_gone, &srv, 5));   /* kill is asynchronous */
    assert_true(is_gone_error(mp_dict_get(d, "k", &b)));
    assert_true(is_gone_error(mp_dict_set(d, "k", "v", 1)));
    assert_true(is_gone_error(mp_mqueue_put(q, "x", 1, 0)));
    assert_true(tu_now() - t0 < 1.0 * tu_slow());
    assert_int_equal(tu_wait(getter, 1.5), 0);
    if (locks)
        assert_int_equal(tu_wait(acq, 1.5), 0);
    close(kc.ready[0]);
    close(kc.ready[1]);
    mp_buf_free(&b);
    if (held)
        mp_lock_free(held);
    mp_mqueue_free(q);
    mp_dict_free(d);
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ hostile peers */

/* A raw client: HMAC comes from the libcrypto libmproc already loaded. */
typedef unsigned char *(*hmac_fn)(const void *, const void *, int, const unsigned char *, size_t,
                                  unsigned char *, unsigned int *);

static int raw_send(int fd, const void *p, size_t len)
{
    uint8_t hdr[4] = { (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len };
    if (write(fd, hdr, 4) != 4)
        return -1;
    return len == 0 || write(fd, p, len) == (ssize_t)len ? 0 : -1;
}

/* Reads one frame: its length, or -1 on EOF/error. */
static ssize_t raw_recv(int fd, uint8_t *buf, size_t cap)
{
    uint8_t hdr[4];
    if (recv(fd, hdr, 4, MSG_WAITALL) != 4)
        return -1;
    size_t n = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
    if (n > cap || (n && recv(fd, buf, n, MSG_WAITALL) != (ssize_t)n))
        return -1;
    return (ssize_t)n;
}

static int raw_connect(mp_manager *m)
{
    hmac_fn hmac = (hmac_fn)dlsym(RTLD_DEFAULT, "HMAC");
    const void *(*sha256)(void) = (const void *(*)(void))dlsym(RTLD_DEFAULT, "EVP_sha256");
    assert_non_null(hmac);
    assert_non_null(sha256);
    const char *addr = mp_manager_address(m) + 5;       /* "unix:@..." */
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    size_t n = strlen(addr);
    memcpy(un.sun_path, addr, n);
    un.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    TU_OK(connect(fd, (struct sockaddr *)&un, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)));
    size_t klen;
    const void *key = mp_manager_authkey(m, &klen);
    uint8_t msg[256], resp[8 + 32];
    ssize_t len = raw_recv(fd, msg, sizeof msg);       /* #CHALLENGE#{sha256}... */
    assert_true(len > 11);
    memcpy(resp, "{sha256}", 8);
    unsigned int out;
    hmac(sha256(), key, (int)klen, msg + 11, (size_t)len - 11, resp + 8, &out);
    TU_OK(raw_send(fd, resp, sizeof resp));
    assert_int_equal(raw_recv(fd, msg, sizeof msg), 9);  /* #WELCOME# */
    uint8_t chal[11 + 8 + 40] = "#CHALLENGE#{sha256}";
    TU_OK(raw_send(fd, chal, sizeof chal));
    assert_true(raw_recv(fd, msg, sizeof msg) > 0);    /* its answer: not checked */
    TU_OK(raw_send(fd, "#WELCOME#", 9));
    return fd;
}

/* A fake server: the handshake (answering with key), then an empty success
 * to every open, a refusal of ATTACH (the client stays on the socket), and
 * reply to everything else. */
struct fake_server {
    int lfd;
    const char *key;
    const uint8_t *reply;
    size_t reply_len;
    pthread_t conns[8];
    int nconns;
};

struct fake_conn { struct fake_server *f; int fd; };

static void *fake_conn_main(void *arg)
{
    struct fake_conn *fc = arg;
    struct fake_server *f = fc->f;
    int fd = fc->fd;
    free(fc);
    hmac_fn hmac = (hmac_fn)dlsym(RTLD_DEFAULT, "HMAC");
    const void *(*sha256)(void) = (const void *(*)(void))dlsym(RTLD_DEFAULT, "EVP_sha256");
    uint8_t chal[11 + 8 + 40] = "#CHALLENGE#{sha256}", msg[256], resp[8 + 32] = "{sha256}";
    unsigned int out;
    ssize_t len;
    if (raw_send(fd, chal, sizeof chal) == 0 && raw_recv(fd, msg, sizeof msg) >= 0 &&
        raw_send(fd, "#WELCOME#", 9) == 0 && (len = raw_recv(fd, msg, sizeof msg)) > 11) {
        hmac(sha256(), f->key, (int)strlen(f->key), msg + 11, (size_t)len - 11, resp + 8, &out);
        if (raw_send(fd, resp, sizeof resp) == 0 && raw_recv(fd, msg, sizeof msg) >= 0)
            while ((len = raw_recv(fd, msg, sizeof msg)) >= 2) {
                int op = msg[1] < 24 ? msg[1] : msg[2];
                if (op == 2)
                    raw_send(fd, "\x81\x35", 2);        /* ATTACH: [-22] */
                else if (op == 10 || op == 40)
                    raw_send(fd, "\x81\x00", 2);        /* DICT_OPEN, LOCK_OPEN: [0] */
                else
                    raw_send(fd, f->reply, f->reply_len);
            }
    }
    close(fd);
    return NULL;
}

/* Serves each connection on a thread of its own until lfd is shut down. */
static void *fake_server_main(void *arg)
{
    struct fake_server *f = arg;
    int fd;
    while (f->nconns < 8 && (fd = accept(f->lfd, NULL, NULL)) >= 0) {
        struct fake_conn *fc = malloc(sizeof *fc);
        *fc = (struct fake_conn){ f, fd };
        pthread_create(&f->conns[f->nconns++], NULL, fake_conn_main, fc);
    }
    return NULL;
}

/* A reply status is 0 or an mproc code: anything else (a positive one, or
 * INT64_MIN, which truncated to 0 said "acquired") is a broken server, and
 * so is a negative length. */
static void test_client_refuses_impossible_reply_statuses_and_lengths(void **state)
{
    (void)state;
    static const struct { const char *bytes; size_t len; } replies[] = {
        { "\x82\x05\x00", 3 },                                      /* [5, 0] */
        { "\x82\x3b\x7f\xff\xff\xff\xff\xff\xff\xff\x00", 11 },   /* [INT64_MIN, 0] */
        { "\x82\x00\x3b\x7f\xff\xff\xff\xff\xff\xff\xff", 11 },   /* [0, INT64_MIN] */
    };
    for (size_t i = 0; i < sizeof replies / sizeof replies[0]; i++) {
        char addr[64];
        snprintf(addr, sizeof addr, "unix:@mproc-fake-%d-%zu", (int)getpid(), i);
        struct sockaddr_un un = { .sun_family = AF_UNIX };
        size_t n = strlen(addr + 5);
        memcpy(un.sun_path, addr + 5, n);
        un.sun_path[0] = '\0';
        struct fake_server f = { .lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0),
                                 .key = "fake key", .reply = (const uint8_t *)replies[i].bytes,
                                 .reply_len = replies[i].len };
        TU_OK(bind(f.lfd, (struct sockaddr *)&un, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)));
        TU_OK(listen(f.lfd, 4));
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, fake_server_main, &f), 0);
        mp_manager *m = NULL;
        TU_OK(mp_manager_connect(&m, addr, f.key, strlen(f.key)));
        size_t len = 0;
        mp_dict *d = open_dict(m, "d");
        if (i < 2) {
            mp_lock *l = NULL;
            TU_OK(mp_manager_lock(m, "l", &l));
            assert_int_equal(mp_lock_acquire(l, 5), MP_EPROTO);   /* malformed, not gone */
            tu_last_error_has("sent a malformed reply", NULL);
            mp_lock_free(l);
        } else {
            assert_int_equal(mp_dict_len(d, &len), MP_EPROTO);
        }
        mp_dict_free(d);
        mp_manager_free(m);
        shutdown(f.lfd, SHUT_RDWR);
        pthread_join(t, NULL);
        for (int c = 0; c < f.nconns; c++)
            pthread_join(f.conns[c], NULL);
        close(f.lfd);
    }
}

/* After a bad frame: an error reply (a 1-item array with a negative
 * status) or a closed connection, and the server still serves others. */
static void expect_error_or_close(mp_manager *m, int fd, mp_dict *d)
{
    uint8_t buf[64];
    ssize_t n = raw_recv(fd, buf, sizeof buf);
    if (n >= 0) {
        assert_true(n >= 2);
        assert_int_equal(buf[0], 0x81);
        assert_int_equal(buf[1] & 0xe0, 0x20);         /* a negative integer */
    }
    assert_false(tu_pid_gone(mp_manager_pid(m)));
    TU_OK(mp_dict_incr(d, "alive", 1, NULL));
}

static void test_malformed_requests_get_an_error_and_others_are_served(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "d");
    static const struct { const char *what; const char *bytes; size_t len; } bad[] = {
        { "not cbor", "\xff\xff\xff", 3 },
        { "empty", "", 0 },
        { "array announces 3, has 1", "\x83\x0b", 2 },
        { "unknown op", "\x82\x18\x63\x61x", 5 },
        { "name is an int", "\x84\x0b\x05\x61k\x41v", 7 },
        { "nested array", "\x83\x0c\x81\x61x\x61k", 7 },
        { "a map", "\xa1\x01\x02", 3 },
        { "indefinite array", "\x9f\x0c\x61x\x61k\xff", 7 },
        { "trailing bytes", "\x82\x0a\x61x\x00", 5 },
        { "byte string longer than frame", "\x83\x0b\x61x\x5a\x7f\xff\xff\xff", 9 },
        { "too many items", "\x87\x00\x00\x00\x00\x00\x00\x00", 8 },
        { "tag", "\xc1\x00", 2 },
        { "int too big for int64", "\x82\x1b\xff\xff\xff\xff\xff\xff\xff\xff", 10 },
        { "empty name", "\x82\x0a\x60", 3 },
        { "key with NUL", "\x83\x0c\x61x\x62k\x00", 7 },
        { "name with NUL", "\x82\x0a\x62x\x00", 4 },
        { "name not UTF-8", "\x82\x0a\x62x\xff", 4 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int fd = raw_connect(m);
        print_message("case: %s\n", bad[i].what);
        TU_OK(raw_send(fd, bad[i].bytes, bad[i].len));
        expect_error_or_close(m, fd, d);
        /* the same connection still works after an error reply */
        static const uint8_t ping[] = { 0x81, 0x00 };
        uint8_t buf[16];
        TU_OK(raw_send(fd, ping, sizeof ping));
        ssize_t n = raw_recv(fd, buf, sizeof buf);
        assert_true(n == -1 || (n == 2 && buf[0] == 0x81 && buf[1] == 0x00));
        close(fd);
    }
    mp_dict_free(d);
    mp_manager_free(m);
}

/* [2, address, nonce] as CBOR: array(3), 2, uint64 address, uint64 nonce. */
static size_t attach_request(uint8_t *out, uint64_t addr, uint64_t nonce)
{
    out[0] = 0x83;
    out[1] = 0x02;
    out[2] = 0x1b;
    out[11] = 0x1b;
    for (int i = 0; i < 8; i++) {
        out[3 + i] = (uint8_t)(addr >> (56 - 8 * i));
        out[12 + i] = (uint8_t)(nonce >> (56 - 8 * i));
    }
    return 20;
}

static void test_attach_refuses_memory_that_is_not_a_shared_channel(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "d");
    uint8_t req[20], buf[16];
    const uint64_t bad[][2] = {
        { 0x1000, 1 },                                  /* not in the arena */
        { (uint64_t)(uintptr_t)m, 1 },                 /* in the arena, not a channel */
        { (uint64_t)(uintptr_t)m + 1, 1 },             /* misaligned */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int fd = raw_connect(m);
        TU_OK(raw_send(fd, req, attach_request(req, bad[i][0], bad[i][1])));
        ssize_t n = raw_recv(fd, buf, sizeof buf);
        assert_int_equal(n, 2);
        assert_int_equal(buf[0], 0x81);
        assert_int_equal(buf[1], 0x20 + 21);          /* -22: MP_EINVAL */
        static const uint8_t ping[] = { 0x81, 0x00 };  /* still served on the socket */
        TU_OK(raw_send(fd, ping, sizeof ping));
        assert_int_equal(raw_recv(fd, buf, sizeof buf), 2);
        close(fd);
    }
    TU_OK(mp_dict_incr(d, "alive", 1, NULL));
    mp_dict_free(d);
    mp_manager_free(m);
}

static void test_oversized_and_truncated_frames_close_only_that_connection(void **state)
{
    mp_manager *m = start();
    mp_dict *d = open_dict(m, "d");
    int fd = raw_connect(m);
    uint8_t huge[4] = { 0x7f, 0xff, 0xff, 0xff };     /* 2 GiB announced */
    assert_int_equal(write(fd, huge, 4), 4);
    expect_error_or_close(m, fd, d);
    close(fd);
    fd = raw_connect(m);
    uint8_t neg[4] = { 0xff, 0xff, 0xff, 0xfb };      /* -5 */
    assert_int_equal(write(fd, neg, 4), 4);
    expect_error_or_close(m, fd, d);
    close(fd);
    fd = raw_connect(m);
    uint8_t part[8] = { 0, 0, 0, 100, 0x83, 0x0b, 0x61, 'x' };   /* then hang up */
    assert_int_equal(write(fd, part, 8), 8);
    close(fd);
    TU_OK(mp_dict_incr(d, "alive", 1, NULL));
    int s = socket(AF_UNIX, SOCK_STREAM, 0);           /* dies mid-handshake */
    close(s);
    fd = raw_connect(m);
    close(fd);
    int64_t n;
    TU_OK(mp_dict_get_i64(d, "alive", &n));
    assert_int_equal(n, 3);
    mp_dict_free(d);
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ another language */

/* Python's own Client does the handshake; the request is hand-made CBOR,
 * as docs/manager-protocol.md describes: [17, "py", "n", 5] -> [0, 5]. */
static const char PY_CLIENT[] =
    "import sys\n"
    "from multiprocessing.connection import Client\n"
    "c = Client('\\0' + sys.argv[1], authkey=b'pykey')\n"
    "c.send_bytes(bytes([0x84, 17, 0x62]) + b'py' + bytes([0x61]) + b'n' + bytes([5]))\n"
    "print(c.recv_bytes().hex())\n";

static void test_python_client_speaks_the_documented_protocol(void **state)
{
    if (system("python3 -c 'import multiprocessing.connection' >/dev/null 2>&1") != 0)
        skip();
    mp_manager *m = NULL;
    TU_OK(mp_manager_start(&m, &(mp_manager_opts){ .authkey = "pykey", .authkey_len = 5 }));
    char cmd[512], out[64] = "";
    /* Python spells "unix:@name" as "\0name": the script adds the NUL. */
    snprintf(cmd, sizeof cmd, "python3 -c \"$PY\" '%s'", mp_manager_address(m) + 6);
    setenv("PY", PY_CLIENT, 1);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    assert_non_null(fgets(out, sizeof out, f));
    pclose(f);
    assert_string_equal(out, "820005\n");
    mp_dict *d = open_dict(m, "py");
    int64_t n;
    TU_OK(mp_dict_get_i64(d, "n", &n));
    assert_int_equal(n, 5);
    mp_dict_free(d);
    mp_manager_free(m);
}

/* ------------------------------------------------------------------ mproc-manager */

static char tool[512], keyfile[64], badkey[64], address[64];

/* Runs the tool with args; its exit code, stdout in out. */
static int run_tool(char *out, size_t cap, const char *const *args)
{
    int p[2];
    TU_OK(pipe(p));
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        char *argv[16] = { tool };
        for (int i = 0; args[i] && i < 14; i++)
            argv[i + 1] = (char *)args[i];
        execv(tool, argv);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(p[0], out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(p[0]);
    return tu_wait(pid, 10);
}

static bool tool_server_up(void *arg)
{
    mp_manager *m = NULL;
    if (mp_manager_connect(&m, address, "clikey", 6) != 0)
        return false;
    mp_manager_free(m);
    return true;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_cli_serve_and_one_shot_commands(void **state)
{
    const char *bin = getenv("MPROC_BINARY_DIR");
    if (!bin)
        skip();
    snprintf(tool, sizeof tool, "%s/tools/mproc-manager", bin);
    snprintf(keyfile, sizeof keyfile, "/tmp/mproc-test-key-%d", (int)getpid());
    snprintf(badkey, sizeof badkey, "/tmp/mproc-test-badkey-%d", (int)getpid());
    snprintf(address, sizeof address, "unix:@mproc-test-cli-%d", (int)getpid());
    write_file(keyfile, "clikey\n");
    write_file(badkey, "nope\n");
    pid_t srv = fork();
    if (srv == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        execl(tool, tool, "serve", "--address", address, "--authkey-file", keyfile, (char *)NULL);
        _exit(127);
    }
    assert_true(tu_wait_for(tool_server_up, NULL, 10));
    char out[256];
#define A "--address", address, "--authkey-file", keyfile
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "set", A, "d", "k", "hello", NULL }), 0);
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "get", A, "d", "k", NULL }), 0);
    assert_string_equal(out, "hello\n");
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "incr", A, "d", "n", "5", NULL }), 0);
    assert_string_equal(out, "5\n");
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "incr", A, "d", "n", NULL }), 0);
    assert_string_equal(out, "6\n");
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "get", A, "d", "n", NULL }), 0);
    assert_string_equal(out, "6\n");
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "set", A, "--float", "d", "f", "0.5", NULL }), 0);
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "keys", A, "d", NULL }), 0);
    assert_int_equal(strlen(out), 6);                 /* k, n, f: one per line */
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "del", A, "d", "k", NULL }), 0);
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "get", A, "d", "k", NULL }), 1);
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "del", A, "d", "k", NULL }), 1);
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "incr", A, "d", "f", NULL }), 1);
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "get", A, "d", NULL }), 2);
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "frob", A, "d", NULL }), 2);
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "get", "d", "k", NULL }), 2);
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "--help", NULL }), 0);
    assert_non_null(strstr(out, "usage"));
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "get", "--address", address,
                                                                 "--authkey-file", badkey, "d", "k", NULL }), 3);
    assert_int_equal(run_tool(out, sizeof out, (const char *[]){ "get", "--address", "unix:@mproc-nobody",
                                                                 "--authkey-file", keyfile, "d", "k", NULL }), 3);
#undef A
    kill(srv, SIGTERM);
    assert_int_equal(tu_wait(srv, 10), 0);
    unlink(keyfile);
    unlink(badkey);
}

int main(void)
{
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_manager_start_gives_address_authkey_and_pid),
        cmocka_unit_test(test_manager_outlives_the_thread_that_started_it),
        cmocka_unit_test(test_manager_unix_file_goes_however_its_starter_ends),
        cmocka_unit_test(test_manager_start_at_the_descriptor_or_process_limit_says_so_at_once),
        cmocka_unit_test(test_manager_server_exits_when_its_starter_is_killed),
        cmocka_unit_test(test_manager_connect_by_address_and_key_sees_same_objects),
        cmocka_unit_test(test_manager_tcp_address_with_port_zero_gets_a_port),
        cmocka_unit_test(test_manager_unix_path_address_is_removed_at_shutdown),
        cmocka_unit_test(test_manager_wrong_authkey_is_refused_with_eauth),
        cmocka_unit_test(test_a_peer_that_is_no_manager_is_told_apart_from_a_wrong_key),
        cmocka_unit_test(test_manager_bad_arguments_are_einval),
        cmocka_unit_test(test_proxy_calls_check_sizes_and_handles),
        cmocka_unit_test(test_proxy_argument_errors_name_the_argument_and_the_rule),
        cmocka_unit_test(test_list_pop_with_null_val_discards_the_item),
        cmocka_unit_test(test_calls_after_shutdown_return_ebroken),
        cmocka_unit_test(test_dict_set_get_del_len_keys_clear),
        cmocka_unit_test(test_dict_keys_list_oldest_first),
        cmocka_unit_test(test_dict_typed_values_return_etype_on_mismatch),
        cmocka_unit_test(test_dict_incr_starts_at_zero_and_checks_type_and_overflow),
        cmocka_unit_test(test_dict_cas_swaps_only_on_expected_value),
        cmocka_unit_test(test_dict_holds_large_values),
        cmocka_unit_test(test_dict_through_the_server_holds_large_values_and_many_keys),
        cmocka_unit_test(test_list_append_get_set_pop_with_negative_indices),
        cmocka_unit_test(test_mqueue_is_fifo_and_bounded),
        cmocka_unit_test(test_mqueue_bound_is_fixed_by_the_first_op),
        cmocka_unit_test(test_dict_keys_too_big_is_etoobig_and_the_connection_lives),
        cmocka_unit_test(test_shutdown_of_a_stopped_server_survives_signals),
        cmocka_unit_test(test_mqueue_blocked_get_wakes_on_put_from_another_process),
        cmocka_unit_test(test_mlock_acquire_release_and_errors),
        cmocka_unit_test(test_mlock_acquired_again_by_its_holder_thread_is_edeadlk_at_once),
        cmocka_unit_test(test_mlock_holder_is_a_thread_others_wait_and_are_not_refused),
        cmocka_unit_test(test_mlock_held_by_killed_client_gives_eownerdead),
        cmocka_unit_test(test_mlock_of_killed_holder_is_freed_though_its_child_lives),
        cmocka_unit_test(test_dict_incr_from_8_processes_is_exact),
        cmocka_unit_test(test_500_clients_connecting_and_leaving_leave_no_fds_or_memory),
        cmocka_unit_test(test_idle_clients_leave_no_request_sized_buffers_in_the_server),
        cmocka_unit_test(test_server_stays_responsive_with_500_connected_clients),
        cmocka_unit_test(test_threads_share_one_handle_safely),
        cmocka_unit_test(test_timed_calls_keep_their_deadline_beside_a_forever_call_on_one_handle),
        cmocka_unit_test(test_handles_created_before_fork_work_in_the_child),
        cmocka_unit_test(test_handles_work_in_spawned_and_forked_processes),
        cmocka_unit_test(test_server_killed_makes_every_call_fail_within_a_second),
        cmocka_unit_test(test_malformed_requests_get_an_error_and_others_are_served),
        cmocka_unit_test(test_client_refuses_impossible_reply_statuses_and_lengths),
        cmocka_unit_test(test_oversized_and_truncated_frames_close_only_that_connection),
        cmocka_unit_test(test_attach_refuses_memory_that_is_not_a_shared_channel),
        cmocka_unit_test(test_python_client_speaks_the_documented_protocol),
        cmocka_unit_test(test_cli_serve_and_one_shot_commands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
