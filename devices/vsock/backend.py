"""What the virtio-vsock device needs from whatever stands behind it (Firecracker's
VsockChannel/VsockBackend traits). `devices.vsock.muxer.VsockMuxer`, the parent instance
at CID 3, implements it."""
from __future__ import annotations

from typing import Callable, Protocol

from devices.virtio.queue import DescriptorChain
from devices.vsock.packet import Header


class VsockBackend(Protocol):
    """Packets in both directions between the device's queues and the host.

    The device has already checked every tx packet it hands over: `src_cid` is the guest's,
    `len` fits MAX_PKT_PAYLOAD and the chain. All calls come from the emulator thread."""

    def send_pkt(self, hdr: Header, payload: list[memoryview]) -> None:
        """A packet from the guest; `payload` holds exactly `hdr.len` bytes, as views into
        guest memory that are valid only during the call."""

    def reject_pkt(self, hdr: Header) -> None:
        """A packet from the guest whose length does not fit (reset its connection, or
        answer RST)."""

    def has_pending_rx(self) -> bool:
        """Whether `recv_pkt` may have a packet for the guest."""

    def recv_pkt(self, chain: DescriptorChain) -> int:
        """Write the next packet for the guest into `chain` (at least a header's worth of
        writable bytes); return the bytes used, 0 if there was nothing after all."""

    def set_rx_notifier(self, notify: Callable[[], None]) -> None:
        """`notify()` is to be called when host events or timers produced output for the
        guest (never from inside `send_pkt` or `recv_pkt`)."""

    def reset(self) -> None:
        """The guest's driver is gone (device reset or transport reset event): drop every
        connection it had, without telling it."""

    def close(self) -> None:
        """The machine stops: release every host socket and listener."""
