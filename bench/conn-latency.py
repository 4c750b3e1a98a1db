#!/usr/bin/env python3
"""Connection load generator for bench/js-routes.mjs.

    python3 bench/conn-latency.py N PORT[,PORT...]
        One connection at a time. Each connection: connect to 127.0.0.1:PORT, send 4 bytes, read
        the 4-byte echo, close. The ports are interleaved connection by connection (order rotated
        every cycle), so that the shared machine's drift falls on all of them alike. Prints one
        JSON line: per port the median, p99 and mean latency in microseconds.

    python3 bench/conn-latency.py --serve
        Reads commands from stdin, one per line: `PORT N C` runs N such connections to PORT from
        C threads at once (each thread one connection at a time) and prints one JSON line with
        the connections per second and the median, p99 and mean latency. Used to measure the
        proxy's CPU time per connection phase by phase, without a process start in the phase.

A blocking Python client costs far less per connection than a Node one, so the proxy's share of
each latency is easier to see.
"""
import json
import socket
import sys
import threading
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


def summary(lat):
    lat.sort()
    return {"p50": lat[len(lat) // 2], "p99": lat[len(lat) * 99 // 100], "mean": sum(lat) / len(lat)}


def sequential(n, ports):
    for p in ports:
        for _ in range(100):  # warm-up
            once(p)
    lat = [[] for _ in ports]
    for c in range(n):
        for k in range(len(ports)):
            i = (k + c) % len(ports)
            lat[i].append(once(ports[i]))
    print(json.dumps([summary(l) for l in lat]))


def concurrent(port, n, c):
    lat = []
    errors = []

    def worker(count):
        try:
            for _ in range(count):
                lat.append(once(port))  # list.append is atomic under the GIL
        except Exception as e:  # reported, never hidden
            errors.append(str(e))

    threads = [threading.Thread(target=worker, args=(n // c + (1 if i < n % c else 0),)) for i in range(c)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        return {"error": errors[0], "errors": len(errors)}
    return dict(summary(lat), rate=len(lat) / elapsed)


def serve():
    for line in sys.stdin:
        port, n, c = (int(x) for x in line.split())
        print(json.dumps(concurrent(port, n, c)), flush=True)


def main():
    if sys.argv[1] == "--serve":
        serve()
    else:
        sequential(int(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")])


if __name__ == "__main__":
    main()
