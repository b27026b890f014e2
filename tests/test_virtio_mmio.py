"""virtio-mmio v2 transport: the Linux probe sequence works, and guest mistakes end in
DEVICE_NEEDS_RESET with a log line, never in an exception out of mmio_write."""
import logging
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.virtio import mmio as M
from devices.virtio.device import VirtioDevice
from devices.virtio.queue import VirtqueueError
from support.vsock_driver import Allocator, Level, MmioDriver
from board.memory import GuestRam


class Echo(VirtioDevice):
    """A small real backend: copies each chain's readable bytes into its writable part."""

    device_id = 42
    queue_max_sizes = (16, 4)

    def __init__(self):
        self.activations = self.resets = 0
        self.queues = None

    def device_features(self):
        return 1 << 5

    def read_config(self, offset, size):
        data = b"\x11\x22\x33\x44\x55\x66\x77\x88"
        return int.from_bytes(data[offset:offset + size], "little") if offset < 8 else 0

    def activate(self, memory, queues, interrupt):
        self.activations += 1
        self.queues, self.interrupt = queues, interrupt

    def notify(self, index):
        q = self.queues[index]
        while (chain := q.pop()) is not None:
            q.push(chain, chain.write(chain.read_all()))
        if q.needs_interrupt():
            self.interrupt()

    def reset(self):
        self.resets += 1
        self.queues = None


@pytest.fixture
def setup():
    ram = GuestRam(1 << 20)
    dev = Echo()
    irq = Level()
    t = M.VirtioMmioTransport(dev, ram, irq)
    return ram, dev, irq, t


def probe(ram, t, features=M.RING_FEATURES | (1 << 5)):
    return MmioDriver(t, ram, Allocator(ram), features)


def test_identification_and_negotiation(setup):
    ram, dev, irq, t = setup
    assert t.mmio_read(M.MAGIC_VALUE, 4) == 0x74726976
    assert t.mmio_read(M.VERSION, 4) == 2 and t.mmio_read(M.DEVICE_ID, 4) == 42
    drv = probe(ram, t)
    assert drv.features == M.RING_FEATURES | (1 << 5)
    assert dev.activations == 1 and len(dev.queues) == 2
    assert drv.status == 0xF
    assert drv.config_u64(0) == 0x8877665544332211
    assert t.mmio_read(M.CONFIG + 1, 2) == 0x3322
    assert t.mmio_read(M.SHM_LEN_LOW, 4) == 0xFFFFFFFF   # no shared memory


def test_echo_and_level_interrupt(setup):
    ram, dev, irq, t = setup
    drv = probe(ram, t)
    q = drv.queues[0]
    ram.write(0x80000, b"ping")
    q.add([(0x80000, 4)], [(0x81000, 16)], "token")
    drv.kick(0)
    assert irq.high and t.mmio_read(M.INTERRUPT_STATUS, 4) == M.INT_VRING
    assert q.get_used() == [("token", 4)] and ram.read(0x81000, 4) == b"ping"
    assert drv.ack_interrupt() == M.INT_VRING and not irq.high


def test_features_not_offered_are_refused(setup):
    ram, dev, irq, t = setup
    t.mmio_write(M.STATUS, 4, 3)
    t.mmio_write(M.DRIVER_FEATURES_SEL, 4, 1)
    t.mmio_write(M.DRIVER_FEATURES, 4, 1 | (1 << 20))   # VERSION_1 and an unknown bit
    t.mmio_write(M.STATUS, 4, 3 | M.STATUS_FEATURES_OK)
    assert not t.mmio_read(M.STATUS, 4) & M.STATUS_FEATURES_OK


def test_version_1_required(setup):
    ram, dev, irq, t = setup
    with pytest.raises(AssertionError, match="refused"):
        probe(ram, t, features=1 << 5)


