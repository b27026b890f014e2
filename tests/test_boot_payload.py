"""The host side of the fast boot path without a guest: the bzImage payload in every
compression the kernel can carry, the vmlinux ELF and its relocation table, the decisions
that send a kernel to its own decompressor, and what extract_kernel() leaves in
boot_params. The parsers take untrusted input: malformed bytes give their one error type
and never anything else."""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from board.memory import GuestRam
from nitro_emu.boot.bzimage import BzImage
from nitro_emu.boot.cmdline import find_option, find_option_bool
from nitro_emu.boot.host_decompression import (ACPI_RSDP_ADDR, KASLR_FLAG, LOADFLAGS,
                                               XLF_MEM_ENCRYPTION, XLOADFLAGS,
                                               BackgroundInflation, HostDecompressionUnavailable,
                                               decompress_on_host, find_rsdp)
from nitro_emu.boot.payload import PayloadError, compression_of, decompress_payload
from nitro_emu.boot.vmlinux import START_KERNEL_MAP, Vmlinux, VmlinuxError
from support.kernel_images import COMPRESSORS, bzimage, compress_payloads, elf_image, relocs_table

LOAD = 0x1000000
TEXT = START_KERNEL_MAP + LOAD  # _text: 0xffffffff81000000


def sample_vmlinux(with_relocs: bool = False) -> bytes:
    """A small vmlinux.bin: text, data and a segment with .bss, 2 MiB apart like the real
    one, entry at the start of text; with `with_relocs`, a table after it."""
    rng = random.Random(7)
    text = bytes(rng.randrange(256) for _ in range(3000)) + bytes(5000)
    data = struct.pack("<QQ", TEXT + 0x10, TEXT + 0x400000) + bytes(4000)
    init = struct.pack("<IiI", (TEXT + 0x20) & 0xFFFFFFFF, -0x1234, 0x81000040) + bytes(100)
    elf = elf_image([(TEXT, LOAD, text, len(text)),
                     (TEXT + 0x200000, LOAD + 0x200000, data, len(data)),
                     (TEXT + 0x400000, LOAD + 0x400000, init, 0x10000)], entry=LOAD)
    if not with_relocs:
        return elf
    return elf + relocs_table(addresses64=[TEXT + 0x200000, TEXT + 0x200008],
                              inverse32=[TEXT + 0x400004], addresses32=[TEXT + 0x400000])


@pytest.fixture(scope="module")
def payloads() -> dict[str, bytes]:
    return compress_payloads(sample_vmlinux())


# -- payloads -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_every_compression_inflates_to_the_same_vmlinux(payloads, name) -> None:
    payload = payloads[name]
    assert compression_of(payload) == name
    assert decompress_payload(payload, 1 << 26) == sample_vmlinux()


@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_a_wrong_size_trailer_is_an_error(payloads, name) -> None:
    payload = bytearray(payloads[name])
    size = struct.unpack_from("<I", payload, len(payload) - 4)[0]
    if name != "gzip":  # gzip's trailer is its CRC'd ISIZE: a change is a corrupt stream
        struct.pack_into("<I", payload, len(payload) - 4, size - 1)
        with pytest.raises(PayloadError):
            decompress_payload(bytes(payload), 1 << 26)
    with pytest.raises(PayloadError, match="leaves room for"):
        decompress_payload(payloads[name], size - 1)


def test_unknown_compression_is_named() -> None:
    with pytest.raises(PayloadError, match="no compression a bzImage can carry"):
        decompress_payload(b"PK\x03\x04" + bytes(20) + struct.pack("<I", 10), 100)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(
    [b"", b"\x1f\x8b", b"BZh", b"\x5d\x00\x00", b"\xfd7zXZ\x00", b"\x89LZO\x00\r\n\x1a\n",
     b"\x02\x21\x4c\x18", b"\x28\xb5\x2f\xfd"]), st.integers(0, 1 << 20))
def test_arbitrary_payloads_inflate_exactly_or_raise_payload_error(body, magic, size) -> None:
    payload = magic + body + struct.pack("<I", size)
    try:
        data = decompress_payload(payload, 1 << 20)
    except PayloadError:
        return
    assert len(data) == size


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(list(COMPRESSORS)), st.data())
def test_damaged_payloads_inflate_exactly_or_raise_payload_error(payloads, name, data) -> None:
    payload = bytearray(payloads[name])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(payload) - 1))
        payload[at] = data.draw(st.integers(0, 255))
    payload = payload[:data.draw(st.integers(0, len(payload)))]
    try:
        out = decompress_payload(bytes(payload), 1 << 26)
    except PayloadError:
        return
    assert len(out) == struct.unpack_from("<I", payload, len(payload) - 4)[0]


