"""What a hostile guest or a host short of resources can make the vsock device do, at
device level: the Python guest driver plays the guest, host sockets are real.

- a tx chain that spans guest RAM many times over is never gathered (only its header);
- guest-bound data waits on the host only up to the per-connection and total caps (the
  host socket is simply not read meanwhile), and nothing is lost;
- host-bound receive windows come out of a total, and max_connections holds;
- a --publish listener that cannot accept (no file descriptors left) backs off instead of
  spinning, logs once, and accepts again when descriptors are free.
"""
import hashlib
import os
import socket
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from devices.vsock import VsockConfig
from devices.vsock import packet as P
from devices.vsock.limits import BufferBudget
from support.host_servers import Server, sink, tcp_forward
from support.vsock_driver import Harness, harnesses

ROOT = Path(__file__).resolve().parent.parent
KIB, MIB = 1 << 10, 1 << 20


@pytest.fixture
def bench():
    with harnesses() as make:
        yield make


def settle(h, rounds=30):
    """Run host I/O and the device (not the guest driver: it takes nothing) until quiet."""
    quiet = 0
    while quiet < rounds:
        quiet = quiet + 1 if h.reactor.poll(0.005) == 0 else 0
        h.clock.fire_due()


# -- 1: a tx chain over all of guest RAM ----------------------------------------------------

