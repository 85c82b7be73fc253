/* peer.h - what every socket fuzz target starts from: a connected stream
 * socket whose peer has already written the input bytes and shut down its
 * writing side (it may still read our replies). */
#ifndef MPROC_FUZZ_PEER_H
#define MPROC_FUZZ_PEER_H

#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* sv[0] is ours, sv[1] the peer's. The buffer is made big enough that the
 * whole input fits before anyone reads. */
static inline void fuzz_peer(const uint8_t *data, size_t size, int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        abort();
    int big = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    if (size > 0 && write(sv[1], data, size) != (ssize_t)size)
        abort();
    shutdown(sv[1], SHUT_WR);
}

#endif
