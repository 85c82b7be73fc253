/* 43_echo_worker_pool.c - a bounded set of worker processes sharing one listening socket */
/*
 * The cure for "one process per request brings the machine down": start a
 * fixed number of workers up front; each waits on the SAME listener and
 * takes the next connection. Five clients, three workers: nobody starts a
 * process per request. Workers wait with mp_wait on two descriptors - the
 * listener and a "stop" pipe - so when the parent closes its end of the
 * pipe every worker sees EOF and leaves cleanly.
 */
#include "echo.h"

#include <stdio.h>
#include <string.h>

#define WORKERS 3
#define CLIENTS 5

struct worker_arg { int id; mp_listener *l; mp_conn *stop_rx, *stop_tx; };

static int worker(void *arg)
{
    struct worker_arg *w = arg;
    mp_conn_close(w->stop_tx);        /* or our own copy would keep the pipe open */
    int fds[2] = { mp_listener_fileno(w->l), mp_conn_fileno(w->stop_rx) };
    int served = 0;
    for (;;) {
        bool ready[2];
        if (mp_wait(fds, 2, ready, 30) <= 0 || ready[1])
            break;                                  /* stop pipe closed: time to go */
        mp_conn *c;
        if (mp_listener_accept(w->l, &c, 0) != 0)
            continue;                               /* a sibling took this one */
        echo_serve(c);
        served++;
    }
    printf("  worker %d leaves after serving %d connection(s)\n", w->id, served);
    return 0;
}

struct client_arg { char address[128]; int id; };

static int client(void *arg)
{
    struct client_arg *a = arg;
    return echo_client(a->address, NULL, a->id, 1);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    mp_listener *l;
    mp_conn *stop_rx, *stop_tx;
    if (mp_listener_new(&l, "tcp:127.0.0.1:0", NULL, 0) != 0 || mp_pipe(&stop_rx, &stop_tx, false) != 0)
        return 1;
    printf("listener %s shared by %d pre-started workers\n", mp_listener_address(l), WORKERS);
    mp_process *workers[WORKERS], *clients[CLIENTS];
    for (int i = 0; i < WORKERS; i++) {
        struct worker_arg w = { i, l, stop_rx, stop_tx };
        workers[i] = start_process(worker, &w, sizeof w);
    }
    for (int i = 0; i < CLIENTS; i++) {
        struct client_arg a = { "", i };
        snprintf(a.address, sizeof a.address, "%s", mp_listener_address(l));
        clients[i] = start_process(client, &a, sizeof a);
    }
    int failed = 0;
    for (int i = 0; i < CLIENTS; i++)
        failed |= finish_process(clients[i]);
    printf("all %d clients answered; closing the stop pipe\n", CLIENTS);
    mp_conn_close(stop_tx);
    for (int i = 0; i < WORKERS; i++)
        failed |= finish_process(workers[i]);
    mp_conn_close(stop_rx);
    mp_listener_free(l);
    return failed;
}
