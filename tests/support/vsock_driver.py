"""A Python stand-in for the Linux guest's virtio-mmio and virtio-vsock drivers (test
scaffolding, not part of the product).

Tests and benchmarks use it to drive the real transport and device without a booted
guest: it lays out split rings in `GuestRam`, programs the transport registers in the
order drivers/virtio/virtio_mmio.c does, posts rx buffers like virtio_transport.c (one
descriptor of SKB_WITH_OVERHEAD(4096) = 3776 bytes, or the older 44 + 4096 pair), sends
packets with the header in its own descriptor, and keeps Linux's per-socket credit
accounting (virtio_transport_common.c), including its check that the device never sends
more than the advertised buffer.
"""
from __future__ import annotations

import struct
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator

from board.clock import VirtualClock
from board.memory import GuestRam
from board.reactor import HostReactor
from devices.virtio import mmio as M
from devices.virtio.queue import (VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC,
                                  VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE)
from devices.vsock import VsockConfig, VsockDevice
from devices.vsock import packet as P

_DESC = struct.Struct("<QIHH")
LINUX_RX_BUF = 3776          # SKB_WITH_OVERHEAD(1024 * 4) on x86_64
LINUX_BUF_ALLOC = 256 * 1024


class Level:
    """An interrupt line that remembers its level (what the 8259 would see)."""

    def __init__(self) -> None:
        self.high = False
        self.raised = 0

    def set_level(self, high: bool) -> None:
        if high and not self.high:
            self.raised += 1
        self.high = high

    def pulse(self) -> None:
        self.raised += 1


class Allocator:
    """Bump allocation of guest-physical memory."""

    def __init__(self, ram: GuestRam, start: int = 0x10000) -> None:
        self.ram = ram
        self.next = start

    def alloc(self, size: int, align: int = 4096) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.ram.size:
            raise MemoryError("test guest out of RAM")
        self.next = addr + size
        return addr


class DriverQueue:
    """The driver's half of one split virtqueue."""

    def __init__(self, ram: GuestRam, alloc: Allocator, size: int) -> None:
        self.ram = ram
        self.memory = ram.buffer      # for struct on the rings, looked up once
        self.size = size
        self.desc = alloc.alloc(16 * size)
        self.avail = alloc.alloc(6 + 2 * size)
        self.used = alloc.alloc(6 + 8 * size)
        self.free = list(range(size - 1, -1, -1))
        self.avail_idx = 0
        self.last_used = 0
        self.chains: dict[int, list[int]] = {}
        self.tokens: dict[int, object] = {}

    @property
    def num_free(self) -> int:
        return len(self.free)

    def add(self, readable: list[tuple[int, int]], writable: list[tuple[int, int]],
            token: object = None) -> int:
        """Make a chain available; returns its head."""
        parts = [(a, n, 0) for a, n in readable] + [(a, n, VIRTQ_DESC_F_WRITE)
                                                   for a, n in writable]
        if len(parts) > len(self.free):
            raise RuntimeError("virtqueue full")
        ids = [self.free.pop() for _ in parts]
        for i, (addr, length, flags) in enumerate(parts):
            last = i == len(parts) - 1
            _DESC.pack_into(self.memory, self.desc + 16 * ids[i], addr, length,
                            flags | (0 if last else VIRTQ_DESC_F_NEXT),
                            0 if last else ids[i + 1])
        head = ids[0]
        self.chains[head] = ids
        self.tokens[head] = token
        self.ram.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.ram.write_u16(self.avail + 2, self.avail_idx)
        return head

    def get_used(self) -> list[tuple[object, int]]:
        """Reclaim used chains: [(token, used length)]."""
        out = []
        used_idx = self.ram.read_u16(self.used + 2)
        while self.last_used != used_idx:
            slot = self.used + 4 + 8 * (self.last_used % self.size)
            head, length = struct.unpack_from("<II", self.memory, slot)
            self.last_used = (self.last_used + 1) & 0xFFFF
            ids = self.chains.pop(head)
            self.free.extend(ids)
            out.append((self.tokens.pop(head), length))
        return out


