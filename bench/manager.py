"""manager.py - the workloads of bench/manager.c with multiprocessing.Manager.

manager_dict_set / manager_dict_get: one client, d['key'] = 8 bytes / d['key'].
manager_dict_set_remote / manager_dict_get_remote: the same (a Python proxy has
one path, the server's, whoever holds it), beside mproc's calls through its
server.
manager_incr_8clients / manager_incr_64clients: 8 or 64 processes each add 1
to d['n'] under a manager Lock (Python has no atomic increment on a proxy),
aggregate ops/s; total checked.
"""
import os
import sys

# bench/queue.py would shadow the standard queue module that
# multiprocessing.managers imports: load that with our directory off the path.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]
import multiprocessing as mp  # noqa: E402
import multiprocessing.managers  # noqa: E402,F401
sys.path.insert(0, _here)
from common import now, rate, median_of, reps, selected, row, HIGHER  # noqa: E402

OPS = 5000
INCR_OPS = 500      # per client of 8; 64 clients do 60 each


def rep_set(d):
    val = b"12345678"
    t0 = now()
    for _ in range(OPS):
        d["key"] = val
    return rate(t0, OPS)


def rep_get(d):
    t0 = now()
    for _ in range(OPS):
        d["key"]
    return rate(t0, OPS)


def incr_client(d, lock, ready, go, ops):
    ready.release()
    go.wait()
    for _ in range(ops):
        with lock:
            d["n"] = d["n"] + 1


def rep_incr(manager, d, clients, ops):
    d["n"] = 0
    lock = manager.Lock()
    ready = mp.Semaphore(0)
    go = mp.Event()
    procs = [mp.Process(target=incr_client, args=(d, lock, ready, go, ops)) for _ in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    t0 = now()
    go.set()
    for p in procs:
        p.join()
    r = rate(t0, clients * ops)
    if d["n"] != clients * ops:
        print(f"incr: total {d['n']}", file=sys.stderr)
        return float("nan")
    return r


if __name__ == "__main__":
    with mp.Manager() as manager:
        d = manager.dict()
        d["key"] = b"12345678"
        if selected("manager_dict_set"):
            row("manager_dict_set", median_of(reps(3), lambda: rep_set(d)), "ops/s", HIGHER)
        if selected("manager_dict_get"):
            row("manager_dict_get", median_of(reps(3), lambda: rep_get(d)), "ops/s", HIGHER)
        if selected("manager_dict_set_remote"):
            row("manager_dict_set_remote", median_of(reps(3), lambda: rep_set(d)), "ops/s", HIGHER)
        if selected("manager_dict_get_remote"):
            row("manager_dict_get_remote", median_of(reps(3), lambda: rep_get(d)), "ops/s", HIGHER)
        if selected("manager_incr_8clients"):
            row("manager_incr_8clients", median_of(reps(3), lambda: rep_incr(manager, d, 8, INCR_OPS)),
                "ops/s", HIGHER)
        if selected("manager_incr_64clients"):
            row("manager_incr_64clients", median_of(reps(3), lambda: rep_incr(manager, d, 64, 60)),
                "ops/s", HIGHER)
