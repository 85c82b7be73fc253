/* test_manager_python.c - Python's own manager clients against the mproc
 * manager: the machine's python3 runs tests/interop/manager_client.py
 * (SyncManager and the remote-manager pattern, unchanged client code)
 * against a server started here, and C clients share its named objects.
 * Hostile pickles sent by hand must get an error, never run anything.
 * Every case skips when python3 is missing. */
#include "testutil.h"

#include <fcntl.h>
#include <stddef.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY "py-manager-key"
#define PY_TIMEOUT 60.0

static bool have_python(void)
{
    return system("python3 -c 'import multiprocessing.managers' >/dev/null 2>&1") == 0;
}

static mp_manager *start_tcp(void)
{
    mp_manager *m = NULL;
    mp_manager_opts o = { .address = "tcp:127.0.0.1:0", .authkey = KEY, .authkey_len = strlen(KEY) };
    TU_OK(mp_manager_start(&m, &o));
    return m;
}

/* Runs manager_client.py MODE against the manager at addr; its exit code
 * (TU_TIMEOUT if it hung). */
static int run_python_at(const char *addr, const char *mode)
{
    char script[512], hex[2 * sizeof KEY + 1];
    const char *src = getenv("MPROC_SOURCE_DIR");
    snprintf(script, sizeof script, "%s/tests/interop/manager_client.py", src ? src : ".");
    for (size_t i = 0; i < strlen(KEY); i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned char)KEY[i]);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execlp("python3", "python3", script, mode, addr, hex, (char *)NULL);
        _exit(127);
    }
    assert_true(pid > 0);
    return tu_wait(pid, PY_TIMEOUT * tu_slow());
}

static int run_python(mp_manager *m, const char *mode)
{
    return run_python_at(mp_manager_address(m), mode);
}

static void python_mode(const char *mode)
{
    if (!have_python())
        skip();
    mp_manager *m = start_tcp();
    assert_int_equal(run_python(m, mode), 0);
    mp_manager_free(m);
}

static void test_sync_manager_every_typeid(void **state)
{
    (void)state;
    python_mode("types");
}

static void test_errors_are_the_exceptions_python_raises(void **state)
{
    (void)state;
    python_mode("errors");
}

static void test_refcounts_free_objects_with_their_proxies(void **state)
{
    (void)state;
    python_mode("refcount");
}

/* Barrier(timeout=nan), Semaphore past 2**63-1, notify(-2**63) and slice
 * steps of +-2**63: each is answered (an exception where Python's would
 * differ), and the server lives on. They were a float-to-int cast of NaN,
 * signed overflows and a negation of INT64_MIN in the server: the ASan
 * build's server died on each, the plain one wrapped a semaphore's count
 * to -2**63 (acquire never succeeded again). */
static void test_extreme_numbers_are_answered_and_the_server_lives(void **state)
{
    (void)state;
    python_mode("extremes");
}

/* mproc-manager serve --max-memory 64M in the background; its address
 * goes in addr. False when the build's tool is not found. */
