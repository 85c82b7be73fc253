/* test_process_errors.c - the mistakes a newcomer makes with processes,
 * pools and futures, each refused with a code and an mp_last_error sentence
 * naming the call, the argument and the reason: an argument a spawned child
 * could not read, a second start, a join before the start, bad options, a
 * freed pool, a future asked too early.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The message contains every one of the NULL-terminated fragments. */
static void assert_message_has(const char *first, ...)
{
    const char *msg = mp_last_error();
    va_list ap;
    va_start(ap, first);
    for (const char *want = first; want; want = va_arg(ap, const char *)) {
        if (!strstr(msg, want))
            fail_msg("mp_last_error() = \"%s\" lacks \"%s\"", msg, want);
    }
    va_end(ap);
}

static int reads_arg(void *arg)
{
    return *(int *)arg;
}

static int finish(mp_process *p)
{
    int code = -1000;
    TU_OK(mp_process_join(p, 20 * tu_slow()));
    TU_OK(mp_process_exitcode(p, &code));
    TU_OK(mp_process_free(p));
    return code;
}

/* ------------------------------------------------------------------ the argument across exec */

static void test_private_arg_without_arg_size_is_refused_under_spawn_and_forkserver(void **state)
{
    (void)state;
    static const mp_start_method methods[] = { MP_SPAWN, MP_FORKSERVER };
    int on_stack = 7;
    for (size_t i = 0; i < 2; i++) {
        mp_process *p = NULL;
        TU_OK(mp_process_new(&p, reads_arg, &on_stack, &(mp_process_opts){ .method = methods[i] }));
        assert_int_equal(mp_process_start(p), MP_EINVAL);
        assert_message_has("mp_process_start: arg is not in shared memory", "set opts.arg_size",
                           "mp_shared_alloc", i ? "MP_FORKSERVER" : "MP_SPAWN", NULL);
        assert_int_equal(mp_process_join(p, 0), MP_ESTATE);     /* nothing was started */
        TU_OK(mp_process_free(p));
    }
}

static void test_shared_or_copied_arg_still_starts_under_every_method(void **state)
{
    (void)state;
    static const mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    int *shared = mp_shared_alloc(sizeof *shared);
    assert_non_null(shared);
    *shared = 9;
    int on_stack = 5;
    for (size_t i = 0; i < 3; i++) {
        mp_process *p = NULL;
        TU_OK(mp_process_new(&p, reads_arg, shared, &(mp_process_opts){ .method = methods[i] }));
        TU_OK(mp_process_start(p));
        assert_int_equal(finish(p), 9);
        TU_OK(mp_process_new(&p, reads_arg, &on_stack,
                             &(mp_process_opts){ .method = methods[i], .arg_size = sizeof on_stack }));
        TU_OK(mp_process_start(p));
        assert_int_equal(finish(p), 5);
    }
    /* Under fork a private pointer is the child's own copy, as in Python. */
    mp_process *p = NULL;
    TU_OK(mp_process_new(&p, reads_arg, &on_stack, &(mp_process_opts){ .method = MP_FORK }));
    TU_OK(mp_process_start(p));
    assert_int_equal(finish(p), 5);
    mp_shared_free(shared);
}

static void test_arg_inside_an_shm_buffer_is_refused_naming_the_handle_way(void **state)
{
    (void)state;
    mp_shm *s = NULL;
    TU_OK(mp_shm_new(&s, NULL, 4096, MP_CREATE));
    int *buf = mp_shm_buf(s);
    assert_non_null(buf);
    buf[1] = 3;
    mp_process *p = NULL;
    TU_OK(mp_process_new(&p, reads_arg, &buf[1], &(mp_process_opts){ .method = MP_SPAWN }));
    assert_int_equal(mp_process_start(p), MP_EINVAL);
    assert_message_has("mp_process_start: arg points into an mp_shm buffer",
                       "pass the mp_shm handle", NULL);
    TU_OK(mp_process_free(p));
    TU_OK(mp_shm_unlink(s));
    mp_shm_free(s);
}

/* ------------------------------------------------------------------ lifecycle mistakes */

static void test_start_twice_names_the_state(void **state)
{
    (void)state;
    int v = 0;
    mp_process *p = NULL;
    TU_OK(mp_process_new(&p, reads_arg, &v, &(mp_process_opts){ .name = "twice", .arg_size = sizeof v }));
    TU_OK(mp_process_start(p));
    int rc = mp_process_start(p);
    if (rc != MP_ESTATE)
        fail_msg("second start: %d", rc);
    assert_message_has("mp_process_start: process \"twice\" is ", "starts once", NULL);
    assert_true(strstr(mp_last_error(), "started already") || strstr(mp_last_error(), "finished"));
    TU_OK(mp_process_join(p, 20 * tu_slow()));
    assert_int_equal(mp_process_start(p), MP_ESTATE);
    assert_message_has("process \"twice\" is finished", NULL);
    TU_OK(mp_process_free(p));
}

