/* echo.h - the echo handler, the client and the process helpers that
 * examples 41-43 share, so those files show only what differs: how a
 * connection gets its worker. */
#ifndef MPROC_EXAMPLE_ECHO_H
#define MPROC_EXAMPLE_ECHO_H

#include <mproc.h>

#include <ctype.h>
#include <stdio.h>
#include <string.h>

/* Echoes every message upper-cased until the client hangs up (MP_EEOF);
 * closes the connection; returns how many messages it echoed. */
static inline int echo_serve(mp_conn *c)
{
    char buf[256];
    size_t len;
    int served = 0;
    while (mp_conn_recv_bytes(c, buf, sizeof buf, &len) == 0) {
        for (size_t i = 0; i < len; i++)
            buf[i] = (char)toupper((unsigned char)buf[i]);
        if (mp_conn_send_bytes(c, buf, len) != 0)
            break;
        served++;
    }
    mp_conn_close(c);
    return served;
}

/* Connects, sends `count` messages, prints each answer: 0 if all came back. */
static inline int echo_client(const char *address, const char *key, int id, int count)
{
    mp_conn *c;
    if (mp_client(&c, address, key, key ? strlen(key) : 0, 10) != 0)
        return 1;
    int rc = 0;
    for (int i = 0; i < count && rc == 0; i++) {
        char msg[64], reply[64];
        size_t len;
        int n = snprintf(msg, sizeof msg, "client %d says hello #%d", id, i);
        rc = mp_conn_send_bytes(c, msg, (size_t)n);
        if (rc == 0)
            rc = mp_conn_recv_bytes(c, reply, sizeof reply - 1, &len);
        if (rc == 0) {
            reply[len] = '\0';
            printf("  client %d got back \"%s\"\n", id, reply);
            fflush(stdout);
        }
    }
    mp_conn_close(c);
    return rc == 0 ? 0 : 1;
}

/* Starts fn(arg) in a new process (arg_size bytes of arg are copied to it). */
static inline mp_process *start_process(mp_target fn, void *arg, size_t size)
{
    mp_process *p = NULL;
    if (mp_process_new(&p, fn, arg, &(mp_process_opts){ .arg_size = size }) != 0 || mp_process_start(p) != 0)
        return NULL;
    return p;
}

/* Joins p (up to 30 s) and frees it: its exit code, or 1. */
static inline int finish_process(mp_process *p)
{
    int code = 1;
    if (p && mp_process_join(p, 30) == 0)
        mp_process_exitcode(p, &code);
    mp_process_free(p);
    return code;
}

#endif
