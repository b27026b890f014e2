"""The I/O-port bus and the MMIO bus: devices claim ranges; the vCPU's hooks and Unicorn's
MMIO callbacks dispatch to them."""
from __future__ import annotations

from typing import Iterable

import unicorn

from nitro_emu.interfaces import MmioDevice, PortDevice

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
    """Device register windows mapped into Unicorn with `mmio_map` (one callback per
    access to that window only; RAM is never hooked)."""

    def __init__(self, uc: unicorn.Uc) -> None:
        self._uc = uc
        self.windows: list[tuple[int, int, MmioDevice]] = []

    def map(self, base: int, size: int, device: MmioDevice) -> None:
        for other_base, other_size, _ in self.windows:
            if base < other_base + other_size and other_base < base + size:
                raise ValueError(f"MMIO window {base:#x}+{size:#x} overlaps another")

        def read(uc: unicorn.Uc, offset: int, access_size: int, _: object) -> int:
            return device.mmio_read(offset, access_size)

        def write(uc: unicorn.Uc, offset: int, access_size: int, value: int, _: object) -> None:
            device.mmio_write(offset, access_size, value)

        self._uc.mmio_map(base, size, read, None, write, None)
        self.windows.append((base, size, device))
