"""pymanager.py - the same Python manager client code against two servers.

Without arguments (bench/run.sh's "python" side) the server is Python's own
(multiprocessing.Manager()). bench_pymanager (the "c" side) starts
mproc's manager and runs this file with --address ADDR --authkey HEX: the
client code below is then unchanged, only the server differs. With
--canned ADDR NAME (bench/peers/pymanager_canned.c) the server answers every
call at once with a canned reply: the limit, rows named NAME.

pymgr_dict_set_<n>c / pymgr_dict_get_<n>c: n client processes each do
d['k<i>'] = 8 bytes / d['k<i>'] on one shared dict; aggregate ops/s.
pymgr_queue_putget_<n>c: each client does q.put(8 bytes); q.get() on one
shared queue (one op = the pair). *_8c_p99: the 99th percentile of one
call's latency (one pair for the queue) at 8 clients, in microseconds.
pymgr_new_proxy_tcp: over TCP, microseconds for d = m.dict(); d['k'] = 8
bytes; del d, which opens four connections (the create, the proxy's own,
its incref and its decref), each with its authkey handshake.
pymgr_dict_set_20k_tcp: over TCP, microseconds for one d['k'] = 20,000
bytes (Python sends the header and the body of a message over 16 KiB in
two sends).
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]
import multiprocessing as mp  # noqa: E402
from multiprocessing.connection import Client  # noqa: E402
from multiprocessing.managers import DictProxy, MakeProxyType, SyncManager, Token  # noqa: E402
sys.path.insert(0, _here)
from common import now, median_of, reps, selected, row, HIGHER, LOWER  # noqa: E402
sys.path.insert(0, os.path.join(_here, "..", "tests", "interop"))
from peer import py_address  # noqa: E402  (mproc's address form to Python's)

TOTAL_OPS = 6000          # per measurement, split among the clients
CLIENTS = (1, 8, 32)
CTX = mp.get_context("fork")


QueueProxy = MakeProxyType("QueueProxy", ("put", "get"))   # as AutoProxy makes it


def canned_proxy(address, kind):
    """A proxy whose connection is straight to a canned server (no
    handshake, no object made on the server: neither is timed)."""
    cls = QueueProxy if kind == "queue_putget" else DictProxy
    p = cls(Token(kind, ("canned", 0), "0"), "pickle", manager=None, authkey=b"",
            incref=False, manager_owned=True)
    p._tls.connection = Client(address)
    return p


def client(kind, obj, ops, ready, go, out):
    if isinstance(obj, tuple):
        obj = canned_proxy(obj[1], kind)
    val = b"12345678"
    key = "k%d" % os.getpid()
    lat = []
    if kind == "dict_get":
        obj[key] = val
    ready.release()
    go.wait()
    clock = now
    for _ in range(ops):
        t0 = clock()
        if kind == "dict_set":
            obj[key] = val
        elif kind == "dict_get":
            obj[key]
        else:
            obj.put(val)
            obj.get()
        lat.append(clock() - t0)
    out.send(lat)


def measure(manager, kind, n):
    if isinstance(manager, str):
        obj = ("canned", manager)
    else:
        obj = manager.Queue() if kind == "queue_putget" else manager.dict()
    ops = max(TOTAL_OPS // n, 50)
    ready, go = CTX.Semaphore(0), CTX.Event()
    pipes = [CTX.Pipe(duplex=False) for _ in range(n)]
    procs = [CTX.Process(target=client, args=(kind, obj, ops, ready, go, w)) for _, w in pipes]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    t0 = now()
    go.set()
    lats = [r.recv() for r, _ in pipes]
    dt = now() - t0
    for p in procs:
        p.join()
    all_lat = sorted(x for lat in lats for x in lat)
    p99 = all_lat[int(len(all_lat) * 0.99)] * 1e6
    return n * ops / dt, p99


PROXY_ROUNDS = 20


def new_proxy_tcp(address, key):
    """Microseconds per round of a dict made, set once and let go."""
    m = SyncManager(address=address, authkey=key)
    m.connect()
    t0 = now()
    for _ in range(PROXY_ROUNDS):
        d = m.dict()
        d["k"] = b"12345678"
        del d
    return (now() - t0) / PROXY_ROUNDS * 1e6


def dict_set_20k_tcp(address, key):
    """Microseconds per set of a 20,000-byte value."""
    m = SyncManager(address=address, authkey=key)
    m.connect()
    d = m.dict()
    val = b"x" * 20000
    d["k"] = val
    t0 = now()
    for _ in range(PROXY_ROUNDS):
        d["k"] = val
    return (now() - t0) / PROXY_ROUNDS * 1e6


def run_tcp(address, key):
    for wid, fn in (("pymgr_new_proxy_tcp", new_proxy_tcp), ("pymgr_dict_set_20k_tcp", dict_set_20k_tcp)):
        if selected(wid):
            results = sorted(fn(address, key) for _ in range(reps(3)))
            row(wid, results[len(results) // 2], "us", LOWER)


def run(manager, peer=None):
    for kind in ("dict_set", "dict_get", "queue_putget"):
        for n in CLIENTS:
            wid = "pymgr_%s_%dc" % (kind, n)
            want_p99 = n == 8 and selected(wid + "_p99")
            if not selected(wid) and not want_p99:
                continue
            results = [measure(manager, kind, n) for _ in range(reps(3))]
            if selected(wid):
                row(wid, median_of(1, lambda: sorted(r[0] for r in results)[len(results) // 2]), "ops/s", HIGHER,
                    peer)
            if want_p99:
                row(wid + "_p99", sorted(r[1] for r in results)[len(results) // 2], "us", LOWER, peer)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--address"]:
        address, key = py_address(args[1]), bytes.fromhex(args[3])
        tcp = py_address(args[5]) if args[4:5] == ["--tcp"] else None
        sys.argv = [sys.argv[0]] + args[6 if tcp else 4:]
        m = SyncManager(address=address, authkey=key)
        m.connect()
        run(m)
        if tcp:
            run_tcp(tcp, key)
    elif args[:1] == ["--canned"]:
        address, name = py_address(args[1]), args[2]
        sys.argv = [sys.argv[0]] + args[3:]
        run(address, name)
    else:
        with CTX.Manager() as m:
            run(m)
        key = b"pymanager-bench-key"
        tcp = SyncManager(address=("127.0.0.1", 0), authkey=key, ctx=CTX)
        tcp.start()
        try:
            run_tcp(tcp.address, key)
        finally:
            tcp.shutdown()
