/* 41_echo_process_per_connection.c - a TCP echo server that starts one process per connection */
/*
 * The Python tutorial's concurrent server: accept a connection, start a process to
 * talk on it, go back to accept. The listener checks each client's authkey
 * (CPython's HMAC challenge) before the connection is handed over. The
 * tutorial's warning stands: a process per request, without a limit, brings a
 * machine down under load - this server serves a fixed number of clients;
 * 43_echo_worker_pool.c shows the bounded way.
 */
#include "echo.h"

#include <stdio.h>
#include <string.h>

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
    echo_serve(*(mp_conn **)arg);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_listener *l;
    if (mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)) != 0)
        return 1;
    printf("server listens on %s\n", mp_listener_address(l));
    mp_process *clients[CLIENTS], *handlers[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        struct client_arg a = { "", i };
        snprintf(a.address, sizeof a.address, "%s", mp_listener_address(l));
        clients[i] = start_process(client, &a, sizeof a);
    }
    for (int i = 0; i < CLIENTS; i++) {
        mp_conn *c;
        if (mp_listener_accept(l, &c, 10) != 0)
            return 1;
        handlers[i] = start_process(handler, &c, sizeof c);
        printf("server accepted connection %d, handler process %d talks on it\n", i,
               (int)mp_process_pid(handlers[i]));
        mp_conn_close(c);              /* the handler holds its own copy */
    }
    int failed = 0;
    for (int i = 0; i < CLIENTS; i++)
        failed |= finish_process(clients[i]) | finish_process(handlers[i]);
    mp_listener_free(l);
    printf("all %d clients served, %d handler processes ended\n", CLIENTS, CLIENTS);
    return failed;
}
