"""Read and validate an EIF: `read_eif(path) -> EifImage` (docs/spec/eif.md §2-§10);
`check_eif(path)` validates the same without hashing (a check before handing the file to
a process that reads it).

Stricter than both nitro-cli and QEMU, so that every file it accepts is read the same
way by both: magic, a supported version, known header flags, zero reserved fields,
1..32 sections laid out back to back from offset 548 exactly as the offset/size table
says, nothing after the last one, zeroed unused table slots, known section types with
zero flags and sizes matching the table, exactly one kernel and one cmdline, at least one
ramdisk, at most one metadata and one signature section, a cmdline without NUL, valid
metadata JSON and a well-formed signature section. A CRC mismatch is not an error (as in
nitro-cli): `crc_ok` reports it. Every other problem raises EifError naming the place.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, BinaryIO, Callable, TypeVar

from eif import files, layout
from eif.errors import EifError
from eif.files import open_input
from eif.layout import HEADER_SIZE, SECTION_HEADER_SIZE, SectionType
from eif.metadata import Metadata, parse_metadata
from eif.pcr import Measurements
from eif.stream import CHUNK_SIZE, THREAD_THRESHOLD, ChunkPool, Measurer

if TYPE_CHECKING:  # cryptography is imported only when an image is signed
    from eif.signature import ParsedSignature

# Sections read whole into memory are capped so a hostile file cannot exhaust it.
MAX_CMDLINE = 1 << 20
MAX_METADATA = 64 << 20
MAX_SIGNATURE = 16 << 20
# The kernel is read whole to boot it (ramdisks go straight into guest RAM, which bounds
# them); a bzImage is a few MiB, so this only stops a hostile EIF costing host memory.
MAX_KERNEL = 512 << 20
_IN_MEMORY_LIMITS = {SectionType.CMDLINE: MAX_CMDLINE, SectionType.METADATA: MAX_METADATA,
                     SectionType.SIGNATURE: MAX_SIGNATURE}
_T = TypeVar("_T")


@dataclass(frozen=True)
class Section:
    """One section: its index in the header table, type, and where its data lies."""

    index: int
    type: SectionType
    header_offset: int  # file offset of the 12-byte section header
    offset: int         # file offset of the data
    size: int           # data length

    def describe(self) -> str:
        return f"section {self.index} ({self.type.label}, header at offset {self.header_offset})"


class EifImage:
    """A validated EIF. Section data stays in the file; `read_kernel()` and
    `read_ramdisks()` fetch it (checking the file did not change meanwhile)."""

    def __init__(self, path: str, header: dict, sections: tuple[Section, ...], cmdline: bytes,
                 crc: int, measurements: Measurements, metadata: Metadata | None,
                 signature: ParsedSignature | None, signature_check: bool | None,
                 signature_problem: str | None, identity: tuple[int, int, int, int]) -> None:
        self.path = path
        self.version: int = header["version"]
        self.flags: int = header["flags"]
        self.arch = _arch(self.flags)
        self.default_mem: int = header["default_mem"]
        self.default_cpus: int = header["default_cpus"]
        self.sections = sections
        self.kernel_section = next(s for s in sections if s.type == SectionType.KERNEL)
        self.cmdline_section = next(s for s in sections if s.type == SectionType.CMDLINE)
        self.ramdisk_sections = tuple(s for s in sections if s.type == SectionType.RAMDISK)
        self.metadata_section = next((s for s in sections if s.type == SectionType.METADATA),
                                     None)
        self.signature_section = next(
            (s for s in sections if s.type == SectionType.SIGNATURE), None)
        self.cmdline_bytes = cmdline
        self.cmdline = cmdline.decode("utf-8")
        self.crc_stored: int = header["eif_crc32"]
        self.crc_computed = crc
        self.crc_ok = crc == self.crc_stored
        self.measurements = measurements
        self.metadata = metadata
        self.signature = signature
        self.signing_certificate_pem = signature.certificate_pem if signature else None
        self.signature_check = signature_check
        self.signature_problem = signature_problem
        self.file_size = identity[0]
        self._identity = identity

    @property
    def is_signed(self) -> bool:
        return self.signature is not None

    @property
    def ramdisks_size(self) -> int:
        return sum(s.size for s in self.ramdisk_sections)

    def __repr__(self) -> str:
        return (f"EifImage({self.path!r}, v{self.version}, {self.arch}, "
                f"{len(self.sections)} sections, crc_ok={self.crc_ok})")

    def open_unchanged(self) -> BinaryIO:
        """The file, opened again for reading its sections (EifError if it changed since
        it was validated)."""
        opened = open_input(self.path, files.EIF)
        if _identity(opened.info) != self._identity:
            opened.close()
            raise EifError(f"{self.path}: the file changed since it was validated")
        return opened.file

    def read_kernel(self) -> bytes:
        """The kernel section's data (bzImage or arm64 Image), at most MAX_KERNEL bytes."""
        size = self.kernel_section.size
        if size > MAX_KERNEL:
            raise EifError(f"{self.path}: {self.kernel_section.describe()} is {size} bytes, "
                           f"over the {files.format_size(MAX_KERNEL)} limit for a kernel "
                           "loaded to boot")
        with self.open_unchanged() as file:
            return _read_exact(file, self.kernel_section.offset, size, self.path)

    def read_ramdisks(self) -> bytes:
        """All ramdisk sections joined in order: the initrd the loader boots."""
        buffer = bytearray(self.ramdisks_size)
        self.read_ramdisks_into(memoryview(buffer))
        return bytes(buffer)

    def read_ramdisks_into(self, target: memoryview) -> int:
        """Copy all ramdisks, joined in order, to the start of `target` (e.g. a view of
        guest RAM) without an intermediate copy; returns the number of bytes."""
        total = self.ramdisks_size
        if len(target) < total:
            raise EifError(f"{self.path}: ramdisks need {total} bytes, target has {len(target)}")
        position = 0
        with self.open_unchanged() as file:
            for section in self.ramdisk_sections:
                file.seek(section.offset)
                end = position + section.size
                while position < end:
                    n = file.readinto(target[position:min(end, position + CHUNK_SIZE)])
                    if not n:
                        raise EifError(f"{self.path}: file shrank while reading "
                                       f"{section.describe()}")
                    position += n
        return total


