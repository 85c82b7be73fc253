/* 42_echo_thread_per_connection.c - the same echo server with one thread per connection */
/*
 * Threads are cheaper than processes and share the server's memory, which
 * is all an echo handler needs. The clients here are threads of the same
 * program too. Connections are handles like any other, so a thread can own
 * one and close it when its client hangs up. (pthreads here; mp_thread is
 * the same thing with Python's names.)
 */
#include "echo.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CLIENTS 3

static void *talk(void *c)
{
    return (void *)(intptr_t)echo_serve(c);
}

struct client_arg { const char *address; int id; int rc; };

static void *client(void *p)
{
    struct client_arg *a = p;
    a->rc = echo_client(a->address, NULL, a->id, 2);
    return NULL;
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
    pthread_t clients[CLIENTS], handlers[CLIENTS];
    struct client_arg args[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        args[i] = (struct client_arg){ mp_listener_address(l), i, 1 };
        pthread_create(&clients[i], NULL, client, &args[i]);
    }
    for (int i = 0; i < CLIENTS; i++) {
        mp_conn *c;
        if (mp_listener_accept(l, &c, 10) != 0)
            return 1;
        pthread_create(&handlers[i], NULL, talk, c);
        printf("server accepted connection %d, a thread talks on it\n", i);
    }
    int failed = 0;
    for (int i = 0; i < CLIENTS; i++) {
        void *served;
        pthread_join(clients[i], NULL);
        pthread_join(handlers[i], &served);
        failed |= args[i].rc;
        printf("handler thread %d echoed %d messages\n", i, (int)(intptr_t)served);
    }
    mp_listener_free(l);
    return failed;
}
