/* pymanager.c - Python's own manager client code against mproc's manager.
 *
 * Starts a manager (mp_manager_start, on an abstract unix socket as
 * multiprocessing.Manager() uses a unix socket) and runs bench/pymanager.py
 * against it with --address and --authkey: its rows are this program's.
 * bench/pymanager.py without arguments measures the same client code
 * against Python's own server, and run.sh puts the two side by side. The
 * contenders canned-threads and canned-epoll (bench/peers/pymanager_canned.c)
 * are the limit: servers that do no work and answer every call at once with
 * a canned reply. No server can beat them with this client on this
 * machine, so mproc ÷ peer says how close to the limit mproc's server is,
 * and peer ÷ python how far ahead of Python's any server could be. A
 * second manager on TCP (--tcp) serves the *_tcp rows, where Python's
 * server leaves the client waiting 40 ms for a delayed ACK at each new
 * connection and each message over 16 KiB (docs/manager-protocol.md).
 */
#include "bench.h"
#include <mproc.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    mp_manager *m, *tcp;
    static const char key[] = "pymanager-bench-key";
    mp_manager_opts o = { .authkey = key, .authkey_len = sizeof key - 1 };
    mp_manager_opts t = { .address = "tcp:127.0.0.1:0", .authkey = key, .authkey_len = sizeof key - 1 };
    int rc = mp_manager_start(&m, &o);
    if (rc == 0 && (rc = mp_manager_start(&tcp, &t)) < 0)
        mp_manager_free(m);
    if (rc < 0) {
        fprintf(stderr, "pymanager: mp_manager_start: %s\n", mp_strerror(rc));
        return 1;
    }
    char script[4200], hex[2 * sizeof key + 1];
    bench_script_path("pymanager.py", script, sizeof script);
    for (size_t i = 0; i + 1 < sizeof key; i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned char)key[i]);
    char *args[] = { "python3", script, "--address", (char *)mp_manager_address(m), "--authkey", hex,
                     "--tcp", (char *)mp_manager_address(tcp) };
    rc = bench_run_python(args, 8, argc, argv);
    mp_manager_free(tcp);
    mp_manager_free(m);
    return rc;
}
