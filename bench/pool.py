#!/usr/bin/env python3
"""pool.py - the workloads of bench/pool.c with Python's multiprocessing.Pool.

pool_apply_async_trivial  tasks/s: submit N no-op tasks, then get each
pool_map_1e6_ints         items/s: Pool.map of x*x over range(10**6)
pool_cpu_speedup          x: Pool(cpu_count).map of ~1 ms CPU tasks against
                          Pool(1).map of the same (Python's own speed-up)
Pools are started before the clock starts, as in bench/pool.c.
"""
import os
import sys

# common.py lives here, and so does queue.py, which must not shadow the
# standard library's queue (multiprocessing imports it): import, then leave.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _here)
from common import HIGHER, median_of, now, rate, reps, row, selected  # noqa: E402
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import multiprocessing as mp  # noqa: E402


def trivial(_):
    return None


def square(x):
    return x * x


SPIN = 0


def burn(_):
    """~1 ms of arithmetic, SPIN iterations calibrated in the parent."""
    h = 1469598103934665603
    for i in range(SPIN):
        h = ((h ^ i) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def calibrate():
    global SPIN
    SPIN = 1000
    while True:
        t0 = now()
        burn(0)
        dt = now() - t0
        if dt > 0.02:
            SPIN = max(1, int(SPIN * 0.001 / dt))
            return
        SPIN *= 2


def set_spin(n):
    global SPIN
    SPIN = n


def rep_apply(pool):
    n = 20000
    t0 = now()
    results = [pool.apply_async(trivial, (None,)) for _ in range(n)]
    for r in results:
        r.get()
    return rate(t0, n)


def rep_map(pool):
    n = 10**6
    t0 = now()
    out = pool.map(square, range(n))
    r = rate(t0, n)
    return r if out[1000] == 1000 * 1000 else float("nan")


def map_seconds(pool, n):
    t0 = now()
    pool.map(burn, range(n), chunksize=1)
    return now() - t0


def rep_speedup(pools):
    n = 100 * mp.cpu_count()
    return map_seconds(pools[0], n) / map_seconds(pools[1], n)


if __name__ == "__main__":
    ncpu = mp.cpu_count()
    calibrate()
    with mp.Pool(ncpu, initializer=set_spin, initargs=(SPIN,)) as pool:
        if selected("pool_apply_async_trivial"):
            row("pool_apply_async_trivial", median_of(reps(5), rep_apply, pool), "tasks/s", HIGHER)
        if selected("pool_map_1e6_ints"):
            row("pool_map_1e6_ints", median_of(reps(3), rep_map, pool), "items/s", HIGHER)
        if selected("pool_cpu_speedup"):
            with mp.Pool(1, initializer=set_spin, initargs=(SPIN,)) as one:
                pools = (one, pool)
                rep_speedup(pools)
                row("pool_cpu_speedup", median_of(reps(5), rep_speedup, pools), "x", HIGHER)
