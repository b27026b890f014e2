"""The fast path of the boot: the host decompresses the bzImage's kernel and places it as
the kernel's own decompressor would (arch/x86/boot/compressed/: head_64.S picks the
address, misc.c extract_kernel() inflates, parse_elf() moves the PT_LOAD segments,
handle_relocations() applies vmlinux.relocs when KASLR moves the virtual base), edits
boot_params as extract_kernel() does, and the vCPU enters the kernel proper
(startup_64 of vmlinux) with RSI = boot_params. Emulated, that decompressor is most of a
small kernel's boot time.

A kernel or command line this path cannot take exactly as the decompressor would raises
`HostDecompressionUnavailable` with the reason; the loader then runs the decompressor.
"""
from __future__ import annotations

import secrets
import struct
import threading
from dataclasses import dataclass

from board.memory import GuestRam
from nitro_emu.boot.bzimage import BzImage
from nitro_emu.boot.cmdline import find_option, find_option_bool
from nitro_emu.boot.payload import PayloadError, compression_of, decompress_payload
from nitro_emu.boot.vmlinux import (MIN_KERNEL_ALIGN, Vmlinux, VmlinuxError,
                                    apply_relocations)
from nitro_emu.errors import NitroEmuError

KASLR_FLAG = 1 << 1                     # loadflags
XLF_5LEVEL_ENABLED = 1 << 6             # xloadflags: built with CONFIG_X86_5LEVEL
XLF_MEM_ENCRYPTION = 1 << 7
KERNEL_IMAGE_SIZE_KASLR = 1 << 30       # x86-64 KERNEL_IMAGE_SIZE with RANDOMIZE_BASE
LOWEST_RUN_ADDRESS = 0x100000           # below: the boot structures and the BIOS areas
# struct boot_params offsets (arch/x86/include/uapi/asm/bootparam.h)
ACPI_RSDP_ADDR, LOADFLAGS, XLOADFLAGS = 0x070, 0x211, 0x236
# ACPI's RSDP search (drivers/acpi/acpica/actables.h, compressed/acpi.c)
EBDA_POINTER, EBDA_WINDOW = 0x40E, 1024
HIGH_RSDP_WINDOW = (0xE0000, 0x20000)
RSDP_SIGNATURE = b"RSD PTR "


class HostDecompressionUnavailable(NitroEmuError):
    """The kernel's own decompressor has to run (the message says why)."""


@dataclass(frozen=True)
class HostDecompressedKernel:
    """A kernel inflated on the host, and where it goes."""

    compression: str
    vmlinux: Vmlinux
    load_physical_addr: int   # LOAD_PHYSICAL_ADDR: what the ELF is linked for
    load_address: int         # where it runs (the decompressor's `output`)
    virtual_base: int         # virt_addr: LOAD_PHYSICAL_ADDR unless KASLR moved it
    kaslr: bool               # KASLR chose the addresses (KASLR_FLAG for the kernel)

    @property
    def entry(self) -> int:
        """Physical address of the kernel's startup_64."""
        return self.load_address + self.vmlinux.entry - self.load_physical_addr

    def load_into(self, ram: GuestRam) -> None:
        """parse_elf() and handle_relocations(): the PT_LOAD segments at their place from
        the load address (the rest of each segment's memory zeroed), then the virtual
        base moved when KASLR chose another."""
        data, base = self.vmlinux.data, self.load_address - self.load_physical_addr
        for segment in self.vmlinux.segments:
            address = base + segment.paddr
            ram.write(address, memoryview(data)[segment.offset:segment.offset + segment.filesz])
            bss = segment.memsz - segment.filesz
            if bss:
                ram.view(address + segment.filesz, bss)[:] = bytes(bss)
        delta = self.virtual_base - self.load_physical_addr
        if delta and self.vmlinux.relocations is not None:
            size = self.vmlinux.end - self.load_physical_addr
            apply_relocations(ram.view(self.load_address, size), self.vmlinux.relocations,
                              delta, self.load_physical_addr)

    def edit_boot_params(self, params: bytearray, cmdline: str, ram: GuestRam) -> None:
        """What extract_kernel() changes in boot_params before the kernel reads it."""
        params[LOADFLAGS] &= ~KASLR_FLAG & 0xFF
        if self.kaslr:
            params[LOADFLAGS] |= KASLR_FLAG
        if find_option_bool(cmdline, "mem_encrypt=on") > find_option_bool(cmdline, "mem_encrypt=off"):
            xloadflags = struct.unpack_from("<H", params, XLOADFLAGS)[0]
            struct.pack_into("<H", params, XLOADFLAGS, xloadflags | XLF_MEM_ENCRYPTION)
        if not struct.unpack_from("<Q", params, ACPI_RSDP_ADDR)[0]:
            struct.pack_into("<Q", params, ACPI_RSDP_ADDR, find_rsdp(ram))


