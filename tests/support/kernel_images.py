"""Kernel images for the boot-path tests: the real bzImage's payload taken out and put back
compressed another way (with the very commands the kernel's Makefile uses), and small
vmlinux-shaped ELF files with a vmlinux.relocs table, built the way relocs.c writes it."""
from __future__ import annotations

import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor

from nitro_emu.boot.bzimage import BzImage

# scripts/Makefile.lib (cmd_gzip, cmd_bzip2, cmd_lzma, cmd_lzo, cmd_lz4, cmd_zstd22) and
# scripts/xz_wrap.sh for x86; all but gzip get the 32-bit size appended (size_append).
COMPRESSORS = {
    "gzip": ["gzip", "-n", "-f", "-9"],
    "bzip2": ["bzip2", "-9"],
    "lzma": ["lzma", "-9"],
    "xz": ["xz", "--check=crc32", "--threads=1", "--x86", "--lzma2=dict=128MiB"],
    "lzo": ["lzop", "-9"],
    "lz4": ["lz4", "-l", "-9", "-", "-"],
    "zstd": ["zstd", "-22", "--ultra"],
}
PAYLOAD_LENGTH, SYSSIZE = 0x24C, 0x1F4


def compress(name: str, data: bytes) -> bytes:
    """`data` compressed by the kernel build's compressor for `name`, framed as the build
    frames it (vmlinux.bin.<ext>)."""
    done = subprocess.run(COMPRESSORS[name], input=data, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{COMPRESSORS[name][0]} failed: {done.stderr.decode()}")
    return done.stdout if name == "gzip" else done.stdout + struct.pack("<I", len(data))


def compress_payloads(data: bytes, names=tuple(COMPRESSORS)) -> dict[str, bytes]:
    """`data` compressed by each compressor (two at a time)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(lambda name: compress(name, data), names)))


def payload_of(kernel: bytes) -> bytes:
    image = BzImage.parse(kernel)
    start = image.protected_mode_offset + image.header.payload_offset
    return kernel[start:start + image.header.payload_length]


def with_payload(kernel: bytes, payload: bytes) -> bytes:
    """The bzImage with its payload replaced: payload_length and syssize updated; the
    decompressor's code after the payload moves, so only a host-side loader can boot it."""
    image = BzImage.parse(kernel)
    start = image.protected_mode_offset + image.header.payload_offset
    end = start + image.header.payload_length
    repacked = bytearray(kernel[:start] + payload + kernel[end:])
    struct.pack_into("<I", repacked, PAYLOAD_LENGTH, len(payload))
    struct.pack_into("<I", repacked, SYSSIZE,
                     (len(repacked) - image.protected_mode_offset + 15) // 16)
    return bytes(repacked)


def elf_image(segments: list[tuple[int, int, bytes, int]], entry: int,
              section_headers: int = 3) -> bytes:
    """An x86-64 ELF executable shaped like vmlinux.bin: PT_LOAD segments given as
    (virtual address, physical address, file bytes, memory size), 2 MiB aligned in the
    file, and a section header table (zeroed entries) at the end as objcopy leaves it."""
    phoff, phnum = 64, len(segments)
    body = bytearray(b"\0" * 0x200000)
    headers = b""
    for vaddr, paddr, data, memsz in segments:
        offset = len(body)
        headers += struct.pack("<IIQQQQQQ", 1, 7, offset, vaddr, paddr, len(data), memsz, 0x200000)
        body += data
        body += bytes(-len(body) % 0x200000)
    shoff = len(body)
    body += bytes(64 * section_headers)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, entry, phoff, shoff if section_headers else 0,
                                 0, 64, 56, phnum, 64, section_headers, 0)
    body[:64 + len(headers)] = header + headers
    return bytes(body)


def relocs_table(addresses64: list[int], inverse32: list[int], addresses32: list[int]) -> bytes:
    """vmlinux.relocs as arch/x86/tools/relocs.c emits it for x86-64: a zero, the 64-bit
    entries, a zero, the inverse 32-bit entries, a zero, the 32-bit entries; each entry the
    low 32 bits of a kernel virtual address."""
    words = [0, *addresses64, 0, *inverse32, 0, *addresses32]
    return struct.pack(f"<{len(words)}I", *(word & 0xFFFFFFFF for word in words))


def bzimage(payload: bytes, *, init_size: int = 0x2000000, pref_address: int = 0x1000000,
            relocatable: bool = True, kernel_alignment: int = 0x200000, xloadflags: int = 0x21,
            payload_offset: int = 0x200, payload_length: int | None = None,
            declared_offset: int | None = None) -> bytes:
    """A minimal bzImage around `payload`: the boot sector signature, a 2.15 setup header
    with the fields the loader reads, one setup sector, and the protected-mode part holding
    the payload at `payload_offset` (where a decompressor's code would be, zeros). The
    header's payload fields can be made to lie (`declared_offset`, `payload_length`)."""
    setup_sects = 1
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x1FE:0x200] = b"\x55\xaa"
    image[0x200:0x202] = b"\xeb\x66"   # jump over the header
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)
    image[0x211] = 0x01                # LOADED_HIGH
    struct.pack_into("<I", image, 0x230, kernel_alignment)
    image[0x234] = int(relocatable)
    struct.pack_into("<H", image, 0x236, xloadflags)
    struct.pack_into("<I", image, 0x238, 2048)  # cmdline_size
    struct.pack_into("<II", image, 0x248,
                     payload_offset if declared_offset is None else declared_offset,
                     len(payload) if payload_length is None else payload_length)
    struct.pack_into("<Q", image, 0x258, pref_address)
    struct.pack_into("<I", image, 0x260, init_size)
    protected_mode = bytearray(payload_offset) + payload
    return bytes(image + protected_mode)
