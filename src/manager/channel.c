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
#include <unistd.h>

bool channel_peer_alive(int fd)
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

/* How long this thread pauses before it yields: grows by a step each time
 * pausing saw the change, halves (down to none) each time it did not. So a
 * busy pair on two CPUs hands off in about a microsecond, while a waiter
 * whose peer needs this very CPU (an oversubscribed machine) soon yields at
 * once; it then probes with a pause every CHANNEL_PAUSE_PROBE waits, long
 * enough for a round trip with a peer that yields on another CPU. */
static MP_TLS_HOT uint32_t pause_ns = CHANNEL_PAUSE_MIN_NS;
static MP_TLS_HOT uint32_t waits;

static uint32_t pause_budget(uint32_t spin_ns)
{
    if (spin_ns == 0 || !several_cpus())
        return 0;
    if (pause_ns == 0 && ++waits % CHANNEL_PAUSE_PROBE == 0)
        return CHANNEL_PAUSE_PROBE_NS;
    return pause_ns;
}

int channel_wait(_Atomic uint32_t *seq, uint32_t old, _Atomic uint32_t *sleeping,
                 uint32_t spin_ns, double slice_s, int fd, const mp_deadline *until)
{
    uint64_t start = now_ns();
    uint32_t budget = pause_budget(spin_ns);
    bool pausing = budget > 0;
    for (unsigned i = 1; atomic_load(seq) == old; i++) {
        if (pausing) {
            cpu_relax();
            if (i % 4 == 0 && now_ns() - start > budget) {
                pause_ns = pause_ns / 2 < CHANNEL_PAUSE_MIN_NS ? 0 : pause_ns / 2;
                pausing = false;
            }
            continue;
        }
        if (now_ns() - start < spin_ns) {
            sched_yield();
            continue;
        }
        double slice = slice_s;
        if (until && !until->forever) {
            double left = deadline_left(until);
            if (left <= 0)      /* a dead server is the answer, not a timeout */
                return channel_peer_alive(fd) ? MP_ETIMEDOUT : MP_EBROKEN;
            slice = left < slice ? left : slice;
        }
        atomic_store(sleeping, 1);
        mp_deadline d = deadline_in(slice);
        int rc = atomic_load(seq) == old ? futex_wait(seq, old, &d) : 0;
        atomic_store(sleeping, 0);
        if (rc == MP_ETIMEDOUT && atomic_load(seq) == old && !channel_peer_alive(fd))
            return MP_EBROKEN;
    }
    if (pausing)
        pause_ns = budget + CHANNEL_PAUSE_STEP_NS > CHANNEL_PAUSE_MAX_NS ? CHANNEL_PAUSE_MAX_NS
                                                                 : budget + CHANNEL_PAUSE_STEP_NS;
    return 0;
}

void channel_post(_Atomic uint32_t *seq, uint32_t val, _Atomic uint32_t *sleeping)
{
    atomic_store(seq, val);
    if (atomic_load(sleeping))
        futex_wake(seq, 1);
}