def find_rsdp(ram: GuestRam) -> int:
    """The ACPI RSDP a BIOS would have left: in the first KiB of the EBDA or in
    0xE0000-0xFFFFF, on a 16-byte boundary, with valid checksums; 0 when there is none
    (compressed/acpi.c bios_get_rsdp_addr)."""
    windows = [HIGH_RSDP_WINDOW]
    ebda = ram.read_u16(EBDA_POINTER) << 4
    if ebda > 0x400:
        windows.insert(0, (ebda, EBDA_WINDOW))
    for start, length in windows:
        length = min(length, ram.size - start)
        block = ram.read(start, length) if length > 0 else b""
        at = block.find(RSDP_SIGNATURE)
        while at >= 0:
            if at % 16 == 0 and _rsdp_checksums_ok(block[at:at + 36]):
                return start + at
            at = block.find(RSDP_SIGNATURE, at + 1)
    return 0


def _rsdp_checksums_ok(rsdp: bytes) -> bool:
    if len(rsdp) < 20 or sum(rsdp[:20]) & 0xFF:
        return False
    return rsdp[15] < 2 or (len(rsdp) == 36 and not sum(rsdp) & 0xFF)


def decompressor_output_address(image: BzImage, load_address: int) -> int:
    """Where the decompressor puts the kernel (compressed/head_64.S, startup_64): a
    relocatable kernel runs where it was loaded, rounded up to kernel_alignment, but not
    below LOAD_PHYSICAL_ADDR; any other at LOAD_PHYSICAL_ADDR."""
    header = image.header
    if header.relocatable_kernel and header.kernel_alignment:
        alignment = header.kernel_alignment
        aligned = (load_address + alignment - 1) & -alignment
        return max(aligned, header.pref_address)
    return header.pref_address


@dataclass(frozen=True)
class InflatedKernel:
    """The payload inflated and its ELF read (misc.c decompress_kernel() and parse_elf()
    up to the copying)."""

    compression: str
    vmlinux: Vmlinux


def inflate_kernel(image: BzImage, kernel: bytes) -> InflatedKernel:
    """Find, inflate and parse the bzImage's payload; HostDecompressionUnavailable says
    why it cannot be (the kernel's own decompressor then gets to try)."""
    header = image.header
    start = image.protected_mode_offset + header.payload_offset
    if not header.payload_offset or not header.payload_length \
            or start + header.payload_length > len(kernel):
        raise HostDecompressionUnavailable(
            "the bzImage's payload_offset/payload_length do not point at its compressed kernel")
    payload = memoryview(kernel)[start:start + header.payload_length]
    try:
        compression = compression_of(payload)
        vmlinux = Vmlinux.parse(decompress_payload(payload, header.init_size),
                                header.pref_address)
    except (PayloadError, VmlinuxError) as error:
        raise HostDecompressionUnavailable(str(error)) from None
    if vmlinux.end - header.pref_address > header.init_size:
        raise HostDecompressionUnavailable(
            f"the kernel's segments end {vmlinux.end - header.pref_address:#x} bytes past its "
            f"start, beyond the bzImage's init_size {header.init_size:#x}")
    return InflatedKernel(compression, vmlinux)


