/* test_errors.c - mp_last_error: the sentence a failing call leaves behind.
 *
 * Each test makes one of the mistakes a newcomer makes (an address without
 * a scheme, a NULL handle, a freed one, a call in the wrong state, a wrong
 * authkey) and checks both the code and that the message names the call,
 * the argument, the reason and the fix.
 */
#include "testutil.h"

#include <errno.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>


static void test_listener_address_without_scheme_says_which_forms_work(void **state)
{
    (void)state;
    mp_listener *l;
    TU_ASSERT_RC(mp_listener_new(&l, "127.0.0.1:8080", NULL, 0), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_listener_new: address \"127.0.0.1:8080\" has no "
                                         "scheme; use tcp:HOST:PORT, unix:/path or unix:@name");
    TU_ASSERT_RC(mp_listener_new(&l, "/tmp/x.sock", NULL, 0), MP_EINVAL);
    tu_last_error_has("mp_listener_new:", "\"/tmp/x.sock\" has no scheme", "use unix:/tmp/x.sock",
                       NULL);
}

static void test_bad_tcp_and_unix_addresses_say_what_part_is_wrong(void **state)
{
    (void)state;
    mp_listener *l;
    mp_conn *c;
    TU_ASSERT_RC(mp_listener_new(&l, "tcp:127.0.0.1", NULL, 0), MP_EINVAL);
    tu_last_error_has("mp_listener_new:", "has no port", "tcp:HOST:PORT", NULL);
    TU_ASSERT_RC(mp_listener_new(&l, "tcp:127.0.0.1:http", NULL, 0), MP_EINVAL);
    tu_last_error_has("port \"http\" is not a number", NULL);
    TU_ASSERT_RC(mp_listener_new(&l, "tcp::80", NULL, 0), MP_EINVAL);
    tu_last_error_has("has no host", NULL);
    TU_ASSERT_RC(mp_listener_new(&l, "unix:/nonexistent-dir-of-mproc/x.sock", NULL, 0), -ENOENT);
    tu_last_error_has("mp_listener_new:", "the socket file's directory does not exist", NULL);
    TU_ASSERT_RC(mp_listener_new(&l, "unix:", NULL, 0), MP_EINVAL);
    tu_last_error_has("names no path", NULL);
    TU_ASSERT_RC(mp_listener_new(&l, "unix:/", NULL, 0), -EADDRINUSE);   /* no "remove" advice */
    tu_last_error_has("the path exists and is no socket file: pick another path", NULL);
    TU_ASSERT_RC(mp_client(&c, "tcp:192.0.2.1:0", NULL, 0, MP_FOREVER), MP_EINVAL);
    tu_last_error_has("mp_client:", "port 0 means \"any free one\" to a listener only", NULL);
    mp_manager *m;
    TU_ASSERT_RC(mp_manager_connect(&m, "tcp:192.0.2.1:0", "k", 1), MP_EINVAL);
    tu_last_error_has("mp_manager_connect:", "port 0", NULL);
    TU_ASSERT_RC(mp_client(&c, "localhost:1", NULL, 0, 1), MP_EINVAL);
    tu_last_error_has("mp_client: address \"localhost:1\" has no scheme", NULL);
    TU_ASSERT_RC(mp_listener_new(&l, NULL, NULL, 0), MP_EINVAL);
    tu_last_error_has("mp_listener_new: address is NULL", NULL);
}

static void test_client_to_nothing_says_nothing_listens(void **state)
{
    (void)state;
    mp_conn *c;
    int rc = mp_client(&c, "unix:/nonexistent-mproc-dir/none.sock", NULL, 0, 1);
    TU_ASSERT_RC(rc, -ENOENT);
    tu_last_error_has("mp_client: cannot connect to \"unix:/nonexistent-mproc-dir/none.sock\"",
                       "is the listener started", NULL);
}

