/* test_manager_pydiff.c - differential testing of Python's own manager
 * clients: tests/interop/manager_diff.py runs every scenario of ordinary
 * client code once against a Python manager server and once against
 * `mproc-manager serve`, and fails on any difference not written down as a
 * limit in docs/manager-protocol.md. One case per transport; each skips
 * when python3 is missing.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define DIFF_TIMEOUT 400.0

static bool have_python(void)
{
    return system("python3 -c 'import multiprocessing.managers' >/dev/null 2>&1") == 0;
}

/* Runs manager_diff.py on transport; its exit code (TU_TIMEOUT if it hung). */
static int run_diff(const char *transport)
{
    char script[512], tool[512];
    const char *src = getenv("MPROC_SOURCE_DIR"), *bin = getenv("MPROC_BINARY_DIR");
    snprintf(script, sizeof script, "%s/tests/interop/manager_diff.py", src ? src : ".");
    snprintf(tool, sizeof tool, "%s/tools/mproc-manager", bin ? bin : ".");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execlp("python3", "python3", script, tool, transport, (char *)NULL);
        _exit(127);
    }
    assert_true(pid > 0);
    return tu_wait(pid, DIFF_TIMEOUT * tu_slow());
}

static void test_python_clients_see_what_python_server_gives_over_tcp(void **state)
{
    (void)state;
    if (!have_python() || !getenv("MPROC_BINARY_DIR"))
        skip();
    assert_int_equal(run_diff("tcp"), 0);
}

static void test_python_clients_see_what_python_server_gives_over_unix(void **state)
{
    (void)state;
    if (!have_python() || !getenv("MPROC_BINARY_DIR"))
        skip();
    assert_int_equal(run_diff("unix"), 0);
}

int main(void)
{
    tu_watchdog(DIFF_TIMEOUT + 60);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_clients_see_what_python_server_gives_over_tcp),
        cmocka_unit_test(test_python_clients_see_what_python_server_gives_over_unix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
