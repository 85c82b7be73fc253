#!/usr/bin/env python3
"""queue.py - the workloads of bench/queue.c with Python's multiprocessing.

One line per workload on stdout: <id>\t<value>\t<unit>\t<higher|lower>,
medians of a few repetitions; sizes are smaller than the C side's (Python is
slower), the rates are comparable.
"""
import os
import sys

# This file is named queue.py: keep its directory off the path, or it would
# shadow the standard library's queue module that multiprocessing imports.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402


def emit(name, value, unit, better):
    print(f"{name}\t{value:.6g}\t{unit}\t{better}", flush=True)


def producer(q, size, n):
    item = b"x" * size
    for _ in range(n):
        q.put(item)


def one_to_one(size, n):
    q = mp.Queue()
    t0 = time.perf_counter()
    p = mp.Process(target=producer, args=(q, size, n))
    p.start()
    for _ in range(n):
        q.get()
    t = time.perf_counter() - t0
    p.join()
    return t


def row_rate(name, size, n, reps=3):
    emit(name, statistics.median(n / one_to_one(size, n) for _ in range(reps)), "items/s", "higher")


def row_bandwidth():
    size, n = 64 << 20, 3
    emit("queue_1to1_64MiB",
         statistics.median(size * n / one_to_one(size, n) / 1e9 for _ in range(3)), "GB/s", "higher")


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


def roundtrip_us(start_echo, send, recv, stop, n=2000, reps=3):
    """Median microseconds per request/reply with an echoing child."""
    results = []
    msg = b"p" * 64
    for _ in range(reps):
        ends, p = start_echo()
        for i in range(100 + n):
            if i == 100:
                t0 = time.perf_counter()
            send(ends, msg)
            recv(ends)
        results.append((time.perf_counter() - t0) / n * 1e6)
        stop(ends)
        p.join()
    return statistics.median(results)


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


def row_roundtrip_pipe():
    us = roundtrip_us(pipe_echo, lambda a, m: a.send_bytes(m), lambda a: a.recv_bytes(),
                      lambda a: a.send_bytes(b""))
    emit("queue_roundtrip", us, "us", "lower")


def row_roundtrip_queue():
    us = roundtrip_us(queue_echo, lambda e, m: e[0].put(m), lambda e: e[1].get(),
                      lambda e: e[0].put(None))
    emit("queue_roundtrip_pyqueue", us, "us", "lower")


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


def row_4x4(per=25000, reps=3):
    results = []
    for _ in range(reps):
        q, out = mp.Queue(), mp.Queue()
        t0 = time.perf_counter()
        cons = [mp.Process(target=mm_consumer, args=(q, out)) for _ in range(4)]
        prods = [mp.Process(target=mm_producer, args=(q, i * per, per)) for i in range(4)]
        for p in cons + prods:
            p.start()
        for p in prods:
            p.join()
        for _ in cons:
            q.put(None)
        tallies = [out.get() for _ in cons]
        for p in cons:
            p.join()
        elapsed = time.perf_counter() - t0
        n = 4 * per
        if sum(c for c, _ in tallies) != n or sum(s for _, s in tallies) != n * (n + 1) // 2:
            sys.exit("queue.py: 4x4 lost or duplicated items")
        results.append(n / elapsed)
    emit("queue_4x4", statistics.median(results), "items/s", "higher")


def idle_getter(q):
    try:
        q.get(timeout=2.0)
    except Exception:
        pass


def row_idle_cpu():
    """Three getters block on an empty queue for 2 s at once: median CPU %."""
    q = mp.Queue()
    t0 = time.perf_counter()
    procs = [mp.Process(target=idle_getter, args=(q,)) for _ in range(3)]
    for p in procs:
        p.start()
    results = []
    for p in procs:
        _, status, ru = os.wait4(p.pid, 0)
        results.append((ru.ru_utime + ru.ru_stime) / (time.perf_counter() - t0) * 100.0)
    emit("queue_idle_cpu", statistics.median(results), "%", "lower")


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    rows = [
        ("queue_1to1_64B", lambda: row_rate("queue_1to1_64B", 64, 100000)),
        ("queue_1to1_4KiB", lambda: row_rate("queue_1to1_4KiB", 4096, 50000)),
        ("queue_1to1_64MiB", row_bandwidth),
        ("queue_roundtrip", row_roundtrip_pipe),
        ("queue_roundtrip_pyqueue", row_roundtrip_queue),
        ("queue_4x4", row_4x4),
        ("queue_idle_cpu", row_idle_cpu),
    ]
    for name, run in rows:
        if not only or only == name:
            run()


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
