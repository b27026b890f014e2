"""Write an EIF: `build_eif(output, kernel=..., cmdline=..., ramdisks=[...]) -> Measurements`
(docs/spec/eif.md §2-§7), the same bytes AWS's builder writes for the same inputs.

Input files are streamed in chunks (never loaded whole) and hashed in the same pass as
they are copied. The CRC starts with header bytes that are final only at the end (the
signature section's size depends on PCR0), so the sections' CRC is computed on its own
and joined to the header's with `crc32_combine`. The file appears under its name only
when complete (`eif.files.atomic_output`: a temporary file beside it, then renamed);
inputs are opened with `eif.files.open_input` (regular files only, never blocking).
"""
from __future__ import annotations

import os
import zlib
from typing import BinaryIO, Sequence

from eif import files, layout
from eif.crc import crc32_combine
from eif.errors import EifError
from eif.files import InputFile, atomic_output, open_input, read_input
from eif.layout import HEADER_SIZE, SECTION_HEADER_SIZE, SectionType
from eif.metadata import BuildInfo, Metadata, check_rfc3339, rfc3339_now
from eif.pcr import Measurements
from eif.signature import pcr8_from_certificate
from eif.stream import THREAD_THRESHOLD, ChunkPool, Measurer

ARCHES = {"x86_64": 0, "aarch64": layout.FLAG_ARCH_AARCH64}
DEFAULT_BUILD_TOOL = "nitro-emu"
DEFAULT_BUILD_TOOL_VERSION = "0.1.0"
DEFAULT_OPERATING_SYSTEM = "OS"      # eif_build's defaults
DEFAULT_KERNEL_VERSION = "kernel"
MAX_RAMDISKS = layout.MAX_NUM_SECTIONS - 3


def build_eif(output: str | os.PathLike, *, kernel: str | os.PathLike, cmdline: str,
              ramdisks: Sequence[str | os.PathLike], name: str | None = None,
              version: str | None = None, metadata: object = None,
              build_time: str | None = None, build_tool: str = DEFAULT_BUILD_TOOL,
              build_tool_version: str = DEFAULT_BUILD_TOOL_VERSION,
              operating_system: str = DEFAULT_OPERATING_SYSTEM,
              kernel_version: str = DEFAULT_KERNEL_VERSION, arch: str = "x86_64",
              signing_certificate: str | os.PathLike | None = None,
              private_key: str | os.PathLike | None = None,
              docker_info: object = None, threaded: bool | None = None) -> Measurements:
    """Build an EIF at `output` and return its measurements (PCR8 when signed).

    `kernel` and `ramdisks` are file paths; `metadata` is the custom metadata (any JSON
    value, None = null); `name` defaults to the kernel file's name, `version` to "1.0",
    `build_time` to now (RFC 3339, pin it for reproducible builds); `signing_certificate`
    and `private_key` are PEM files (EC P-256/384/521) and go together."""
    if arch not in ARCHES:
        raise EifError(f"unknown architecture {arch!r} (x86_64 or aarch64)")
    if not isinstance(cmdline, str):
        raise EifError("cmdline must be a string")
    if "\0" in cmdline:
        raise EifError(f"cmdline contains a NUL character at position {cmdline.index(chr(0))}")
    ramdisks = list(ramdisks)
    if not ramdisks:
        raise EifError("at least one ramdisk is needed")
    signed = signing_certificate is not None or private_key is not None
    if signed and (signing_certificate is None or private_key is None):
        raise EifError("signing needs both a signing certificate and a private key")
    if len(ramdisks) > MAX_RAMDISKS - signed:
        raise EifError(f"{len(ramdisks)} ramdisks: an EIF holds at most "
                       f"{MAX_RAMDISKS - signed}{' when signed' if signed else ''}")
    signer = load_signer(signing_certificate, private_key) if signed else None

    identity = Metadata(
        image_name=name if name is not None else os.path.basename(os.fspath(kernel)),
        image_version=version if version is not None else "1.0",
        build=BuildInfo(build_time if build_time is not None else rfc3339_now(),
                        build_tool, build_tool_version, operating_system, kernel_version),
        docker_info=docker_info, custom_metadata=metadata)
    for field, value in (("name", identity.image_name), ("version", identity.image_version),
                         ("build_time", identity.build.build_time)):
        if not isinstance(value, str):
            raise EifError(f"{field} must be a string")
    check_rfc3339(identity.build.build_time, "build time")
    try:
        cmdline_bytes = cmdline.encode("utf-8")
    except UnicodeEncodeError:
        raise EifError("cmdline is not valid Unicode (lone surrogate)") from None
    metadata_bytes = identity.to_bytes()

    inputs: list[InputFile] = []
    try:
        inputs.append(open_input(kernel, files.KERNEL))
        for path in ramdisks:
            inputs.append(open_input(path, files.RAMDISK))
        return _write(output, inputs, cmdline_bytes, metadata_bytes, ARCHES[arch], signer,
                      threaded)
    finally:
        for opened in inputs:
            opened.close()


