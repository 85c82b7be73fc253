/* test_process_errors.c - the mistakes a newcomer makes with processes,
 * pools and futures, each refused with a code and an mp_last_error sentence
 * naming the call, the argument and the reason: an argument a spawned child
 * could not read, a second start, a join before the start, bad options, a
 * freed pool, a future asked too early.
 */
#include "testutil.h"
#include "proc_checks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


static int reads_arg(void *arg)
{
    return *(int *)arg;
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
        tu_last_error_has("mp_process_start: arg is not in shared memory", "set opts.arg_size",
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
    tu_last_error_has("mp_process_start: arg points into an mp_shm buffer",
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
    tu_last_error_has("mp_process_start: process \"twice\" is ", "starts once", NULL);
    assert_true(strstr(mp_last_error(), "started already") || strstr(mp_last_error(), "finished"));
    TU_OK(mp_process_join(p, 20 * tu_slow()));
    assert_int_equal(mp_process_start(p), MP_ESTATE);
    tu_last_error_has("process \"twice\" is finished", NULL);
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
    tu_last_error_has("mp_process_kill: process \"idle\" was never started", NULL);
    int code;
    assert_int_equal(mp_process_exitcode(p, &code), MP_ESTATE);
    tu_last_error_has("mp_process_exitcode: process \"idle\" was never started", NULL);
    assert_int_equal(mp_process_sentinel(p), MP_ESTATE);
    tu_last_error_has("mp_process_sentinel:", NULL);
    assert_int_equal(mp_process_join(mp_current_process(), 0), MP_ESTATE);
    tu_last_error_has("mp_process_join: process \"MainProcess\" is the calling process itself", NULL);
    TU_OK(mp_process_free(p));
    assert_int_equal(mp_process_join(p, 0), MP_EINVAL);
    tu_last_error_has("mp_process_join: p was freed or closed already", NULL);
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
    tu_last_error_has("mp_process_new: target is NULL", NULL);
    char name[200];
    memset(name, 'x', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    assert_int_equal(mp_process_new(&p, reads_arg, NULL, &(mp_process_opts){ .name = name }), MP_EINVAL);
    tu_last_error_has("mp_process_new: opts.name is 199 bytes; a name has at most", NULL);
    assert_int_equal(mp_set_start_method((mp_start_method)-1), MP_EINVAL);
    tu_last_error_has("mp_set_start_method: method is -1", NULL);
}

/* An arg_size past the argument's memory is refused by mp_process_new,
 * under every method, instead of faulting when start copies it. */
static void test_arg_size_past_the_arguments_memory_is_refused(void **state)
{
    (void)state;
    static int arg = 7;
    char *edge = tu_page_before_hole();
    const mp_start_method methods[] = { MP_FORK, MP_SPAWN, MP_FORKSERVER };
    for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++) {
        mp_process *p = NULL;
        mp_process_opts o = { .method = methods[m], .arg_size = (size_t)1 << 20 };
        if (!RUNNING_ON_VALGRIND) {      /* there valgrind reports such a range itself */
            assert_int_equal(mp_process_new(&p, reads_arg, edge, &o), MP_EINVAL);
            tu_last_error_has("mp_process_new: arg..arg+1048576 runs past this process's memory", NULL);
            assert_null(p);
        }
        o.arg_size = SIZE_MAX;
        assert_int_equal(mp_process_new(&p, reads_arg, &arg, &o), MP_ETOOBIG);
        tu_last_error_has("mp_process_new: arg's length", "PTRDIFF_MAX", NULL);
        o.arg_size = sizeof arg;                     /* the right length still starts */
        TU_OK(mp_process_new(&p, reads_arg, &arg, &o));
        TU_OK(mp_process_start(p));
        TU_OK(mp_process_join(p, 30 * tu_slow()));
        int code = -1;
        TU_OK(mp_process_exitcode(p, &code));
        assert_int_equal(code, 7);
        TU_OK(mp_process_free(p));
    }
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
    tu_last_error_has("mp_process_free: process \"busy\" is still running; join it", NULL);
    int code;
    assert_int_equal(mp_process_exitcode(p, &code), MP_ESTATE);
    tu_last_error_has("mp_process_exitcode: process \"busy\" is still running", NULL);
    assert_int_equal(mp_process_set_daemon(p, true), MP_ESTATE);
    tu_last_error_has("mp_process_set_daemon: process \"busy\" is started already", NULL);
    assert_int_equal(mp_process_join(p, 0.01), MP_ETIMEDOUT);
    tu_last_error_has("mp_process_join: process \"busy\" still runs after", NULL);
    TU_OK(mp_process_kill(p));
    TU_OK(mp_process_join(p, 20 * tu_slow()));
    TU_OK(mp_process_free(p));
}

/* ------------------------------------------------------------------ pools and futures */

static int fails_with_7(const void *in, size_t len, mp_buf *out)
{
    (void)in, (void)len, (void)out;
    return 7;
}

static int sleeps_a_while(const void *in, size_t len, mp_buf *out)
{
    (void)in, (void)len, (void)out;
    usleep(300000);
    return 0;
}

static void test_bad_pool_options_name_the_field(void **state)
{
    (void)state;
    mp_pool *p = NULL;
    assert_int_equal(mp_pool_new(&p, &(mp_pool_opts){ .processes = -2 }), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_pool_new: opts.processes is -2; use 0 for one per CPU");
    assert_int_equal(mp_pool_new(&p, &(mp_pool_opts){ .task_timeout = -0.5 }), MP_EINVAL);
    tu_last_error_has("mp_pool_new: opts.task_timeout is -0.5", NULL);
    assert_int_equal(mp_pool_new(&p, &(mp_pool_opts){ .backend = MP_THREADS, .task_timeout = 1 }),
                     MP_EINVAL);
    tu_last_error_has("mp_pool_new: opts.task_timeout needs MP_PROCESSES", NULL);
    assert_int_equal(mp_pool_new(&p, &(mp_pool_opts){ .initarg_size = 3 }), MP_EINVAL);
    tu_last_error_has("mp_pool_new: opts.initarg_size is 3 but opts.initarg is NULL", NULL);
    assert_int_equal(mp_pool_new(&p, &(mp_pool_opts){ .method = 7 }), MP_EINVAL);
    tu_last_error_has("mp_pool_new: opts.method is 7", NULL);
    assert_null(p);
}

static void test_pool_misuse_names_the_state(void **state)
{
    (void)state;
    mp_pool *p = NULL;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 1 }));
    assert_int_equal(mp_pool_join(p, 1), MP_ESTATE);
    tu_last_error_has("mp_pool_join: the pool is still open; call mp_pool_close", NULL);
    mp_future *f = NULL;
    assert_int_equal(mp_pool_apply_async(p, NULL, NULL, 0, &f), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_pool_apply_async: fn is NULL");
    assert_int_equal(mp_pool_apply_async(p, fails_with_7, NULL, 5, &f), MP_EINVAL);
    tu_last_error_has("mp_pool_apply_async: in is NULL but len is 5", NULL);
    assert_int_equal(mp_pool_apply(p, NULL, NULL, 0, NULL), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_pool_apply: fn is NULL");   /* its own name */

    TU_OK(mp_pool_apply_async(p, fails_with_7, NULL, 0, &f));
    assert_int_equal(mp_future_wait(f, -0.5), MP_EINVAL);
    tu_last_error_has("mp_future_wait: timeout -0.5 is negative", NULL);
    assert_int_equal(mp_future_result(f, NULL, 20 * tu_slow()), MP_ETASK);
    tu_last_error_has("mp_future_result: the task returned the error code 7", NULL);
    assert_int_equal(mp_future_cancel(f), MP_ESTATE);
    tu_last_error_has("mp_future_cancel: the task is finished; only one still queued", NULL);
    size_t index;
    assert_int_equal(mp_future_failed_index(f, &index), MP_ESTATE);
    tu_last_error_has("mp_future_failed_index: no item failed", NULL);
    mp_future_free(f);

    TU_OK(mp_pool_apply_async(p, sleeps_a_while, NULL, 0, &f));
    assert_int_equal(mp_future_result(f, NULL, 0.01), MP_ETIMEDOUT);
    tu_last_error_has("mp_future_result: the task has not finished within 0.01 s", NULL);
    assert_int_equal(mp_futures_wait(&f, 1, 99, 0), MP_EINVAL);
    tu_last_error_has("mp_futures_wait: mode is 99", NULL);
    mp_future *none[2] = { f, NULL };
    assert_int_equal(mp_futures_wait(none, 2, MP_ALL_COMPLETED, 0), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_futures_wait: fs[1] is NULL");
    TU_OK(mp_future_wait(f, 20 * tu_slow()));
    mp_future_free(f);

    TU_OK(mp_pool_close(p));
    assert_int_equal(mp_pool_apply_async(p, fails_with_7, NULL, 0, &f), MP_ECLOSED);
    assert_string_equal(mp_last_error(), "mp_pool_apply_async: the pool is closed; submit work "
                                         "before mp_pool_close");
    int out[1];
    assert_int_equal(mp_pool_map(p, fails_with_7, out, 1, sizeof out[0], NULL, 0, 0), MP_ECLOSED);
    tu_last_error_has("mp_pool_map: the pool is closed", NULL);   /* its own name */
    TU_OK(mp_pool_join(p, 20 * tu_slow()));
    mp_pool_free(p);
    assert_int_equal(mp_pool_apply_async(p, fails_with_7, NULL, 0, &f), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_pool_apply_async: pool was freed or closed already; "
                                         "make a new one");
    assert_int_equal(mp_pool_close(p), MP_EINVAL);
    tu_last_error_has("mp_pool_close: pool was freed", NULL);
    assert_int_equal(mp_pool_join(NULL, 0), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_pool_join: pool is NULL");
}

static void test_iterators_say_why_they_stop(void **state)
{
    (void)state;
    mp_pool *p = NULL;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 1 }));
    int in[2] = { 1, 2 };
    mp_iter *it = NULL;
    TU_OK(mp_pool_imap(p, fails_with_7, in, 2, sizeof in[0], 1, false, &it));
    assert_int_equal(mp_iter_next(it, NULL, NULL, 20 * tu_slow()), MP_ETASK);
    tu_last_error_has("mp_iter_next: this item's task failed", "mp_iter_code", NULL);
    assert_int_equal(mp_iter_code(it), 7);
    assert_int_equal(mp_iter_next(it, NULL, NULL, 20 * tu_slow()), MP_ETASK);
    assert_int_equal(mp_iter_next(it, NULL, NULL, 20 * tu_slow()), MP_EEOF);
    tu_last_error_has("mp_iter_next: every item has been handed out already", NULL);
    assert_int_equal(mp_iter_next(it, NULL, NULL, -1e-9), MP_EINVAL);
    tu_last_error_has("mp_iter_next: timeout", NULL);
    mp_iter_free(it);
    assert_int_equal(mp_pool_imap(p, fails_with_7, in, 2, sizeof in[0], 1, false, NULL), MP_EINVAL);
    tu_last_error_has("mp_pool_imap: it (where the iterator goes) is NULL", NULL);
    mp_future *fs[1] = { NULL };
    assert_int_equal(mp_as_completed(fs, 1, &it), MP_EINVAL);
    assert_string_equal(mp_last_error(), "mp_as_completed: fs[0] is NULL");
    mp_pool_free(p);
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
        cmocka_unit_test(test_arg_size_past_the_arguments_memory_is_refused),
        cmocka_unit_test(test_running_process_cannot_be_freed_or_asked_its_code),
        cmocka_unit_test(test_bad_pool_options_name_the_field),
        cmocka_unit_test(test_pool_misuse_names_the_state),
        cmocka_unit_test(test_iterators_say_why_they_stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
