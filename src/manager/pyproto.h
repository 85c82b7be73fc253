/* pyproto.h - the manager speaks CPython's multiprocessing.managers protocol.
 *
 * After the handshake a Python client sends pickled (ident, method, args,
 * kwds) tuples where a C client sends CBOR arrays; the first byte of its
 * first request tells them apart (a pickle starts with PROTO, 0x80; a CBOR
 * request with an array head, 0x81-0x86). pyproto.c serves the connection;
 * pyobj.c keeps Python's object table (idents, reference counts, typeids),
 * and the per-type files (pyobj.h) run each proxy method on the store
 * (dict, list, queue and lock, shared with C clients by name) or on the
 * table's own state (events, semaphores, conditions, barriers, values,
 * arrays, iterators). See docs/manager-protocol.md, section 10.
 */
#ifndef MPROC_MANAGER_PYPROTO_H
#define MPROC_MANAGER_PYPROTO_H

#include "manager/store.h"
#include "manager/wire.h"

struct pyreg;

int pyreg_new(struct pyreg **r, struct store *s);
void pyreg_free(struct pyreg *r);

/* A request frame that is a pickle, not a CBOR request. */
bool py_is_request(const uint8_t *data, size_t len);

/* Serves a Python connection whose first request frame is data, until it
 * ends. *shutdown is set when the client asked the server to stop. */
void py_serve(struct pyreg *r, struct store_owner *owner, struct wire *w,
              const uint8_t *data, size_t len, bool *shutdown);

/* Decodes one request as py_serve would, without running it (the fuzz
 * target's entry): 0 or MP_EPROTO / MP_ETOOBIG. */
int py_decode_request(const uint8_t *data, size_t len);

#endif
