"""conn.py - the workloads of bench/conn.c with Python's multiprocessing Pipe.

pipe_64B      64-byte messages streamed from one process to another over
              Pipe() (duplex), send_bytes/recv_bytes: messages/s
pipe_rtt_64B  64-byte ping-pong between two processes: round trips/s
pipe_1MiB     1 MiB messages streamed one way: MB/s
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HIGHER, median_of, now, rate, reps, row, selected  # noqa: E402

from multiprocessing import Pipe, Process  # noqa: E402


def peer(conn, n, echo):
    for _ in range(n):
        m = conn.recv_bytes()
        if echo:
            conn.send_bytes(m)
    if not echo:
        conn.send_bytes(b"done")


def one_rep(size, n, echo):
    a, b = Pipe()
    p = Process(target=peer, args=(b, n, echo))
    p.start()
    msg = b"\0" * size
    t0 = now()
    for _ in range(n):
        a.send_bytes(msg)
        if echo:
            a.recv_bytes()
    if not echo:
        a.recv_bytes()
    r = rate(t0, n)
    p.join()
    return r


if __name__ == "__main__":
    if selected("pipe_64B"):
        row("pipe_64B", median_of(reps(5), one_rep, 64, 200000, False), "msgs/s", HIGHER)
    if selected("pipe_rtt_64B"):
        row("pipe_rtt_64B", median_of(reps(5), one_rep, 64, 20000, True), "roundtrips/s", HIGHER)
    if selected("pipe_1MiB"):
        row("pipe_1MiB", median_of(reps(5), one_rep, 1 << 20, 500, False), "MB/s", HIGHER)