static void test_unstarted_process_cannot_be_joined_killed_or_asked(void **state)
{
    (void)state;
    mp_process *p = NULL;
    TU_OK(mp_process_new(&p, reads_arg, NULL, &(mp_process_opts){ .name = "idle" }));
    assert_int_equal(mp_process_join(p, 1), MP_ESTATE);
    assert_string_equal(mp_last_error(), "mp_process_join: process \"idle\" was never started; "
                                         "call mp_process_start first");
    assert_int_equal(mp_process_kill(p), MP_ESTATE);
    assert_message_has("mp_process_kill: process \"idle\" was never started", NULL);
    int code;
    assert_int_equal(mp_process_exitcode(p, &code), MP_ESTATE);
    assert_message_has("mp_process_exitcode: process \"idle\" was never started", NULL);
    assert_int_equal(mp_process_sentinel(p), MP_ESTATE);
    assert_message_has("mp_process_sentinel:", NULL);
    assert_int_equal(mp_process_join(mp_current_process(), 0), MP_ESTATE);
    assert_message_has("mp_process_join: process \"MainProcess\" is the calling process itself", NULL);
    TU_OK(mp_process_free(p));
    assert_int_equal(mp_process_join(p, 0), MP_EINVAL);
    assert_message_has("mp_process_join: p was freed or closed already", NULL);
    assert_int_equal(mp_process_start(NULL), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_process_start: p is NULL");
}

static void test_bad_process_options_name_the_field(void **state)
{
    (void)state;
    mp_process *p = NULL;
    assert_int_equal(mp_process_new(&p, reads_arg, NULL, &(mp_process_opts){ .method = 9 }), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_process_new: opts.method is 9, not an mp_start_method");
    assert_int_equal(mp_process_new(&p, reads_arg, NULL, &(mp_process_opts){ .arg_size = 4 }), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_process_new: opts.arg_size is 4 but arg is NULL");
    assert_int_equal(mp_process_new(&p, NULL, NULL, NULL), MP_EINVAL);
    assert_message_has("mp_process_new: target is NULL", NULL);
    char name[200];
    memset(name, 'x', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    assert_int_equal(mp_process_new(&p, reads_arg, NULL, &(mp_process_opts){ .name = name }), MP_EINVAL);
    assert_message_has("mp_process_new: opts.name is 199 bytes; a name has at most", NULL);
    assert_int_equal(mp_set_start_method((mp_start_method)-1), MP_EINVAL);
    assert_message_has("mp_set_start_method: method is -1", NULL);
}

static int sleeps(void *arg)
{
    (void)arg;
    pid_t parent = getppid();
    while (getppid() == parent)
        usleep(10000);
    return 0;
}

static void test_running_process_cannot_be_freed_or_asked_its_code(void **state)
{
    (void)state;
    mp_process *p = NULL;
    TU_OK(mp_process_new(&p, sleeps, NULL, &(mp_process_opts){ .name = "busy" }));
    TU_OK(mp_process_start(p));
    assert_int_equal(mp_process_free(p), MP_ESTATE);
    assert_message_has("mp_process_free: process \"busy\" is still running; join it", NULL);
    int code;
    assert_int_equal(mp_process_exitcode(p, &code), MP_ESTATE);
    assert_message_has("mp_process_exitcode: process \"busy\" is still running", NULL);
    assert_int_equal(mp_process_set_daemon(p, true), MP_ESTATE);
    assert_message_has("mp_process_set_daemon: process \"busy\" is started already", NULL);
    assert_int_equal(mp_process_join(p, 0.01), MP_ETIMEDOUT);
    assert_message_has("mp_process_join: process \"busy\" still runs after", NULL);
    TU_OK(mp_process_kill(p));
    TU_OK(mp_process_join(p, 20 * tu_slow()));
    TU_OK(mp_process_free(p));
}

int main(void)
{
    tu_watchdog(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_private_arg_without_arg_size_is_refused_under_spawn_and_forkserver),
        cmocka_unit_test(test_shared_or_copied_arg_still_starts_under_every_method),
        cmocka_unit_test(test_arg_inside_an_shm_buffer_is_refused_naming_the_handle_way),
        cmocka_unit_test(test_start_twice_names_the_state),
        cmocka_unit_test(test_unstarted_process_cannot_be_joined_killed_or_asked),
        cmocka_unit_test(test_bad_process_options_name_the_field),
        cmocka_unit_test(test_running_process_cannot_be_freed_or_asked_its_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
