"""manager_client.py - Python's own manager clients against mproc's manager.

    manager_client.py MODE ADDRESS KEYHEX

MODE is one of the functions below (types, errors, refcount, remote,
worker, handshake312, processes, extremes). ADDRESS is mproc's form
("tcp:HOST:PORT", "unix:/p", "unix:@name"). Nothing here knows it talks to
mproc: this is the code users run against Python's own server. Exit 0 when
every check passed; an assertion prints what differed.
"""
import gc
import multiprocessing
import queue
import sys
import threading
import time
from multiprocessing import connection
from multiprocessing.managers import (BaseManager, DictProxy, ListProxy,
                                      NamespaceProxy, SyncManager)

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from peer import answer_312, deliver_312, py_address  # noqa: E402


def eq(got, want):
    assert got == want, "got %r, want %r" % (got, want)


def raises(exc, fn, *args, **kwds):
    try:
        fn(*args, **kwds)
    except exc as e:
        return e
    raise AssertionError("%s did not raise %s" % (fn, exc.__name__))


def connect(address, key):
    m = SyncManager(address=address, authkey=key)
    m.connect()
    return m


# -- every SyncManager typeid -------------------------------------------------

def types(address, key):
    m = connect(address, key)

    d = m.dict({"a": 1}, b=2)
    d["s"] = "héllo"
    d[b"k"] = b"\x00bytes"
    d[3] = 4.5
    d[(1, "t")] = [1, (2, 3), {"x": None}]
    d[None] = True
    eq(len(d), 7)
    eq(d["a"], 1)
    eq(d["s"], "héllo")
    eq(d[b"k"], b"\x00bytes")
    eq(d[3.0], 4.5)                    # 3 == 3.0: one key, as in Python
    eq(d[(1, "t")], [1, (2, 3), {"x": None}])
    eq(d[None], True)
    eq(d.get("zz"), None)
    eq(d.get("zz", 7), 7)
    assert "a" in d and "zz" not in d
    eq(d.keys(), ["a", "b", "s", b"k", 3, (1, "t"), None])     # insertion order, as in Python
    eq(sorted(map(repr, d.values())), sorted(map(repr, [1, 2, "héllo", b"\x00bytes", 4.5,
                                                         [1, (2, 3), {"x": None}], True])))
    eq(dict(d.items()), d.copy())
    eq(sorted(d, key=repr), sorted(d.keys(), key=repr))      # __iter__: an Iterator proxy
    eq(d.setdefault("new", 5), 5)
    eq(d.setdefault("new", 6), 5)
    eq(d.pop("new"), 5)
    eq(d.pop("new", "dflt"), "dflt")
    d.update({"u": 1}, v=2)
    eq((d["u"], d["v"]), (1, 2))
    del d["u"]
    d["last"] = 0
    eq(d.popitem(), ("last", 0))                                # LIFO, as in Python
    k, v = d.popitem()
    assert k not in d
    # what newer CPython versions' DictProxy and ListProxy call
    d.clear()
    d["o"] = 1
    eq(d._callmethod("__or__", ({"p": 2},)), {"o": 1, "p": 2})
    eq(d._callmethod("__ror__", ({"o": 0, "q": 3},)), {"o": 1, "q": 3})
    d._callmethod("__ior__", ({"r": 4},))
    eq(d["r"], 4)
    eq(d._callmethod("fromkeys", (["a", "b"], 0)), {"a": 0, "b": 0})
    d.clear()
    eq(len(d), 0)
    eq(d._getvalue(), {})

    lst = m.list([3, 1, 2])
    lst.append("x")
    lst.extend([b"y", (1,)])
    lst.insert(0, 0)
    eq(lst[:], [0, 3, 1, 2, "x", b"y", (1,)])
    eq(lst[1], 3)
    eq(lst[-1], (1,))
    eq(lst[1:3], [3, 1])
    eq(lst[::-2], [(1,), "x", 1, 0])
    eq(len(lst), 7)
    eq(lst.index("x"), 4)
    eq(lst.count(1), 1)
    assert "x" in lst and "q" not in lst
    lst[0] = "zero"
    del lst[1]
    eq(lst.pop(), (1,))
    eq(lst.pop(0), "zero")
    lst.remove("x")
    eq(lst[:], [1, 2, b"y"])
    lst.reverse()
    eq(lst[:], [b"y", 2, 1])
    eq(lst + [9], [b"y", 2, 1, 9])
    eq(lst * 2, [b"y", 2, 1, b"y", 2, 1])
    lst += [7]
    eq(lst._getvalue(), [b"y", 2, 1, 7])
    eq(lst._callmethod("copy"), [b"y", 2, 1, 7])
    nums = m.list([3, 1.5, -2, 10**12, 1])
    nums.sort()
    eq(nums[:], [-2, 1, 1.5, 3, 10**12])
    nums.sort(reverse=True)
    eq(nums[:], [10**12, 3, 1.5, 1, -2])
    words = m.list(["pear", "Äpfel", "apple", ""])
    words.sort()
    eq(words[:], sorted(["pear", "Äpfel", "apple", ""]))
    raises(TypeError, m.list([1, "a"]).sort)
    lst._callmethod("clear")
    eq(len(lst), 0)

    for typeid in ("Queue", "JoinableQueue"):
        q = getattr(m, typeid)()
        assert q.empty()
        q.put({"task": 1})
        q.put_nowait(b"raw")
        q.put("s", True, 1.0)
        eq(q.qsize(), 3)
        eq(q.get(), {"task": 1})
        eq(q.get_nowait(), b"raw")
        eq(q.get(timeout=1), "s")
        for _ in range(3):
            q.task_done()
        q.join()
    bq = m.Queue(2)
    bq.put(1)
    bq.put(2)
    assert bq.full()

    for typeid in ("Lock", "RLock", "Semaphore", "BoundedSemaphore"):
        lk = getattr(m, typeid)()
        assert lk.acquire()
        if typeid == "RLock":
            assert lk.acquire()
            lk.release()
        else:
            assert not lk.acquire(False)
            assert not lk.acquire(True, 0.05)
        lk.release()
        with lk:
            pass
    sem = m.Semaphore(2)
    assert sem.acquire() and sem.acquire() and not sem.acquire(timeout=0.05)

    ev = m.Event()
    assert not ev.is_set()
    assert not ev.wait(0.05)
    ev.set()
    assert ev.is_set() and ev.wait()
    ev.clear()
    assert not ev.is_set()

    cond = m.Condition()
    with cond:
        assert not cond.wait(0.05)
        cond.notify()
        cond.notify_all()
    assert cond.wait_for(lambda: True)

    bar = m.Barrier(1)
    eq(bar.parties, 1)
    eq(bar.wait(), 0)
    eq(bar.n_waiting, 0)
    assert not bar.broken
    bar.abort()
    assert bar.broken
    bar.reset()
    assert not bar.broken

    val = m.Value("i", 7)
    val.value += 1
    eq(val.value, 8)
    val.set("any")
    eq(val.get(), "any")

    arr = m.Array("i", [1, 2, 3])
    arr[0] = 9
    eq((arr[0], arr[-1], len(arr)), (9, 3, 3))
    eq(list(arr._getvalue()), [9, 2, 3])
    farr = m.Array("d", 2)
    farr[1] = 2.5
    eq(list(farr._getvalue()), [0.0, 2.5])

    eq(str(m.dict({"a": (1, "x")})), "{'a': (1, 'x')}")     # str() of a proxy: the referent's repr
    eq(str(m.list([1, "x", b"y"])), "[1, 'x', b'y']")
    eq(str(arr), "array('i', [9, 2, 3])")

    ns = m.Namespace(a=1)
    ns.b = [1, 2]
    eq((ns.a, ns.b), (1, [1, 2]))
    del ns.a
    raises(AttributeError, getattr, ns, "a")
    eq(ns._getvalue().b, [1, 2])
    print("types ok")