static bool start_tool_64m(pid_t *pid, char *addr, size_t cap, const char *keyfile)
{
    const char *bin = getenv("MPROC_BINARY_DIR");
    if (!bin)
        return false;
    char tool[512];
    snprintf(tool, sizeof tool, "%s/tools/mproc-manager", bin);
    FILE *f = fopen(keyfile, "w");
    assert_non_null(f);
    fputs(KEY, f);
    fclose(f);
    int p[2];
    TU_OK(pipe(p));
    *pid = fork();
    if (*pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(p[1], 1);
        close(p[0]);
        execl(tool, tool, "serve", "--address", "tcp:127.0.0.1:0", "--authkey-file", keyfile,
              "--max-memory", "64M", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    while (n + 1 < cap && read(p[0], addr + n, 1) == 1 && addr[n] != '\n')
        n++;
    addr[n] = '\0';
    close(p[0]);
    assert_true(n > 0);
    return true;
}

/* l *= 2**40 and l.extend(range(10**12)) are refused at once and leave l
 * as it was; a l *= n that passes the budget part way is put back. They
 * used to run until the whole budget was spent (seconds with the store
 * held, every other client waiting) and keep what they had appended, so
 * every later store write got MemoryError. */
static void test_list_growth_past_the_budget_keeps_nothing(void **state)
{
    (void)state;
    if (!have_python())
        skip();
    char addr[128], keyfile[64];
    snprintf(keyfile, sizeof keyfile, "/tmp/mproc-pybudget-key-%d", (int)getpid());
    pid_t srv = 0;
    if (!start_tool_64m(&srv, addr, sizeof addr, keyfile)) {
        unlink(keyfile);
        skip();
    }
    int rc = run_python_at(addr, "list_budget");
    kill(srv, SIGTERM);
    assert_int_equal(tu_wait(srv, 10 * tu_slow()), 0);
    unlink(keyfile);
    assert_int_equal(rc, 0);
}

static void test_python312_handshake_and_wrong_key(void **state)
{
    (void)state;
    python_mode("handshake312");
    python_mode("wrongkey");
}

static void test_processes_share_barrier_lock_condition(void **state)
{
    (void)state;
    python_mode("processes");
}

/* The remote-manager pattern on the objects C opened by the same names. */
static void test_remote_pattern_shares_named_objects_with_c(void **state)
{
    (void)state;
    if (!have_python())
        skip();
    mp_manager *m = start_tcp();
    mp_mqueue *tasks, *results;
    mp_dict *d;
    mp_list *l;
    TU_OK(mp_manager_queue(m, "tasks", 0, &tasks));
    TU_OK(mp_manager_queue(m, "results", 0, &results));
    for (int i = 0; i < 3; i++) {
        char item[3] = { 'c', (char)('0' + i), 0 };
        TU_OK(mp_mqueue_put(tasks, item, 2, 1.0));
    }
    TU_OK(mp_dict_open(m, "shared", &d));
    TU_OK(mp_dict_set_i64(d, "count", 5));
    TU_OK(mp_dict_set_f64(d, "ratio", 0.25));
    TU_OK(mp_dict_set(d, "blob", "\x01\x02", 2));
    TU_OK(mp_list_open(m, "shared", &l));
    TU_OK(mp_list_append(l, "c", 1));

    assert_int_equal(run_python(m, "remote"), 0);

    /* what Python put, as C reads it (docs/manager-protocol.md, section 10) */
    mp_buf b = { 0 };
    int64_t i64;
    double f64;
    TU_OK(mp_mqueue_get(results, &b, 1.0));
    assert_int_equal(b.len, 8);
    memcpy(&i64, b.data, 8);
    assert_int_equal(i64, 42);
    TU_OK(mp_mqueue_get(results, &b, 1.0));
    assert_int_equal(b.len, 8);
    memcpy(&f64, b.data, 8);
    assert_true(f64 == 2.5);
    TU_OK(mp_mqueue_get(results, &b, 1.0));
    assert_memory_equal(b.data, "bytes", 5);
    TU_OK(mp_mqueue_get(results, &b, 1.0));
    assert_int_equal(b.len, strlen("text é"));
    assert_memory_equal(b.data, "text é", b.len);
    TU_OK(mp_mqueue_get(results, &b, 1.0));
    assert_true(b.len > 2 && ((uint8_t *)b.data)[0] == 0x80);     /* a tuple: an opaque pickle */
    TU_ASSERT_RC(mp_mqueue_get(results, &b, 0), MP_EEMPTY);
    TU_OK(mp_dict_get_i64(d, "from_py_int", &i64));
    assert_int_equal(i64, 7);
    TU_OK(mp_dict_get_f64(d, "from_py_float", &f64));
    assert_true(f64 == 1.5);
    TU_OK(mp_dict_get(d, "from_py_str", &b));
    assert_int_equal(b.len, strlen("naïve"));
    assert_memory_equal(b.data, "naïve", b.len);
    TU_OK(mp_dict_get(d, "from_py_obj", &b));
    assert_int_equal(((uint8_t *)b.data)[0], 0x80);
    /* keys in insertion order, C's and Python's alike */
    TU_OK(mp_dict_keys(d, &b));
    static const char order[] = "count\0ratio\0blob\0from_py_int\0from_py_float\0from_py_str\0from_py_obj\0";
    assert_int_equal(b.len, sizeof order - 1);
    assert_memory_equal(b.data, order, b.len);
    size_t n;
    TU_OK(mp_list_len(l, &n));
    assert_int_equal(n, 2);
    TU_OK(mp_list_get(l, 1, &b));
    assert_memory_equal(b.data, "p", 1);
    mp_buf_free(&b);
    mp_mqueue_free(tasks);
    mp_mqueue_free(results);
    mp_dict_free(d);
    mp_list_free(l);
    mp_manager_free(m);
}

/* A Python program feeds C workers, and a Python worker serves C. */
static void test_python_worker_serves_c_producer(void **state)
{
    (void)state;
    if (!have_python())
        skip();
    mp_manager *m = start_tcp();
    mp_mqueue *tasks, *results;
    TU_OK(mp_manager_queue(m, "tasks", 0, &tasks));
    TU_OK(mp_manager_queue(m, "results", 0, &results));
    const char *items[] = { "ab", "xyz", "" };       /* "" ends the worker */
    for (int i = 0; i < 3; i++)
        TU_OK(mp_mqueue_put(tasks, items[i], strlen(items[i]), 1.0));
    assert_int_equal(run_python(m, "worker"), 0);
    mp_buf b = { 0 };
    TU_OK(mp_mqueue_get(results, &b, 1.0));
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "abab", 4);
    TU_OK(mp_mqueue_get(results, &b, 1.0));
    assert_memory_equal(b.data, "xyzxyz", 6);
    mp_buf_free(&b);
    mp_mqueue_free(tasks);
    mp_mqueue_free(results);
    mp_manager_free(m);
}

/* A Python getter killed while it waits in the server takes no item. */
static void test_killed_python_getter_loses_no_item(void **state)
{
    (void)state;
    if (!have_python())
        skip();
    mp_manager *m = start_tcp();
    mp_mqueue *q;
    TU_OK(mp_manager_queue(m, "dies", 0, &q));
    int rc = run_python(m, "getter_dies");
    assert_int_equal(rc, -SIGKILL);
    TU_OK(mp_mqueue_put(q, "kept", 4, 1.0));
    mp_buf b = { 0 };
    TU_OK(mp_mqueue_get(q, &b, 5.0));
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "kept", 4);
    mp_buf_free(&b);
    mp_mqueue_free(q);
    mp_manager_free(m);
}