static void test_listening_on_a_taken_address_says_so(void **state)
{
    (void)state;
    mp_listener *a, *b;
    TU_OK(mp_listener_new(&a, "tcp:127.0.0.1:0", NULL, 0));
    char addr[128];
    snprintf(addr, sizeof addr, "%s", mp_listener_address(a));
    TU_ASSERT_RC(mp_listener_new(&b, addr, NULL, 0), -EADDRINUSE);
    tu_last_error_has("mp_listener_new: cannot listen on", addr, "port 0", NULL);
    mp_listener_free(a);
}

static void test_null_handles_are_named(void **state)
{
    (void)state;
    TU_ASSERT_RC(mp_lock_acquire(NULL, 1), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_lock_acquire: lock is NULL");
    TU_ASSERT_RC(mp_conn_send_bytes(NULL, "x", 1), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_conn_send_bytes: conn is NULL");
    TU_ASSERT_RC(mp_event_wait(NULL, 0), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_event_wait: event is NULL");
    TU_ASSERT_RC(mp_condition_notify(NULL, 1), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_condition_notify: condition is NULL");
    TU_ASSERT_RC(mp_lock_new(NULL), MP_EINVAL);
    tu_last_error_has("mp_lock_new: l ", "is NULL", NULL);
    TU_ASSERT_RC(mp_barrier_new(NULL, 2), MP_EINVAL);
    tu_last_error_has("mp_barrier_new:", NULL);
    mp_barrier *b;
    TU_ASSERT_RC(mp_barrier_new(&b, 0), MP_EINVAL);
    tu_last_error_has("mp_barrier_new: parties is 0", NULL);
    mp_conn *a;
    TU_ASSERT_RC(mp_pipe(&a, NULL, true), MP_EINVAL);
    tu_last_error_has("mp_pipe: b ", NULL);
    size_t len;
    TU_ASSERT_RC(mp_conn_recv_bytes(NULL, NULL, 0, &len), MP_EINVAL);
    tu_last_error_has("mp_conn_recv_bytes: conn is NULL", NULL);
}

static void test_freed_handles_are_named_as_freed(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    mp_lock_free(l);
    TU_ASSERT_RC(mp_lock_acquire(l, 0), MP_EINVAL);
    tu_last_error_has("mp_lock_acquire: lock was freed", NULL);
    mp_event *e;
    TU_OK(mp_event_new(&e));
    mp_event_free(e);
    TU_ASSERT_RC(mp_event_set(e), MP_EINVAL);
    tu_last_error_has("mp_event_set: event was freed", NULL);
}

static int return_zero(void *arg)
{
    (void)arg;
    return 0;
}

static void test_wrong_state_names_the_state(void **state)
{
    (void)state;
    mp_thread *t;
    mp_thread_opts o = { .name = "worker" };
    TU_OK(mp_thread_new(&t, return_zero, NULL, &o));
    int code;
    TU_ASSERT_RC(mp_thread_exitcode(t, &code), MP_ESTATE);
    tu_last_error_has("mp_thread_exitcode: thread \"worker\" is not started", NULL);
    TU_ASSERT_RC(mp_thread_join(t, 1), MP_ESTATE);
    tu_last_error_has("thread \"worker\" is not started", "start it", NULL);
    TU_OK(mp_thread_start(t));
    TU_OK(mp_thread_join(t, 10));
    TU_ASSERT_RC(mp_thread_start(t), MP_ESTATE);
    tu_last_error_has("mp_thread_start: thread \"worker\" is finished", "starts once", NULL);
    TU_OK(mp_thread_free(t));
}

static void test_lock_misuse_says_who_holds_it(void **state)
{
    (void)state;
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    TU_ASSERT_RC(mp_lock_release(l), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_lock_release: the lock is not held (released already?)");
    TU_OK(mp_lock_acquire(l, 0));
    TU_ASSERT_RC(mp_lock_acquire(l, MP_FOREVER), -EDEADLK);
    tu_last_error_has("mp_lock_acquire: this thread holds this Lock already", "mp_rlock_new", NULL);
    TU_ASSERT_RC(mp_lock_acquire(l, 0), MP_ETIMEDOUT);
    tu_last_error_has("mp_lock_acquire: the lock is held", NULL);
    TU_OK(mp_lock_release(l));
    mp_lock_free(l);

    mp_condition *c;
    TU_OK(mp_condition_new(&c, NULL));
    TU_ASSERT_RC(mp_condition_wait(c, 0), MP_EINVAL);
    tu_last_error_has("mp_condition_wait: this thread does not hold the condition's lock",
                       "mp_condition_acquire first", NULL);
    mp_condition_free(c);
}

static void test_conn_misuse_says_which_end_does_what(void **state)
{
    (void)state;
    mp_conn *a, *b;
    TU_OK(mp_pipe(&a, &b, false));
    TU_ASSERT_RC(mp_conn_send_bytes(a, "x", 1), MP_EINVAL);
    tu_last_error_has("mp_conn_send_bytes: this conn cannot send", "a receives and b sends", NULL);
    TU_ASSERT_RC(mp_conn_send_bytes(b, NULL, 3), MP_EINVAL);
    tu_last_error_has("data is NULL but len is 3", NULL);
    TU_OK(mp_conn_send_bytes(b, "hello", 5));
    char small[2];
    size_t len;
    TU_ASSERT_RC(mp_conn_recv_bytes(a, small, sizeof small, &len), MP_ETOOBIG);
    tu_last_error_has("mp_conn_recv_bytes: the message is 5 bytes, buf has 2", NULL);
    mp_conn_close(b);
    char big[8];
    TU_OK(mp_conn_recv_bytes(a, big, sizeof big, &len));
    TU_ASSERT_RC(mp_conn_recv_bytes(a, big, sizeof big, &len), MP_EEOF);
    tu_last_error_has("mp_conn_recv_bytes: the other end closed", NULL);
    mp_conn_close(a);
}

struct accept_arg { mp_listener *l; int rc; };

static void *accept_one(void *p)
{
    struct accept_arg *a = p;
    mp_conn *c = NULL;
    a->rc = mp_listener_accept(a->l, &c, 20);
    if (a->rc == 0)
        mp_conn_close(c);
    return NULL;
}

/* A server that hangs up during the handshake gave no verdict on the key:
 * MP_EEOF, as Python's Client raises EOFError, not MP_EAUTH. */
static void *accept_and_hang_up(void *p)
{
    int s = accept(*(int *)p, NULL, NULL);
    if (s >= 0)
        close(s);
    return NULL;
}

static void test_server_hanging_up_in_the_handshake_is_eof_not_a_wrong_key(void **state)
{
    (void)state;
    tu_watchdog(60);
    int srv = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    static const char name[] = "mproc-test-errors-hangup";
    memcpy(a.sun_path + 1, name, sizeof name - 1);
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + sizeof name);
    assert_int_equal(bind(srv, (struct sockaddr *)&a, alen), 0);
    assert_int_equal(listen(srv, 4), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, accept_and_hang_up, &srv), 0);
    mp_conn *c;
    TU_ASSERT_RC(mp_client(&c, "unix:@mproc-test-errors-hangup", "key", 3, 20), MP_EEOF);
    tu_last_error_has("mp_client: \"unix:@mproc-test-errors-hangup\" hung up during the authkey "
                      "handshake", NULL);
    pthread_join(t, NULL);
    close(srv);
}

static void test_wrong_authkey_says_the_keys_differ(void **state)
{
    (void)state;
    tu_watchdog(60);
    mp_listener *l;
    TU_OK(mp_listener_new(&l, "unix:@mproc-test-errors-key", "right", 5));
    struct accept_arg a = { l, 1 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, accept_one, &a), 0);
    mp_conn *c;
    TU_ASSERT_RC(mp_client(&c, "unix:@mproc-test-errors-key", "wrong", 5, 20), MP_EAUTH);
    tu_last_error_has("mp_client: authkey handshake with \"unix:@mproc-test-errors-key\" failed",
                       "the keys differ", NULL);
    pthread_join(t, NULL);
    TU_ASSERT_RC(a.rc, MP_EAUTH);
    mp_listener_free(l);

    TU_ASSERT_RC(mp_listener_new(&l, "unix:@x", NULL, 4), MP_EINVAL);
    tu_last_error_has("mp_listener_new: authkey is NULL but keylen is 4", NULL);
}

static void test_success_leaves_the_message_alone(void **state)
{
    (void)state;
    TU_ASSERT_RC(mp_lock_acquire(NULL, 0), MP_EINVAL);
    mp_lock *l;
    TU_OK(mp_lock_new(&l));
    TU_OK(mp_lock_acquire(l, 0));
    TU_OK(mp_lock_release(l));
    assert_string_equal(mp_last_error(), "mp_lock_acquire: lock is NULL");
    mp_lock_free(l);
}

static void *other_thread(void *p)
{
    const char **seen = p;
    seen[0] = strdup(mp_last_error());
    mp_semaphore_release(NULL);
    seen[1] = strdup(mp_last_error());
    return NULL;
}

static void test_each_thread_has_its_own_message(void **state)
{
    (void)state;
    TU_ASSERT_RC(mp_event_clear(NULL), MP_EINVAL);
    const char *seen[2] = { NULL, NULL };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, other_thread, seen), 0);
    pthread_join(t, NULL);
    assert_string_equal(seen[0], "");
    assert_string_equal(seen[1], "mp_semaphore_release: semaphore is NULL");
    assert_string_equal(mp_last_error(), "mp_event_clear: event is NULL");
    free((void *)seen[0]);
    free((void *)seen[1]);
}

