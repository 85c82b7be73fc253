"""process.py - Python peer of bench/process.c: Process start + join under
each start method (multiprocessing.get_context('fork'|'spawn'|'forkserver')).

fork_start_join / spawn_start_join / forkserver_start_join: microseconds for
one start() plus join() of a child that returns at once. raw_fork_waitpid is
C only (the floor for mproc's fork), so it is not printed here.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import now, per_op_ns, median_of, reps, selected, row, log, LOWER  # noqa: E402

import math  # noqa: E402
import multiprocessing  # noqa: E402


def returns_at_once():
    pass


def start_join_us(ctx, n):
    t0 = now()
    for _ in range(n):
        p = ctx.Process(target=returns_at_once)
        p.start()
        p.join(30)
        if p.exitcode != 0:
            log("process.py: child exit code", p.exitcode)
            return math.nan
        p.close()
    return per_op_ns(t0, n) / 1000


if __name__ == "__main__":
    for method, n, r in (("fork", 100, 5), ("spawn", 5, 3), ("forkserver", 30, 3)):
        wid = method + "_start_join"
        if selected(wid):
            ctx = multiprocessing.get_context(method)
            start_join_us(ctx, 1)            # forkserver: start the server outside the clock
            row(wid, median_of(reps(r), start_join_us, ctx, n), "us", LOWER)
