"""peer.py - a Python peer for the connection tests.

    peer.py client   ADDRESS KEYHEX   Python's Client: send, receive, check
    peer.py listener ADDRESS KEYHEX   Python's Listener: print the address, accept
                                      one, echo one message upper-cased
    peer.py client312 / listener312   the same, but the handshake is the 3.12+
                                      {sha256} form, written out by hand from
                                      CPython 3.12's connection.py with hmac

ADDRESS is mproc's form ("unix:/p", "unix:@name", "tcp:HOST:PORT"); KEYHEX
"-" means authkey=None. Exit 0 on success, 3 on AuthenticationError.
"""
import hmac
import os
import socket
import sys
from multiprocessing import connection
from multiprocessing.connection import AuthenticationError, Client, Connection, Listener

CHALLENGE, WELCOME, FAILURE = b"#CHALLENGE#", b"#WELCOME#", b"#FAILURE#"
ALLOWED = {b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384"}


def py_address(a):
    if a.startswith("unix:@"):
        return "\0" + a[6:]
    if a.startswith("unix:"):
        return a[5:]
    host, port = a[4:].rsplit(":", 1)
    return (host.strip("[]"), int(port))


def mproc_address(a, family):
    if family == "AF_INET":
        return "tcp:%s:%d" % a
    if isinstance(a, bytes):
        a = a.decode()
    return "unix:@" + a[1:] if a.startswith("\0") else "unix:" + a


# -- the 3.12 handshake, after Lib/multiprocessing/connection.py (3.12) --------

def split_digest(message):
    if len(message) in (20, 16):
        return "", message
    if message.startswith(b"{"):
        curly = message.find(b"}", 1, 8 + 2)
        if curly > 0 and message[1:curly] in ALLOWED:
            return message[1:curly].decode("ascii"), message[curly + 1:]
    raise AuthenticationError("unsupported message: %r" % message)


def deliver_312(conn, key):
    message = b"{sha256}" + os.urandom(40)
    conn.send_bytes(CHALLENGE + message)
    response = conn.recv_bytes(256)
    name, mac = split_digest(response)
    expected = hmac.new(key, message, name or "md5").digest()
    if not hmac.compare_digest(expected, mac):
        conn.send_bytes(FAILURE)
        raise AuthenticationError("digest received was wrong")
    conn.send_bytes(WELCOME)


def answer_312(conn, key):
    message = conn.recv_bytes(256)
    if not message.startswith(CHALLENGE):
        raise AuthenticationError("expected challenge")
    message = message[len(CHALLENGE):]
    name = split_digest(message)[0]
    if name:
        response = b"{%s}%s" % (name.encode(), hmac.new(key, message, name).digest())
    else:
        response = hmac.new(key, message, "md5").digest()
    conn.send_bytes(response)
    if conn.recv_bytes(256) != WELCOME:
        raise AuthenticationError("digest sent was rejected")


def raw_listener(address):
    a = py_address(address)
    family = socket.AF_INET if isinstance(a, tuple) else socket.AF_UNIX
    s = socket.socket(family)
    s.bind(a)
    s.listen(1)
    bound = s.getsockname()
    if family == socket.AF_UNIX:
        bound = bound.decode() if isinstance(bound, bytes) else bound
    print(mproc_address(bound, "AF_INET" if family == socket.AF_INET else "AF_UNIX"), flush=True)
    c, _ = s.accept()
    s.close()
    return Connection(c.detach())


def raw_client(address):
    a = py_address(address)
    family = socket.AF_INET if isinstance(a, tuple) else socket.AF_UNIX
    s = socket.create_connection(a) if family == socket.AF_INET else socket.socket(family)
    if family == socket.AF_UNIX:
        s.connect(a)
    return Connection(s.detach())


def talk_as_client(conn):
    conn.send_bytes(b"hello from python")
    reply = conn.recv_bytes()
    assert reply == b"HELLO FROM PYTHON", reply
    big = bytes(range(256)) * 4096
    conn.send_bytes(big)
    assert conn.recv_bytes() == big.upper()


def serve_one(conn):
    for _ in range(2):
        conn.send_bytes(conn.recv_bytes().upper())


def main():
    mode, address, keyhex = sys.argv[1:4]
    key = None if keyhex == "-" else bytes.fromhex(keyhex)
    try:
        if mode == "client":
            talk_as_client(Client(py_address(address), authkey=key))
        elif mode == "listener":
            with Listener(py_address(address), authkey=key) as l:
                print(mproc_address(l.address, connection.address_type(l.address)), flush=True)
                serve_one(l.accept())
        elif mode == "client312":
            conn = raw_client(address)
            answer_312(conn, key)
            deliver_312(conn, key)
            talk_as_client(conn)
        elif mode == "listener312":
            conn = raw_listener(address)
            deliver_312(conn, key)
            answer_312(conn, key)
            serve_one(conn)
    except AuthenticationError as e:
        print("AuthenticationError:", e, file=sys.stderr)
        sys.exit(3)
    except EOFError as e:
        print("EOFError:", e, file=sys.stderr)
        sys.exit(4)


if __name__ == "__main__":
    main()