# -- exceptions come back as Python's server sends them -------------------------

def errors(address, key):
    m = connect(address, key)
    d = m.dict()
    eq(raises(KeyError, d.__getitem__, "nope").args, ("nope",))
    eq(raises(KeyError, d.__delitem__, ("t", 1)).args, (("t", 1),))
    raises(KeyError, d.pop, "nope")
    raises(KeyError, d.popitem)
    raises(TypeError, d.__setitem__, [1], 2)          # a list is no dict key
    lst = m.list()
    raises(IndexError, lst.__getitem__, 0)
    raises(IndexError, lst.pop)
    raises(ValueError, lst.index, 5)
    raises(ValueError, lst.remove, 5)
    q = m.Queue(1)
    raises(queue.Empty, q.get_nowait)
    raises(queue.Empty, q.get, True, 0.05)
    q.put(1)
    raises(queue.Full, q.put_nowait, 2)
    raises(queue.Full, q.put, 2, True, 0.05)
    raises(ValueError, q.get, True, -1)
    q.get()
    q.task_done()
    raises(ValueError, q.task_done)
    lk = m.Lock()
    raises(RuntimeError, lk.release)
    raises(RuntimeError, m.RLock().release)
    raises(ValueError, m.BoundedSemaphore(1).release)
    cond = m.Condition()
    raises(RuntimeError, cond.wait, 0)
    raises(RuntimeError, cond.notify)
    bar = m.Barrier(2)
    raises(threading.BrokenBarrierError, bar.wait, 0.05)
    raises(threading.BrokenBarrierError, bar.wait)
    ns = m.Namespace()
    raises(AttributeError, getattr, ns, "x")
    deep = []
    for _ in range(150):
        deep = [deep]
    e = raises(ValueError, d.__setitem__, "deep", deep)     # past the server's nesting bound
    assert "nested too deeply" in str(e), e
    d["after"] = 1                                             # and the connection still serves
    eq(d["after"], 1)
    # l * n and l *= n: [] at once for an empty list (not n empty rounds
    # with the store held), MemoryError when the reply would pass the bound
    empty = m.list()
    got = []
    t = threading.Thread(target=lambda: got.append((empty * 10**18, empty.__imul__(10**18))),
                         daemon=True)
    t.start()
    t.join(10)
    assert got, "l * 10**18 on an empty list took over 10 s"
    eq(got[0][0], [])
    eq(len(empty), 0)
    big = m.list([b"x" * 2**20])
    raises(MemoryError, big.__mul__, 10**6)                  # a reply of 1 TiB
    eq(big * 2, [b"x" * 2**20] * 2)
    eq(len(big), 1)
    d["after-mul"] = 1                                         # and the server serves on
    eq(d["after-mul"], 1)
    # an unknown typeid and a method that is not exposed are tracebacks
    raises(Exception, m._create, "Pool")
    raises(Exception, d._callmethod, "nosuch")
    # a keyword the method does not take is Python's TypeError, and the
    # call does nothing (a misspelt block= would otherwise wait for ever)
    kq = m.Queue()
    kq.put(1)
    eq(str(raises(TypeError, kq.get, blk=False)),
       "Queue.get() got an unexpected keyword argument 'blk'")
    raises(TypeError, kq.get, bogus=1)
    eq(kq.qsize(), 1)
    eq(kq.get(block=False), 1)                       # the keywords it takes still work
    kq.put(item=2, block=True, timeout=1)
    eq(kq.get(timeout=1), 2)
    kd = m.dict({"a": 5})
    eq(str(raises(TypeError, kd.get, "a", default=1)), "dict.get() takes no keyword arguments")
    kd.update(b=6)                                   # dict.update takes any keyword
    eq(kd["b"], 6)
    kl = m.list([3, 1, 2])
    eq(str(raises(TypeError, kl.pop, index=0)), "list.pop() takes no keyword arguments")
    eq(str(raises(TypeError, kl.sort, revers=True)),
       "'revers' is an invalid keyword argument for sort()")
    eq(kl[:], [3, 1, 2])
    kl.sort(reverse=True)
    eq(kl[:], [3, 2, 1])
    eq(str(raises(TypeError, m.Lock()._callmethod, "acquire", (), {"blk": 1})),
       "'blk' is an invalid keyword argument for acquire()")
    ev = m.Event()
    eq(str(raises(TypeError, ev._callmethod, "wait", (), {"tmo": 1})),  # the proxy's own wait
       "Event.wait() got an unexpected keyword argument 'tmo'")         # checks its keywords
    eq(ev.wait(timeout=0.01), False)
    eq(str(raises(TypeError, m.Condition()._callmethod, "notify", (), {"k": 1})),
       "Condition.notify() got an unexpected keyword argument 'k'")
    # malformed arguments raise what Python raises, not RuntimeError
    ud = m.dict()
    eq(str(raises(TypeError, ud.update, [1, 2])),
       "cannot convert dictionary update sequence element #0 to a sequence")
    eq(str(raises(ValueError, ud.update, [("a", 1, 2)])),
       "dictionary update sequence element #0 has length 3; 2 is required")
    eq(str(raises(ValueError, ud.update, [("a", 1), "\u00e9\u00e9\u00e9"])),
       "dictionary update sequence element #1 has length 3; 2 is required")
    eq(ud.copy(), {"a": 1})                          # pairs before the bad one stay, as in Python
    eq(str(raises(TypeError, m.list()._callmethod, "append", ())),
       "list.append() takes exactly one argument (0 given)")
    # a request over 16 MiB is MemoryError, and the connection serves on
    # (it was cut, and every later call on the proxy raised BrokenPipeError)
    bd = m.dict()
    raises(MemoryError, bd.__setitem__, "x", b"\0" * (17 * 2**20))
    eq(len(bd), 0)
    bd["y"] = b"\1" * 2**20
    eq(len(bd["y"]), 2**20)
    # the object a request never mentioned by a real id
    t0 = time.monotonic()
    raises(queue.Empty, q.get, True, 0.3)
    assert time.monotonic() - t0 >= 0.29, "waited %r" % (time.monotonic() - t0)
    print("errors ok")


