/* 41_echo_process_per_connection.c - a TCP echo server that starts one process per connection */
/*
 * The Python tutorial's concurrent server: accept a connection, start a process to
 * talk on it, go back to accept. The listener checks each client's authkey
 * (CPython's HMAC challenge) before the connection is handed over. The
 * accepted socket reaches the handler through pass_fds, at the same number,
 * under every start method: a forked child would inherit it anyway, but a
 * spawned one or one made by the fork server would not, and a bare number in
 * the argument would name nothing (or something else) there. The handler
 * wraps the number with mp_conn_from_fd, as Python's Connection(fd).
 *
 * Run with fork, spawn or forkserver as the argument for one start method;
 * with none it serves under each of the three in turn.
 *
 * The tutorial's warning stands: a process per request, without a limit,
 * brings a machine down under load - this server serves a fixed number of
 * clients; 43_echo_worker_pool.c shows the bounded way.
 */
#include "echo.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CLIENTS 3
static const char KEY[] = "echo key";

struct client_arg { char address[128]; int id; };

static int client(void *arg)
{
    struct client_arg *a = arg;
    return echo_client(a->address, KEY, a->id, 2);
}

static int handler(void *arg)
{
    int fd = *(int *)arg;      /* open here at this number: it was in pass_fds */
    mp_conn *c;
    if (mp_conn_from_fd(&c, fd) != 0) {
        fprintf(stderr, "handler: %s\n", mp_last_error());
        return 1;
    }
    int served = echo_serve(c);
    printf("  handler process %d echoed %d messages and hung up\n", (int)getpid(), served);
    return 0;
}

/* Starts the handler of one accepted connection, the socket passed at its number. */
static mp_process *start_handler(mp_conn *c)
{
    int fd = mp_conn_fileno(c);
    mp_process *p = NULL;
    mp_process_opts o = { .arg_size = sizeof fd, .pass_fds = &fd, .n_pass_fds = 1 };
    if (mp_process_new(&p, handler, &fd, &o) != 0 || mp_process_start(p) != 0) {
        fprintf(stderr, "%s\n", mp_last_error());
        mp_process_free(p);
        return NULL;
    }
    return p;
}

static int serve(mp_start_method method, const char *how)
{
    mp_set_start_method(method);   /* every process below starts this way */
    mp_listener *l;
    if (mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)) != 0) {
        fprintf(stderr, "%s\n", mp_last_error());
        return 1;
    }
    printf("under %s: server listens on %s\n", how, mp_listener_address(l));
    mp_process *clients[CLIENTS], *handlers[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        struct client_arg a = { "", i };
        snprintf(a.address, sizeof a.address, "%s", mp_listener_address(l));
        clients[i] = start_process(client, &a, sizeof a);
    }
    int failed = 0;
    for (int i = 0; i < CLIENTS; i++) {
        mp_conn *c;
        handlers[i] = NULL;
        if (mp_listener_accept(l, &c, 10) != 0) {
            fprintf(stderr, "%s\n", mp_last_error());
            failed = 1;
            continue;
        }
        handlers[i] = start_handler(c);
        printf("server accepted connection %d on descriptor %d; handler process %d talks on it\n",
               i, mp_conn_fileno(c), (int)mp_process_pid(handlers[i]));
        mp_conn_close(c);              /* the handler holds its own copy */
    }
    for (int i = 0; i < CLIENTS; i++)
        failed |= finish_process(clients[i]) | finish_process(handlers[i]);
    mp_listener_free(l);
    printf("under %s: %d clients served, %d handler processes ended\n", how, CLIENTS, CLIENTS);
    return failed;
}

int main(int argc, char **argv)
{
    static const struct { const char *name; mp_start_method method; } methods[] = {
        { "fork", MP_FORK }, { "spawn", MP_SPAWN }, { "forkserver", MP_FORKSERVER },
    };
    setvbuf(stdout, NULL, _IOLBF, 0);
    int failed = 0, ran = 0;
    for (size_t i = 0; i < 3; i++) {
        if (argc > 1 && strcmp(argv[1], methods[i].name) != 0)
            continue;
        failed |= serve(methods[i].method, methods[i].name);
        ran++;
    }
    if (!ran) {
        fprintf(stderr, "usage: %s [fork|spawn|forkserver]\n", argv[0]);
        return 2;
    }
    return failed;
}
