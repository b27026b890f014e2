"""The small interfaces through which devices plug into the machine.

Devices depend on these and on `board.memory.GuestRam` / `board.clock.VirtualClock`
only; they never touch Unicorn. Every callback runs on the emulator thread.
"""
from __future__ import annotations

from typing import Callable, Protocol


class IrqLine(Protocol):
    """One interrupt input of the 8259 pair. Edge devices call `pulse()`; level devices
    (virtio-mmio, the UART) hold the line with `set_level()`."""

    def set_level(self, high: bool) -> None: ...

    def pulse(self) -> None: ...


class PortDevice(Protocol):
    """A device on the I/O-port bus. `port` is absolute; `size` is 1, 2 or 4 bytes."""

    def port_read(self, port: int, size: int) -> int: ...

    def port_write(self, port: int, size: int, value: int) -> None: ...


class MmioDevice(Protocol):
    """A device on the MMIO bus. `offset` is relative to the device's base address."""

    def mmio_read(self, offset: int, size: int) -> int: ...

    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


class HostIo(Protocol):
    """The machine's reactor for host file descriptors (sockets, terminal input).

    Callbacks get the ready event mask (selectors.EVENT_READ / EVENT_WRITE) and run on the
    emulator thread between CPU slices, or while the guest idles in HLT."""

    def register(self, fileobj: object, events: int, callback: Callable[[int], None]) -> None: ...

    def modify(self, fileobj: object, events: int, callback: Callable[[int], None]) -> None: ...

    def unregister(self, fileobj: object) -> None: ...
