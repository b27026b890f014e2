"""Hypothesis against the vsock device behind the real transport: whatever the guest puts
in its packets or rings, nothing raises out of the transport; malformed rings put the
device in DEVICE_NEEDS_RESET, malformed packets are dropped or answered with RST, and the
device keeps serving well-formed traffic afterwards."""
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.virtio import mmio as M
from devices.vsock import VsockConfig
from devices.vsock import packet as P
from support.vsock_driver import Harness

CID = 16

_ports = st.sampled_from([9000, 7000, 1, 0xFFFFFFFF, 5000])
_headers = st.builds(
    lambda src, dst, sport, dport, type_, op, flags, buf, fwd, length_delta, body: (
        P.pack_header(src, dst, sport, dport, max(0, len(body) + length_delta), type_, op,
                      flags, buf, fwd), body),
    st.sampled_from([CID, CID, CID, 3, 0, 2**64 - 1]), st.sampled_from([3, 3, 3, 2, CID]),
    st.sampled_from([40000, 40001, 0, 0xFFFFFFFF]), _ports,
    st.sampled_from([1, 1, 2, 0, 3, 0xFFFF]), st.integers(0, 9),
    st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]), st.sampled_from([0, 1, 4096, 2**32 - 1]),
    st.sampled_from([0, 1, 2**32 - 1]), st.sampled_from([0, 0, 1, -1, 10**6]),
    st.binary(max_size=300))


def heartbeat_still_works(h):
    s = h.guest.connect(9000)
    h.pump(lambda: s.state != "connecting", timeout=10)
    assert s.state == "connected"
    s.send(b"\xb7")
    h.pump(lambda: s.rx, timeout=10)
    assert s.read() == b"\xb7"


@pytest.fixture(scope="module")
def shared():
    h = Harness(VsockConfig(), guest_cid=CID, ram_size=32 << 20)
    yield h
    h.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packets=st.lists(_headers, min_size=1, max_size=12))
def test_garbage_packets_never_break_the_device(shared, packets):
    h = shared
    for header, body in packets:
        h.guest.send_raw(header, body)
    for _ in range(3):
        h.step()
    assert not h.transport.broken
    heartbeat_still_works(h)


def write_desc(ram, table, i, addr, length, flags, nxt):
    ram.write(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))


@settings(max_examples=100, deadline=None)
@given(descs=st.lists(st.tuples(st.integers(0, 40 << 20), st.integers(0, 70000),
                                st.integers(0, 7), st.integers(0, 300)),
                      min_size=4, max_size=4),
       head=st.integers(0, 300), queue=st.sampled_from([0, 1]))
def test_garbage_chains_need_reset_never_raise(descs, head, queue):
    h = Harness(VsockConfig(), guest_cid=CID, ram_size=32 << 20)
    try:
        g = h.guest
        if queue == 0:   # something for the guest, so rx buffers get used
            s = g.connect(9000)
            h.pump(lambda: s.state == "connected")
        q = g.driver.queues[queue]
        for i, (addr, length, flags, nxt) in enumerate(descs):
            write_desc(h.ram, q.desc, 250 + i, addr, length, flags, 250 + (nxt % 6))
        h.ram.write_u16(q.avail + 4 + 2 * (q.avail_idx % q.size), 250 + head % 8)
        q.avail_idx = (q.avail_idx + 1) & 0xFFFF
        h.ram.write_u16(q.avail + 2, q.avail_idx)
        if queue == 0:
            s.send(b"\xb7")
        g.driver.kick(queue)
        for _ in range(3):
            h.reactor.poll(0.001)
        status = h.transport.mmio_read(M.STATUS, 4)
        if h.transport.broken:
            assert status & M.STATUS_DEVICE_NEEDS_RESET and h.irq.high
    finally:
        h.close()


def test_tiny_rx_buffer_needs_reset():
    h = Harness(VsockConfig(), guest_cid=CID, rx_buf=20, ram_size=32 << 20)
    try:
        s = h.guest.connect(9000)
        for _ in range(5):
            h.reactor.poll(0.001)
        assert h.transport.broken and s.state == "connecting"
        # the driver resets and probes again: the device works
        h.transport.mmio_write(M.STATUS, 4, 0)
        assert not h.transport.broken
    finally:
        h.close()


def test_tx_header_split_over_descriptors():
    h = Harness(VsockConfig(), guest_cid=CID, ram_size=32 << 20)
    try:
        g = h.guest
        header = P.pack_header(CID, 3, 41000, 9000, 0, 1, P.OP_REQUEST, 0, 65536, 0)
        addr = g.alloc.alloc(64)
        h.ram.write(addr, header)
        g.txq.add([(addr, 10), (addr + 10, 34)], [], None)
        g.driver.kick(1)
        h.pump(lambda: any(s for s in h.muxer.conns))
        assert (9000, 41000) in h.muxer.conns
    finally:
        h.close()


@settings(max_examples=15, deadline=None)
@given(buf_alloc=st.sampled_from([4096, 5000, 65536, 262144]),
       reads=st.lists(st.integers(300, 70000), min_size=1, max_size=20),
       sizes=st.lists(st.integers(1, 200_000), min_size=1, max_size=6),
       two_descriptor_rx=st.booleans())
def test_credit_flow_never_loses_or_overruns(buf_alloc, reads, sizes, two_descriptor_rx):
    """Whatever the guest's buffer and reading pattern, every byte arrives once, in order,
    and the device never sends beyond the guest's credit (the driver checks each RW)."""
    import os
    import socket
    import threading
    blob = os.urandom(sum(sizes))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        with conn:
            offset = 0
            for n in sizes:
                conn.sendall(blob[offset:offset + n])
                offset += n
            received = bytearray()
            while data := conn.recv(65536):
                received += data
            results.append(bytes(received))

    results = []
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    config = VsockConfig()
    config.add_forward(f"7000=tcp:127.0.0.1:{listener.getsockname()[1]}")
    h = Harness(config, guest_cid=CID, ram_size=32 << 20, two_descriptor_rx=two_descriptor_rx)
    try:
        s = h.guest.connect(7000, buf_alloc=buf_alloc)
        h.pump(lambda: s.state == "connected")
        s.send(blob[::-1])                         # the other direction at the same time
        got = bytearray()
        pattern = iter(reads * (1 + len(blob) // max(1, sum(reads))))

        def progress():
            got.extend(s.read(next(pattern, 65536)))
            return len(got) >= len(blob)

        h.pump(progress, timeout=60)
        assert bytes(got) == blob and h.guest.violations == 0
        s.close()
        h.pump(lambda: s.state == "closed")
        server.join(20)
        assert results == [blob[::-1]]
    finally:
        h.close()
        listener.close()
