/* channel.c - waiting and posting on a shared-memory channel (channel.h).
 *
 * The wake-up is a futex word with a "sleeping" flag beside it, so the
 * poster makes a system call only when the other side really sleeps; both
 * stores and loads are sequentially consistent, which is what keeps a
 * wake-up from being lost between the flag and the sleep.
 */
#include "manager/channel.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>

/* The peer is alive while its socket has neither hung up nor hit EOF. */
static bool peer_alive(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
    if (poll(&p, 1, 0) <= 0)
        return true;
    if (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL))
        return false;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR));
}

int channel_wait(_Atomic uint32_t *seq, uint32_t old, _Atomic uint32_t *sleeping,
                 uint32_t spin_ns, int slice_ms, int fd)
{
    uint64_t until = now_ns() + spin_ns;
    while (atomic_load(seq) == old) {
        if (now_ns() < until) {
            sched_yield();
            continue;
        }
        atomic_store(sleeping, 1);
        mp_deadline d = deadline_in(slice_ms / 1000.0);
        int rc = atomic_load(seq) == old ? futex_wait(seq, old, &d) : 0;
        atomic_store(sleeping, 0);
        if (rc == MP_ETIMEDOUT && atomic_load(seq) == old && !peer_alive(fd))
            return MP_EBROKEN;
    }
    return 0;
}

void channel_post(_Atomic uint32_t *seq, uint32_t val, _Atomic uint32_t *sleeping)
{
    atomic_store(seq, val);
    if (atomic_load(sleeping))
        futex_wake(seq, 1);
}
