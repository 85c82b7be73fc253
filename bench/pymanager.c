/* pymanager.c - Python's own manager client code against mproc's manager.
 *
 * Starts a manager (mp_manager_start, on an abstract unix socket as
 * multiprocessing.Manager() uses a unix socket) and runs bench/pymanager.py
 * against it with --address and --authkey: its rows are this program's.
 * bench/pymanager.py without arguments measures the same client code
 * against Python's own server, and run.sh puts the two side by side.
 */
#include "bench.h"
#include <mproc.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* bench/pymanager.py: from MPROC_SOURCE_DIR, the working directory, or
 * beside this executable's build directory. */
static void script_path(char *out, size_t cap)
{
    const char *src = getenv("MPROC_SOURCE_DIR");
    if (src) {
        snprintf(out, cap, "%s/bench/pymanager.py", src);
        return;
    }
    if (access("bench/pymanager.py", R_OK) == 0) {
        snprintf(out, cap, "bench/pymanager.py");
        return;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    snprintf(out, cap, "%s/../../bench/pymanager.py", exe);
}

int main(int argc, char **argv)
{
    mp_manager *m;
    static const char key[] = "pymanager-bench-key";
    mp_manager_opts o = { .authkey = key, .authkey_len = sizeof key - 1 };
    int rc = mp_manager_start(&m, &o);
    if (rc < 0) {
        fprintf(stderr, "pymanager: mp_manager_start: %s\n", mp_strerror(rc));
        return 1;
    }
    char script[4200], hex[2 * sizeof key + 1];
    script_path(script, sizeof script);
    for (size_t i = 0; i + 1 < sizeof key; i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned char)key[i]);
    char *args[64] = { "python3", script, "--address", (char *)mp_manager_address(m), "--authkey", hex };
    int n = 6;
    for (int i = 1; i < argc && n < 63; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        const char *py = getenv("PYTHON");
        execvp(py ? py : "python3", args);
        _exit(127);
    }
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0)
        ;
    mp_manager_free(m);
    return pid > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