# -- the ELF and its relocations ----------------------------------------------------------

def test_vmlinux_segments_entry_and_relocation_table_are_read() -> None:
    plain = Vmlinux.parse(sample_vmlinux(), LOAD)
    assert plain.relocations is None
    assert [(s.paddr, s.memsz) for s in plain.segments] == [
        (LOAD, 8000), (LOAD + 0x200000, 4016), (LOAD + 0x400000, 0x10000)]
    assert plain.entry == LOAD and plain.end == LOAD + 0x410000
    relocs = Vmlinux.parse(sample_vmlinux(with_relocs=True), LOAD).relocations
    assert set(relocs.addresses64) == {(TEXT + 0x200000) - (1 << 64), (TEXT + 0x200008) - (1 << 64)}
    assert relocs.inverse32 == ((TEXT + 0x400004) - (1 << 64),)
    assert relocs.addresses32 == ((TEXT + 0x400000) - (1 << 64),)


@pytest.mark.parametrize("change, message", [
    (lambda elf: b"\x7fELG" + elf[4:], "not an ELF file"),
    (lambda elf: elf[:4] + b"\x01" + elf[5:], "not a little-endian x86-64"),
    (lambda elf: elf[:40], "too short"),
    (lambda elf: elf[:0x200010], "runs past the end"),
    (lambda elf: elf + b"\x01\x00\x00\x00", "not a relocation table"),
    (lambda elf: elf + struct.pack("<3I", 5, 0, 0), "not a relocation table"),
])
def test_malformed_vmlinux_is_one_error(change, message) -> None:
    with pytest.raises(VmlinuxError, match=message):
        Vmlinux.parse(change(sample_vmlinux()), LOAD)


def test_segments_linked_below_the_load_address_or_misaligned_are_refused() -> None:
    elf = sample_vmlinux()
    with pytest.raises(VmlinuxError, match="outside the kernel's range"):
        Vmlinux.parse(elf, LOAD + 0x200000)
    misaligned = bytearray(elf)
    struct.pack_into("<Q", misaligned, 64 + 48, 0x1000)  # first p_align
    with pytest.raises(VmlinuxError, match="not a multiple of 2 MiB"):
        Vmlinux.parse(bytes(misaligned), LOAD)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_damaged_vmlinux_parses_consistently_or_raises_vmlinux_error(data) -> None:
    elf = bytearray(sample_vmlinux(with_relocs=data.draw(st.booleans())))
    header_area = data.draw(st.booleans())
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, 64 + 3 * 56 - 1) if header_area else
                       st.integers(len(elf) - 64, len(elf) - 1))
        elf[at] = data.draw(st.integers(0, 255))
    try:
        vmlinux = Vmlinux.parse(bytes(elf), LOAD)
    except VmlinuxError:
        return
    for segment in vmlinux.segments:
        assert segment.offset + segment.filesz <= len(elf)
        assert LOAD <= segment.paddr and segment.filesz <= segment.memsz
    assert any(s.paddr <= vmlinux.entry < s.paddr + s.filesz for s in vmlinux.segments)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_no_vmlinux(data) -> None:
    with pytest.raises(VmlinuxError):
        Vmlinux.parse(data, LOAD)


# -- the whole fast path on a bzImage -----------------------------------------------------

def _ram() -> GuestRam:
    return GuestRam(64 << 20)


def test_kaslr_moves_the_virtual_base_and_applies_every_relocation(payloads) -> None:
    payload = compress_payloads(sample_vmlinux(with_relocs=True), ["gzip"])["gzip"]
    image = bzimage(payload)
    seen = set()
    for _ in range(8):
        kernel = decompress_on_host(BzImage.parse(image), image, "console=ttyS0", 0x100000, False)
        assert kernel.kaslr and kernel.load_address == LOAD and kernel.entry == LOAD
        delta = kernel.virtual_base - LOAD
        assert delta % 0x200000 == 0 and 0 <= kernel.virtual_base < 1 << 30
        seen.add(delta)
        ram = _ram()
        kernel.load_into(ram)
        assert ram.read_u64(LOAD + 0x200000) == TEXT + 0x10 + delta
        assert ram.read_u64(LOAD + 0x200008) == TEXT + 0x400000 + delta
        assert ram.read_u32(LOAD + 0x400000) == ((TEXT + 0x20 + delta) & 0xFFFFFFFF)
        assert struct.unpack("<i", ram.read(LOAD + 0x400004, 4))[0] == -0x1234 - delta
        assert ram.read_u32(LOAD + 0x400008) == 0x81000040  # not in the table: untouched
        assert ram.read(LOAD + 0x400000 + 112, 0x10000 - 112) == bytes(0x10000 - 112)  # .bss
        params = bytearray(4096)
        kernel.edit_boot_params(params, "console=ttyS0", ram)
        assert params[LOADFLAGS] & KASLR_FLAG
    assert len(seen) > 1, "eight random virtual bases were all the same"