class BackgroundInflation:
    """`inflate_kernel` in a worker thread, so that the machine is wired meanwhile (the
    decompressors release the GIL while they inflate); `result()` waits for it."""

    def __init__(self, image: BzImage, kernel: bytes) -> None:
        self._outcome: InflatedKernel | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(image, kernel),
                                        name="nitro-emu-inflate", daemon=True)
        self._thread.start()

    def _run(self, image: BzImage, kernel: bytes) -> None:
        try:
            self._outcome = inflate_kernel(image, kernel)
        except BaseException as error:  # handed to the thread that waits for the result
            self._outcome = error

    def result(self) -> InflatedKernel:
        self._thread.join()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome


def decompress_on_host(image: BzImage, kernel: bytes, cmdline: str, load_address: int,
                       cpu_has_la57: bool,
                       inflation: BackgroundInflation | None = None) -> HostDecompressedKernel:
    """Inflate (or take `inflation`'s result) and check the kernel, and choose where it
    goes; raise HostDecompressionUnavailable when only the kernel's own decompressor can
    boot it as it would boot itself."""
    header = image.header
    _check_nothing_to_emulate(header, cmdline, cpu_has_la57)
    output = decompressor_output_address(image, load_address)
    if output % MIN_KERNEL_ALIGN or output < LOWEST_RUN_ADDRESS:
        raise HostDecompressionUnavailable(
            f"the kernel would run at {output:#x}, which is not 2 MiB aligned above 1 MiB")
    inflated = inflation.result() if inflation is not None else inflate_kernel(image, kernel)
    vmlinux = inflated.vmlinux
    virtual_base, kaslr = _choose_virtual_base(image, vmlinux, cmdline, len(vmlinux.data))
    return HostDecompressedKernel(inflated.compression, vmlinux, header.pref_address, output,
                                  virtual_base, kaslr)


def early_console_reason(cmdline: str) -> str | None:
    """Why the command line needs the kernel's own decompressor (it prints on an early
    serial console, compressed/early_serial_console.c), or None."""
    early = find_option(cmdline, "earlyprintk")
    console = find_option(cmdline, "console") or ""
    if (early is not None and early.startswith(("serial", "ttyS"))) \
            or console.startswith(("uart8250,io,", "uart,io,")):
        return ("the command line gives the decompressor an early serial console "
                "(earlyprintk=serial/ttyS or console=uart,io), whose output only it can print")
    return None


def _check_nothing_to_emulate(header, cmdline: str, cpu_has_la57: bool) -> None:
    """What the decompressor does that this path does not: print on an early serial console,
    switch to 5-level paging (pgtable_64.c)."""
    reason = early_console_reason(cmdline)
    if reason is not None:
        raise HostDecompressionUnavailable(reason)
    if header.xloadflags & XLF_5LEVEL_ENABLED and cpu_has_la57 \
            and not find_option_bool(cmdline, "no5lvl"):
        raise HostDecompressionUnavailable(
            "the decompressor would switch this 5-level-paging kernel to 5-level paging")


def _choose_virtual_base(image: BzImage, vmlinux: Vmlinux, cmdline: str,
                         output_len: int) -> tuple[int, bool]:
    """KASLR's virtual half (kaslr.c find_random_virt_addr) for a kernel that carries
    relocations: a random CONFIG_PHYSICAL_ALIGN slot in the 1 GiB kernel mapping.
    The physical address stays where the decompressor starts from (one of the places its
    physical randomization may also pick). Returns (virt_addr, KASLR on)."""
    header = image.header
    load = header.pref_address
    if vmlinux.relocations is None or not header.relocatable_kernel \
            or find_option_bool(cmdline, "nokaslr"):
        return load, False
    alignment = header.kernel_alignment
    if alignment < MIN_KERNEL_ALIGN or alignment & (alignment - 1):
        raise HostDecompressionUnavailable(
            f"kernel_alignment {alignment:#x} is not a power of two of at least 2 MiB")
    kernel_total_size = vmlinux.end - load
    needed = max(output_len, kernel_total_size)
    needed = (needed + MIN_KERNEL_ALIGN - 1) & -MIN_KERNEL_ALIGN
    if load + needed > KERNEL_IMAGE_SIZE_KASLR:
        raise HostDecompressionUnavailable("the kernel does not fit in the kernel mapping")
    slots = 1 + (KERNEL_IMAGE_SIZE_KASLR - load - needed) // alignment
    return secrets.randbelow(slots) * alignment + load, True
