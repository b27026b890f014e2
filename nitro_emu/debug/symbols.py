"""Kernel symbols from a `System.map` (`ffffffff819c87c0 T start_kernel`), for naming
code addresses in post-mortem reports; and finding the map that belongs to an image's
kernel, and where that kernel really sits (KASLR moves it)."""
from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Callable

from eif.errors import FileError
from eif.files import MIB, InputKind, open_input

# A user-named input (eif.files): a distribution kernel's System.map is about 6 MiB.
SYSTEM_MAP = InputKind("System.map", 256 * MIB)
BANNER = b"Linux version "
_TEXT_TYPES = frozenset("tTwW")
_KASLR_ALIGN = 0x200000       # CONFIG_PHYSICAL_ALIGN: the kernel moves in 2 MiB steps
_KASLR_RANGE = 1 << 30        # and at most 1 GiB (KERNEL_IMAGE_SIZE)


class SymbolError(ValueError):
    """A file that is not a System.map, or one that does not match the running kernel."""


class SystemMap:
    """The text symbols of a kernel, sorted by address, and every symbol by name."""

    def __init__(self, symbols: list[tuple[int, str, str]], source: str = "") -> None:
        self.source = source
        self._by_name = {name: address for address, _, name in symbols}
        text = sorted((address, name) for address, kind, name in symbols if kind in _TEXT_TYPES)
        self._addresses = [address for address, _ in text]
        self._names = [name for _, name in text]

    @classmethod
    def load(cls, path: str | os.PathLike) -> SystemMap:
        """Read a System.map (a regular file within SYSTEM_MAP's limit); SymbolError when
        it cannot be read or has no symbol lines at all."""
        symbols = []
        try:
            with open_input(path, SYSTEM_MAP) as file:
                text = file.read_all().decode("utf-8", "replace")
        except FileError as error:
            raise SymbolError(str(error)) from None
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or len(parts[1]) != 1:
                continue
            try:
                symbols.append((int(parts[0], 16), parts[1], parts[2]))
            except ValueError:
                continue
        if not symbols:
            raise SymbolError(f"{path}: not a System.map (no 'address type name' lines)")
        return cls(symbols, str(path))

    def address_of(self, name: str) -> int | None:
        return self._by_name.get(name)

    def relocated(self, slide: int) -> SystemMap:
        """The same symbols for a kernel moved by `slide` bytes (KASLR)."""
        moved = SystemMap([], self.source)
        moved._by_name = {name: address + slide for name, address in self._by_name.items()}
        moved._addresses = [address + slide for address in self._addresses]
        moved._names = self._names
        return moved

    def function(self, address: int) -> tuple[str, int, int] | None:
        """(name, offset, size) of the text symbol containing `address`, if it is kernel
        text (between _stext/_etext or _sinittext/_einittext)."""
        if not self.is_text(address):
            return None
        index = bisect.bisect_right(self._addresses, address) - 1
        if index < 0:
            return None
        start = self._addresses[index]
        end = self._addresses[index + 1] if index + 1 < len(self._addresses) else start
        return self._names[index], address - start, max(end - start, 0)

    def describe(self, address: int) -> str:
        """`name+0x1a/0x80` as the kernel prints code addresses, or "" when unknown."""
        found = self.function(address)
        if found is None:
            return ""
        name, offset, size = found
        return f"{name}+{offset:#x}/{size:#x}"

    def is_text(self, address: int) -> bool:
        ranges = (("_stext", "_etext"), ("_sinittext", "_einittext"))
        for start_name, end_name in ranges:
            start, end = self.address_of(start_name), self.address_of(end_name)
            if start is not None and end is not None and start <= address < end:
                return True
        return False


def find_slide(symbols: SystemMap, read: Callable[[int, int], bytes]) -> int:
    """How far the running kernel sits from its System.map's addresses: 0 without KASLR,
    else the 2 MiB multiple at which `linux_banner` reads "Linux version ". SymbolError
    when no such place exists (the map belongs to another kernel)."""
    banner = symbols.address_of("linux_banner")
    if banner is None:
        raise SymbolError(f"{symbols.source}: no linux_banner symbol")
    for slide in range(0, _KASLR_RANGE, _KASLR_ALIGN):
        if read(banner + slide, len(BANNER)) == BANNER:
            return slide
    raise SymbolError(f"{symbols.source} does not match the running kernel "
                      "(its linux_banner is not where the map says)")


def system_map_beside(image: str | os.PathLike) -> Path | None:
    """The System.map the guest build keeps beside an image's kernel: for
    build/guest/NAME.eif, build/guest/NAME/System.map."""
    path = Path(image)
    candidate = path.with_suffix("") / "System.map"
    return candidate if candidate.is_file() else None