@dataclass(frozen=True)
class EifLayout:
    """What `check_eif` found: the image's architecture and its sections."""

    arch: str
    sections: tuple[Section, ...]


def _arch(flags: int) -> str:
    return "aarch64" if flags & layout.FLAG_ARCH_AARCH64 else "x86_64"


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)


def _read_exact(file: BinaryIO, offset: int, size: int, path: str) -> bytes:
    file.seek(offset)
    data = file.read(size)
    if len(data) != size:
        raise EifError(f"{path}: file shrank: wanted {size} bytes at offset {offset}")
    return data


def read_eif(path: str | os.PathLike, *, threaded: bool | None = None) -> EifImage:
    """Validate the EIF at `path`, hash it in one pass and return it (EifError if invalid).

    `threaded` forces hashing on worker threads (True) or inline (False); by default
    files above a few MiB use threads."""
    return _opened(path, lambda file, name, info: _read(file, name, info, threaded))


def check_eif(path: str | os.PathLike) -> EifLayout:
    """Validate the EIF at `path` as `read_eif` does, without hashing it: the header, the
    section table and headers, and the small sections (command line, metadata, signature)
    are checked; the kernel and ramdisks are not read. While the file does not change,
    `read_eif` accepts what this accepts (EifError if invalid)."""
    return _opened(path, _check)


def _opened(path: str | os.PathLike,
            read: Callable[[BinaryIO, str, os.stat_result], _T]) -> _T:
    path = os.fspath(path)
    with open_input(path, files.EIF) as opened:
        try:
            return read(opened.file, path, opened.info)
        except OSError as error:
            raise EifError(f"{path}: read error: {error.strerror or error}") from None


def _check(file: BinaryIO, path: str, info: os.stat_result) -> EifLayout:
    _, header, sections = _structure(file, path, info.st_size)
    kept = {}
    for section in sections:
        if section.type in _IN_MEMORY_LIMITS:
            kept[section.type] = _read_exact(file, section.offset, section.size, path)
            if section.type == SectionType.CMDLINE:
                _check_cmdline(kept[section.type], section, path)
    _parse_kept(kept, sections, path)
    return EifLayout(_arch(header.flags), sections)


