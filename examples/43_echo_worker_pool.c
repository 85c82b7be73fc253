/* 43_echo_worker_pool.c - a bounded set of worker processes sharing one listening socket */
/*
 * The cure for "one process per request brings the machine down": start a
 * fixed number of workers up front; each waits on the SAME listener and
 * takes the next connection. Five clients, three workers: nobody starts a
 * process per request. Workers wait with mp_wait on two descriptors - the
 * listener and a "stop" pipe - so when the parent closes its end of the
 * pipe every worker sees EOF and leaves cleanly. (Processes are started
 * with fork() here; mp_process does the same job.)
 */
#include "echo.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORKERS 3
#define CLIENTS 5

static int worker(int id, mp_listener *l, mp_conn *stop)
{
    int fds[2] = { mp_listener_fileno(l), mp_conn_fileno(stop) };
    int served = 0;
    for (;;) {
        bool ready[2];
        if (mp_wait(fds, 2, ready, 30) <= 0 || ready[1])
            break;                                  /* stop pipe closed: time to go */
        mp_conn *c;
        if (mp_listener_accept(l, &c, 0) != 0)
            continue;                               /* a sibling took this one */
        echo_serve(c);
        served++;
    }
    printf("  worker %d leaves after serving %d connection(s)\n", id, served);
    fflush(stdout);                    /* _exit does not flush stdio */
    return 0;
}

int main(void)
{
    mp_listener *l;
    mp_conn *stop_rx, *stop_tx;
    if (mp_listener_new(&l, "tcp:127.0.0.1:0", NULL, 0) != 0 || mp_pipe(&stop_rx, &stop_tx, false) != 0)
        return 1;
    printf("listener %s shared by %d pre-started workers\n", mp_listener_address(l), WORKERS);
    pid_t workers[WORKERS], clients[CLIENTS];
    for (int i = 0; i < WORKERS; i++) {
        fflush(stdout);
        if ((workers[i] = fork()) == 0) {
            mp_conn_close(stop_tx);
            _exit(worker(i, l, stop_rx));
        }
    }
    for (int i = 0; i < CLIENTS; i++) {
        fflush(stdout);
        if ((clients[i] = fork()) == 0)
            _exit(echo_client(mp_listener_address(l), NULL, i, 1));
    }
    int failed = 0, st;
    for (int i = 0; i < CLIENTS; i++) {
        waitpid(clients[i], &st, 0);
        failed |= WEXITSTATUS(st);
    }
    printf("all %d clients answered; closing the stop pipe\n", CLIENTS);
    fflush(stdout);
    mp_conn_close(stop_tx);
    for (int i = 0; i < WORKERS; i++) {
        waitpid(workers[i], &st, 0);
        failed |= WEXITSTATUS(st);
    }
    mp_conn_close(stop_rx);
    mp_listener_free(l);
    return failed;
}