static void test_strerror_is_unchanged(void **state)
{
    (void)state;
    assert_string_equal(mp_strerror(MP_EINVAL), "invalid argument");
    assert_string_equal(mp_strerror(MP_ESTATE), "wrong state for this call");
    assert_non_null(mp_last_error());
}

static void test_shm_misuse_says_what_to_do(void **state)
{
    (void)state;
    mp_shm *s;
    TU_ASSERT_RC(mp_shm_new(&s, "mproc-test-errors-none", 0, 0), -ENOENT);
    tu_last_error_has("mp_shm_new: no segment \"mproc-test-errors-none\"", "MP_CREATE", NULL);
    TU_ASSERT_RC(mp_shm_new(&s, NULL, 16, 0), MP_EINVAL);
    tu_last_error_has("name is NULL without MP_CREATE", NULL);
    TU_ASSERT_RC(mp_shm_new(&s, "x", 0, MP_CREATE), MP_EINVAL);
    tu_last_error_has("needs size > 0", NULL);
    assert_null(mp_shm_buf(NULL));                 /* getters that return NULL say why too */
    tu_last_error_has("mp_shm_buf: s is NULL", NULL);
    assert_null(mp_listener_address(NULL));
    tu_last_error_has("mp_listener_address: listener is NULL", NULL);
    assert_null(mp_thread_name(NULL));
    tu_last_error_has("mp_thread_name: thread is NULL", NULL);
}

