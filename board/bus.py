"""The I/O-port bus and the MMIO bus: devices claim ranges; the vCPU's port hooks and MMIO
callbacks dispatch to them."""
from __future__ import annotations

from typing import Callable, Iterable

from board.interfaces import MmioDevice, PortDevice

_ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


class PortBus:
    """I/O ports 0-0xFFFF. Unclaimed ports read as all ones; writes to them are dropped."""

    def __init__(self) -> None:
        self._devices: dict[int, PortDevice] = {}

    def claim(self, ports: Iterable[int], device: PortDevice) -> None:
        for port in ports:
            if port in self._devices:
                raise ValueError(f"I/O port {port:#x} is claimed twice")
            self._devices[port] = device

    def read(self, port: int, size: int) -> int:
        device = self._devices.get(port)
        if device is None:
            return _ALL_ONES[size]
        return device.port_read(port, size)

    def write(self, port: int, size: int, value: int) -> None:
        device = self._devices.get(port)
        if device is not None:
            device.port_write(port, size, value)


class MmioBus:
    """Device register windows in the guest-physical address space.

    The bus keeps the windows apart and hands each new one to `map_window(base, size,
    device)`, which the machine points at the vCPU (Unicorn calls the device on each
    access to that window only; RAM is never hooked)."""

    def __init__(self, map_window: Callable[[int, int, MmioDevice], None]) -> None:
        self._map_window = map_window
        self.windows: list[tuple[int, int, MmioDevice]] = []

    def map(self, base: int, size: int, device: MmioDevice) -> None:
        for other_base, other_size, _ in self.windows:
            if base < other_base + other_size and other_base < base + size:
                raise ValueError(f"MMIO window {base:#x}+{size:#x} overlaps another")
        self._map_window(base, size, device)
        self.windows.append((base, size, device))