class MmioDriver:
    """Probe and set up a virtio-mmio device like drivers/virtio/virtio_mmio.c."""

    def __init__(self, transport: M.VirtioMmioTransport, ram: GuestRam, alloc: Allocator,
                 wanted_features: int, queue_sizes: list[int] | None = None) -> None:
        self.t = transport
        self.ram = ram
        r, w = transport.mmio_read, transport.mmio_write
        assert r(M.MAGIC_VALUE, 4) == M.MAGIC and r(M.VERSION, 4) == 2
        self.device_id = r(M.DEVICE_ID, 4)
        w(M.STATUS, 4, 0)
        w(M.STATUS, 4, M.STATUS_ACKNOWLEDGE)
        w(M.STATUS, 4, M.STATUS_ACKNOWLEDGE | M.STATUS_DRIVER)
        w(M.DEVICE_FEATURES_SEL, 4, 1)
        offered = r(M.DEVICE_FEATURES, 4) << 32
        w(M.DEVICE_FEATURES_SEL, 4, 0)
        offered |= r(M.DEVICE_FEATURES, 4)
        self.features = offered & wanted_features
        w(M.DRIVER_FEATURES_SEL, 4, 1)
        w(M.DRIVER_FEATURES, 4, self.features >> 32)
        w(M.DRIVER_FEATURES_SEL, 4, 0)
        w(M.DRIVER_FEATURES, 4, self.features & 0xFFFFFFFF)
        status = M.STATUS_ACKNOWLEDGE | M.STATUS_DRIVER | M.STATUS_FEATURES_OK
        w(M.STATUS, 4, status)
        assert r(M.STATUS, 4) & M.STATUS_FEATURES_OK, "device refused the features"
        self.queues: list[DriverQueue] = []
        index = 0
        while True:
            w(M.QUEUE_SEL, 4, index)
            num_max = r(M.QUEUE_NUM_MAX, 4)
            if num_max == 0:
                break
            assert r(M.QUEUE_READY, 4) == 0
            size = num_max if queue_sizes is None else min(num_max, queue_sizes[index])
            q = DriverQueue(ram, alloc, size)
            w(M.QUEUE_NUM, 4, size)
            for low, addr in ((M.QUEUE_DESC_LOW, q.desc), (M.QUEUE_DRIVER_LOW, q.avail),
                              (M.QUEUE_DEVICE_LOW, q.used)):
                w(low, 4, addr & 0xFFFFFFFF)
                w(low + 4, 4, addr >> 32)
            w(M.QUEUE_READY, 4, 1)
            self.queues.append(q)
            index += 1
        w(M.STATUS, 4, status | M.STATUS_DRIVER_OK)

    def config_u64(self, offset: int) -> int:
        low = self.t.mmio_read(M.CONFIG + offset, 4)
        return low | self.t.mmio_read(M.CONFIG + offset + 4, 4) << 32

    def kick(self, index: int) -> None:
        self.t.mmio_write(M.QUEUE_NOTIFY, 4, index)

    def ack_interrupt(self) -> int:
        """vm_interrupt(): read InterruptStatus and acknowledge it."""
        status = self.t.mmio_read(M.INTERRUPT_STATUS, 4)
        if status:
            self.t.mmio_write(M.INTERRUPT_ACK, 4, status)
        return status

    @property
    def status(self) -> int:
        return self.t.mmio_read(M.STATUS, 4)


class CreditViolation(AssertionError):
    """The device sent more payload than the guest socket's buf_alloc allows."""


