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
