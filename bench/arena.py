#!/usr/bin/env python3
"""arena.py - Python peer of bench/arena.c: big items.

arena_queue_1MiB: 1 MiB bytes items through multiprocessing.Queue, one
producer process, timed from the first item's arrival to the last's.
arena_socketpair_1MiB: the same bytes through socket.socketpair (sendall,
recv_into one buffer). shared_64MiB: the time per 64 MiB bytes object
through a Queue from a producer process (pickled, through the queue's pipe,
unpickled), the price Python pays to pass 64 MiB.
"""
import os
import socket
import sys

# bench/queue.py would shadow the queue module multiprocessing imports: this
# directory goes after the standard library on the path (as in queue.py).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here] + [_here]

from common import now, median_of, reps, selected, row, HIGHER, LOWER  # noqa: E402

import importlib.util  # noqa: E402
import multiprocessing as mp  # noqa: E402

# The producer and its timing are bench/queue.py's (loaded under another
# name: as "queue" it would be the standard library's).
_spec = importlib.util.spec_from_file_location("bench_queue", os.path.join(_here, "queue.py"))
_queue_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_queue_bench)
one_to_one_secs = _queue_bench.one_to_one_secs

MIB = 1 << 20
ITEMS = 300


def queue_1mib():
    return MIB * (ITEMS - 1) / one_to_one_secs(MIB, ITEMS) / 1e9


def sender(s, n):
    item = b"x" * MIB
    for _ in range(n):
        s.sendall(item)


def socketpair_1mib():
    a, b = socket.socketpair()
    p = mp.Process(target=sender, args=(b, ITEMS))
    p.start()
    b.close()
    buf = bytearray(MIB)
    view = memoryview(buf)
    t0 = 0
    for i in range(ITEMS):
        got = 0
        while got < MIB:
            got += a.recv_into(view[got:], MIB - got)
        if i == 0:
            t0 = now()
    t = now() - t0
    p.join()
    a.close()
    return MIB * (ITEMS - 1) / t / 1e9


def shared_64mib_us():
    return one_to_one_secs(64 * MIB, 4) / 3 * 1e6


if __name__ == "__main__":
    mp.set_start_method("fork")
    if selected("arena_queue_1MiB"):
        row("arena_queue_1MiB", median_of(reps(3), queue_1mib), "GB/s", HIGHER)
    if selected("arena_socketpair_1MiB"):
        row("arena_socketpair_1MiB", median_of(reps(3), socketpair_1mib), "GB/s", HIGHER)
    if selected("shared_64MiB"):
        row("shared_64MiB", median_of(reps(3), shared_64mib_us), "us", LOWER)