def test_nokaslr_keeps_the_linked_addresses(payloads) -> None:
    payload = compress_payloads(sample_vmlinux(with_relocs=True), ["gzip"])["gzip"]
    image = bzimage(payload)
    kernel = decompress_on_host(BzImage.parse(image), image, "nokaslr", 0x100000, False)
    assert not kernel.kaslr and kernel.virtual_base == LOAD
    ram = _ram()
    kernel.load_into(ram)
    assert ram.read_u64(LOAD + 0x200000) == TEXT + 0x10
    params = bytearray(4096)
    params[LOADFLAGS] = KASLR_FLAG | 1
    kernel.edit_boot_params(params, "nokaslr", ram)
    assert params[LOADFLAGS] == 1


def test_a_relocatable_kernel_runs_where_loaded_rounded_up_to_its_alignment(payloads) -> None:
    """head_64.S: max(align_up(load address, kernel_alignment), LOAD_PHYSICAL_ADDR)."""
    for alignment, loaded_at, runs_at in [(0x1000000, 0x100000, LOAD),
                                          (0x1000000, 0x1100000, 0x2000000),
                                          (0x200000, 0x1100000, 0x1200000)]:
        image = bzimage(payloads["gzip"], kernel_alignment=alignment)
        kernel = decompress_on_host(BzImage.parse(image), image, "", loaded_at, False)
        assert (kernel.load_address, kernel.entry) == (runs_at, runs_at)
    fixed = bzimage(payloads["gzip"], relocatable=False)
    assert decompress_on_host(BzImage.parse(fixed), fixed, "", 0x1100000, False).entry == LOAD


@pytest.mark.parametrize("cmdline, xloadflags, la57, reason", [
    ("console=ttyS0 earlyprintk=serial", 0x21, False, "early serial console"),
    ("earlyprintk=ttyS0,115200", 0x21, False, "early serial console"),
    ("console=uart8250,io,0x3f8,115200n8", 0x21, False, "early serial console"),
    ("", 0x61, True, "5-level paging"),
])
def test_what_only_the_kernels_decompressor_can_do_sends_the_boot_there(
        payloads, cmdline, xloadflags, la57, reason) -> None:
    image = bzimage(payloads["gzip"], xloadflags=xloadflags)
    with pytest.raises(HostDecompressionUnavailable, match=reason):
        decompress_on_host(BzImage.parse(image), image, cmdline, 0x100000, la57)


@pytest.mark.parametrize("cmdline, xloadflags, la57", [
    ("earlyprintk=vga console=ttyS0", 0x21, False),
    ("earlyprintk=serial earlyprintk=vga", 0x21, False),   # the last one counts
    ("no5lvl", 0x61, True),
    ("", 0x61, False),
])
def test_options_the_decompressor_ignores_keep_the_fast_path(payloads, cmdline, xloadflags,
                                                             la57) -> None:
    image = bzimage(payloads["gzip"], xloadflags=xloadflags)
    assert decompress_on_host(BzImage.parse(image), image, cmdline, 0x100000, la57).entry == LOAD


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload_offset=st.integers(0, 0x400), payload_length=st.integers(0, 1 << 17),
       init_size=st.integers(0, 1 << 24), pref_address=st.integers(0, 1 << 26).map(lambda a: a & ~0xFFF),
       alignment=st.sampled_from([0, 0x1000, 0x200000, 0x300000, 0x1000000]),
       relocatable=st.booleans())
def test_any_setup_header_gives_a_placeable_kernel_or_a_reason(
        payloads, payload_offset, payload_length, init_size, pref_address, alignment,
        relocatable) -> None:
    image = bzimage(payloads["gzip"], payload_length=payload_length, init_size=init_size,
                    pref_address=pref_address, kernel_alignment=alignment, relocatable=relocatable,
                    declared_offset=payload_offset)
    try:
        kernel = decompress_on_host(BzImage.parse(image), image, "", 0x100000, False)
    except HostDecompressionUnavailable:
        return
    assert kernel.load_address % 0x200000 == 0 and kernel.load_address >= 0x100000
    for segment in kernel.vmlinux.segments:
        start = kernel.load_address + segment.paddr - kernel.load_physical_addr
        assert kernel.load_address <= start
        assert start + segment.memsz <= kernel.load_address + init_size