# -- reference counting frees objects with their last proxy ---------------------

def refcount(address, key):
    m = connect(address, key)
    base = m._number_of_objects()
    d = m.dict({"x": 1})
    l = m.list()
    q = m.Queue()
    eq(m._number_of_objects(), base + 3)
    assert d._token.id in m._debug_info()
    it = iter(d)                                     # an Iterator object too
    eq(m._number_of_objects(), base + 4)
    eq(list(it), ["x"])
    del it
    gc.collect()
    eq(m._number_of_objects(), base + 3)
    d2 = d                                           # the same proxy: no new reference
    del d, l, q, d2
    gc.collect()
    eq(m._number_of_objects(), base)
    # proxies sent to a child hold their own reference while it lives
    d = m.dict()
    p = multiprocessing.get_context("fork").Process(target=_child_sets, args=(d,))
    p.start()
    p.join(20)
    eq(p.exitcode, 0)
    eq(d["child"], 1)
    del d
    gc.collect()
    eq(m._number_of_objects(), base)
    print("refcount ok")


def _child_sets(d):
    d["child"] = 1


# -- the remote-manager pattern, on the objects C clients open by name ---------

class QueueManager(BaseManager):
    pass


QueueManager.register("get_queue")
QueueManager.register("get_dict", proxytype=DictProxy)
QueueManager.register("get_list", proxytype=ListProxy)
QueueManager.register("get_lock")
QueueManager.register("get_namespace", proxytype=NamespaceProxy)


