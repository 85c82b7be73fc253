/* 44_python_peer.c - a Python multiprocessing client talks to a C listener, authkey and all */
/*
 * The frames and the authkey challenge are CPython's multiprocessing.connection
 * byte for byte, so the machine's python3 can be the other end: its
 * Client(address, authkey=...) passes our HMAC challenge, answers with
 * send_bytes/recv_bytes, and a client with the wrong key is refused on both
 * sides (MP_EAUTH here, AuthenticationError there).
 */
#include <mproc.h>

#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

static const char KEY[] = "shared secret";

static const char PY[] =
    "import sys\n"
    "from multiprocessing.connection import Client, AuthenticationError\n"
    "host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()\n"
    "try:\n"
    "    with Client((host, port), authkey=key) as c:\n"
    "        c.send_bytes(b'hello from Python')\n"
    "        print('  python: the C side answered', c.recv_bytes(), flush=True)\n"
    "except AuthenticationError as e:\n"
    "    print('  python: AuthenticationError:', e, flush=True)\n";

/* Runs the Python client against host:port with key, in the background. */
static pid_t python_client(const char *address, const char *key)
{
    char host[64];
    const char *colon = strrchr(address, ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon - address - 4), address + 4);
    char *argv[] = { "python3", "-c", (char *)PY, host, (char *)colon + 1, (char *)key, NULL };
    pid_t pid;
    return posix_spawnp(&pid, "python3", NULL, NULL, argv, environ) == 0 ? pid : -1;
}

static int serve_one(mp_listener *l, const char *key)
{
    pid_t py = python_client(mp_listener_address(l), key);
    if (py < 0)
        return -1;
    mp_conn *c;
    int rc = mp_listener_accept(l, &c, 20);
    if (rc == 0) {
        char buf[64];
        size_t len;
        if (mp_conn_recv_bytes(c, buf, sizeof buf - 1, &len) == 0) {
            buf[len] = '\0';
            printf("  C: authenticated; received \"%s\"\n", buf);
            mp_conn_send_bytes(c, "HELLO FROM C", 12);
        }
        mp_conn_close(c);
    } else {
        printf("  C: accept says %s - no connection, no data\n", mp_errname(rc));
    }
    int status;
    waitpid(py, &status, 0);
    return rc;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (system("python3 -c 'import multiprocessing.connection' >/dev/null 2>&1") != 0) {
        printf("python3 is not here: nothing to show\n");
        return 0;
    }
    mp_listener *l;
    if (mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)) != 0)
        return 1;
    printf("C listener on %s with authkey \"%s\"\n", mp_listener_address(l), KEY);
    printf("a Python client with the same key:\n");
    int good = serve_one(l, KEY);
    printf("a Python client with the wrong key:\n");
    int bad = serve_one(l, "wrong key");
    mp_listener_free(l);
    return good == 0 && bad == MP_EAUTH ? 0 : 1;
}
