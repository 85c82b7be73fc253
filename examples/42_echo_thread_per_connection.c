/* 42_echo_thread_per_connection.c - the same echo server with one thread per connection */
/*
 * Threads are cheaper than processes and share the server's memory, which
 * is all an echo handler needs. The clients here are threads of the same
 * program too. A connection is a handle like any other: a thread can own
 * one and close it when its client hangs up.
 */
#include "echo.h"

#include <stdio.h>
#include <unistd.h>

#define CLIENTS 3

static int talk(void *c)
{
    return echo_serve(c);              /* the thread's exit code: messages echoed */
}

struct client_arg { const char *address; int id; };

static int client(void *p)
{
    struct client_arg *a = p;
    return echo_client(a->address, NULL, a->id, 2);
}

static mp_thread *start(mp_target fn, void *arg)
{
    mp_thread *t = NULL;
    if (mp_thread_new(&t, fn, arg, NULL) != 0 || mp_thread_start(t) != 0)
        return NULL;
    return t;
}

static int finish(mp_thread *t)
{
    int code = -1;
    if (t && mp_thread_join(t, 10) == 0)
        mp_thread_exitcode(t, &code);
    mp_thread_free(t);
    return code;
}

int main(void)
{
    mp_listener *l;
    char address[64];
    snprintf(address, sizeof address, "unix:@mproc-example-42-%d", (int)getpid());
    if (mp_listener_new(&l, address, NULL, 0) != 0)
        return 1;
    printf("server listens on %s (an abstract unix socket: no file to clean up)\n",
           mp_listener_address(l));
    mp_thread *clients[CLIENTS], *handlers[CLIENTS];
    struct client_arg args[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        args[i] = (struct client_arg){ mp_listener_address(l), i };
        clients[i] = start(client, &args[i]);
    }
    for (int i = 0; i < CLIENTS; i++) {
        mp_conn *c;
        if (mp_listener_accept(l, &c, 10) != 0)
            return 1;
        handlers[i] = start(talk, c);
        printf("server accepted connection %d, a thread talks on it\n", i);
    }
    int failed = 0;
    for (int i = 0; i < CLIENTS; i++) {
        failed |= finish(clients[i]);
        printf("handler thread %d echoed %d messages\n", i, finish(handlers[i]));
    }
    mp_listener_free(l);
    return failed;
}
