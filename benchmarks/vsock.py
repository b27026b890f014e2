"""vsock device throughput and latency at device level (Python guest driver, real host
TCP sockets on 127.0.0.1). Prints figures; never passes or fails on time.

    .venv/bin/python benchmarks/vsock.py [--mb 100] [--echoes 2000]

The guest side is the Python driver in devices/vsock/guest_driver.py, so the figures
include its cost too (a real Linux guest's driver runs as guest code instead).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devices.vsock import VsockConfig  # noqa: E402
from devices.vsock.guest_driver import Harness  # noqa: E402

MB = 1 << 20


def tcp_server(handler) -> tuple[socket.socket, tuple]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()


def guest_to_host(size: int) -> float:
    done = threading.Event()
    received = [0]

    def sink(conn):
        with conn:
            while data := conn.recv(1 << 20):
                received[0] += len(data)
        done.set()

    listener, addr = tcp_server(sink)
    config = VsockConfig()
    config.add_forward(f"7000=tcp:{addr[0]}:{addr[1]}")
    h = Harness(config)
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    block = os.urandom(MB)
    start = time.perf_counter()
    sent = 0
    while sent < size:
        if len(s.pending_tx) < 4 * MB:
            s.send(block)
            sent += len(block)
        h.step()
    s.close()
    h.pump(lambda: done.is_set(), timeout=300)
    elapsed = time.perf_counter() - start
    assert received[0] == size, (received[0], size)
    h.close()
    listener.close()
    return size / elapsed / MB


def host_to_guest(size: int) -> float:
    config = VsockConfig()
    config.add_publish("127.0.0.1:0:5000")
    h = Harness(config)
    h.guest.listen(5000)
    addr = h.device.published[0][1]
    block = os.urandom(MB)

    def client():
        with socket.create_connection(addr) as c:
            for _ in range(size // MB):
                c.sendall(block)
            c.shutdown(socket.SHUT_WR)
            c.recv(1)

    start = time.perf_counter()
    t = threading.Thread(target=client, daemon=True)
    t.start()
    h.pump(lambda: h.guest.accepted)
    s = h.guest.accepted[0]
    got = 0

    def drained():
        nonlocal got
        got += len(s.read())
        return got >= size

    h.pump(drained, timeout=300)
    elapsed = time.perf_counter() - start
    s.close()
    h.pump(lambda: not h.device.conns)
    t.join()
    h.close()
    return size / elapsed / MB


def echo_rtt(count: int) -> list[float]:
    def echo(conn):
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(4096):
                conn.sendall(data)

    listener, addr = tcp_server(echo)
    config = VsockConfig()
    config.add_forward(f"7000=tcp:{addr[0]}:{addr[1]}")
    h = Harness(config)
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    h.device.conns[(7000, s.local_port)].sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        s.send(b"x")
        while not s.rx:
            h.reactor.poll(0.01)
            h.guest.poll()
        s.read()
        times.append(time.perf_counter() - start)
    s.close()
    h.pump(lambda: s.state == "closed")
    h.close()
    listener.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="bulk transfer size in MiB")
    parser.add_argument("--echoes", type=int, default=2000, help="1-byte round trips")
    args = parser.parse_args(argv)
    size = args.mb * MB
    print(f"vsock device-level benchmark ({args.mb} MiB bulk, {args.echoes} echoes)")
    print(f"  guest -> host (forward to TCP sink): {guest_to_host(size):8.1f} MiB/s")
    print(f"  host -> guest (publish from TCP)   : {host_to_guest(size):8.1f} MiB/s")
    times = echo_rtt(args.echoes)
    us = sorted(t * 1e6 for t in times)
    print(f"  1-byte echo guest->host TCP->guest : median {statistics.median(us):7.1f} us, "
          f"p99 {us[int(len(us) * 0.99) - 1]:7.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