def test_bad_chain_needs_reset_then_reset_recovers(setup, caplog):
    ram, dev, irq, t = setup
    drv = probe(ram, t)
    q = drv.queues[0]
    # a descriptor pointing past the end of RAM
    q.add([(ram.size - 2, 64)], [])
    with caplog.at_level(logging.ERROR, logger="nitro_emu.virtio"):
        drv.kick(0)
    assert t.broken and drv.status & M.STATUS_DEVICE_NEEDS_RESET
    assert t.mmio_read(M.INTERRUPT_STATUS, 4) & M.INT_CONFIG and irq.high
    assert "outside RAM" in caplog.text and "needs reset" in caplog.text
    drv.kick(0)                                          # ignored while broken
    t.mmio_write(M.STATUS, 4, 0)
    assert dev.resets == 1 and t.mmio_read(M.STATUS, 4) == 0 and not irq.high
    drv = probe(ram, t)
    assert dev.activations == 2 and not t.broken


def test_queue_outside_ram_needs_reset(setup):
    ram, dev, irq, t = setup
    t.mmio_write(M.STATUS, 4, 3)
    t.mmio_write(M.DRIVER_FEATURES_SEL, 4, 1)
    t.mmio_write(M.DRIVER_FEATURES, 4, 1)
    t.mmio_write(M.STATUS, 4, 3 | M.STATUS_FEATURES_OK)
    t.mmio_write(M.QUEUE_SEL, 4, 0)
    t.mmio_write(M.QUEUE_NUM, 4, 16)
    t.mmio_write(M.QUEUE_DESC_HIGH, 4, 1)              # 4 GiB: no such RAM
    t.mmio_write(M.QUEUE_READY, 4, 1)
    assert t.broken and t.mmio_read(M.QUEUE_READY, 4) == 0


def test_queue_too_big_needs_reset(setup):
    ram, dev, irq, t = setup
    t.mmio_write(M.QUEUE_SEL, 4, 1)
    assert t.mmio_read(M.QUEUE_NUM_MAX, 4) == 4
    t.mmio_write(M.QUEUE_NUM, 4, 8)
    t.mmio_write(M.QUEUE_READY, 4, 1)
    assert t.broken


def test_backend_error_from_host_callback(setup, caplog):
    ram, dev, irq, t = setup
    probe(ram, t)
    with caplog.at_level(logging.ERROR, logger="nitro_emu.virtio"):
        dev.report_error(VirtqueueError("rx buffer too small"))
    assert t.broken and "rx buffer too small" in caplog.text


_registers = st.sampled_from([0x0, 0x4, 0x8, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44,
                              0x50, 0x60, 0x64, 0x70, 0x80, 0x84, 0x90, 0x94, 0xA0, 0xA4,
                              0xAC, 0xFC, 0x100, 0x104, 0x200, 0xFFC])


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(_registers, st.sampled_from([1, 2, 4]),
                              st.integers(0, 0xFFFFFFFF), st.booleans()), max_size=60),
       garbage=st.binary(min_size=256, max_size=256))
def test_random_register_traffic_never_raises(ops, garbage):
    ram = GuestRam(1 << 16)
    ram.write(0, garbage * 256)
    dev = Echo()
    t = M.VirtioMmioTransport(dev, ram, Level())
    for offset, size, value, is_write in ops:
        if is_write:
            t.mmio_write(offset, size, value)
        else:
            assert 0 <= t.mmio_read(offset, size) < 1 << (8 * size)


@settings(max_examples=200, deadline=None)
@given(descs=st.lists(st.tuples(st.integers(0, (1 << 19)), st.integers(0, 1 << 12),
                                st.integers(0, 7), st.integers(0, 20)),
                      min_size=16, max_size=16),
       heads=st.lists(st.integers(0, 20), min_size=1, max_size=16))
def test_malformed_chains_break_only_the_device(descs, heads):
    ram = GuestRam(1 << 18)
    dev = Echo()
    irq = Level()
    t = M.VirtioMmioTransport(dev, ram, irq)
    drv = probe(ram, t)
    q = drv.queues[0]
    for i, (addr, length, flags, nxt) in enumerate(descs):
        ram.write(q.desc + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))
    for n, head in enumerate(heads):
        ram.write_u16(q.avail + 4 + 2 * n, head)
    ram.write_u16(q.avail + 2, len(heads))
    drv.kick(0)
    status = t.mmio_read(M.STATUS, 4)
    if t.broken:
        assert status & M.STATUS_DEVICE_NEEDS_RESET and irq.high
    else:
        assert ram.read_u16(q.used + 2) == len(heads)
