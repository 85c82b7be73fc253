"""conn.py - the workloads of bench/conn.c with Python's multiprocessing Pipe.

pipe_64B      64-byte messages streamed from one process to another over
              Pipe() (duplex), send_bytes/recv_bytes: messages/s
pipe_rtt_64B  64-byte ping-pong between two processes: round trips/s
pipe_1MiB     1 MiB messages streamed one way: MB/s
tcp_rtt_20KB_pyclient
              a Python Client's 20,000-byte ping-pong over TCP (with an
              authkey) with a Listener's echo: Python's here, mproc's in
              bench/conn.c (which runs client_rtt below): round trips/s.
              Python sends the header and the body of a message over
              16 KiB in two sends.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HIGHER, median_of, now, rate, reps, row, selected  # noqa: E402

from multiprocessing import Pipe, Process  # noqa: E402
from multiprocessing.connection import Client, Listener  # noqa: E402

KEY = b"conn-bench-key"
RTT_SIZE, RTT_N = 20000, 20


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


def client_rtt(address):
    """Round trips/s of RTT_N echoes of RTT_SIZE bytes, after one."""
    c = Client(address, authkey=KEY)
    msg = b"\0" * RTT_SIZE
    c.send_bytes(msg)
    c.recv_bytes()
    t0 = now()
    for _ in range(RTT_N):
        c.send_bytes(msg)
        c.recv_bytes()
    r = rate(t0, RTT_N)
    c.close()
    return r


def echo(listener, n):
    c = listener.accept()
    for _ in range(n):
        c.send_bytes(c.recv_bytes())
    c.close()


def python_rtt():
    with Listener(("127.0.0.1", 0), authkey=KEY) as listener:
        p = Process(target=echo, args=(listener, RTT_N + 1))
        p.start()
        r = client_rtt(listener.address)
        p.join()
    return r


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:           # bench/conn.c: against its listener
        host, port = sys.argv[2].rsplit(":", 1)
        print(client_rtt((host.split(":", 1)[1].strip("[]"), int(port))))
        sys.exit(0)
    if selected("tcp_rtt_20KB_pyclient"):
        row("tcp_rtt_20KB_pyclient", median_of(reps(5), python_rtt), "roundtrips/s", HIGHER)
    if selected("pipe_64B"):
        row("pipe_64B", median_of(reps(5), one_rep, 64, 200000, False), "msgs/s", HIGHER)
    if selected("pipe_rtt_64B"):
        row("pipe_rtt_64B", median_of(reps(5), one_rep, 64, 20000, True), "roundtrips/s", HIGHER)
    if selected("pipe_1MiB"):
        row("pipe_1MiB", median_of(reps(5), one_rep, 1 << 20, 500, False), "MB/s", HIGHER)