def remote(address, key):
    """C (test_manager_python.c) put b"c0".."c2" on queue "tasks" and set
    dict "shared": count=5 (i64), ratio=0.25 (f64), blob=b"\\x01\\x02"."""
    m = QueueManager(address=address, authkey=key)
    m.connect()
    q = m.get_queue("tasks")
    eq([q.get(timeout=5) for _ in range(3)], [b"c0", b"c1", b"c2"])
    res = m.get_queue("results")
    res.put(42)
    res.put(2.5)
    res.put(b"bytes")
    res.put("text é")
    res.put((1, [2]))
    d = m.get_dict("shared")
    eq((d["count"], d["ratio"], d["blob"]), (5, 0.25, b"\x01\x02"))
    d["from_py_int"] = 7
    d["from_py_float"] = 1.5
    d["from_py_str"] = "naïve"
    d["from_py_obj"] = {"a": (1, 2)}
    eq(d["from_py_obj"], {"a": (1, 2)})
    lst = m.get_list("shared")
    lst.append(b"p")
    eq(lst[:], [b"c", b"p"])
    lk = m.get_lock("shared")
    assert lk.acquire(timeout=5)
    lk.release()
    ns = m.get_namespace("cfg")
    ns.x = 1
    eq(m.get_namespace("cfg").x, 1)
    # the same names again are the same objects; no name is "default"
    eq(m.get_dict("shared")["count"], 5)
    m.get_queue().put(b"d")
    eq(m.get_queue("default").get(timeout=1), b"d")
    auto = m.get_queue("tasks")                      # AutoProxy: methods from create's reply
    assert auto.empty()
    print("remote ok")


def worker(address, key):
    """Takes tasks off "tasks" until None or b"", answers each on "results"."""
    m = QueueManager(address=address, authkey=key)
    m.connect()
    tasks, results = m.get_queue("tasks"), m.get_queue("results")
    n = 0
    while True:
        item = tasks.get(timeout=10)
        if item is None or item == b"":
            break
        results.put(item * 2)
        n += 1
    print("worker ok", n)


