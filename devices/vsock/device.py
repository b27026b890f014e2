"""The virtio-vsock device (id 19): queues, config space, activation and reset, and nothing
of connections, which live in its backend (`devices.vsock.backend.VsockBackend`).

Queues: 0 rx (device -> guest), 1 tx (guest -> device), 2 event. Config space: le64
guest_cid. The tx queue is always drained at once, whatever the state of rx; output for
the guest waits in the backend until the guest posts rx buffers, which are then filled in
one batch with one interrupt.

A tx packet is checked before the backend sees it: only its 44-byte header is ever
gathered, its length is checked against MAX_PKT_PAYLOAD and the chain, and the payload is
handed over as views of at most that length into guest memory, never copied here.
"""
from __future__ import annotations

import logging
from itertools import islice
from typing import Callable

from board.memory import GuestRam
from devices.virtio.device import VirtioDevice
from devices.virtio.queue import DescriptorChain, Virtqueue, VirtqueueError
from devices.vsock import packet as P
from devices.vsock.backend import VsockBackend
from devices.vsock.limits import GuestWarnings

log = logging.getLogger("nitro_emu.vsock")

RX, TX, EVENT = 0, 1, 2
QUEUE_SIZES = (256, 256, 64)
_HEADER = P.HEADER
_HEADER_SIZE = P.HEADER_SIZE
_make_header = P.Header._make


class VirtioVsock(VirtioDevice):
    """virtio-vsock for a guest at `guest_cid` (checked by whoever builds it:
    `parent.VsockDevice`), moving packets between its queues and `backend`."""

    device_id = 19
    queue_max_sizes = QUEUE_SIZES

    def __init__(self, guest_cid: int, backend: VsockBackend) -> None:
        self.guest_cid = guest_cid
        self.backend = backend
        self._queues: list[Virtqueue] | None = None
        self._interrupt: Callable[[], None] | None = None
        self._broken = False
        self._guest_warning = GuestWarnings(log)
        backend.set_rx_notifier(self.kick)

    # -- VirtioDevice -------------------------------------------------------------------

    def device_features(self) -> int:
        return P.VIRTIO_VSOCK_F_STREAM | P.VIRTIO_VSOCK_F_SEQPACKET

    def read_config(self, offset: int, size: int) -> int:
        if offset < 0 or size <= 0 or offset + size > 8:
            return 0
        return (self.guest_cid >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def activate(self, memory: GuestRam, queues: list[Virtqueue],
                 interrupt: Callable[[], None]) -> None:
        self._queues = queues
        self._interrupt = interrupt
        self._broken = False
        self.kick()

    def notify(self, queue_index: int) -> None:
        if self._queues is None or self._broken:
            return
        try:
            if queue_index == TX:
                self._process_tx()
            if queue_index in (TX, RX):
                self._fill_rx()
        except VirtqueueError:
            self._broken = True
            raise

    def reset(self) -> None:
        """Driver reset: every guest connection is gone (host sockets closed)."""
        self.backend.reset()
        self._queues = None
        self._interrupt = None
        self._broken = False

    def close(self) -> None:
        """Machine shutdown: the backend closes every host socket and listener."""
        self.reset()
        self.backend.close()

    def kick(self) -> None:
        """Move the backend's pending output to the guest now (its rx notifier)."""
        if self._queues is None or self._broken:
            return
        try:
            self._fill_rx()
        except VirtqueueError as error:
            self._broken = True
            self.report_error(error)

    # -- guest -> backend ---------------------------------------------------------------

    def _process_tx(self) -> None:
        txq = self._queues[TX]
        handled = False
        for chain in iter(txq.pop, None):
            try:
                self._handle_tx(chain)
            finally:
                txq.push(chain, 0)
            handled = True
        if handled and txq.needs_interrupt():
            self._interrupt()

    def _handle_tx(self, chain: DescriptorChain) -> None:
        total = chain.readable_length - _HEADER_SIZE
        if total < 0:
            self._guest_warning("vsock: tx chain %d holds %d bytes, less than a header; "
                                "dropped", chain.head, chain.readable_length)
            return
        readable = chain.readable
        first = readable[0]
        if len(first) >= _HEADER_SIZE:
            hdr = _make_header(_HEADER.unpack_from(first))
            rest, next_index = first[_HEADER_SIZE:], 1
        else:
            raw, rest, next_index = _gather_header(readable)
            hdr = _make_header(_HEADER.unpack(raw))
        if hdr.src_cid != self.guest_cid:
            self._guest_warning("vsock: packet from CID %d, not the guest's %d; dropped",
                                hdr.src_cid, self.guest_cid)
            return
        length = hdr.len
        if length > total or length > P.MAX_PKT_PAYLOAD:
            self._guest_warning("vsock: header says %d payload bytes, chain holds %d "
                                "(at most %d allowed); rejected", length, total,
                                P.MAX_PKT_PAYLOAD)
            self.backend.reject_pkt(hdr)
            return
        if not rest and length == total:    # Linux: the header alone in its descriptor
            self.backend.send_pkt(hdr, readable[next_index:])
        else:
            self.backend.send_pkt(hdr, _payload(rest, readable, next_index, length))

    # -- backend -> guest ---------------------------------------------------------------

    def _fill_rx(self) -> None:
        backend = self.backend
        if not backend.has_pending_rx():
            return
        rxq = self._queues[RX]
        pushed = False
        for chain in iter(rxq.pop, None):
            if chain.writable_length < _HEADER_SIZE:
                raise VirtqueueError(f"rx buffer of {chain.writable_length} bytes is "
                                     "smaller than the 44-byte vsock header")
            used = backend.recv_pkt(chain)
            if not used:
                rxq.unpop()
                break
            rxq.push(chain, used)
            pushed = True
            if not backend.has_pending_rx():
                break
        if pushed and rxq.needs_interrupt():
            self._interrupt()

    def send_transport_reset(self) -> bool:
        """Tell the guest to drop every connection and re-read guest_cid (event id 0).
        Returns False if the guest posted no event buffer."""
        if self._queues is None or self._broken:
            return False
        evq = self._queues[EVENT]
        chain = evq.pop()
        if chain is None:
            return False
        if chain.writable_length < 4:
            self._broken = True
            self.report_error(VirtqueueError("event buffer shorter than 4 bytes"))
            return False
        evq.push(chain, chain.write(b"\0\0\0\0"))
        self.backend.reset()
        if evq.needs_interrupt():
            self._interrupt()
        return True


def _gather_header(readable: list[memoryview]) -> tuple[bytes, memoryview, int]:
    """A header split over descriptors: (its 44 bytes, the rest of the descriptor it ends
    in, the index of the next descriptor). The chain holds at least 44 readable bytes."""
    raw = bytearray()
    index = 0
    while True:
        buf = readable[index]
        index += 1
        need = _HEADER_SIZE - len(raw)
        raw += buf[:need]
        if len(raw) == _HEADER_SIZE:
            return bytes(raw), buf[need:], index


def _payload(rest: memoryview, readable: list[memoryview], next_index: int,
             length: int) -> list[memoryview]:
    """Views of the `length` payload bytes that follow the header (the chain holds them)."""
    if len(rest) >= length:
        return [rest[:length]] if length else []
    out = [rest] if len(rest) else []
    left = length - len(rest)
    for buf in islice(readable, next_index, None):
        if len(buf) >= left:
            out.append(buf[:left])
            break
        if len(buf):
            out.append(buf)
            left -= len(buf)
    return out
