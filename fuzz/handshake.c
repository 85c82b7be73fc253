/* handshake.c - fuzzes both sides of the authkey handshake against a peer
 * that says arbitrary bytes. The first byte picks the side (answer a
 * challenge as a client does, deliver one as a listener does in the 3.12
 * or the legacy form, or run the listener's side step by step as accept
 * does); the rest is all the peer writes before closing.
 */
#include <poll.h>

#include "conn_internal.h"
#include "peer.h"

static const char KEY[] = "fuzz key";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int sv[2];
    fuzz_peer(data + 1, size - 1, sv);  /* our replies fit in its buffer */
    mp_deadline d = deadline_in(5);
    int rc;
    struct auth_server a;
    switch (data[0] % 4) {
    case 0:
        rc = auth_answer_challenge(sv[0], KEY, sizeof KEY - 1, &d);
        break;
    case 1:
        rc = auth_deliver_challenge(sv[0], KEY, sizeof KEY - 1, AUTH_DEFAULT_DIGEST, &d);
        break;
    case 2:
        rc = auth_deliver_challenge(sv[0], KEY, sizeof KEY - 1, NULL, &d);
        break;
    default:
        rc = auth_server_start(&a, sv[0]);
        while (rc == 0 && (rc = auth_server_step(&a, sv[0], KEY, sizeof KEY - 1)) == 1)
            poll(&(struct pollfd){ .fd = sv[0], .events = POLLIN }, 1, 5000);
        break;
    }
    if (rc != 0 && rc != MP_EAUTH && rc != MP_EEOF)
        abort();                       /* a peer can only refuse (MP_EAUTH) or hang up first */
    close(sv[0]);
    close(sv[1]);
    return 0;
}