/* A TCP server with an empty authkey would let anyone who can connect in
 * (and a Python client with it unpickles whatever comes back): refused. */
static void test_tcp_server_refuses_an_empty_authkey(void **state)
{
    (void)state;
    const char *bin = getenv("MPROC_BINARY_DIR");
    if (!bin)
        skip();
    char tool[512], keyfile[64];
    snprintf(tool, sizeof tool, "%s/tools/mproc-manager", bin);
    snprintf(keyfile, sizeof keyfile, "/tmp/mproc-pyproto-empty-%d", (int)getpid());
    FILE *f = fopen(keyfile, "w");
    assert_non_null(f);
    fclose(f);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(tool, tool, "serve", "--address", "tcp:127.0.0.1:0", "--authkey-file", keyfile, (char *)NULL);
        _exit(127);
    }
    int rc = tu_wait(pid, 10 * tu_slow());
    unlink(keyfile);
    assert_true(rc != 0 && rc != TU_TIMEOUT && rc != 127);
}

/* ------------------------------------------------------------------ known-answer handshakes */

/* HMACs computed with CPython's hmac module for KEY and the challenge bytes
 * 0, 1, 2, ...: what a 3.12+ peer (prefixed digest over "{name}" + 40
 * bytes) and a 3.11 peer (bare MD5 over 20 bytes) must receive. */
