"""Sign an existing EIF in place (`nitro-cli sign-eif`): the signature section (which signs
PCR0 with the developer's key) replaces the old one where it was, or is appended, and the
header's table and CRC are rewritten. PCR0-2 do not change; PCR8 becomes the
certificate's. The file is replaced in one step (`eif.files.atomic_output`: written beside
it, then renamed; a symlink is written through).
"""
from __future__ import annotations

import dataclasses
import os
import zlib
from typing import BinaryIO

from eif import layout
from eif.builder import load_signer
from eif.errors import EifError
from eif.files import atomic_output
from eif.layout import HEADER_SIZE, SECTION_HEADER_SIZE, SectionType
from eif.pcr import Measurements
from eif.reader import EifImage, read_eif
from eif.signature import pcr8_from_certificate, sign_pcr0

COPY_CHUNK = 1 << 20
FIRST_SIGNED_VERSION = 3


class SigningError(EifError):
    """The certificate or key cannot sign (unreadable, not EC, not a matching pair)."""


def sign_eif(path: str | os.PathLike, signing_certificate: str | os.PathLike,
             private_key: str | os.PathLike) -> Measurements:
    """Sign the EIF at `path` with the PEM certificate and EC key; its new measurements."""
    path = os.fspath(path)
    image = read_eif(path)
    if image.version < FIRST_SIGNED_VERSION:
        raise EifError(f"{path}: an EIF of version {image.version} cannot hold a signature "
                       f"(version {FIRST_SIGNED_VERSION} and later can)")
    try:
        pem, key = load_signer(signing_certificate, private_key)
        signature = sign_pcr0(image.measurements.pcr0, pem, key)
    except EifError as error:
        raise SigningError(str(error)) from None
    with atomic_output(path, "EIF") as out, image.open_unchanged() as source:
        _rewrite(image, source, out, signature)
    # PCR0-2 measure the sections, which are copied unchanged: only PCR8 is new.
    return dataclasses.replace(image.measurements, pcr8=pcr8_from_certificate(pem))


def _rewrite(image: EifImage, source: BinaryIO, out: BinaryIO, signature: bytes) -> None:
    """Write the header for the new section table, then every section (the signature in
    place of the old one, or last), then the CRC over both."""
    sections: list[tuple[SectionType, object]] = [(s.type, s) for s in image.sections
                                                   if s.type != SectionType.SIGNATURE]
    at = next((i for i, s in enumerate(image.sections) if s.type == SectionType.SIGNATURE),
              len(sections))
    sections.insert(at, (SectionType.SIGNATURE, signature))
    sizes = [len(c) if isinstance(c, bytes) else c.size for _, c in sections]
    offsets, position = [], HEADER_SIZE
    for size in sizes:
        offsets.append(position)
        position += SECTION_HEADER_SIZE + size
    header = layout.pack_header(version=image.version, flags=image.flags,
                                num_sections=len(sizes), offsets=offsets, sizes=sizes, crc=0,
                                default_mem=image.default_mem,
                                default_cpus=image.default_cpus)
    out.write(header)
    crc = zlib.crc32(header[:layout.CRC_OFFSET])
    for (kind, content), size in zip(sections, sizes):
        section_header = layout.pack_section_header(kind, size)
        out.write(section_header)
        crc = zlib.crc32(section_header, crc)
        if isinstance(content, bytes):
            out.write(content)
            crc = zlib.crc32(content, crc)
        else:
            crc = _copy(source, content.offset, size, out, crc, image.path)
    out.seek(layout.CRC_OFFSET)
    out.write(crc.to_bytes(4, "big"))


def _copy(source: BinaryIO, offset: int, size: int, out: BinaryIO, crc: int,
          name: str) -> int:
    source.seek(offset)
    remaining = size
    while remaining:
        data = source.read(min(remaining, COPY_CHUNK))
        if not data:
            raise EifError(f"{name}: file shrank while being signed")
        out.write(data)
        crc = zlib.crc32(data, crc)
        remaining -= len(data)
    return crc