static void test_queue_misuse_says_what_to_do(void **state)
{
    (void)state;
    mp_queue *q;
    TU_ASSERT_RC(mp_queue_put(NULL, "x", 1, 0), MP_EINVAL);
    tu_last_error_has("mp_queue_put: queue is NULL", NULL);
    TU_OK(mp_queue_new(&q, &(mp_queue_opts){ .maxsize = 1 }));
    TU_ASSERT_RC(mp_queue_put(q, NULL, 4, 0), MP_EINVAL);
    tu_last_error_has("mp_queue_put: data is NULL but len is 4", NULL);
    TU_ASSERT_RC(mp_queue_put(q, "x", 1, -0.5), MP_EINVAL);
    tu_last_error_has("mp_queue_put: timeout -0.5 is negative", "MP_FOREVER", NULL);
    char buf[2];
    size_t len;
    TU_ASSERT_RC(mp_queue_get_nowait(q, buf, sizeof buf, &len), MP_EEMPTY);
    tu_last_error_has("mp_queue_get_nowait: the queue is empty", NULL);
    TU_OK(mp_queue_put(q, "abc", 3, 0));
    TU_ASSERT_RC(mp_queue_put_nowait(q, "x", 1), MP_EFULL);
    tu_last_error_has("mp_queue_put_nowait: the queue is full", NULL);
    TU_ASSERT_RC(mp_queue_get(q, buf, sizeof buf, &len, 0), MP_ETOOBIG);
    tu_last_error_has("mp_queue_get: the next item is 3 bytes, more than cap (2)", NULL);
    TU_ASSERT_RC(mp_queue_put_shared(q, buf, 1, 0), MP_EINVAL);
    tu_last_error_has("mp_queue_put_shared: p is not a block from mp_shared_alloc", NULL);
    TU_ASSERT_RC(mp_queue_task_done(q), MP_EINVAL);
    tu_last_error_has("mp_queue_task_done: called more times than items were got", NULL);
    TU_OK(mp_queue_shutdown(q));
    TU_ASSERT_RC(mp_queue_put(q, "x", 1, 0), MP_ECLOSED);
    tu_last_error_has("mp_queue_put: the queue was shut down", NULL);
    mp_queue_free(q);
    TU_ASSERT_RC(mp_queue_get_nowait(q, buf, sizeof buf, &len), MP_EINVAL);
    tu_last_error_has("mp_queue_get_nowait: queue", NULL);
}

