"""The bzImage setup header (boot.rst, "The Real-Mode Kernel Header")."""
from __future__ import annotations

from dataclasses import dataclass

from construct import Const, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from nitro_emu.errors import NitroEmuError

SETUP_HEADER_OFFSET = 0x1F1
XLF_KERNEL_64 = 1 << 0
MIN_PROTOCOL = 0x020C  # 64-bit entry, xloadflags

# Fields from 0x1f1 up to init_size (protocol 2.10+); offsets relative to 0x1f1.
SetupHeader = Struct(
    "setup_sects" / Int8ul,          # 0x1f1
    "root_flags" / Int16ul,
    "syssize" / Int32ul,
    "ram_size" / Int16ul,
    "vid_mode" / Int16ul,
    "root_dev" / Int16ul,
    "boot_flag" / Int16ul,           # 0x1fe: 0xAA55
    "jump" / Int16ul,                # 0x200
    "header" / Const(b"HdrS"),       # 0x202
    "version" / Int16ul,             # 0x206
    "realmode_swtch" / Int32ul,
    "start_sys_seg" / Int16ul,
    "kernel_version" / Int16ul,
    "type_of_loader" / Int8ul,       # 0x210
    "loadflags" / Int8ul,
    "setup_move_size" / Int16ul,
    "code32_start" / Int32ul,        # 0x214
    "ramdisk_image" / Int32ul,       # 0x218
    "ramdisk_size" / Int32ul,
    "bootsect_kludge" / Int32ul,
    "heap_end_ptr" / Int16ul,        # 0x224
    "ext_loader_ver" / Int8ul,
    "ext_loader_type" / Int8ul,
    "cmd_line_ptr" / Int32ul,        # 0x228
    "initrd_addr_max" / Int32ul,     # 0x22c
    "kernel_alignment" / Int32ul,    # 0x230
    "relocatable_kernel" / Int8ul,
    "min_alignment" / Int8ul,
    "xloadflags" / Int16ul,          # 0x236
    "cmdline_size" / Int32ul,        # 0x238
    "hardware_subarch" / Int32ul,
    "hardware_subarch_data" / Int64ul,
    "payload_offset" / Int32ul,      # 0x248
    "payload_length" / Int32ul,
    "setup_data" / Int64ul,          # 0x250
    "pref_address" / Int64ul,        # 0x258
    "init_size" / Int32ul,           # 0x260
    "handover_offset" / Int32ul,
    "kernel_info_offset" / Int32ul,
)
SETUP_HEADER_END = SETUP_HEADER_OFFSET + SetupHeader.sizeof()


class BadKernelError(NitroEmuError):
    """The EIF's kernel section is not a bzImage this machine can boot."""


@dataclass(frozen=True)
class BzImage:
    """A parsed bzImage: its setup header bytes and where the 64-bit kernel starts."""

    header: object
    header_bytes: bytes  # 0x1f1 .. end of the header as the kernel declares it
    protected_mode_offset: int

    @classmethod
    def parse(cls, kernel: bytes) -> "BzImage":
        if len(kernel) < SETUP_HEADER_END:
            raise BadKernelError(f"kernel section is {len(kernel)} bytes, too short for a bzImage")
        if kernel[0x202:0x206] != b"HdrS" or kernel[0x1FE:0x200] != b"\x55\xaa":
            raise BadKernelError("kernel section is not a Linux bzImage (no HdrS setup header)")
        header = SetupHeader.parse(kernel[SETUP_HEADER_OFFSET:SETUP_HEADER_END])
        if header.version < MIN_PROTOCOL:
            raise BadKernelError(
                f"bzImage boot protocol {header.version >> 8}.{header.version & 0xFF:02d} is "
                "too old: 64-bit entry needs 2.12 or later")
        if not header.xloadflags & XLF_KERNEL_64:
            raise BadKernelError("bzImage has no 64-bit entry point (XLF_KERNEL_64 clear)")
        setup_sects = header.setup_sects or 4
        offset = (setup_sects + 1) * 512
        if offset >= len(kernel):
            raise BadKernelError("bzImage setup sectors run past the end of the kernel section")
        end = 0x202 + kernel[0x201]
        return cls(header, kernel[SETUP_HEADER_OFFSET:end], offset)
