/* frame.c - fuzzes the frame reader: the input is everything the peer ever
 * writes on a socket (then it closes). The first byte picks how we read:
 * mp_conn_recv_bytes into a small buffer, mp_conn_recv_buf with a limit,
 * or the raw conn_recv_frame without one (memory must follow the bytes that
 * arrive, never the length the peer claims).
 */
#include "conn_internal.h"
#include "peer.h"

static void read_until_error(mp_conn *c, int fd, uint8_t mode)
{
    char small[64];
    mp_buf buf = { 0 };
    for (int i = 0; i < 64; i++) {
        size_t len = 0;
        int rc;
        switch (mode % 3) {
        case 0:
            rc = mp_conn_recv_bytes(c, small, sizeof small, &len);
            if (rc == MP_ETOOBIG)      /* pending: take it with a limit, or give up */
                rc = mp_conn_recv_buf(c, &buf, 4096);
            break;
        case 1:
            rc = mp_conn_recv_buf(c, &buf, 1024);
            break;
        default:
            rc = conn_recv_frame(fd, &buf, 0, NULL);
            break;
        }
        if (rc != 0)
            break;
    }
    mp_buf_free(&buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int sv[2];
    fuzz_peer(data + 1, size - 1, sv);
    close(sv[1]);
    mp_conn *c;
    if (conn_from_fd(&c, sv[0], true, true) != 0)
        abort();
    read_until_error(c, sv[0], data[0]);
    mp_conn_close(c);
    return 0;
}