static const struct {
    const char *digest;          /* NULL: the 3.11 challenge */
    const char *hex;
} KAT[] = {
    { "sha256", "43100d7a0b05edfb9b1e5ece13d931489ab410c1e0ea3287cc3806b1fb3cb424" },
    { "md5", "c3a3ab54ff4ee97c37954ab0d9d2f0af" },
    { "sha384", "38eca3c0bf5f472e45b06a3352b71c9bc788969e6d0b453910921b959b813693"
                "f19f7c0a5763c75c55c337be63388595" },
    { "sha3_256", "d852124d201fe977c6655b7596fb4baecd7c4d8937002835f1fc66d0041abed1" },
    { NULL, "88563f28d1df7e2e0db7c2c9463bf2d8" },
};

static bool read_full(int fd, void *p, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

static void send_frame(int fd, const void *p, size_t n)
{
    uint8_t head[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n };
    assert_int_equal(write(fd, head, 4), 4);
    assert_int_equal(write(fd, p, n), (ssize_t)n);
}

static void test_handshake_answers_match_known_vectors(void **state)
{
    (void)state;
    for (size_t k = 0; k < sizeof KAT / sizeof KAT[0]; k++) {
        char name[64], address[80];
        snprintf(name, sizeof name, "mproc-pyproto-kat-%d-%zu", (int)getpid(), k);
        snprintf(address, sizeof address, "unix:@%s", name);
        int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        memcpy(sa.sun_path + 1, name, strlen(name));
        socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
        assert_int_equal(bind(l, (struct sockaddr *)&sa, salen), 0);
        assert_int_equal(listen(l, 1), 0);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {              /* mproc's client answers our fixed challenge */
            mp_conn *c;
            _exit(mp_client(&c, address, KEY, strlen(KEY), 5.0) == 0 ? 0 : 1);
        }
        int fd = accept(l, NULL, NULL);
        assert_true(fd >= 0);
        uint8_t msg[128];
        size_t n = 0;
        memcpy(msg, "#CHALLENGE#", 11);
        n = 11;
        if (KAT[k].digest)
            n += (size_t)sprintf((char *)msg + n, "{%s}", KAT[k].digest);
        for (int i = 0; i < (KAT[k].digest ? 40 : 20); i++)
            msg[n++] = (uint8_t)i;
        send_frame(fd, msg, n);
        uint8_t head[4], answer[128];
        assert_true(read_full(fd, head, 4));
        size_t alen = (size_t)head[0] << 24 | (size_t)head[1] << 16 | (size_t)head[2] << 8 | head[3];
        assert_true(alen < sizeof answer && read_full(fd, answer, alen));
        char want[160];
        size_t w = 0;
        if (KAT[k].digest)
            w = (size_t)sprintf(want, "{%s}", KAT[k].digest);
        for (size_t i = 0; KAT[k].hex[2 * i]; i++) {
            unsigned b;
            sscanf(KAT[k].hex + 2 * i, "%2x", &b);
            want[w++] = (char)b;
        }
        assert_int_equal(alen, w);
        assert_memory_equal(answer, want, w);
        close(fd);                   /* no #WELCOME#: the client gives up */
        close(l);
        assert_int_equal(tu_wait(pid, 10 * tu_slow()), 1);
    }
}

/* ------------------------------------------------------------------ hostile pickles */

/* Sends one request frame on a fresh connection; the reply frame. */
static void raw_request(mp_manager *m, const void *req, size_t len, mp_buf *reply)
{
    mp_conn *c;
    TU_OK(mp_client(&c, mp_manager_address(m), KEY, strlen(KEY), 5.0));
    TU_OK(mp_conn_send_bytes(c, req, len));
    assert_int_equal(mp_conn_poll(c, 5.0), 1);
    TU_OK(mp_conn_recv_buf(c, reply, 0));
    mp_conn_close(c);
}

static bool has(const mp_buf *b, const char *s)
{
    return memmem(b->data, b->len, s, strlen(s)) != NULL;
}

static void test_hostile_pickles_get_errors_and_never_run(void **state)
{
    (void)state;
    mp_manager *m = start_tcp();
    char marker[64];
    snprintf(marker, sizeof marker, "/tmp/mproc-pyproto-ran-%d", (int)getpid());
    unlink(marker);
    /* (None, 'create', ('dict', os.system('touch marker')), {}) written by hand */
    char cmd[128];
    int cl = snprintf(cmd, sizeof cmd, "touch %s", marker);
    uint8_t evil[256];
    size_t n = 0;
    const char head[] = "\x80\x04" "(N" "\x8c\x06" "create" "(" "\x8c\x04" "dict" "\x8c\x02" "os" "\x8c\x06" "system" "\x93";
    memcpy(evil + n, head, sizeof head - 1);
    n += sizeof head - 1;
    evil[n++] = 0x8c;
    evil[n++] = (uint8_t)cl;
    memcpy(evil + n, cmd, (size_t)cl);
    n += (size_t)cl;
    memcpy(evil + n, "\x85R" "t" "}" "t.", 6);   /* TUPLE1 REDUCE, TUPLE (args), {}, TUPLE, STOP */
    n += 6;
    mp_buf reply = { 0 };
    raw_request(m, evil, n, &reply);
    assert_true(reply.len > 2 && ((uint8_t *)reply.data)[0] == 0x80);
    struct stat st;
    assert_int_equal(stat(marker, &st), -1);        /* os.system never ran */

    /* malformed: every one answered with a ValueError, none crashes the server */
    static const struct { const char *p; size_t len; } bad[] = {
        { "\x80\x04", 2 },                                /* no STOP */
        { "\x80\x04.", 3 },                               /* STOP on an empty stack */
        { "\x80\x04" "h\x05.", 5 },                       /* memo key missing */
        { "\x80\x04" "N0000.", 8 },                       /* pops past the bottom */
        { "\x80\x04" "cos\nsystem\n(V.", 16 },            /* text opcodes are not read */
        { "\x80\x04" "B\xff\xff\xff\x7f", 7 },            /* 2 GiB of bytes announced */
        { "\x80\x04" "\x8c\x01" "a" "b.", 7 },            /* BUILD on a str */
        { "\x80\x09N.", 4 },                              /* protocol 9 */
        { "\x80\x04" "N.junk", 8 },                       /* bytes after STOP */
        { "\x80\x04" "Q.", 4 },                           /* persistent id */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        raw_request(m, bad[i].p, bad[i].len, &reply);
        assert_true(has(&reply, "#ERROR") && has(&reply, "ValueError") && has(&reply, "malformed request"));
    }
    /* nesting past the bound */
    mp_buf deep = { 0 };
    mp_buf_append(&deep, "\x80\x04", 2);
    for (int i = 0; i < 200; i++)
        mp_buf_append(&deep, "]", 1);
    for (int i = 0; i < 199; i++)
        mp_buf_append(&deep, "a", 1);
    mp_buf_append(&deep, ".", 1);
    raw_request(m, deep.data, deep.len, &reply);
    assert_true(has(&reply, "#ERROR") && has(&reply, "nested too deeply"));
    mp_buf_free(&deep);

    /* the server still serves C clients */
    mp_dict *d;
    TU_OK(mp_dict_open(m, "after", &d));
    TU_OK(mp_dict_set_i64(d, "k", 1));
    mp_dict_free(d);
    mp_buf_free(&reply);
    mp_manager_free(m);
}

int main(void)
{
    tu_watchdog(300);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_manager_every_typeid),
        cmocka_unit_test(test_errors_are_the_exceptions_python_raises),
        cmocka_unit_test(test_refcounts_free_objects_with_their_proxies),
        cmocka_unit_test(test_extreme_numbers_are_answered_and_the_server_lives),
        cmocka_unit_test(test_list_growth_past_the_budget_keeps_nothing),
        cmocka_unit_test(test_python312_handshake_and_wrong_key),
        cmocka_unit_test(test_processes_share_barrier_lock_condition),
        cmocka_unit_test(test_remote_pattern_shares_named_objects_with_c),
        cmocka_unit_test(test_python_worker_serves_c_producer),
        cmocka_unit_test(test_killed_python_getter_loses_no_item),
        cmocka_unit_test(test_tcp_server_refuses_an_empty_authkey),
        cmocka_unit_test(test_handshake_answers_match_known_vectors),
        cmocka_unit_test(test_hostile_pickles_get_errors_and_never_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
