/* test_pool_deaths.c - the pool against deaths it did not cause: its fork
 * server killed, workers killed from outside (before they are ready too),
 * kill storms under every start method; and the initializer failures that
 * do break it. */
#include "pool_tasks.h"

#include <sys/resource.h>
#include <sys/wait.h>


static pid_t worker_pid(mp_pool *p)
{
    mp_buf b = { 0 };
    pid_t pid = 0;
    if (mp_pool_apply(p, t_pid, NULL, 0, &b) == 0 && b.len == sizeof pid)
        memcpy(&pid, b.data, sizeof pid);
    mp_buf_free(&b);
    return pid;
}

static double cpu_seconds(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 +
           (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec / 1e6;
}

/* ------------------------------------------------------------------ the fork server */

static void test_pool_goes_on_when_its_fork_server_is_killed(void **state)
{
    (void)state;
    mp_pool *p;
    TU_OK(mp_pool_new(&p, &(mp_pool_opts){ .processes = 2, .method = MP_FORKSERVER }));
    for (int round = 0; round < 2; round++) {      /* the new server too */
        _Atomic int *flag = shared_flag();
        mp_future *busy = submit_wait(p, flag);
        assert_true(tu_wait_for(started, (void *)flag, 30 * tu_slow()));
        pid_t w = worker_pid(p);                   /* the other worker */
        assert_true(w > 0);
        pid_t server = tu_proc_ppid(w);
        assert_true(server > 0 && server != getpid());
        TU_OK(kill(server, SIGKILL));
        /* Its workers are daemons: they die with it, and so does the task. */
        TU_ASSERT_RC(mp_future_result(busy, NULL, 30 * tu_slow()), MP_ECRASHED);
        mp_future_free(busy);
        expect_squares(p, 0, 32);                  /* every later task completes */
        assert_true(tu_proc_ppid(worker_pid(p)) != server);
        mp_shared_free(flag);
    }
    double before = cpu_seconds();
    usleep(500000);
    assert_true(cpu_seconds() - before < 0.2);     /* an idle pool: no spinning monitor */
    TU_OK(mp_pool_terminate(p));
    mp_pool_free(p);
}

int main(void)
{
    tu_watchdog(200);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_goes_on_when_its_fork_server_is_killed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
