"""Puts a Linux kernel, its command line and initrd in guest RAM and sets the vCPU up for
the 64-bit boot protocol entry (boot.rst, "64-bit Boot Protocol"): identity-mapped page
tables, a flat GDT with __BOOT_CS 0x10 / __BOOT_DS 0x18, RSI = boot_params, interrupts
off.

The kernel is decompressed on the host and entered where its own decompressor would jump
(host_decompression.py); a kernel that path cannot take is loaded at 1 MiB and entered at
its decompressor (load address + 0x200), which then runs as emulated code."""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Callable

from construct import Int32ul, Int64ul, Struct

from board.memory import GuestRam
from nitro_emu.boot.bzimage import BadKernelError, BzImage
from nitro_emu.boot.host_decompression import (BackgroundInflation, HostDecompressedKernel,
                                               HostDecompressionUnavailable, decompress_on_host,
                                               decompressor_output_address,
                                               early_console_reason)
from nitro_emu.cpu.vcpu import Vcpu

# Guest-physical layout of the boot structures (all in low RAM, like Firecracker's).
GDT_ADDRESS = 0x500
BOOT_PARAMS_ADDRESS = 0x7000
PML4_ADDRESS = 0x9000
PDPT_ADDRESS = 0xA000
PD_ADDRESS = 0xB000  # four page directories: identity map of the first 4 GiB
CMDLINE_ADDRESS = 0x20000
KERNEL_ADDRESS = 0x100000
LOW_RAM_END = 0x9FC00
BIOS_AREA = (0xF0000, 0x100000)
LA57 = 1 << 16  # CPUID.(7,0):ECX, 5-level paging

BOOT_CS, BOOT_DS = 0x10, 0x18
_GDT = [0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF]  # flat 64-bit code, flat data

# struct boot_params offsets (arch/x86/include/uapi/asm/bootparam.h)
EXT_RAMDISK_IMAGE, EXT_RAMDISK_SIZE, EXT_CMD_LINE_PTR = 0x0C0, 0x0C4, 0x0C8
E820_ENTRIES, E820_TABLE, E820_MAX = 0x1E8, 0x2D0, 128
TYPE_OF_LOADER, LOADFLAGS = 0x210, 0x211
RAMDISK_IMAGE, RAMDISK_SIZE, CMD_LINE_PTR = 0x218, 0x21C, 0x228
LOADER_UNDEFINED = 0xFF
KEEP_SEGMENTS, LOADED_HIGH = 1 << 6, 1 << 0
E820_RAM, E820_RESERVED = 1, 2

E820Entry = Struct("addr" / Int64ul, "size" / Int64ul, "type" / Int32ul)

log = logging.getLogger("nitro_emu.boot")


@dataclass(frozen=True)
class BootLayout:
    """Where things went, for diagnostics and tests."""

    entry: int
    cmdline: str
    initrd_address: int
    initrd_size: int
    # "host": decompressed by the loader, entered at startup_64 of vmlinux; "guest": the
    # kernel's own decompressor runs (then `fallback_reason` says why, when it was asked).
    decompressed_by: str = "guest"
    fallback_reason: str | None = None
    compression: str | None = None


def e820_map(ram_size: int) -> list[tuple[int, int, int]]:
    """RAM below the EBDA, the BIOS area reserved, and everything from 1 MiB."""
    return [(0, LOW_RAM_END, E820_RAM),
            (LOW_RAM_END, 0xA0000 - LOW_RAM_END, E820_RESERVED),
            (BIOS_AREA[0], BIOS_AREA[1] - BIOS_AREA[0], E820_RESERVED),
            (KERNEL_ADDRESS, ram_size - KERNEL_ADDRESS, E820_RAM)]


def start_inflating(kernel: bytes, cmdline: str) -> BackgroundInflation | None:
    """Start inflating the bzImage's kernel in the background, for `load_linux`; None when
    it is no bzImage (load_linux says what is wrong) or when the command line leaves its
    decompression to the kernel itself."""
    if early_console_reason(cmdline) is not None:
        return None
    try:
        return BackgroundInflation(BzImage.parse(kernel), kernel)
    except BadKernelError:
        return None


