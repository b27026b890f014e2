"""Split virtqueue: chains are validated against RAM and the queue size; used ring and
interrupt suppression follow the virtio spec."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.virtio.queue import (VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
                                  VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Virtqueue,
                                  VirtqueueError)
from board.memory import GuestRam

RAM = 1 << 20
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
SIZE = 8


def desc(ram, table, i, addr, length, flags=0, nxt=0):
    ram.write(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))


def make_available(ram, *heads, start=0):
    for n, head in enumerate(heads):
        ram.write_u16(AVAIL + 4 + 2 * ((start + n) % SIZE), head)
    ram.write_u16(AVAIL + 2, (start + len(heads)) & 0xFFFF)


@pytest.fixture
def ram():
    return GuestRam(RAM)


def test_pop_push_round_trip(ram):
    q = Virtqueue(ram, SIZE, DESC, AVAIL, USED)
    assert q.pop() is None and not q.has_available()
    ram.write(0x5000, b"hello")
    desc(ram, DESC, 0, 0x5000, 5, VIRTQ_DESC_F_NEXT, 3)
    desc(ram, DESC, 3, 0x6000, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    desc(ram, DESC, 1, 0x7000, 4, VIRTQ_DESC_F_WRITE)
    make_available(ram, 0)
    assert q.has_available() and q.available_count() == 1
    chain = q.pop()
    assert chain.head == 0 and chain.read_all() == b"hello"
    assert (chain.readable_length, chain.writable_length) == (5, 8)
    assert chain.write(b"0123456789") == 8          # never past the end
    assert ram.read(0x6000, 4) == b"0123" and ram.read(0x7000, 4) == b"4567"
    assert chain.write(b"xy", offset=6) == 2 and ram.read(0x7002, 2) == b"xy"
    q.push(chain, 8)
    assert ram.read_u16(USED + 2) == 1
    assert struct.unpack_from("<II", ram.read(USED + 4, 8)) == (0, 8)
    assert q.needs_interrupt() and not q.needs_interrupt()   # once per batch


def test_no_interrupt_flag(ram):
    q = Virtqueue(ram, SIZE, DESC, AVAIL, USED)
    desc(ram, DESC, 0, 0x5000, 1)
    make_available(ram, 0)
    ram.write_u16(AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT)
    q.push(q.pop(), 0)
    assert not q.needs_interrupt()


def test_event_idx(ram):
    q = Virtqueue(ram, SIZE, DESC, AVAIL, USED, event_idx=True)
    for i in range(3):
        desc(ram, DESC, i, 0x5000, 1)
    make_available(ram, 0, 1, 2)
    ram.write_u16(AVAIL + 4 + 2 * SIZE, 1)     # used_event: interrupt when idx passes 1
    q.push(q.pop(), 0)
    assert not q.needs_interrupt()             # used idx 1: not past used_event
    q.push(q.pop(), 0)
    assert q.needs_interrupt()                 # used idx 2 passed 1
    assert ram.read_u16(USED + 4 + 8 * SIZE) == 2   # avail_event follows our pops


def test_indirect(ram):
    table = 0x8000
    desc(ram, table, 0, 0x5000, 3, VIRTQ_DESC_F_NEXT, 1)
    desc(ram, table, 1, 0x6000, 7, VIRTQ_DESC_F_WRITE)
    desc(ram, DESC, 2, table, 32, VIRTQ_DESC_F_INDIRECT)
    make_available(ram, 2)
    with pytest.raises(VirtqueueError, match="not negotiated"):
        Virtqueue(ram, SIZE, DESC, AVAIL, USED).pop()
    chain = Virtqueue(ram, SIZE, DESC, AVAIL, USED, indirect=True).pop()
    assert (chain.head, chain.readable_length, chain.writable_length) == (2, 3, 7)


@pytest.mark.parametrize("setup, message", [
    (lambda r: (desc(r, DESC, 0, 0x5000, 1), make_available(r, 9)), "head 9 out of range"),
    (lambda r: (desc(r, DESC, 0, RAM - 2, 4), make_available(r, 0)), "outside RAM"),
    (lambda r: (desc(r, DESC, 0, 0x5000, 1, VIRTQ_DESC_F_NEXT, 1),
                desc(r, DESC, 1, 0x5000, 1, VIRTQ_DESC_F_NEXT, 0),
                make_available(r, 0)), "longer than the queue size"),
    (lambda r: (desc(r, DESC, 0, 0x5000, 1, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1),
                desc(r, DESC, 1, 0x5000, 1), make_available(r, 0)), "readable descriptor"),
    (lambda r: (desc(r, DESC, 0, 0x5000, 1, VIRTQ_DESC_F_NEXT, 8),
                make_available(r, 0)), "next index 8 out of range"),
    (lambda r: r.write_u16(AVAIL + 2, 9), "more than the queue size"),
])
def test_malformed(ram, setup, message):
    q = Virtqueue(ram, SIZE, DESC, AVAIL, USED, indirect=True)
    setup(ram)
    with pytest.raises(VirtqueueError, match=message):
        q.pop()


def test_bad_indirect_tables(ram):
    q = Virtqueue(ram, SIZE, DESC, AVAIL, USED, indirect=True)
    desc(ram, 0x8000, 0, 0x9000, 16, VIRTQ_DESC_F_INDIRECT)   # nested
    desc(ram, DESC, 0, 0x8000, 16, VIRTQ_DESC_F_INDIRECT)
    make_available(ram, 0)
    with pytest.raises(VirtqueueError, match="nested"):
        q.pop()
    desc(ram, DESC, 1, 0x8000, 20, VIRTQ_DESC_F_INDIRECT)
    make_available(ram, 1, start=1)
    with pytest.raises(VirtqueueError, match="indirect table length"):
        q.pop()


@pytest.mark.parametrize("args", [(3, DESC, AVAIL, USED), (8, DESC + 8, AVAIL, USED),
                                  (8, DESC, AVAIL, USED + 2), (8, RAM - 16, AVAIL, USED),
                                  (65536, DESC, AVAIL, USED)])
def test_bad_queue_layout(ram, args):
    with pytest.raises(VirtqueueError):
        Virtqueue(ram, *args)


def test_unpop(ram):
    q = Virtqueue(ram, SIZE, DESC, AVAIL, USED)
    desc(ram, DESC, 0, 0x5000, 1)
    make_available(ram, 0)
    q.pop()
    q.unpop()
    assert q.pop().head == 0 and q.pop() is None


@settings(max_examples=300, deadline=None)
@given(table=st.binary(min_size=16 * SIZE, max_size=16 * SIZE),
       ring=st.lists(st.integers(0, 0xFFFF), min_size=SIZE, max_size=SIZE),
       idx=st.integers(0, 0xFFFF), indirect=st.booleans())
def test_garbage_rings_only_raise_virtqueue_error(table, ring, idx, indirect):
    ram = GuestRam(64 * 1024)
    ram.write(DESC, table)
    ram.write(AVAIL + 4, struct.pack(f"<{SIZE}H", *ring))
    ram.write_u16(AVAIL + 2, idx)
    q = Virtqueue(ram, SIZE, DESC, AVAIL, USED, indirect=indirect)
    for _ in range(SIZE + 1):
        try:
            chain = q.pop()
        except VirtqueueError:
            continue
        if chain is None:
            break
        total = chain.readable_length + chain.writable_length
        assert sum(map(len, chain.readable + chain.writable)) == total
        assert len(chain.readable) + len(chain.writable) <= SIZE
        q.push(chain, 0)