def load_signer(certificate_path: str | os.PathLike, key_path: str | os.PathLike
                 ) -> tuple[bytes, object]:
    from cryptography.hazmat.primitives import serialization

    from eif.signature import load_certificate
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = read_input(certificate_path, files.SIGNING_CERTIFICATE)
    key_bytes = read_input(key_path, files.PRIVATE_KEY)
    try:
        certificate = load_certificate(pem)
    except ValueError as error:
        raise EifError(f"{os.fspath(certificate_path)}: {error}") from None
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError) as error:
        raise EifError(f"{os.fspath(key_path)}: not an unencrypted PEM private key: "
                       f"{error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EifError(f"{os.fspath(key_path)}: only EC keys (P-256, P-384, P-521) can "
                       "sign an EIF")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certificate.public_key().public_bytes(der, public) != \
            key.public_key().public_bytes(der, public):
        raise EifError(f"{os.fspath(key_path)}: private key does not match the signing "
                       f"certificate {os.fspath(certificate_path)}")
    return pem, key


def _write(output: str | os.PathLike, inputs: list[InputFile], cmdline: bytes,
           metadata: bytes, flags: int, signer: tuple[bytes, object] | None,
           threaded: bool | None) -> Measurements:
    kernel, ramdisks = inputs[0], inputs[1:]
    # (type, size, source) in file order; the signature section is appended at the end.
    plan: list[tuple[SectionType, int, object]] = [
        (SectionType.KERNEL, kernel.size, kernel),
        (SectionType.CMDLINE, len(cmdline), cmdline),
        (SectionType.METADATA, len(metadata), metadata),
        *((SectionType.RAMDISK, r.size, r) for r in ramdisks),
    ]
    total = sum(size for _, size, _ in plan)
    if threaded is None:
        threaded = total >= THREAD_THRESHOLD
    with atomic_output(output, "EIF") as out:
        measurements, crc, body, sizes = _write_sections(out, plan, threaded, signer)
        offsets, position = [], HEADER_SIZE
        for size in sizes:
            offsets.append(position)
            position += SECTION_HEADER_SIZE + size
        header = layout.pack_header(version=layout.CURRENT_VERSION, flags=flags,
                                    num_sections=len(sizes), offsets=offsets,
                                    sizes=sizes, crc=0)
        crc = crc32_combine(zlib.crc32(header[:layout.CRC_OFFSET]), crc, body)
        out.seek(0)
        out.write(header[:layout.CRC_OFFSET] + crc.to_bytes(4, "big"))
    return measurements


def _write_sections(out: BinaryIO, plan: list, threaded: bool,
                    signer: tuple[bytes, object] | None
                    ) -> tuple[Measurements, int, int, list[int]]:
    """Write every section after a placeholder header; returns the measurements, the CRC
    of the section bytes alone, their length and the data sizes in order."""
    out.write(bytes(HEADER_SIZE))
    measurer = Measurer(0, threaded)
    pool = ChunkPool() if threaded else ChunkPool(count=1)
    body = 0
    try:
        for kind, size, source in plan:
            section_header = layout.pack_section_header(kind, size)
            out.write(section_header)
            measurer.header(section_header)
            measurer.begin(kind)
            if isinstance(source, bytes):
                out.write(source)
                measurer.data(source)
            else:
                _copy(source, out, measurer, pool)
            body += SECTION_HEADER_SIZE + size
    finally:
        measurer.close()
    crc, measurements = measurer.finish()
    sizes = [size for _, size, _ in plan]
    if signer is not None:
        from eif.signature import sign_pcr0

        pem, key = signer
        section = sign_pcr0(measurements.pcr0, pem, key)
        section_header = layout.pack_section_header(SectionType.SIGNATURE, len(section))
        out.write(section_header + section)
        crc = zlib.crc32(section, zlib.crc32(section_header, crc))
        body += SECTION_HEADER_SIZE + len(section)
        sizes.append(len(section))
        measurements = Measurements(measurements.pcr0, measurements.pcr1, measurements.pcr2,
                                    pcr8_from_certificate(pem))
    return measurements, crc, body, sizes


def _copy(source: InputFile, out: BinaryIO, measurer: Measurer, pool: ChunkPool) -> None:
    while source.remaining:
        chunk = pool.take()
        try:
            n = source.readinto(chunk.view)
        except BaseException:
            chunk.hold(1)
            chunk.release()
            raise
        out.write(chunk.view[:n])
        measurer.data(chunk.view[:n], chunk)
