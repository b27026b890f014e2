"""Split virtqueues (virtio 1.x, section 2.7) living in guest RAM.

The guest is untrusted: every ring index, descriptor index, buffer address and length is
checked before use, and anything malformed raises `VirtqueueError` (the transport then
marks the device DEVICE_NEEDS_RESET). Ring areas are checked once when the queue is
created and then accessed through memoryviews, so the per-chain cost is a few
`struct.unpack_from` calls, never a bounds check per byte.
"""
from __future__ import annotations

import struct

from board.memory import GuestMemoryError, GuestRam

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

VIRTIO_F_RING_INDIRECT_DESC = 1 << 28
VIRTIO_F_RING_EVENT_IDX = 1 << 29

MAX_QUEUE_SIZE = 32768

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


class VirtqueueError(Exception):
    """The guest's ring or descriptor data is malformed."""


class DescriptorChain:
    """One available descriptor chain, validated: `readable` buffers (device reads) come
    before `writable` ones (device writes); each is a memoryview into guest RAM."""

    __slots__ = ("head", "readable", "writable", "readable_length", "writable_length")

    def __init__(self, head: int, readable: list[memoryview], writable: list[memoryview],
                 readable_length: int, writable_length: int) -> None:
        self.head = head
        self.readable = readable
        self.writable = writable
        self.readable_length = readable_length
        self.writable_length = writable_length

    def read_all(self) -> bytes:
        """All device-readable bytes, concatenated."""
        readable = self.readable
        if len(readable) == 1:
            return bytes(readable[0])
        return b"".join(readable)

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Scatter `data` into the writable buffers starting at byte `offset` of the
        writable area; returns how many bytes were written (never past the end)."""
        if offset < 0:
            raise ValueError("negative offset")
        src = memoryview(data)
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        total = len(src)
        done = 0
        for buf in self.writable:
            size = len(buf)
            if offset >= size:
                offset -= size
                continue
            n = min(size - offset, total - done)
            buf[offset:offset + n] = src[done:done + n]
            done += n
            offset = 0
            if done == total:
                break
        return done

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head}, readable={self.readable_length}, "
                f"writable={self.writable_length})")


class Virtqueue:
    """One split virtqueue: descriptor table at `desc_addr`, driver (available) ring at
    `driver_addr`, device (used) ring at `device_addr`, all inside `memory`.

    `event_idx` is whether VIRTIO_F_RING_EVENT_IDX was negotiated, `indirect` whether
    VIRTIO_F_RING_INDIRECT_DESC was. Raises VirtqueueError if the size or any ring area is
    invalid.
    """

    def __init__(self, memory: GuestRam, size: int, desc_addr: int, driver_addr: int,
                 device_addr: int, event_idx: bool = False, indirect: bool = False) -> None:
        if not 1 <= size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of two in 1..32768")
        if desc_addr % 16 or driver_addr % 2 or device_addr % 4:
            raise VirtqueueError(
                f"misaligned ring: desc 0x{desc_addr:x}, driver 0x{driver_addr:x}, "
                f"device 0x{device_addr:x}")
        self.memory = memory
        self.size = size
        self.event_idx = event_idx
        self.indirect = indirect
        self._mask = size - 1
        try:
            self._desc = memory.view(desc_addr, 16 * size)
            self._avail = memory.view(driver_addr, 6 + 2 * size)
            self._used = memory.view(device_addr, 6 + 8 * size)
        except GuestMemoryError as error:
            raise VirtqueueError(f"ring outside guest RAM: {error}") from None
        self._used_event_off = 4 + 2 * size      # in the avail ring
        self._avail_event_off = 4 + 8 * size     # in the used ring
        self.next_avail = 0
        self.next_used = 0
        self._signalled_used = 0

    # -- driver -> device --------------------------------------------------------------

    def _avail_idx(self) -> int:
        idx = _U16.unpack_from(self._avail, 2)[0]
        pending = (idx - self.next_avail) & 0xFFFF
        if pending > self.size:
            raise VirtqueueError(
                f"available index {idx} is {pending} ahead of {self.next_avail}, "
                f"more than the queue size {self.size}")
        return idx

    def has_available(self) -> bool:
        """Whether the driver has made a chain available that was not popped yet."""
        return self._avail_idx() != self.next_avail

    def available_count(self) -> int:
        """How many chains are available and not popped yet."""
        return (self._avail_idx() - self.next_avail) & 0xFFFF

    def pop(self) -> DescriptorChain | None:
        """The next available chain, fully validated, or None when the ring is empty."""
        if self._avail_idx() == self.next_avail:
            if self.event_idx:   # ask for a kick when the driver adds the next chain
                _U16.pack_into(self._used, self._avail_event_off, self.next_avail)
            return None
        slot = self.next_avail & self._mask
        head = _U16.unpack_from(self._avail, 4 + 2 * slot)[0]
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        if self.event_idx:
            _U16.pack_into(self._used, self._avail_event_off, self.next_avail)
        return self._walk(head)

    def unpop(self) -> None:
        """Give back the chain popped last (it will be returned by the next pop)."""
        self.next_avail = (self.next_avail - 1) & 0xFFFF
        if self.event_idx:
            _U16.pack_into(self._used, self._avail_event_off, self.next_avail)

    def _walk(self, head: int) -> DescriptorChain:
        size = self.size
        if head >= size:
            raise VirtqueueError(f"descriptor head {head} out of range (queue size {size})")
        view = self.memory.view
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        rlen = wlen = 0
        table = self._desc
        table_size = size
        index = head
        count = 0
        in_indirect = False
        while True:
            count += 1
            if count > size:
                raise VirtqueueError(f"descriptor chain from head {head} is longer than "
                                     f"the queue size {size} (loop?)")
            addr, length, flags, nxt = _DESC.unpack_from(table, 16 * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self.indirect:
                    raise VirtqueueError(f"indirect descriptor {index} but "
                                         "VIRTIO_F_RING_INDIRECT_DESC was not negotiated")
                if in_indirect:
                    raise VirtqueueError(f"nested indirect descriptor {index}")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise VirtqueueError(f"indirect descriptor {index} has NEXT set")
                if length == 0 or length % 16 or length // 16 > size:
                    raise VirtqueueError(f"indirect table length {length} at descriptor "
                                         f"{index} is not 16..{16 * size} in steps of 16")
                try:
                    table = view(addr, length)
                except GuestMemoryError as error:
                    raise VirtqueueError(f"indirect table of descriptor {index}: {error}") \
                        from None
                table_size = length // 16
                in_indirect = True
                index = 0
                count -= 1  # the indirect descriptor itself carries no buffer
                continue
            try:
                buf = view(addr, length)
            except GuestMemoryError as error:
                raise VirtqueueError(f"descriptor {index} of chain {head}: {error}") from None
            if flags & VIRTQ_DESC_F_WRITE:
                writable.append(buf)
                wlen += length
            else:
                if writable:
                    raise VirtqueueError(f"chain {head}: readable descriptor {index} after "
                                         "a writable one")
                readable.append(buf)
                rlen += length
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            if nxt >= table_size:
                raise VirtqueueError(f"chain {head}: next index {nxt} out of range "
                                     f"({table_size} descriptors)")
            index = nxt
        return DescriptorChain(head, readable, writable, rlen, wlen)

    # -- device -> driver --------------------------------------------------------------

    def push(self, chain: DescriptorChain, written: int) -> None:
        """Return `chain` to the driver on the used ring with `written` bytes written."""
        idx = self.next_used
        _USED_ELEM.pack_into(self._used, 4 + 8 * (idx & self._mask), chain.head, written)
        idx = (idx + 1) & 0xFFFF
        self.next_used = idx
        _U16.pack_into(self._used, 2, idx)

    def needs_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last call
        (honours VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX)."""
        new = self.next_used
        old = self._signalled_used
        if new == old:
            return False
        self._signalled_used = new
        if self.event_idx:
            used_event = _U16.unpack_from(self._avail, self._used_event_off)[0]
            return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not _U16.unpack_from(self._avail, 0)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT

    def set_notification(self, enabled: bool) -> None:
        """Ask the driver to kick (or not) when it adds buffers (VIRTQ_USED_F_NO_NOTIFY,
        or avail_event with EVENT_IDX). A hint only; the driver may kick anyway."""
        if self.event_idx:
            if enabled:
                _U16.pack_into(self._used, self._avail_event_off, self.next_avail)
            return
        _U16.pack_into(self._used, 0, 0 if enabled else VIRTQ_USED_F_NO_NOTIFY)
