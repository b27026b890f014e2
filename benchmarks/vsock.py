"""vsock throughput and latency. Prints figures; never passes or fails on time.

    .venv/bin/python benchmarks/vsock.py [--mb 100] [--echoes 2000] [--no-guest]

Device level: the Python guest driver (tests/support/vsock_driver.py) against the real
transport and device, host TCP sockets on 127.0.0.1; the figures include the driver's cost.
Real guest (needs `make guest`): the Linux guest on the machine, vsock-send / vsock-recv
for bulk (their own rate lines; every byte checked against the test pattern, by the host
for vsock-send and by the guest for vsock-recv) and echo.eif for the 1-byte round trip.
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
from tests.support.vsock_driver import Harness  # noqa: E402

MB = 1 << 20
TARGET_MB_PER_S = 100   # real guest, each way (the figure)


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
    addr = h.muxer.published[0][1]
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
    h.pump(lambda: not h.muxer.conns)
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
    h.muxer.conns[(7000, s.local_port)].sock.setsockopt(
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


GUEST_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "build", "guest")


def _sender_eif(directory: str, command: str) -> str:
    """echo.eif's kernel and ramdisks with the application's /cmd replaced."""
    from eif.builder import build_eif
    from eif import cpio
    source = os.path.join(GUEST_DIR, "echo")
    entries = []
    with open(os.path.join(source, "ramdisk-2.cpio"), "rb") as f:
        for entry in cpio.read_newc(f.read()):
            if entry.path == "cmd":
                entry = cpio.file("cmd", f"sh\n-c\n{command}\n".encode())
            entries.append(entry)
    ramdisk = os.path.join(directory, "ramdisk-2.cpio")
    with open(ramdisk, "wb") as f:
        f.write(cpio.newc_archive(entries))
    out = os.path.join(directory, "vsock-bench.eif")
    with open(os.path.join(source, "cmdline")) as f:
        cmdline = f.read()
    build_eif(out, kernel=os.path.join(source, "bzImage"), cmdline=cmdline,
              ramdisks=[os.path.join(source, "ramdisk-1.cpio"), ramdisk], name="vsock-bench")
    return out


def _run_machine(eif: str, config: VsockConfig, client, state: str):
    """Boot `eif` with `config`; `client(machine)` runs on a thread, then stops it."""
    import io
    from nitro_emu import Machine
    machine = Machine(eif, guest_cid=16, console=io.BytesIO(), state_dir=state, vsock=config)
    out = {}

    def work():
        try:
            out["value"] = client(machine)
        finally:
            machine.stop()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        result = machine.run(timeout=600)
    finally:
        machine.close()
    t.join(30)
    return result, machine.console_output.decode("utf-8", "replace"), out.get("value")


def _wait_console(machine, text: bytes, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while text not in machine.console_output:
        if time.monotonic() > end:
            raise TimeoutError(f"{text!r} never appeared on the guest console")
        time.sleep(0.02)


def guest_figures(size_mb: int, echoes: int) -> None:
    import re
    import tempfile
    from guest.vsock_pattern import PatternCheck, pattern
    size = size_mb * MB
    with tempfile.TemporaryDirectory() as tmp:
        eif = _sender_eif(tmp, f"vsock-send 3 7000 {size}; vsock-recv 5001")
        check = PatternCheck()

        def sink(conn):
            with conn:
                while data := conn.recv(1 << 20):
                    check.feed(data)

        listener, addr = tcp_server(sink)
        config = VsockConfig()
        config.add_forward(f"7000=tcp:{addr[0]}:{addr[1]}")
        config.add_publish("127.0.0.1:0:5001")
        blocks = [pattern(offset, MB) for offset in range(0, 16 * MB, MB)]  # one period

        def feed(machine):
            _wait_console(machine, b"vsock-recv: listening on port 5001")
            with socket.create_connection(machine.vsock.muxer.published[0][1]) as c:
                for i in range(size_mb):
                    c.sendall(blocks[i % len(blocks)])
            _wait_console(machine, b"received ")

        _, console, _ = _run_machine(eif, config, feed, tmp)
        listener.close()
        sent = re.search(r"sent (\d+) bytes in ([\d.]+) s \(([\d.]+) MiB/s\)", console)
        recv = re.search(r"received (\d+) bytes in ([\d.]+) s \(([\d.]+) MiB/s\) pattern (\w+)",
                         console)
        if not sent or not recv:
            print("  real guest: no rate lines on the console:\n" + console[-1500:])
            return
        ok_out = int(sent.group(1)) == check.count == size and check.ok
        ok_in = int(recv.group(1)) == size and recv.group(4) == "ok"
        for label, match, ok in (("real guest -> host (vsock-send)", sent, ok_out),
                                 ("host -> real guest (vsock-recv)", recv, ok_in)):
            rate = float(match.group(3))
            print(f"  {label:35}: {rate:8.1f} MiB/s = {rate * MB / 1e6:6.1f} MB/s "
                  f"({'every byte checked' if ok else 'CONTENT WRONG'}; "
                  f"target >= {TARGET_MB_PER_S} MB/s)")

        config = VsockConfig()
        config.add_publish("127.0.0.1:0:5000")

        def pings(machine):
            _wait_console(machine, b"vsock-echo: listening on port 5000")
            times = []
            with socket.create_connection(machine.vsock.muxer.published[0][1]) as c:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for _ in range(echoes + 1):
                    start = time.perf_counter()
                    c.sendall(b"x")
                    c.recv(1)
                    times.append(time.perf_counter() - start)
            return sorted(t * 1e6 for t in times[1:])

        _, _, us = _run_machine(os.path.join(GUEST_DIR, "echo.eif"), config, pings, tmp)
        print(f"  1-byte echo host TCP->real guest   : median {statistics.median(us):7.1f} us, "
              f"p99 {us[int(len(us) * 0.99) - 1]:7.1f} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="bulk transfer size in MiB")
    parser.add_argument("--echoes", type=int, default=2000, help="1-byte round trips")
    parser.add_argument("--no-guest", action="store_true",
                        help="skip the real-guest figures (they need `make guest`)")
    args = parser.parse_args(argv)
    size = args.mb * MB
    print(f"vsock device-level benchmark ({args.mb} MiB bulk, {args.echoes} echoes)")
    print(f"  guest -> host (forward to TCP sink): {guest_to_host(size):8.1f} MiB/s")
    print(f"  host -> guest (publish from TCP)   : {host_to_guest(size):8.1f} MiB/s")
    times = echo_rtt(args.echoes)
    us = sorted(t * 1e6 for t in times)
    print(f"  1-byte echo guest->host TCP->guest : median {statistics.median(us):7.1f} us, "
          f"p99 {us[int(len(us) * 0.99) - 1]:7.1f} us")
    if not args.no_guest:
        if os.path.exists(os.path.join(GUEST_DIR, "echo.eif")):
            guest_figures(args.mb, args.echoes)
        else:
            print(f"  real guest: {GUEST_DIR}/echo.eif missing (make guest); skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
