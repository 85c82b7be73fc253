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
    MANAGER_CONNECT_TIMEOUT_S = 5,    /* a client's connect and handshake */
    MANAGER_HANDSHAKE_MS = 1000,      /* the server's default handshake deadline */
    MANAGER_REPLY_TIMEOUT_S = 10,     /* a call with no deadline of its own gets its
                                       * reply this fast, or the server counts as gone */
    MANAGER_REPLY_MARGIN_MS = 50,     /* a blocking call: the server answers this much
                                       * before the caller's deadline, the caller gives
                                       * up this much after it (docs/manager-protocol.md) */
    MANAGER_KEY_LEN = 32,             /* random authkey when none is given */
};

enum {
    MANAGER_MAX_HANDSHAKES = 64,      /* connections still in the handshake; when
                                       * full, the oldest is dropped for the new one */
    MANAGER_MAX_HANDSHAKES_PER_SOURCE = 16,   /* the same, per TCP source address */
    MANAGER_MAX_PER_SOURCE = 1024,    /* connections from one TCP source address */
};

struct shstore;

struct manager_server_opts {
    int listen_fd;
    const void *authkey;
    size_t authkey_len;
    int stop_fd;          /* readable: stop serving (signalfd, parent's pidfd); -1 none */
    int handshake_ms;     /* a peer must finish the handshake in time; 0: MANAGER_HANDSHAKE_MS */
    size_t max_bytes;     /* the store's budget; 0: STORE_MAX_BYTES_DEFAULT */
    struct shstore *dicts;   /* the dicts, shared with the starter's family (shdict.h); NULL: its own */
};

/* Serves until a SHUTDOWN request or stop_fd turns readable; returns 0 then
 * (client threads may still be running: the caller exits the process).
 * MP_EINVAL at once for a TCP listener without an authkey. */
int manager_serve(const struct manager_server_opts *o);

/* The dicts a manager started by this family shares with it (NULL for a
 * connected one): what the tests check after a kill. */
struct shstore *manager_dicts(const mp_manager *m);

/* Decodes and checks one request frame (the fuzz target's entry). */
int manager_decode_request(const uint8_t *data, size_t len);

#endif
