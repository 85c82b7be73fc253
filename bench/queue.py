#!/usr/bin/env python3
"""queue.py - Python peer of bench/queue.c: multiprocessing.Queue and Pipe.

queue_1to1_*: one producer process, the main process consumes (items/s, or
GB/s for 64 MiB items), timed from the first item's arrival to the last's. queue_roundtrip: request/reply over a Pipe (the
issue's reference); queue_roundtrip_pyqueue: the same over two Queues.
queue_4x4: 4 producers x 4 consumers, sentinels end the consumers.
queue_idle_cpu: CPU % of getters blocked 2 s on an empty queue. Item counts
are smaller than the C side's (Python is slower); the rates are comparable.
"""
import os
import sys

# This file is named queue.py: its directory must come AFTER the standard
# library on the path, or it would shadow the queue module multiprocessing
# imports (also in spawned children, which inherit sys.path).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here] + [_here]

from common import now, rate, median_of, reps, selected, row, HIGHER, LOWER  # noqa: E402

import multiprocessing as mp  # noqa: E402


def producer(q, size, n):
    item = b"x" * size
    for _ in range(n):
        q.put(item)


def one_to_one_secs(size, n):
    """Seconds to move n - 1 items, from the first item's arrival to the
    last's (as bench/queue.c): the producer's start and the building of its
    item are not queue time."""
    q = mp.Queue()
    p = mp.Process(target=producer, args=(q, size, n))
    p.start()
    q.get()
    t0 = now()
    for _ in range(n - 1):
        q.get()
    t = now() - t0
    p.join()
    return t


def items_per_sec(size, n):
    return (n - 1) / one_to_one_secs(size, n)


def gb_per_sec(size, n):
    return size * (n - 1) / one_to_one_secs(size, n) / 1e9


def copy_gb_per_sec(size):
    """One process copying size bytes between two buffers (memcpy): the
    ceiling of the 64 MiB row, as in bench/queue.c."""
    src = bytearray(b"x" * size)
    dst = bytearray(size)
    t0 = now()
    for _ in range(8):
        dst[:] = src
    return 8 * size / (now() - t0) / 1e9


def echo_pipe(conn):
    while True:
        msg = conn.recv_bytes()
        if not msg:
            return
        conn.send_bytes(msg)


def echo_queue(inq, outq):
    while True:
        msg = inq.get()
        if msg is None:
            return
        outq.put(msg)


def start_process(target, args):
    p = mp.Process(target=target, args=args)
    p.start()
    return p


def pipe_echo():
    a, b = mp.Pipe()
    return a, start_process(echo_pipe, (b,))


def queue_echo():
    ping, pong = mp.Queue(), mp.Queue()
    return (ping, pong), start_process(echo_queue, (ping, pong))


def roundtrip_us(start_echo, send, recv, stop, n=2000):
    """Microseconds per request/reply with an echoing child."""
    ends, p = start_echo()
    msg = b"p" * 64
    for i in range(100 + n):
        if i == 100:
            t0 = now()
        send(ends, msg)
        recv(ends)
    us = (now() - t0) / n * 1e6
    stop(ends)
    p.join()
    return us


def pipe_roundtrip_us():
    return roundtrip_us(pipe_echo, lambda a, m: a.send_bytes(m), lambda a: a.recv_bytes(),
                        lambda a: a.send_bytes(b""))


def queue_roundtrip_us():
    return roundtrip_us(queue_echo, lambda e, m: e[0].put(m), lambda e: e[1].get(),
                        lambda e: e[0].put(None))


def mm_producer(q, base, n):
    for i in range(n):
        q.put(base + i + 1)


def mm_consumer(q, out):
    count = total = 0
    while True:
        x = q.get()
        if x is None:
            break
        count += 1
        total += x
    out.put((count, total))


def many_to_many(per=25000):
    q, out = mp.Queue(), mp.Queue()
    t0 = now()
    cons = [start_process(mm_consumer, (q, out)) for _ in range(4)]
    prods = [start_process(mm_producer, (q, i * per, per)) for i in range(4)]
    for p in prods:
        p.join()
    for _ in cons:
        q.put(None)
    tallies = [out.get() for _ in cons]
    for p in cons:
        p.join()
    n = 4 * per
    result = rate(t0, n)
    if sum(c for c, _ in tallies) != n or sum(s for _, s in tallies) != n * (n + 1) // 2:
        sys.exit("queue.py: 4x4 lost or duplicated items")
    return result


def idle_getter(q):
    try:
        q.get(timeout=2.0)
    except Exception:
        pass


def idle_cpu():
    """Three getters block on an empty queue for 2 s at once: median CPU %."""
    q = mp.Queue()
    t0 = now()
    procs = [start_process(idle_getter, (q,)) for _ in range(3)]
    results = []
    for p in procs:
        _, _, ru = os.wait4(p.pid, 0)
        results.append((ru.ru_utime + ru.ru_stime) / (now() - t0) * 100.0)
    return sorted(results)[1]


if __name__ == "__main__":
    mp.set_start_method("fork")
    if selected("queue_1to1_64B"):
        row("queue_1to1_64B", median_of(reps(3), items_per_sec, 64, 100000), "items/s", HIGHER)
    if selected("queue_1to1_4KiB"):
        row("queue_1to1_4KiB", median_of(reps(3), items_per_sec, 4096, 50000), "items/s", HIGHER)
    if selected("queue_1to1_64MiB"):
        row("queue_1to1_64MiB", median_of(reps(3), gb_per_sec, 64 << 20, 5), "GB/s", HIGHER)
    if selected("copy_64MiB"):
        row("copy_64MiB", median_of(reps(5), copy_gb_per_sec, 64 << 20), "GB/s", HIGHER)
    if selected("queue_roundtrip"):
        row("queue_roundtrip", median_of(reps(3), pipe_roundtrip_us), "us", LOWER)
    if selected("queue_roundtrip_pyqueue"):
        row("queue_roundtrip_pyqueue", median_of(reps(3), queue_roundtrip_us), "us", LOWER)
    if selected("queue_4x4"):
        row("queue_4x4", median_of(reps(3), many_to_many), "items/s", HIGHER)
    if selected("queue_idle_cpu"):
        row("queue_idle_cpu", idle_cpu(), "%", LOWER)
