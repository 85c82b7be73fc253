/* manager_internal.h - what the manager's server, client and tool share. */
#ifndef MPROC_MANAGER_INTERNAL_H
#define MPROC_MANAGER_INTERNAL_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>

/* Handle magic words local to the manager (MAGIC_MLOCK is in internal.h). */
enum {
    MAGIC_MANAGER = 0x4d475252,   /* MGRR */
    MAGIC_DICT = 0x44494354,      /* DICT */
    MAGIC_LIST = 0x4c495354,      /* LIST */
    MAGIC_MQUEUE = 0x4d515545,    /* MQUE */
};

enum {
    MANAGER_MAX_CLIENTS = 4096,
    MANAGER_SPIN_NS = 50000,          /* busy-poll before sleeping, both sides */
    MANAGER_AUTH_TIMEOUT_S = 5,       /* a peer must finish the handshake in time */
    MANAGER_KEY_LEN = 32,             /* random authkey when none is given */
};

struct manager_server_opts {
    int listen_fd;
    const void *authkey;
    size_t authkey_len;
    int stop_fd;          /* readable: stop serving (signalfd, parent's pidfd); -1 none */
};

/* Serves until a SHUTDOWN request or stop_fd turns readable; returns 0 then
 * (client threads may still be running: the caller exits the process). */
int manager_serve(const struct manager_server_opts *o);

/* Decodes and checks one request frame (the fuzz target's entry). */
int manager_decode_request(const uint8_t *data, size_t len);

#endif
