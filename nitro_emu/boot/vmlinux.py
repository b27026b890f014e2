"""The decompressed kernel: vmlinux.bin (the stripped ELF) and, when the kernel was built
with them, the vmlinux.relocs table after it (arch/x86/boot/compressed/Makefile). What
parse_elf() and handle_relocations() in arch/x86/boot/compressed/misc.c read, checked as
untrusted input: anything malformed raises `VmlinuxError` with one line.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from construct import Bytes, Const, ConstructError, Int8ul, Int16ul, Int32ul, Int64ul, \
    StreamError, Struct

from nitro_emu.boot.bzimage import BadKernelError

ELF_MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB, EM_X86_64 = 2, 1, 62
PT_LOAD = 1
MIN_KERNEL_ALIGN = 0x200000  # parse_elf: "Alignment of LOAD segment isn't multiple of 2MB"
MAX_SEGMENTS = 64
START_KERNEL_MAP = 0xFFFFFFFF80000000  # __START_KERNEL_map

Elf64Header = Struct(
    "magic" / Const(ELF_MAGIC),
    "elf_class" / Int8ul,
    "data" / Int8ul,
    "ident_rest" / Bytes(10),
    "type" / Int16ul,
    "machine" / Int16ul,
    "version" / Int32ul,
    "entry" / Int64ul,
    "phoff" / Int64ul,
    "shoff" / Int64ul,
    "flags" / Int32ul,
    "ehsize" / Int16ul,
    "phentsize" / Int16ul,
    "phnum" / Int16ul,
    "shentsize" / Int16ul,
    "shnum" / Int16ul,
    "shstrndx" / Int16ul,
)
Elf64ProgramHeader = Struct(
    "type" / Int32ul,
    "flags" / Int32ul,
    "offset" / Int64ul,
    "vaddr" / Int64ul,
    "paddr" / Int64ul,
    "filesz" / Int64ul,
    "memsz" / Int64ul,
    "align" / Int64ul,
)


class VmlinuxError(BadKernelError):
    """The decompressed kernel is not an x86-64 vmlinux this machine can place."""


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD segment: `filesz` bytes from `offset` go to physical `paddr`; the rest of
    `memsz` (.bss, .brk) is zero."""

    paddr: int
    offset: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class Relocations:
    """vmlinux.relocs: kernel virtual addresses (sign-extended 32-bit) of the 64-bit
    pointers, the inverse 32-bit and the 32-bit references to move with the kernel."""

    addresses64: tuple[int, ...]
    inverse32: tuple[int, ...]
    addresses32: tuple[int, ...]


@dataclass(frozen=True)
class Vmlinux:
    """The kernel as parse_elf() sees it."""

    data: bytes
    entry: int                      # physical, as linked (phys_startup_64)
    segments: tuple[Segment, ...]
    relocations: Relocations | None  # None: the kernel carries no vmlinux.relocs

    @property
    def start(self) -> int:
        """The lowest physical address a segment is linked at."""
        return min(segment.paddr for segment in self.segments)

    @property
    def end(self) -> int:
        """The end of the highest segment in memory (_end: text, data, .bss, .brk)."""
        return max(segment.paddr + segment.memsz for segment in self.segments)

    @classmethod
    def parse(cls, data: bytes, load_physical_addr: int) -> "Vmlinux":
        """Parse vmlinux.bin[+relocs]; every segment must be linked at or above
        LOAD_PHYSICAL_ADDR (its offset from there is where parse_elf moves it)."""
        try:
            header = Elf64Header.parse(data)
        except StreamError:
            raise VmlinuxError("decompressed kernel is too short for an ELF header") from None
        except ConstructError:
            raise VmlinuxError("decompressed kernel is not an ELF file (bad magic)") from None
        if header.elf_class != ELFCLASS64 or header.data != ELFDATA2LSB \
                or header.machine != EM_X86_64:
            raise VmlinuxError("decompressed kernel is not a little-endian x86-64 ELF file")
        headers = _program_headers(data, header)
        segments = _load_segments(headers, len(data), load_physical_addr)
        entry = header.entry
        if not any(s.paddr <= entry < s.paddr + s.filesz for s in segments):
            raise VmlinuxError(f"kernel entry point {entry:#x} is outside its loaded segments")
        elf_size = _elf_size(data, header, headers)
        return cls(data, entry, segments, _relocations(data, elf_size))


def _program_headers(data: bytes, header) -> list:
    if header.phentsize != Elf64ProgramHeader.sizeof():
        raise VmlinuxError(f"ELF program headers are {header.phentsize} bytes, not 56")
    if not 0 < header.phnum <= MAX_SEGMENTS:
        raise VmlinuxError(f"ELF file has {header.phnum} program headers")
    if header.phoff + header.phnum * header.phentsize > len(data):
        raise VmlinuxError("ELF program headers run past the end of the decompressed kernel")
    return [Elf64ProgramHeader.parse(data[header.phoff + index * header.phentsize:
                                          header.phoff + (index + 1) * header.phentsize])
            for index in range(header.phnum)]


