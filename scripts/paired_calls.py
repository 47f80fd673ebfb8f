#!/usr/bin/env python3
"""Paired small calls: `version` on one kept-alive connection to each port in
turn, call after call, so that every target sees the same moment of the
machine and of the daemon; prints each one's median and 25th percentile and
the added latency over the first port. Usage: paired_calls.py N PORT...

Rounds of hundreds of calls cannot resolve a few percent against a daemon
whose own time varies 2x from round to round (js-ipfs); single calls paired
this way can."""
import socket
import statistics
import sys
import time

REQ = b"POST /api/v0/version HTTP/1.1\r\nHost: bench\r\n\r\n"


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def call(conns, port):
    """One call's time in seconds, or None when the server closed the
    connection (nginx after keepalive_requests): then a new one is opened."""
    start = time.perf_counter()
    s = conns[port]
    s.sendall(REQ)
    buf = b""
    while True:
        data = s.recv(65536)
        if not data:
            conns[port] = connect(port)
            return None
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            continue
        head = buf[:end].lower()
        if b"content-length:" not in head:
            raise SystemExit(f"port {port}: an answer without Content-Length")
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        if len(buf) >= end + 4 + length:
            return time.perf_counter() - start


def main():
    n = int(sys.argv[1])
    ports = [int(p) for p in sys.argv[2:]]
    conns = {p: connect(p) for p in ports}
    times = {p: [] for p in ports}
    for _ in range(n):
        for p in ports:
            t = call(conns, p)
            if t is not None:
                times[p].append(t)
    base = statistics.median(times[ports[0]])
    for p in ports:
        med = statistics.median(times[p])
        p25 = statistics.quantiles(times[p], n=4)[0]
        print(f"{p} median {med * 1e6:.0f} us (+{(med - base) * 1e6:.0f}, {med / base:.3f}x) p25 {p25 * 1e6:.0f} us")


main()