def getter_dies(address, key):
    """Blocks in get on queue "dies" in a thread and is killed meanwhile."""
    import os
    import signal
    m = QueueManager(address=address, authkey=key)
    m.connect()
    q = m.get_queue("dies")
    threading.Thread(target=q.get, daemon=True).start()
    time.sleep(0.3)                 # long enough for the get to be waiting in the server
    os.kill(os.getpid(), signal.SIGKILL)


# -- the 3.12+ handshake ({sha256}), as CPython 3.12 writes it -------------------

def handshake312(address, key):
    connection.answer_challenge = answer_312
    connection.deliver_challenge = deliver_312
    m = connect(address, key)
    d = m.dict()
    d["k"] = 1
    eq(d["k"], 1)
    print("handshake312 ok")


def wrongkey(address, key):
    raises(connection.AuthenticationError, connect, address, key + b"x")
    print("wrongkey ok")


# -- processes sharing primitives -----------------------------------------------

def _barrier_party(bar, lock, d):
    bar.wait(10)
    with lock:
        d["n"] = d.get("n", 0) + 1


def _cond_waiter(cond, ev, out):
    with cond:
        ev.set()
        out.put(cond.wait(10))


def processes(address, key):
    m = connect(address, key)
    ctx = multiprocessing.get_context("fork")
    bar, lock, d = m.Barrier(3), m.Lock(), m.dict()
    ps = [ctx.Process(target=_barrier_party, args=(bar, lock, d)) for _ in range(3)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(20)
        eq(p.exitcode, 0)
    eq(d["n"], 3)
    cond, ev, out = m.Condition(), m.Event(), m.Queue()
    p = ctx.Process(target=_cond_waiter, args=(cond, ev, out))
    p.start()
    assert ev.wait(10)
    with cond:
        cond.notify()
    eq(out.get(timeout=10), True)
    p.join(10)
    print("processes ok")


# -- numbers at the ends of int64 and float: answers, never a dead server --------

def _method(proxy, name, *args):
    """proxy.name(*args) sent as is (the proxies' own signatures drop some)."""
    return proxy._callmethod(name, args)


def extremes(address, key):
    m = connect(address, key)
    lo, hi = -2 ** 63, 2 ** 63 - 1
    for t in (float("nan"), float("-inf"), -1e300):   # a Barrier's own timeout
        b = m.Barrier(2, timeout=t)
        raises(threading.BrokenBarrierError, b.wait)
    s = m.Semaphore(hi)
    raises(OverflowError, _method, s, "release", 1)
    eq(s.acquire(False), True)                        # still 2**63-1, less one
    s = m.Semaphore(1)
    raises(OverflowError, _method, s, "release", hi)
    eq(s.acquire(False), True)
    eq(s.acquire(False), False)
    bs = m.BoundedSemaphore(1)
    raises(ValueError, _method, bs, "release", hi)
    c = m.Condition()
    c.acquire()
    eq(_method(c, "notify", lo), None)
    c.release()
    l = m.list([1, 2, 3])
    eq(l[::lo], [3])
    eq(l[1::hi], [2])
    eq(l[hi::-1], [3, 2, 1])
    l[::lo] = [9]
    eq(l[:], [1, 2, 9])
    del l[::lo]
    eq(l[:], [1, 2])
    del l[1::hi]
    eq(l[:], [1])
    eq(m.dict(a=1)["a"], 1)                           # the server is still there
    print("extremes ok")


def list_budget(address, key):
    """Against a server with --max-memory 64M."""
    m = connect(address, key)
    l = m.list([1, 2])
    t0 = time.monotonic()
    raises(MemoryError, l.__imul__, 2 ** 40)         # refused before it starts
    raises(MemoryError, l.extend, range(10 ** 12))
    raises(MemoryError, l.extend, range(0, -10 ** 12, -1))
    took = time.monotonic() - t0
    assert took < 2, "took %r s" % took
    eq(len(l), 2)                                     # nothing kept
    eq(l[:], [1, 2])
    big = m.list([b"x" * 100000] * 8)
    raises(MemoryError, big.__imul__, 100)            # fails part way, put back
    eq(len(big), 8)
    keep = m.list([b"y" * 1000] * 10000)              # the budget is free again
    eq(len(keep), 10000)
    l *= 3
    eq(l[:], [1, 2, 1, 2, 1, 2])
    print("list_budget ok")


def main():
    mode, address, keyhex = sys.argv[1:4]
    globals()[mode](py_address(address), bytes.fromhex(keyhex))


if __name__ == "__main__":
    main()
