"""core.py - Python peer of bench/core.c: shared-memory allocation.

arena_alloc_free: multiprocessing.RawArray('b', 64) and dropping it, which
allocates a block from multiprocessing.heap (Python's shared arena) and frees
it again: the nearest analogue of mp_shared_alloc(64) + mp_shared_free.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import now, per_op_ns, median_of, reps, selected, row, LOWER  # noqa: E402

import multiprocessing  # noqa: E402

ALLOCS = 20000


def alloc_free_64():
    raw_array = multiprocessing.RawArray
    t0 = now()
    for _ in range(ALLOCS):
        a = raw_array('b', 64)
        del a
    return per_op_ns(t0, ALLOCS)


if __name__ == "__main__":
    multiprocessing.RawArray('b', 64)    # create the heap's first arena outside the clock
    if selected("arena_alloc_free"):
        row("arena_alloc_free", median_of(reps(5), alloc_free_64), "ns", LOWER)
