"""What a virtio device backend (vsock, NSM, ...) implements to sit behind the MMIO
transport. The transport owns feature negotiation, status and queue set-up; the backend
only sees activated queues and notifications."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from devices.virtio.queue import Virtqueue
    from board.memory import GuestRam

VIRTIO_F_VERSION_1 = 1 << 32


class VirtioDevice(ABC):
    """A virtio device backend.

    `device_id` is the virtio device type (19 vsock, 33 NSM); `queue_max_sizes` gives the
    number of queues and each queue's maximum size. The transport calls `activate` once the
    driver sets DRIVER_OK, `notify` when the driver writes QueueNotify, and `reset` when the
    driver writes 0 to Status. `interrupt()` (given at activation) raises the used-buffer
    interrupt. A backend that finds the guest's data malformed raises
    `devices.virtio.queue.VirtqueueError`; the transport then sets DEVICE_NEEDS_RESET.
    """

    device_id: int
    queue_max_sizes: tuple[int, ...]

    def device_features(self) -> int:
        """Feature bits offered (VIRTIO_F_VERSION_1 is added by the transport)."""
        return 0

    def read_config(self, offset: int, size: int) -> int:
        """Read from the device-specific configuration space (offset from 0x100)."""
        return 0

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Write to the configuration space; ignored unless the device has writable fields."""

    @abstractmethod
    def activate(self, memory: GuestRam, queues: list[Virtqueue],
                 interrupt: Callable[[], None]) -> None:
        """The driver is ready: start using `queues` (index order as in queue_max_sizes)."""

    @abstractmethod
    def notify(self, queue_index: int) -> None:
        """The driver made buffers available on queue `queue_index`."""

    def reset(self) -> None:
        """The driver reset the device: drop all state tied to the queues."""

    # -- set by the transport ---------------------------------------------------------

    _error_handler: Callable[[Exception], None] | None = None

    def set_error_handler(self, handler: Callable[[Exception], None] | None) -> None:
        """The transport's hook for errors found outside its own calls (see report_error)."""
        self._error_handler = handler

    def report_error(self, error: Exception) -> None:
        """Report malformed guest data found while working outside `notify` (e.g. in a
        host-I/O callback): the transport sets DEVICE_NEEDS_RESET and logs it. Without a
        transport the error is raised."""
        if self._error_handler is None:
            raise error
        self._error_handler(error)
