"""Guest RAM: one host buffer that Unicorn maps with `mem_map_ptr` and devices read and
write through memoryviews, every guest-supplied range checked first."""
from __future__ import annotations

import ctypes
import mmap
import struct


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemoryError(ValueError):
    """The guest handed a device an address or length outside guest RAM."""


class GuestRam:
    """Guest-physical RAM from address 0 to `size` (a multiple of 4 KiB)."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % 4096:
            raise ValueError(f"guest RAM size must be a positive multiple of 4 KiB, not {size}")
        self.size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        # Transparent huge pages where the host allows them on request (as QEMU asks for
        # its guest RAM): one host fault per 2 MiB instead of per 4 KiB the guest first
        # touches, and fewer host TLB misses in translated code.
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self._map.madvise(mmap.MADV_HUGEPAGE)
        self._view = memoryview(self._map)
        self._ctype = ctypes.c_char.from_buffer(self._map)

    @property
    def buffer(self) -> mmap.mmap:
        """The whole of RAM as one buffer, for `struct.unpack_from` on hot paths that have
        already checked their range (the vCPU's page walker)."""
        return self._map

    @property
    def host_address(self) -> int:
        """Address of the buffer in this process, for `Uc.mem_map_ptr`."""
        return ctypes.addressof(self._ctype)

    def check(self, addr: int, length: int) -> None:
        """Raise GuestMemoryError unless [addr, addr+length) lies inside RAM."""
        if addr < 0 or length < 0 or addr + length > self.size:
            raise GuestMemoryError(
                f"guest range 0x{addr:x}+0x{length:x} is outside RAM (0x{self.size:x} bytes)")

    def view(self, addr: int, length: int) -> memoryview:
        """A writable view of guest RAM; valid for as long as the machine lives."""
        self.check(addr, length)
        return self._view[addr:addr + length]

    def read(self, addr: int, length: int) -> bytes:
        self.check(addr, length)
        return self._map[addr:addr + length]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        self.check(addr, length)
        self._view[addr:addr + length] = data

    def read_u16(self, addr: int) -> int:
        self.check(addr, 2)
        return _U16.unpack_from(self._map, addr)[0]

    def read_u32(self, addr: int) -> int:
        self.check(addr, 4)
        return _U32.unpack_from(self._map, addr)[0]

    def read_u64(self, addr: int) -> int:
        self.check(addr, 8)
        return _U64.unpack_from(self._map, addr)[0]

    def write_u16(self, addr: int, value: int) -> None:
        self.check(addr, 2)
        _U16.pack_into(self._map, addr, value)

    def write_u32(self, addr: int, value: int) -> None:
        self.check(addr, 4)
        _U32.pack_into(self._map, addr, value)

    def write_u64(self, addr: int, value: int) -> None:
        self.check(addr, 8)
        _U64.pack_into(self._map, addr, value)
