"""How a byte-wide register file answers 16- and 32-bit port accesses.

The legacy PC chips decode 8-bit accesses only. A wider IN/OUT reaches consecutive byte
ports, as the ISA bus splits it, so `inw 0x20` reads 0x20 then 0x21. Ports the device does
not decode read as 0xFF and ignore writes, like an unclaimed ISA address.
"""
from __future__ import annotations

from typing import Callable


def read_wide(read_byte: Callable[[int], int], port: int, size: int) -> int:
    """Compose a `size`-byte read from byte reads at port, port+1, ... (little-endian)."""
    value = 0
    for i in range(size):
        value |= (read_byte(port + i) & 0xFF) << (8 * i)
    return value


def write_wide(write_byte: Callable[[int, int], None], port: int, size: int, value: int) -> None:
    """Split a `size`-byte write into byte writes at port, port+1, ... (little-endian)."""
    for i in range(size):
        write_byte(port + i, (value >> (8 * i)) & 0xFF)


class ByteRegisterPorts:
    """The bus side of a chip whose registers are byte ports: `_readers` and `_writers`
    map a port to the function serving it (set by the subclass); wider accesses are split
    into byte accesses; unclaimed ports read 0xFF and drop writes."""

    _readers: dict[int, Callable[[], int]]
    _writers: dict[int, Callable[[int], None]]

    def port_read(self, port: int, size: int) -> int:
        if size == 1:
            reader = self._readers.get(port)
            return reader() if reader is not None else 0xFF
        return read_wide(self._read_byte, port, size)

    def port_write(self, port: int, size: int, value: int) -> None:
        if size == 1:
            writer = self._writers.get(port)
            if writer is not None:
                writer(value & 0xFF)
            return
        write_wide(self._write_byte, port, size, value)

    def _read_byte(self, port: int) -> int:
        reader = self._readers.get(port)
        return reader() if reader is not None else 0xFF

    def _write_byte(self, port: int, value: int) -> None:
        writer = self._writers.get(port)
        if writer is not None:
            writer(value)