def _load_segments(headers: list, data_size: int, load_physical_addr: int) -> tuple[Segment, ...]:
    segments = []
    for index, ph in enumerate(headers):
        if ph.type != PT_LOAD:
            continue
        if ph.align % MIN_KERNEL_ALIGN:
            raise VmlinuxError(f"LOAD segment {index} is aligned to {ph.align:#x}, not a "
                               "multiple of 2 MiB")
        if ph.filesz > ph.memsz:
            raise VmlinuxError(f"LOAD segment {index} has more file bytes than memory")
        if ph.offset + ph.filesz > data_size:
            raise VmlinuxError(f"LOAD segment {index} runs past the end of the decompressed "
                               "kernel")
        if ph.paddr < load_physical_addr or ph.paddr + ph.memsz > 1 << 46:
            raise VmlinuxError(f"LOAD segment {index} is linked at {ph.paddr:#x}, outside the "
                               f"kernel's range from {load_physical_addr:#x}")
        segments.append(Segment(ph.paddr, ph.offset, ph.filesz, ph.memsz))
    if not segments:
        raise VmlinuxError("ELF file has no LOAD segment")
    return tuple(segments)


def _elf_size(data: bytes, header, headers: list) -> int:
    """Where vmlinux.bin ends: after its section header table (objcopy keeps it last), or
    its last segment's bytes if that comes later."""
    ends = [header.phoff + header.phnum * header.phentsize]
    ends += [ph.offset + ph.filesz for ph in headers]
    if header.shnum:
        ends.append(header.shoff + header.shnum * header.shentsize)
    size = max(ends)
    if size > len(data):
        raise VmlinuxError("ELF section headers run past the end of the decompressed kernel")
    return size


def _relocations(data: bytes, elf_size: int) -> Relocations | None:
    """vmlinux.relocs after the ELF file, read backwards from the end as
    handle_relocations() does: 32-bit entries up to a zero, inverse 32-bit entries up to a
    zero, 64-bit entries up to a zero, which must be the table's first word."""
    tail = len(data) - elf_size
    if tail == 0:
        return None
    if tail % 4 or tail < 12:
        raise VmlinuxError(f"{tail} bytes after the kernel's ELF file are not a relocation table")
    words = struct.unpack_from(f"<{tail // 4}i", data, elf_size)
    lists: list[tuple[int, ...]] = []
    end = len(words)
    for _ in range(3):
        start = end
        while start > 0 and words[start - 1] != 0:
            start -= 1
        if start == 0:
            raise VmlinuxError("bytes after the kernel's ELF file are not a relocation table "
                               "(a terminator is missing)")
        lists.append(tuple(reversed(words[start:end])))
        end = start - 1
    if end != 0:
        raise VmlinuxError("bytes after the kernel's ELF file are not a relocation table")
    addresses32, inverse32, addresses64 = lists
    return Relocations(addresses64, inverse32, addresses32)


def apply_relocations(image: memoryview, relocations: Relocations, delta: int,
                      load_physical_addr: int) -> None:
    """Move the kernel's virtual base by `delta` (handle_relocations() for x86-64): `image`
    is guest memory from the kernel's load address, laid out as vmlinux links it; each
    entry's sign-extended kernel address minus __START_KERNEL_map + LOAD_PHYSICAL_ADDR is
    its offset there, and must fall inside the image."""
    base = START_KERNEL_MAP + load_physical_addr
    limit = len(image)

    def offset_of(address: int, width: int, kind: str) -> int:
        offset = (address & 0xFFFFFFFFFFFFFFFF) - base
        if not 0 <= offset <= limit - width:
            raise VmlinuxError(f"{kind} relocation at {address & 0xFFFFFFFFFFFFFFFF:#x} is "
                               "outside the kernel")
        return offset

    for address in relocations.addresses32:
        offset = offset_of(address, 4, "32-bit")
        value = struct.unpack_from("<I", image, offset)[0]
        struct.pack_into("<I", image, offset, (value + delta) & 0xFFFFFFFF)
    for address in relocations.inverse32:
        offset = offset_of(address, 4, "inverse 32-bit")
        value = struct.unpack_from("<I", image, offset)[0]
        struct.pack_into("<I", image, offset, (value - delta) & 0xFFFFFFFF)
    for address in relocations.addresses64:
        offset = offset_of(address, 8, "64-bit")
        value = struct.unpack_from("<Q", image, offset)[0]
        struct.pack_into("<Q", image, offset, (value + delta) & 0xFFFFFFFFFFFFFFFF)