def load_linux(vcpu: Vcpu, ram: GuestRam, kernel: bytes, cmdline: str, initrd_size: int,
               fill_initrd: Callable[[memoryview], object],
               decompress_on_host_first: bool = True,
               inflation: BackgroundInflation | None = None) -> BootLayout:
    """Load a bzImage, the initrd (`fill_initrd` writes its `initrd_size` bytes into the
    view it is given: guest RAM, no intermediate copy) and point the vCPU at the kernel.
    With `decompress_on_host_first` the host inflates the kernel (or takes `inflation`,
    started by `start_inflating(kernel)`) and the vCPU starts in the kernel proper;
    otherwise, or when that cannot be done as the kernel's decompressor would (one log
    line says why), the vCPU starts in that decompressor."""
    image = BzImage.parse(kernel)
    header = image.header
    payload = memoryview(kernel)[image.protected_mode_offset:]
    init_size = max(header.init_size, len(payload))
    kernel_end = max(KERNEL_ADDRESS + len(payload),
                     decompressor_output_address(image, KERNEL_ADDRESS) + init_size)
    if kernel_end > ram.size:
        raise BadKernelError(
            f"the kernel needs {kernel_end >> 20} MiB to decompress; guest RAM is "
            f"{ram.size >> 20} MiB")
    cmdline_bytes = cmdline.encode() + b"\0"
    if header.cmdline_size and len(cmdline_bytes) - 1 > header.cmdline_size:
        raise BadKernelError(
            f"kernel command line is {len(cmdline_bytes) - 1} bytes; this kernel accepts "
            f"{header.cmdline_size}")

    ram.write(CMDLINE_ADDRESS, cmdline_bytes)
    initrd_address = 0
    if initrd_size:
        limit = min(ram.size, (header.initrd_addr_max or 0x37FFFFFF) + 1)
        initrd_address = (limit - initrd_size) & ~0xFFF
        if initrd_address < kernel_end:
            raise BadKernelError(
                f"the initrd ({initrd_size >> 20} MiB) does not fit in guest RAM above the "
                f"kernel; give the machine more memory")
        fill_initrd(ram.view(initrd_address, initrd_size))
    write_identity_page_tables(ram)
    ram.write(GDT_ADDRESS, struct.pack("<4Q", *_GDT))

    # Last, so that a background inflation had the time the rest took.
    host_kernel, reason = None, None
    if decompress_on_host_first:
        host_kernel, reason = _decompress_on_host(vcpu, image, kernel, cmdline, inflation)
    params = boot_params(image, initrd_address, initrd_size, ram.size)
    if host_kernel is None:
        ram.write(KERNEL_ADDRESS, payload)
        entry = KERNEL_ADDRESS + 0x200
    else:
        host_kernel.load_into(ram)
        host_kernel.edit_boot_params(params, cmdline, ram)
        entry = host_kernel.entry
    ram.write(BOOT_PARAMS_ADDRESS, params)
    enter_long_mode(vcpu, entry)
    return BootLayout(entry, cmdline, initrd_address, initrd_size,
                      "guest" if host_kernel is None else "host", reason,
                      None if host_kernel is None else host_kernel.compression)


def _decompress_on_host(vcpu: Vcpu, image: BzImage, kernel: bytes, cmdline: str,
                        inflation: BackgroundInflation | None
                        ) -> tuple[HostDecompressedKernel | None, str | None]:
    """The kernel inflated on the host, or None and why not (logged)."""
    try:
        la57 = bool(vcpu.cpuid.lookup(7, 0)[2] & LA57)
        return decompress_on_host(image, kernel, cmdline, KERNEL_ADDRESS, la57, inflation), None
    except HostDecompressionUnavailable as why:
        log.warning("nitro-emu: booting through the kernel's own decompressor (slower): %s", why)
        return None, str(why)


def boot_params(image: BzImage, initrd_address: int, initrd_size: int,
                ram_size: int) -> bytearray:
    """The zero page as a boot loader fills it: the setup header, loader type, command
    line and initrd pointers, the E820 map."""
    params = bytearray(4096)
    params[0x1F1:0x1F1 + len(image.header_bytes)] = image.header_bytes
    params[TYPE_OF_LOADER] = LOADER_UNDEFINED
    params[LOADFLAGS] |= LOADED_HIGH
    struct.pack_into("<III", params, RAMDISK_IMAGE, initrd_address & 0xFFFFFFFF, initrd_size, 0)
    struct.pack_into("<I", params, CMD_LINE_PTR, CMDLINE_ADDRESS)
    struct.pack_into("<III", params, EXT_RAMDISK_IMAGE, initrd_address >> 32,
                     initrd_size >> 32, CMDLINE_ADDRESS >> 32)
    entries = e820_map(ram_size)
    params[E820_ENTRIES] = len(entries)
    for index, (address, size, kind) in enumerate(entries):
        offset = E820_TABLE + index * E820Entry.sizeof()
        params[offset:offset + E820Entry.sizeof()] = E820Entry.build(
            dict(addr=address, size=size, type=kind))
    return params


def write_identity_page_tables(ram: GuestRam, flags: int = 0x3) -> None:
    """Identity-map the first 4 GiB with 2 MiB pages (`flags`: present, writable, ...)."""
    ram.write_u64(PML4_ADDRESS, PDPT_ADDRESS | flags)
    for gib in range(4):
        pd = PD_ADDRESS + gib * 0x1000
        ram.write_u64(PDPT_ADDRESS + gib * 8, pd | flags)
        entries = [((gib << 30) + (i << 21)) | flags | 0x80 for i in range(512)]
        ram.write(pd, struct.pack("<512Q", *entries))


def enter_long_mode(vcpu: Vcpu, entry: int) -> None:
    """64-bit mode, paging on with the tables above, flat boot segments, IF clear."""
    vcpu.enter_long_mode(rip=entry, rsi=BOOT_PARAMS_ADDRESS, rsp=BOOT_PARAMS_ADDRESS - 0x10,
                         cr3=PML4_ADDRESS, gdt_base=GDT_ADDRESS, gdt_limit=len(_GDT) * 8 - 1,
                         code_selector=BOOT_CS, data_selector=BOOT_DS)
