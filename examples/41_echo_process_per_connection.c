/* 41_echo_process_per_connection.c - a TCP echo server that starts one process per connection */
/*
 * The seed's concurrent server: accept a connection, start a process to
 * talk on it, go back to accept. The listener checks each client's authkey
 * (CPython's HMAC challenge) before the connection is handed over. The
 * seed's warning stands: a process per request, without a limit, brings a
 * machine down under load - this server serves a fixed number of clients;
 * 43_echo_worker_pool.c shows the bounded way. (Processes are started with
 * fork() here; mp_process does the same job.)
 */
#include "echo.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CLIENTS 3
static const char KEY[] = "echo key";

static int client(const char *address, int id)
{
    return echo_client(address, KEY, id, 2);
}

static pid_t start(int (*fn)(const char *, int), const char *address, int id)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
        _exit(fn(address, id));
    return pid;
}

int main(void)
{
    mp_listener *l;
    if (mp_listener_new(&l, "tcp:127.0.0.1:0", KEY, strlen(KEY)) != 0)
        return 1;
    printf("server listens on %s\n", mp_listener_address(l));
    pid_t clients[CLIENTS], handlers[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        clients[i] = start(client, mp_listener_address(l), i);

    for (int i = 0; i < CLIENTS; i++) {
        mp_conn *c;
        if (mp_listener_accept(l, &c, 10) != 0)
            return 1;
        fflush(stdout);
        handlers[i] = fork();
        if (handlers[i] == 0) {
            mp_listener_free(l);
            echo_serve(c);
            _exit(0);
        }
        printf("server accepted connection %d, handler process %d talks on it\n", i, (int)handlers[i]);
        mp_conn_close(c);              /* the handler has its own copy */
    }
    int failed = 0, st;
    for (int i = 0; i < CLIENTS; i++) {
        waitpid(clients[i], &st, 0);
        failed |= WEXITSTATUS(st);
        waitpid(handlers[i], &st, 0);
        failed |= WEXITSTATUS(st);
    }
    mp_listener_free(l);
    printf("all %d clients served, %d handler processes ended\n", CLIENTS, CLIENTS);
    return failed;
}
