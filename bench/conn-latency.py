#!/usr/bin/env python3
"""Connection latency load generator for bench/js-routes.mjs.

    python3 bench/conn-latency.py N PORT[,PORT...]

Each connection: connect to 127.0.0.1:PORT, send 4 bytes, read the 4-byte echo, close. The ports
are interleaved connection by connection (order rotated every cycle), so that the shared
machine's drift falls on all of them alike. Prints one JSON line: per port the median, p99 and
mean latency in microseconds. A blocking Python client costs far less per connection than a
Node one, so the proxy's share of each latency is easier to see.
"""
import json
import socket
import sys
import time


def once(port):
    t0 = time.perf_counter_ns()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"ping")
        got = 0
        while got < 4:
            d = s.recv(64)
            if not d:
                raise RuntimeError(f"port {port}: closed before the echo")
            got += len(d)
        return (time.perf_counter_ns() - t0) / 1000
    finally:
        s.close()


def main():
    n = int(sys.argv[1])
    ports = [int(p) for p in sys.argv[2].split(",")]
    for p in ports:
        for _ in range(100):  # warm-up
            once(p)
    lat = [[] for _ in ports]
    for c in range(n):
        for k in range(len(ports)):
            i = (k + c) % len(ports)
            lat[i].append(once(ports[i]))
    out = []
    for l in lat:
        l.sort()
        out.append({"p50": l[len(l) // 2], "p99": l[len(l) * 99 // 100], "mean": sum(l) / len(l)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