def _structure(file: BinaryIO, path: str, size: int) -> tuple[bytes, dict, tuple[Section, ...]]:
    """The raw header, the parsed header and the sections, all checked."""
    raw_header = file.read(HEADER_SIZE)
    if len(raw_header) < HEADER_SIZE:
        raise EifError(f"{path}: {len(raw_header)} bytes, too short for the "
                       f"{HEADER_SIZE}-byte EIF header")
    header = layout.HEADER.parse(raw_header)
    _check_header(header, path)
    sections = tuple(replace(section, type=_check_section_header(file, section, path))
                     for section in _check_table(header, size, path))
    _check_counts(sections, path)
    return raw_header, header, sections


def _read(file: BinaryIO, path: str, info: os.stat_result,
          threaded: bool | None) -> EifImage:
    size = info.st_size
    raw_header, header, sections = _structure(file, path, size)

    if threaded is None:
        threaded = size >= THREAD_THRESHOLD
    measurer = Measurer(zlib.crc32(raw_header[:layout.CRC_OFFSET]), threaded)
    kept: dict[SectionType, bytes] = {}
    pool = ChunkPool() if threaded else ChunkPool(count=1)
    try:
        for section in sections:
            measurer.header(_read_exact(file, section.header_offset, SECTION_HEADER_SIZE,
                                        path))
            measurer.begin(section.type)
            if section.type in _IN_MEMORY_LIMITS:
                data = _read_exact(file, section.offset, section.size, path)
                if section.type == SectionType.CMDLINE:
                    _check_cmdline(data, section, path)  # fail before hashing the rest
                kept[section.type] = data
                measurer.data(data)
            else:
                _stream(file, section, measurer, pool, path)
    finally:
        measurer.close()
    crc, measurements = measurer.finish()

    metadata, signature = _parse_kept(kept, sections, path)
    check, problem = None, None
    if signature is not None:
        from eif.signature import check_signature

        measurements = Measurements(measurements.pcr0, measurements.pcr1, measurements.pcr2,
                                    signature.pcr8)
        check, problem = check_signature(signature, measurements.pcr0)

    return EifImage(path, header, sections, kept[SectionType.CMDLINE], crc, measurements,
                    metadata, signature, check, problem, _identity(info))


def _parse_kept(kept: dict[SectionType, bytes], sections: tuple[Section, ...],
                path: str) -> tuple[Metadata | None, ParsedSignature | None]:
    """The metadata and signature sections parsed (EifError if malformed)."""
    def where(kind: SectionType) -> str:
        return f"{path}: {next(s for s in sections if s.type == kind).describe()}"

    metadata = signature = None
    if SectionType.METADATA in kept:
        metadata = parse_metadata(kept[SectionType.METADATA], where(SectionType.METADATA))
    if SectionType.SIGNATURE in kept:
        from eif.signature import parse_section

        signature = parse_section(kept[SectionType.SIGNATURE], where(SectionType.SIGNATURE))
    return metadata, signature


def _check_cmdline(cmdline: bytes, section: Section, path: str) -> None:
    if b"\0" in cmdline:
        raise EifError(f"{path}: {section.describe()}: NUL byte at position "
                       f"{cmdline.index(0)} of the command line")
    try:
        cmdline.decode("utf-8")
    except UnicodeDecodeError as error:
        raise EifError(f"{path}: {section.describe()}: command line is not UTF-8 "
                       f"(byte {error.start})") from None


def _stream(file: BinaryIO, section: Section, measurer: Measurer, pool: ChunkPool,
            path: str) -> None:
    file.seek(section.offset)
    remaining = section.size
    while remaining:
        chunk = pool.take()
        want = min(remaining, len(chunk.array))
        n = file.readinto(chunk.view[:want])
        if not n:
            chunk.hold(1)
            chunk.release()
            raise EifError(f"{path}: file shrank while reading {section.describe()}")
        remaining -= n
        measurer.data(chunk.view[:n], chunk)


