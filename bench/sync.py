"""sync.py - Python peer of bench/sync.c: multiprocessing's Lock, RLock,
Semaphore and Event.

lock_uncontended / rlock_uncontended / semaphore_uncontended: ns for one
acquire plus one release nobody else wants. lock_handoff_2proc: us per
hand-off between two processes, ping-ponging a pair of Events (one round trip
is two hand-offs).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import now, per_op_ns, median_of, reps, selected, row, log, LOWER  # noqa: E402

import math  # noqa: E402
import multiprocessing  # noqa: E402

UNCONTENDED = 200000
ROUND_TRIPS = 2000


def acquire_release(lock):
    acquire, release = lock.acquire, lock.release
    t0 = now()
    for _ in range(UNCONTENDED):
        acquire()
        release()
    return per_op_ns(t0, UNCONTENDED)


def pong_side(ping, pong, n):
    for _ in range(n):
        if not ping.wait(10):
            sys.exit(1)
        ping.clear()
        pong.set()


def handoff(ctx, ping, pong):
    child = ctx.Process(target=pong_side, args=(ping, pong, ROUND_TRIPS))
    child.start()
    t0 = now()
    ok = True
    for _ in range(ROUND_TRIPS):
        ping.set()
        ok = pong.wait(10)
        pong.clear()
        if not ok:
            break
    us = per_op_ns(t0, 2 * ROUND_TRIPS) / 1000
    if not ok:
        child.kill()
    child.join()
    if not ok or child.exitcode != 0:
        log("sync.py: ping-pong failed")
        return math.nan
    return us


if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    if selected("lock_uncontended"):
        row("lock_uncontended", median_of(reps(5), acquire_release, ctx.Lock()), "ns", LOWER)
    if selected("rlock_uncontended"):
        row("rlock_uncontended", median_of(reps(5), acquire_release, ctx.RLock()), "ns", LOWER)
    if selected("semaphore_uncontended"):
        row("semaphore_uncontended", median_of(reps(5), acquire_release, ctx.Semaphore(1)),
            "ns", LOWER)
    if selected("lock_handoff_2proc"):
        row("lock_handoff_2proc", median_of(reps(5), handoff, ctx, ctx.Event(), ctx.Event()),
            "us", LOWER)