# -- boot_params and the command line -----------------------------------------------------

def test_mem_encrypt_on_sets_the_xloadflag_as_the_decompressor_does(payloads) -> None:
    image = bzimage(payloads["gzip"])
    kernel = decompress_on_host(BzImage.parse(image), image, "", 0x100000, False)
    for cmdline, expected in [("mem_encrypt=on", True), ("mem_encrypt=off", False),
                              ("mem_encrypt=off mem_encrypt=on", True),
                              ("mem_encrypt=on mem_encrypt=off", False), ("", False)]:
        params = bytearray(4096)
        kernel.edit_boot_params(params, cmdline, _ram())
        flags = struct.unpack_from("<H", params, XLOADFLAGS)[0]
        assert bool(flags & XLF_MEM_ENCRYPTION) == expected, cmdline


def _rsdp(revision: int = 0, good: bool = True) -> bytes:
    body = bytearray(b"RSD PTR " + bytes(1) + b"NITRO " + bytes([revision]) + bytes(4))
    body[8] = (-sum(body)) & 0xFF if good else (1 - sum(body)) & 0xFF
    if revision >= 2:
        body += struct.pack("<IQ", 36, 0) + bytes(4)
        body[32] = (-sum(body)) & 0xFF
    return bytes(body)


def test_the_acpi_rsdp_is_found_where_a_bios_leaves_it() -> None:
    ram = _ram()
    assert find_rsdp(ram) == 0
    ram.write(0xE0008, _rsdp())          # not on a 16-byte boundary: not an RSDP
    ram.write(0xF0010, _rsdp(good=False))
    assert find_rsdp(ram) == 0
    ram.write(0xF0020, _rsdp(revision=2))
    assert find_rsdp(ram) == 0xF0020
    ram.write_u16(0x40E, 0x9FC0)          # EBDA at 0x9FC00 comes first
    ram.write(0x9FC40, _rsdp())
    assert find_rsdp(ram) == 0x9FC40
    params = bytearray(4096)
    image = bzimage(compress_payloads(sample_vmlinux(), ["gzip"])["gzip"])
    decompress_on_host(BzImage.parse(image), image, "", 0x100000, False).edit_boot_params(
        params, "", ram)
    assert struct.unpack_from("<Q", params, ACPI_RSDP_ADDR)[0] == 0x9FC40


def test_command_line_options_are_found_as_the_boot_code_finds_them() -> None:
    line = "console=ttyS0 quiet\tconsole=uart8250,io,0x3f8 nokaslrx nokaslr a=b=c"
    assert find_option(line, "console") == "uart8250,io,0x3f8"
    assert find_option(line, "a") == "b=c"
    assert find_option(line, "quiet") is None
    assert find_option_bool(line, "nokaslr") == line.index(" nokaslr ") + 2
    assert find_option_bool(line, "quiet") == line.index("quiet") + 1
    assert find_option_bool(line, "console") == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b=1", "b=2", "nokaslr", "x=nokaslr", "\t", " "]),
                max_size=12))
def test_command_line_lookups_match_a_word_by_word_reading(words) -> None:
    line = " ".join(words)
    tokens = line.split()
    values = [token[2:] for token in tokens if token.startswith("b=")]
    assert find_option(line, "b") == (values[-1] if values else None)
    assert bool(find_option_bool(line, "nokaslr")) == ("nokaslr" in tokens)


def test_a_background_inflation_hands_over_its_kernel_or_its_reason(payloads) -> None:
    good = bzimage(payloads["gzip"])
    inflation = BackgroundInflation(BzImage.parse(good), good)
    assert inflation.result().vmlinux.data == sample_vmlinux()
    kernel = decompress_on_host(BzImage.parse(good), good, "", 0x100000, False, inflation)
    assert kernel.entry == LOAD and kernel.compression == "gzip"
    damaged = bytearray(good)
    damaged[0x400 + 0x200 + 100:0x400 + 0x200 + 140] = bytes(40)
    inflation = BackgroundInflation(BzImage.parse(bytes(damaged)), bytes(damaged))
    with pytest.raises(HostDecompressionUnavailable, match="gzip-compressed kernel"):
        decompress_on_host(BzImage.parse(bytes(damaged)), bytes(damaged), "", 0x100000, False,
                           inflation)
