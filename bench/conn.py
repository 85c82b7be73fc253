"""conn.py - Python's multiprocessing Pipe on the workloads of bench/conn.c.

pipe_64B      64-byte messages streamed from one process to another over
              Pipe() (duplex), send_bytes/recv_bytes: messages/s
pipe_rtt_64B  64-byte ping-pong between two processes: round trips/s
pipe_1MiB     1 MiB messages streamed one way: MB/s
Each row is the median of several repetitions; one line per workload on
stdout (id, value, unit, higher|lower), anything else on stderr.
"""
import os
import statistics
import sys
import time
from multiprocessing import Pipe, Process


def reps(default):
    return int(os.environ.get("BENCH_REPS", default))


def selected(name):
    args = sys.argv[1:]
    return not args or any(a in name for a in args)


def row(name, value, unit, better):
    print("%s\t%.6g\t%s\t%s" % (name, value, unit, better), flush=True)


def sink(conn, n):
    for _ in range(n):
        conn.recv_bytes()
    conn.send_bytes(b"done")


def echo(conn, n):
    for _ in range(n):
        conn.send_bytes(conn.recv_bytes())


def stream(size, n):
    a, b = Pipe()
    p = Process(target=sink, args=(b, n))
    p.start()
    msg = b"x" * size
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_bytes(msg)
    a.recv_bytes()
    dt = time.perf_counter() - t0
    p.join()
    return dt


def ping_pong(n):
    a, b = Pipe()
    p = Process(target=echo, args=(b, n))
    p.start()
    msg = b"x" * 64
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_bytes(msg)
        a.recv_bytes()
    dt = time.perf_counter() - t0
    p.join()
    return dt


if __name__ == "__main__":
    if selected("pipe_64B"):
        n = 200000
        row("pipe_64B", statistics.median(n / stream(64, n) for _ in range(reps(5))), "msgs/s", "higher")
    if selected("pipe_rtt_64B"):
        n = 20000
        row("pipe_rtt_64B", statistics.median(n / ping_pong(n) for _ in range(reps(5))), "roundtrips/s", "higher")
    if selected("pipe_1MiB"):
        n = 500
        row("pipe_1MiB", statistics.median(n / stream(1 << 20, n) for _ in range(reps(5))), "MB/s", "higher")