class GuestSocket:
    """One guest vsock socket (client or accepted), with Linux's credit accounting."""

    def __init__(self, guest: VsockGuest, local_port: int, peer_port: int,
                 type_: int = P.TYPE_STREAM, buf_alloc: int = LINUX_BUF_ALLOC) -> None:
        self.guest = guest
        self.local_port = local_port
        self.peer_port = peer_port
        self.type = type_
        self.state = "connecting"
        self.buf_alloc = buf_alloc
        self.fwd_cnt = 0
        self.last_fwd_cnt = 0
        self.buf_used = 0
        self.rx = bytearray()
        self.messages: deque[bytes] = deque()
        self._message = bytearray()
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.tx_cnt = 0
        self.peer_shutdown = 0
        self.reset_received = False
        self.pending_tx = bytearray()
        self.pending_eom = False
        self.pending_shutdown = 0

    # credit -----------------------------------------------------------------------------
    def credit(self) -> int:
        """As virtio_transport_has_space with virtio_transport_tx_buf_size: the peer's
        buffer, capped by our own buf_alloc."""
        window = min(self.peer_buf_alloc, self.buf_alloc)
        return max(0, window - ((self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF))

    def _header(self, op: int, length: int = 0, flags: int = 0) -> bytes:
        self.last_fwd_cnt = self.fwd_cnt
        return P.pack_header(self.guest.cid, P.CID_PARENT, self.local_port, self.peer_port,
                             length, self.type, op, flags, self.buf_alloc,
                             self.fwd_cnt & 0xFFFFFFFF)

    def send_op(self, op: int, flags: int = 0) -> None:
        self.guest.send_raw(self._header(op, 0, flags))

    # data -------------------------------------------------------------------------------
    def send(self, data: bytes, eom: bool = False) -> None:
        """Queue data; it goes out as credit allows (call guest.poll())."""
        self.pending_tx += data
        self.pending_eom = eom
        self.flush()

    def flush(self) -> None:
        while self.pending_tx and self.state in ("connected", "closing"):
            n = min(len(self.pending_tx), self.credit(), P.MAX_PKT_PAYLOAD)
            if n == 0:
                break
            last = n == len(self.pending_tx)
            flags = P.SEQ_EOM if (self.type == P.TYPE_SEQPACKET and last) else 0
            chunk = bytes(self.pending_tx[:n])
            del self.pending_tx[:n]
            self.tx_cnt = (self.tx_cnt + n) & 0xFFFFFFFF
            self.guest.send_raw(self._header(P.OP_RW, n, flags), chunk)
        if self.pending_shutdown and not self.pending_tx and self.state != "closed":
            flags, self.pending_shutdown = self.pending_shutdown, 0
            self.send_op(P.OP_SHUTDOWN, flags)

    def read(self, limit: int | None = None) -> bytes:
        """Consume received bytes (the application read) and send a credit update the way
        virtio_transport_stream_do_dequeue does."""
        n = len(self.rx) if limit is None else min(limit, len(self.rx))
        data = bytes(self.rx[:n])
        del self.rx[:n]
        self._consumed(n)
        return data

    def read_message(self) -> bytes | None:
        if not self.messages:
            return None
        message = self.messages.popleft()
        self._consumed(len(message))
        return message

    def _consumed(self, n: int) -> None:
        self.buf_used -= n
        self.fwd_cnt = (self.fwd_cnt + n) & 0xFFFFFFFF
        delta = (self.fwd_cnt - self.last_fwd_cnt) & 0xFFFFFFFF
        free_space = self.buf_alloc - delta
        if delta and (free_space < P.MAX_PKT_PAYLOAD or not self.rx):
            self.send_op(P.OP_CREDIT_UPDATE)

    def shutdown(self, flags: int) -> None:
        """Like shutdown(2) after a blocking send: goes out once queued data has."""
        self.pending_shutdown |= flags
        self.flush()

    def close(self) -> None:
        """Linux close(): SHUTDOWN(both) once queued data is out, then wait for RST."""
        self.shutdown(P.SHUTDOWN_BOTH)
        if self.state == "connected":
            self.state = "closing"

    # receive ----------------------------------------------------------------------------
    def on_packet(self, hdr: P.Header, payload: bytes) -> None:
        self.peer_buf_alloc = hdr.buf_alloc
        self.peer_fwd_cnt = hdr.fwd_cnt
        op = hdr.op
        if op == P.OP_RESPONSE and self.state == "connecting":
            self.state = "connected"
        elif op == P.OP_RST:
            self.reset_received = True
            self.state = "closed"
            self.guest.sockets.pop((self.local_port, self.peer_port), None)
        elif op == P.OP_RW:
            if self.buf_used + hdr.len > self.buf_alloc:
                self.guest.violations += 1
                raise CreditViolation(f"{self.buf_used} + {hdr.len} > {self.buf_alloc}")
            self.buf_used += hdr.len
            if self.type == P.TYPE_SEQPACKET:
                self._message += payload
                if hdr.flags & P.SEQ_EOM:
                    self.messages.append(bytes(self._message))
                    self._message.clear()
            else:
                self.rx += payload
        elif op == P.OP_SHUTDOWN:
            self.peer_shutdown |= hdr.flags
            if self.peer_shutdown == P.SHUTDOWN_BOTH and not self.rx:
                self.send_op(P.OP_RST)
                self.state = "closed"
                self.guest.sockets.pop((self.local_port, self.peer_port), None)
        elif op == P.OP_CREDIT_REQUEST:
            self.send_op(P.OP_CREDIT_UPDATE)
        self.flush()


class VsockGuest:
    """The guest's vsock driver on top of MmioDriver, with sockets and listeners."""

    def __init__(self, transport: M.VirtioMmioTransport, ram: GuestRam, *,
                 two_descriptor_rx: bool = False, rx_buf: int = LINUX_RX_BUF,
                 features: int = (M.VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX
                                  | VIRTIO_F_RING_INDIRECT_DESC | P.VIRTIO_VSOCK_F_SEQPACKET),
                 queue_sizes: list[int] | None = None) -> None:
        self.ram = ram
        self.alloc = Allocator(ram)
        self.driver = MmioDriver(transport, ram, self.alloc, features, queue_sizes)
        self.cid = self.driver.config_u64(0)
        self.rxq, self.txq, self.evq = self.driver.queues
        self.two_descriptor_rx = two_descriptor_rx
        self.rx_buf = rx_buf
        self.rx_pool = deque(self.alloc.alloc(rx_buf + 64, 64) for _ in range(self.rxq.size))
        self.tx_pool = deque(self.alloc.alloc(P.HEADER_SIZE + P.MAX_PKT_PAYLOAD)
                             for _ in range(self.txq.size // 2))
        self.tx_backlog: deque[tuple[bytes, bytes]] = deque()
        self.sockets: dict[tuple[int, int], GuestSocket] = {}
        self.listeners: dict[int, Callable[[GuestSocket], None] | None] = {}
        self.accepted: deque[GuestSocket] = deque()
        self.unknown: list[P.Header] = []
        self.violations = 0
        self.packets_in = 0
        self.op_counts = [0] * 8     # packets received, by op
        self._next_port = 50000
        for _ in range(8):
            addr = self.alloc.alloc(4, 4)
            self.evq.add([], [(addr, 4)], addr)
        self.driver.kick(2)
        self.fill_rx()

    def fill_rx(self) -> None:
        while self.rx_pool and self.rxq.num_free >= (2 if self.two_descriptor_rx else 1):
            addr = self.rx_pool.popleft()
            if self.two_descriptor_rx:
                self.rxq.add([], [(addr, P.HEADER_SIZE), (addr + 64, self.rx_buf - 64)], addr)
            else:
                self.rxq.add([], [(addr, self.rx_buf)], addr)
        self.driver.kick(0)

    def send_raw(self, header: bytes, payload: bytes = b"") -> bool:
        """Put one packet on tx (header and payload in separate descriptors, as Linux)."""
        if self.tx_backlog or not self.tx_pool or self.txq.num_free < 2:
            self.tx_backlog.append((header, payload))
            return True
        self._tx(header, payload)
        self.driver.kick(1)
        return True

    def _tx(self, header: bytes, payload: bytes) -> None:
        addr = self.tx_pool.popleft()
        self.ram.write(addr, header)
        readable = [(addr, P.HEADER_SIZE)]
        if payload:
            self.ram.write(addr + P.HEADER_SIZE, payload)
            readable.append((addr + P.HEADER_SIZE, len(payload)))
        self.txq.add(readable, [], addr)

    def connect(self, port: int, type_: int = P.TYPE_STREAM,
                buf_alloc: int = LINUX_BUF_ALLOC) -> GuestSocket:
        self._next_port += 1
        sock = GuestSocket(self, self._next_port, port, type_, buf_alloc)
        self.sockets[(sock.local_port, port)] = sock
        sock.send_op(P.OP_REQUEST)
        return sock

    def listen(self, port: int) -> None:
        self.listeners[port] = None

    def poll(self) -> int:
        """Handle everything the device returned (what the rx/tx workers do)."""
        self.driver.ack_interrupt()
        for addr, _ in self.txq.get_used():
            if addr is not None:
                self.tx_pool.append(addr)
        sent = False
        while self.tx_backlog and self.tx_pool and self.txq.num_free >= 2:
            self._tx(*self.tx_backlog.popleft())
            sent = True
        if sent:
            self.driver.kick(1)
        used = self.rxq.get_used()
        ram = self.ram
        for addr, length in used:
            self.packets_in += 1
            hdr = P.parse_header(ram.read(addr, P.HEADER_SIZE))
            if hdr.op < 8:
                self.op_counts[hdr.op] += 1
            assert length == P.HEADER_SIZE + hdr.len, (length, hdr)
            if self.two_descriptor_rx:
                payload = ram.read(addr + 64, hdr.len)
            else:
                payload = ram.read(addr + P.HEADER_SIZE, hdr.len)
            self.rx_pool.append(addr)
            self._dispatch(hdr, payload)
        if used:
            self.fill_rx()
        for sock in list(self.sockets.values()):
            if sock.pending_tx or sock.pending_shutdown:
                sock.flush()
        return len(used)

    def _dispatch(self, hdr: P.Header, payload: bytes) -> None:
        assert hdr.dst_cid == self.cid, hdr
        sock = self.sockets.get((hdr.dst_port, hdr.src_port))
        if sock is not None:
            sock.on_packet(hdr, payload)
            return
        if hdr.op == P.OP_REQUEST and hdr.dst_port in self.listeners:
            sock = GuestSocket(self, hdr.dst_port, hdr.src_port, hdr.type)
            sock.state = "connected"
            sock.peer_buf_alloc, sock.peer_fwd_cnt = hdr.buf_alloc, hdr.fwd_cnt
            self.sockets[(sock.local_port, sock.peer_port)] = sock
            sock.send_op(P.OP_RESPONSE)
            self.accepted.append(sock)
            return
        self.unknown.append(hdr)
        if hdr.op != P.OP_RST:
            self.send_raw(P.pack_header(self.cid, hdr.src_cid, hdr.dst_port, hdr.src_port, 0,
                                        hdr.type, P.OP_RST, 0, 0, 0))


class Harness:
    """A whole device-level test bench: RAM, reactor, clock, VsockDevice (with its muxer)
    behind the MMIO transport, and a VsockGuest driving it. `pump(cond)` runs host I/O, the
    guest and the clock until `cond()` is true (TimeoutError after `timeout` wall seconds)."""

    def __init__(self, config: VsockConfig | None = None, guest_cid: int = 16,
                 ram_size: int = 64 << 20, **guest_options) -> None:
        self.ram = GuestRam(ram_size)
        self.reactor = HostReactor()
        self.clock = VirtualClock()
        self.irq = Level()
        self.device = VsockDevice(guest_cid, self.reactor, self.clock, config)
        self.muxer = self.device.muxer
        self.transport = M.VirtioMmioTransport(self.device, self.ram, self.irq)
        self.guest = VsockGuest(self.transport, self.ram, **guest_options)

    def step(self, wait: float = 0.0) -> int:
        """One round; returns how much happened (0 = idle)."""
        done = self.reactor.poll(wait)
        done += self.guest.poll()
        self.clock.fire_due()
        return done

    def pump(self, cond: Callable[[], bool], timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        idle = False
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError("condition not reached")
            idle = self.step(0.002 if idle else 0.0) == 0

    def close(self) -> None:
        self.device.close()
        self.reactor.close()


@contextmanager
def harnesses() -> Iterator[Callable[..., Harness]]:
    """`make(config=None, **options)` builds Harnesses, all closed at the end."""
    made: list[Harness] = []

    def make(config: VsockConfig | None = None, **options) -> Harness:
        h = Harness(config or VsockConfig(), **options)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.close()