static void test_manager_misuse_says_what_to_do(void **state)
{
    (void)state;
    mp_dict *d;
    TU_ASSERT_RC(mp_dict_open(NULL, "x", &d), MP_EINVAL);
    tu_last_error_has("mp_dict_open: the manager handle is NULL", NULL);
    TU_ASSERT_RC(mp_dict_set(NULL, "k", "v", 1), MP_EINVAL);
    tu_last_error_has("mp_dict_set: the handle is NULL", NULL);
    mp_manager *m;
    TU_OK(mp_manager_start(&m, NULL));
    TU_ASSERT_RC(mp_dict_open(m, "", &d), MP_EINVAL);
    tu_last_error_has("mp_dict_open: name must be 1 to 255 bytes of UTF-8 without NUL", NULL);
    TU_OK(mp_dict_open(m, "d", &d));
    TU_ASSERT_RC(mp_dict_set(d, NULL, "v", 1), MP_EINVAL);
    tu_last_error_has("mp_dict_set: key is NULL", NULL);
    mp_buf b = { 0 };
    TU_ASSERT_RC(mp_dict_get(d, "missing", &b), MP_ENOTFOUND);
    tu_last_error_has("mp_dict_get: ", "MP_ENOTFOUND", NULL);
    mp_dict_free(d);
    TU_ASSERT_RC(mp_dict_get(d, "k", &b), MP_EINVAL);
    tu_last_error_has("mp_dict_get: the handle is freed", NULL);
    mp_buf_free(&b);
    mp_manager_shutdown(m);
    mp_manager_free(m);
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listener_address_without_scheme_says_which_forms_work),
        cmocka_unit_test(test_bad_tcp_and_unix_addresses_say_what_part_is_wrong),
        cmocka_unit_test(test_client_to_nothing_says_nothing_listens),
        cmocka_unit_test(test_listening_on_a_taken_address_says_so),
        cmocka_unit_test(test_null_handles_are_named),
        cmocka_unit_test(test_freed_handles_are_named_as_freed),
        cmocka_unit_test(test_wrong_state_names_the_state),
        cmocka_unit_test(test_lock_misuse_says_who_holds_it),
        cmocka_unit_test(test_conn_misuse_says_which_end_does_what),
        cmocka_unit_test(test_server_hanging_up_in_the_handshake_is_eof_not_a_wrong_key),
        cmocka_unit_test(test_wrong_authkey_says_the_keys_differ),
        cmocka_unit_test(test_success_leaves_the_message_alone),
        cmocka_unit_test(test_each_thread_has_its_own_message),
        cmocka_unit_test(test_strerror_is_unchanged),
        cmocka_unit_test(test_shm_misuse_says_what_to_do),
        cmocka_unit_test(test_queue_misuse_says_what_to_do),
        cmocka_unit_test(test_manager_misuse_says_what_to_do),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