def send_over_ram(h, s, length, copies=8):
    """A tx packet whose first descriptor holds 1 byte and whose other descriptors each
    cover all of guest RAM; the header's other 43 bytes start guest RAM."""
    header = P.pack_header(h.guest.cid, P.CID_PARENT, s.local_port, s.peer_port, length,
                           P.TYPE_STREAM, P.OP_RW, 0, s.buf_alloc, s.fwd_cnt)
    first = h.guest.alloc.alloc(1, 1)
    h.ram.write(first, header[:1])
    h.ram.write(0, header[1:])
    h.guest.txq.add([(first, 1)] + [(0, h.ram.size)] * copies, [], None)
    tracemalloc.start()
    try:
        h.guest.driver.kick(1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_tx_chain_spanning_guest_ram_is_not_gathered(bench):
    server = Server(handler=sink)
    h = bench(tcp_forward(server), ram_size=32 * MIB)   # the chain covers 8 x 32 MiB
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    expected = os.urandom(1000)                       # the payload follows the header
    h.ram.write(P.HEADER_SIZE - 1, expected)
    peak = send_over_ram(h, s, 1000)
    assert peak < 1 * MIB, f"the device allocated {peak} bytes for a 1000-byte packet"
    s.tx_cnt += 1000                                  # the packet counts as sent
    s.close()
    h.pump(lambda: s.state == "closed")
    h.pump(lambda: server.results, timeout=30)
    assert server.results == [(1000, hashlib.sha256(expected).hexdigest())]


@pytest.mark.parametrize("length", [P.MAX_PKT_PAYLOAD + 1, 0xFFFFFFFF])
def test_tx_length_beyond_the_limit_resets_without_gathering(bench, length):
    server = Server(handler=sink)
    h = bench(tcp_forward(server), ram_size=32 * MIB)
    s = h.guest.connect(7000)
    h.pump(lambda: s.state == "connected")
    peak = send_over_ram(h, s, length)
    assert peak < 1 * MIB, f"the device allocated {peak} bytes for a rejected packet"
    h.pump(lambda: s.state == "closed")
    assert s.reset_received and not h.muxer.conns and not h.transport.broken


# -- 2: guest-bound data ----------------------------------------------------------------------

class Firehose:
    """A host peer that writes `total` random bytes (recorded) as fast as it is read."""

    def __init__(self, total):
        self.total = total
        self.sent = hashlib.sha256()
        self.done = threading.Event()

    def __call__(self, conn):
        left = self.total
        while left:
            block = os.urandom(min(left, 64 * KIB))
            self.sent.update(block)
            conn.sendall(block)
            left -= len(block)
        self.done.set()
        return self.total


def test_a_guest_that_takes_nothing_holds_only_the_per_connection_cap(bench):
    hose = Firehose(32 * MIB)
    server = Server(handler=hose)
    h = bench(tcp_forward(server))
    s = h.guest.connect(7000, buf_alloc=0xFFFFFFFF)   # "send me everything"
    h.pump(lambda: s.state == "connected")
    tracemalloc.start()
    try:
        settle(h)                 # the guest driver is not polled: its rx ring fills up
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    conn = h.muxer.conns[(7000, s.local_port)]
    cap = VsockConfig().max_guest_bound
    assert 0 < conn.to_guest_bytes <= cap and h.muxer.budget.guest_bound == conn.to_guest_bytes
    assert held < 4 * MIB, f"{held} bytes held for one connection"
    assert not hose.done.is_set()                    # the host peer is held back, not drained
    got = hashlib.sha256()
    count = 0

    def take():
        nonlocal count
        data = s.read()
        got.update(data)
        count += len(data)
        return count == hose.total

    h.pump(take, timeout=120)                        # the guest reads again: all of it comes
    assert got.digest() == hose.sent.digest() and h.guest.violations == 0


def test_guest_bound_total_is_shared_and_nothing_is_lost(bench):
    hoses = [Firehose(2 * MIB) for _ in range(4)]
    servers = [Server(handler=hose) for hose in hoses]
    config = VsockConfig(max_guest_bound=64 * KIB, max_guest_bound_total=160 * KIB)
    for i, server in enumerate(servers):
        config.add_forward(f"{7000 + i}=tcp:127.0.0.1:{server.address[1]}")
    h = bench(config)
    socks = [h.guest.connect(7000 + i, buf_alloc=0xFFFFFFFF) for i in range(4)]
    h.pump(lambda: all(s.state == "connected" for s in socks))
    settle(h)
    conns = h.muxer.conns.values()
    assert all(c.to_guest_bytes <= 64 * KIB for c in conns)
    assert sum(c.to_guest_bytes for c in conns) == h.muxer.budget.guest_bound <= 160 * KIB
    assert h.muxer.budget.paused                      # someone waits for the shared room
    digests = [hashlib.sha256() for _ in socks]
    counts = [0] * 4

    def take():
        for i, s in enumerate(socks):
            data = s.read()
            digests[i].update(data)
            counts[i] += len(data)
        return counts == [hose.total for hose in hoses]

    h.pump(take, timeout=120)
    assert [d.digest() for d in digests] == [hose.sent.digest() for hose in hoses]
    assert h.muxer.budget.guest_bound == 0


# -- host-bound windows and the connection limit ---------------------------------------

def test_windows_come_out_of_the_total():
    config = VsockConfig(max_connections=8, buf_alloc=64 * KIB, min_buf_alloc=16 * KIB,
                         max_host_bound_total=256 * KIB)
    budget = BufferBudget(config)
    windows = [budget.open_window(holders) for holders in range(8)]
    assert windows == [64 * KIB] * 2 + [16 * KIB] * 6
    assert budget.windows <= config.max_host_bound_total
    budget.close_window(windows[0])
    assert budget.open_window(7) == 64 * KIB          # a full window given back is reused
    # (the muxer refuses a ninth connection first; the budget alone stops at its total)
    assert [budget.open_window(8) for _ in range(3)] == [16 * KIB, 16 * KIB, 0]
    assert budget.windows == config.max_host_bound_total


def test_config_limits_must_fit_together():
    with pytest.raises(ValueError, match="cannot give 1024 connections"):
        VsockConfig(max_host_bound_total=1 * MIB).validate()
    with pytest.raises(ValueError, match="exceeds max_guest_bound_total"):
        VsockConfig(max_guest_bound=2 * MIB, max_guest_bound_total=1 * MIB).validate()
    with pytest.raises(ValueError, match="positive"):
        Harness(VsockConfig(max_connections=0))


def test_small_windows_once_full_ones_no_longer_fit_and_the_limit_holds(bench):
    server = Server(handler=sink)
    config = tcp_forward(server, max_connections=4, buf_alloc=64 * KIB, min_buf_alloc=16 * KIB,
                            max_host_bound_total=128 * KIB)
    h = bench(config)
    socks = [h.guest.connect(7000) for _ in range(5)]
    h.pump(lambda: all(s.state != "connecting" for s in socks))
    assert [s.peer_buf_alloc for s in socks[:4]] == [64 * KIB, 16 * KIB, 16 * KIB, 16 * KIB]
    assert socks[4].state == "closed" and socks[4].reset_received     # the fifth is refused
    small = socks[1]
    small.peer_buf_alloc = 1 << 30                    # a guest that ignores the small window
    small.send(os.urandom(64 * KIB))
    h.pump(lambda: small.state == "closed")
    assert small.reset_received and len(h.muxer.conns) == 3


def test_publish_clients_beyond_the_limit_are_closed_at_once(bench):
    config = VsockConfig(max_connections=2)
    config.add_publish("127.0.0.1:0:5000")
    h = bench(config)
    h.guest.listen(5000)
    address = h.muxer.published[0][1]
    clients = [socket.create_connection(address, timeout=10) for _ in range(3)]
    try:
        h.pump(lambda: len(h.guest.accepted) == 2)
        for c in clients:
            c.sendall(b"hi")
        h.pump(lambda: all(s.rx for s in h.guest.accepted))
        assert [s.read() for s in h.guest.accepted] == [b"hi", b"hi"]
        assert clients[2].recv(10) == b""         # the third: accepted and closed
        assert len(h.muxer.conns) == 2
    finally:
        for c in clients:
            c.close()


# -- 3: a listener out of file descriptors ---------------------------------------------

CHILD = r"""
import logging, os, resource, sys, time
from devices.vsock import VsockConfig
from tests.support.vsock_driver import Harness

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
config = VsockConfig()
config.add_publish("127.0.0.1:0:5000")
h = Harness(config)
h.guest.listen(5000)
print(h.muxer.published[0][1][1], flush=True)
sys.stdin.readline()                       # the client has connected
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
fillers = []
try:
    while True:
        fillers.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
callbacks, end = 0, time.monotonic() + 1.0
while time.monotonic() < end:
    callbacks += h.reactor.poll(0.01)
    h.clock.fire_due()
for fd in fillers:
    os.close(fd)
h.pump(lambda: h.guest.accepted and h.guest.accepted[0].rx, timeout=20)
s = h.guest.accepted[0]
s.send(s.read().upper())
h.pump(lambda: not s.pending_tx, timeout=20)
for _ in range(10):
    h.step(0.01)
print(callbacks, flush=True)
sys.stdin.readline()
h.close()
"""


def test_listener_out_of_descriptors_backs_off_and_recovers():
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        port = int(child.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"ping")               # waits in the backlog: accept() fails
            child.stdin.write("go\n")
            child.stdin.flush()
            assert client.recv(4) == b"PING"      # accepted once descriptors were free
            callbacks = int(child.stdout.readline())
            child.stdin.write("done\n")
            child.stdin.flush()
        assert child.wait(30) == 0
    finally:
        child.kill()
    log = child.stderr.read()
    failures = [line for line in log.splitlines() if "accepting on --publish" in line]
    # A second of polling: a few back-off retries (0.05, 0.1, 0.2, 0.4 s), not thousands.
    assert callbacks <= 10, f"{callbacks} listener callbacks in one second"
    assert len(failures) == 1 and "Too many open files" in failures[0], log