def _check_header(header: dict, path: str) -> None:
    if header.magic != layout.MAGIC:
        raise EifError(f"{path}: not an EIF: magic at offset 0 is {bytes(header.magic)!r}, "
                       f"expected {layout.MAGIC!r}")
    if header.version not in layout.SUPPORTED_VERSIONS:
        raise EifError(f"{path}: unsupported EIF version {header.version} at offset 4 "
                       f"(supported: {', '.join(map(str, layout.SUPPORTED_VERSIONS))})")
    if header.flags & ~layout.KNOWN_HEADER_FLAGS:
        raise EifError(f"{path}: unknown header flags 0x{header.flags:04x} at offset 6")
    if header.reserved:
        raise EifError(f"{path}: reserved header field at offset 24 is {header.reserved}, "
                       "expected 0")
    if header.unused:
        raise EifError(f"{path}: unused header field at offset 540 is {header.unused}, "
                       "expected 0")
    if not 1 <= header.num_sections <= layout.MAX_NUM_SECTIONS:
        raise EifError(f"{path}: header (offset 26) says {header.num_sections} sections; "
                       f"an EIF has 1 to {layout.MAX_NUM_SECTIONS}")


def _check_table(header: dict, file_size: int, path: str) -> tuple[Section, ...]:
    """Sections as the header table lists them (types still unknown), which must tile
    the file exactly."""
    count = header.num_sections
    offsets, sizes = header.section_offsets, header.section_sizes
    for i in range(count, layout.MAX_NUM_SECTIONS):
        if offsets[i] or sizes[i]:
            raise EifError(f"{path}: header table slot {i} is unused (num_sections = "
                           f"{count}) but holds offset {offsets[i]}, size {sizes[i]}")
    sections = []
    expected = HEADER_SIZE
    for i in range(count):
        if offsets[i] != expected:
            raise EifError(f"{path}: header table: section {i} at offset {offsets[i]}, "
                           f"expected {expected} (sections follow each other with no gap)")
        data_end = expected + SECTION_HEADER_SIZE + sizes[i]
        if data_end > file_size:
            raise EifError(f"{path}: section {i} (offset {expected}, {sizes[i]} bytes of "
                           f"data) ends at {data_end}, past the end of the "
                           f"{file_size}-byte file")
        sections.append(Section(i, SectionType.INVALID, expected,
                                expected + SECTION_HEADER_SIZE, sizes[i]))
        expected = data_end
    if expected != file_size:
        raise EifError(f"{path}: {file_size - expected} bytes after the last section "
                       f"(which ends at offset {expected})")
    return tuple(sections)


def _check_section_header(file: BinaryIO, section: Section, path: str) -> SectionType:
    """The type of a section whose 12-byte header agrees with the table."""
    raw = _read_exact(file, section.header_offset, SECTION_HEADER_SIZE, path)
    parsed = layout.SECTION_HEADER.parse(raw)
    where = f"{path}: section {section.index} (header at offset {section.header_offset})"
    try:
        kind = SectionType(parsed.section_type)
    except ValueError:
        raise EifError(f"{where}: unknown section type {parsed.section_type}") from None
    if kind == SectionType.INVALID:
        raise EifError(f"{where}: invalid section type 0")
    if parsed.flags:
        raise EifError(f"{where}: section flags are 0x{parsed.flags:04x}, expected 0")
    if parsed.section_size != section.size:
        raise EifError(f"{where}: size {parsed.section_size} differs from the header "
                       f"table's {section.size}")
    if kind in _IN_MEMORY_LIMITS and section.size > _IN_MEMORY_LIMITS[kind]:
        raise EifError(f"{where}: {kind.label} section of {section.size} bytes exceeds the "
                       f"limit of {_IN_MEMORY_LIMITS[kind]}")
    return kind


def _check_counts(sections: tuple[Section, ...], path: str) -> None:
    for kind, low, high in ((SectionType.KERNEL, 1, 1), (SectionType.CMDLINE, 1, 1),
                            (SectionType.RAMDISK, 1, layout.MAX_NUM_SECTIONS),
                            (SectionType.METADATA, 0, 1), (SectionType.SIGNATURE, 0, 1)):
        found = [s.index for s in sections if s.type == kind]
        if len(found) < low:
            raise EifError(f"{path}: no {kind.label} section")
        if len(found) > high:
            raise EifError(f"{path}: {len(found)} {kind.label} sections (at indexes "
                           f"{', '.join(map(str, found))}); at most {high} allowed")
