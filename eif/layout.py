"""Binary layouts of the EIF header and section header (docs/spec/eif.md §1-§4).

All integers are big-endian and the structures are packed: a 548-byte file header
followed by sections, each a 12-byte section header and its data, with no gaps.
"""
from __future__ import annotations

import enum

from construct import Array, Bytes, Int16ub, Int32ub, Int64ub, Struct

MAGIC = b".eif"
CURRENT_VERSION = 4
SUPPORTED_VERSIONS = (2, 3, 4)  # v2 added the CRC, v3 the signature, v4 the metadata
MAX_NUM_SECTIONS = 32
FLAG_ARCH_AARCH64 = 0x1
KNOWN_HEADER_FLAGS = FLAG_ARCH_AARCH64
DEFAULT_MEM = 1 << 30  # hard-coded by AWS's builder; no reader uses it
DEFAULT_CPUS = 2

HEADER = Struct(
    "magic" / Bytes(4),
    "version" / Int16ub,
    "flags" / Int16ub,
    "default_mem" / Int64ub,
    "default_cpus" / Int64ub,
    "reserved" / Int16ub,
    "num_sections" / Int16ub,
    "section_offsets" / Array(MAX_NUM_SECTIONS, Int64ub),
    "section_sizes" / Array(MAX_NUM_SECTIONS, Int64ub),
    "unused" / Int32ub,
    "eif_crc32" / Int32ub,
)
HEADER_SIZE = HEADER.sizeof()
CRC_OFFSET = HEADER_SIZE - 4  # the CRC covers the header up to here, then every section

SECTION_HEADER = Struct(
    "section_type" / Int16ub,
    "flags" / Int16ub,
    "section_size" / Int64ub,
)
SECTION_HEADER_SIZE = SECTION_HEADER.sizeof()

assert HEADER_SIZE == 548 and SECTION_HEADER_SIZE == 12

class SectionType(enum.IntEnum):
    """Section types in the order of AWS's `EifSectionType` (repr u16)."""

    INVALID = 0
    KERNEL = 1
    CMDLINE = 2
    RAMDISK = 3
    SIGNATURE = 4
    METADATA = 5

    @property
    def label(self) -> str:
        return self.name.lower()


def pack_header(*, version: int, flags: int, num_sections: int, offsets: list[int],
                sizes: list[int], crc: int, default_mem: int = DEFAULT_MEM,
                default_cpus: int = DEFAULT_CPUS) -> bytes:
    """The 548 header bytes; `offsets`/`sizes` are padded with zeros to 32 slots."""
    pad = MAX_NUM_SECTIONS - len(offsets)
    return HEADER.build(dict(
        magic=MAGIC, version=version, flags=flags, default_mem=default_mem,
        default_cpus=default_cpus, reserved=0, num_sections=num_sections,
        section_offsets=list(offsets) + [0] * pad, section_sizes=list(sizes) + [0] * pad,
        unused=0, eif_crc32=crc,
    ))


def pack_section_header(section_type: int, size: int) -> bytes:
    """The 12-byte header in front of a section's data (flags always 0)."""
    return SECTION_HEADER.build(dict(section_type=section_type, flags=0, section_size=size))
