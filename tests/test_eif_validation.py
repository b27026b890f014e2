"""The reader's validation: every single-byte change of a valid file is caught (CRC
mismatch or EifError), arbitrary bytes raise only EifError, and each structural rule has
an error message naming what and where."""
import os
import random
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from eif import layout
from eif.errors import EifError
from eif.layout import SectionType as T
from eif.metadata import BuildInfo, Metadata
from eif.reader import check_eif, read_eif

META = Metadata("n", "v", BuildInfo("t", "tool", "1", "OS", "kernel")).to_bytes()


def compose(sections, *, version=4, flags=0, reserved=0, unused=0, num_sections=None,
            offsets=None, sizes=None, crc=None, section_flags=None, trailing=b""):
    """Raw EIF bytes from (type, data) pairs, laid out like AWS's builder, with knobs to
    break one rule at a time. The CRC is right unless given."""
    body, offs, szs = b"", [], []
    for i, (kind, data) in enumerate(sections):
        offs.append(548 + len(body))
        szs.append(len(data))
        flag = (section_flags or {}).get(i, 0)
        body += layout.SECTION_HEADER.build(dict(section_type=kind, flags=flag,
                                                 section_size=len(data))) + data
    offs = offsets if offsets is not None else offs
    szs = sizes if sizes is not None else szs
    pad = 32 - len(offs)
    header = layout.HEADER.build(dict(
        magic=b".eif", version=version, flags=flags, default_mem=1 << 30, default_cpus=2,
        reserved=reserved, num_sections=len(sections) if num_sections is None else num_sections,
        section_offsets=offs + [0] * pad, section_sizes=szs + [0] * pad, unused=unused,
        eif_crc32=0))
    value = zlib.crc32(body, zlib.crc32(header[:544])) if crc is None else crc
    return header[:544] + value.to_bytes(4, "big") + body + trailing


GOOD = [(T.KERNEL, b"KERNEL"), (T.CMDLINE, b"console=ttyS0"), (T.METADATA, META),
        (T.RAMDISK, b"RAMDISK-ONE"), (T.RAMDISK, b"RAMDISK-TWO")]


def read_bytes(tmp_path, data, name="x.eif"):
    path = tmp_path / name
    path.write_bytes(data)
    return read_eif(path)


def expect_error(tmp_path, data, pattern):
    with pytest.raises(EifError, match=pattern):
        read_bytes(tmp_path, data)


def test_composed_file_is_valid(tmp_path):
    image = read_bytes(tmp_path, compose(GOOD))
    assert image.crc_ok and image.metadata.image_name == "n"


def test_crc_mismatch_is_reported_not_raised(tmp_path):
    image = read_bytes(tmp_path, compose(GOOD, crc=0x12345678))
    assert not image.crc_ok and image.crc_stored == 0x12345678


@pytest.mark.parametrize("data, pattern", [
    (b"", "0 bytes, too short for the 548-byte EIF header"),
    (b".eif" + bytes(500), "too short"),
    (b"\x7fELF" + bytes(600), r"not an EIF: magic at offset 0 is b'\\x7fELF'"),
])
def test_short_and_foreign_files(tmp_path, data, pattern):
    expect_error(tmp_path, data, pattern)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(version=5), "unsupported EIF version 5 at offset 4"),
    (dict(version=1), "unsupported EIF version 1"),
    (dict(flags=2), "unknown header flags 0x0002 at offset 6"),
    (dict(reserved=1), "reserved header field at offset 24"),
    (dict(unused=9), "unused header field at offset 540"),
    (dict(num_sections=0), "says 0 sections"),
    (dict(num_sections=33), "says 33 sections"),
    (dict(num_sections=4), "table slot 4 is unused .num_sections = 4. but holds offset 826"),
    (dict(num_sections=4, offsets=[548, 566, 591, 603 + len(META)], sizes=[6, 13, len(META), 11]),
     "23 bytes after the last section .which ends at offset 826."),
    (dict(offsets=[548, 560 + 6, 9999, 0, 0]), "section 2 at offset 9999, expected"),
    (dict(sizes=[6, 13, len(META), 11, 12]), "ends at .* past the end"),
    (dict(trailing=b"x"), "1 bytes after the last section"),
    (dict(section_flags={1: 4}), r"section 1 \(header at offset 566\): section flags are 0x0004"),
])
def test_header_rules(tmp_path, kwargs, pattern):
    expect_error(tmp_path, compose(GOOD, **kwargs), pattern)


def test_unused_table_slot_must_be_zero(tmp_path):
    data = bytearray(compose(GOOD))
    data[28 + 8 * 7:28 + 8 * 8] = (5).to_bytes(8, "big")  # offsets[7]
    expect_error(tmp_path, bytes(data), "table slot 7 is unused")


def test_section_size_must_match_table(tmp_path):
    data = bytearray(compose(GOOD))
    data[548 + 4:548 + 12] = (5).to_bytes(8, "big")  # kernel header says 5, table 6
    expect_error(tmp_path, bytes(data), "size 5 differs from the header table's 6")


@pytest.mark.parametrize("sections, pattern", [
    ([(6, b"x")] + GOOD, r"section 0 \(header at offset 548\): unknown section type 6"),
    ([(0, b"")] + GOOD, "invalid section type 0"),
    (GOOD[1:], "no kernel section"),
    ([GOOD[0]] + GOOD[2:], "no cmdline section"),
    (GOOD[:3], "no ramdisk section"),
    (GOOD + [(T.KERNEL, b"K2")], r"2 kernel sections \(at indexes 0, 5\)"),
    (GOOD + [(T.METADATA, META)], "2 metadata sections"),
    ([GOOD[0], (T.CMDLINE, b"a\0b")] + GOOD[2:], "NUL byte at position 1"),
    ([GOOD[0], (T.CMDLINE, b"\xff")] + GOOD[2:], "command line is not UTF-8"),
    ([GOOD[0], (T.CMDLINE, bytes(2 << 20))] + GOOD[2:], "cmdline section of 2097152 bytes"),
    (GOOD[:2] + [(T.METADATA, b"{")] + GOOD[3:], r"section 2 \(metadata.*invalid JSON"),
    (GOOD[:2] + [(T.METADATA, b"[]")] + GOOD[3:], "expected a JSON object, found a array"),
    (GOOD[:2] + [(T.METADATA, META.replace(b'"DockerInfo"', b'"Dockerinfo"'))] + GOOD[3:],
     "missing key DockerInfo"),
    (GOOD[:2] + [(T.METADATA, META.replace(b'"BuildTool":"tool"', b'"BuildTool":7'))]
     + GOOD[3:], "BuildMetadata.BuildTool is a number, not a string"),
    (GOOD[:2] + [(T.METADATA, b'{"a":NaN}')] + GOOD[3:], "NaN is not valid JSON"),
    (GOOD[:2] + [(T.METADATA, b'"\\ud800"')] + GOOD[3:], "lone surrogate"),
    (GOOD[:2] + [(T.METADATA, b"[" * 5000 + b"]" * 5000)] + GOOD[3:], "nested deeper"),
    (GOOD + [(T.SIGNATURE, b"\xff")], r"section 5 \(signature.*invalid CBOR"),
    (GOOD + [(T.SIGNATURE, b"\x80")], "non-empty CBOR array"),
    (GOOD + [(T.SIGNATURE, b"\x81\xa1\x61a\x00")], "entry 0 is not a map of exactly"),
    (GOOD + [(T.SIGNATURE, b"\x9b" + bytes.fromhex("ffffffffffffffff"))], "runs past the end"),
])
def test_section_rules(tmp_path, sections, pattern):
    expect_error(tmp_path, compose(sections), pattern)


def test_null_metadata_means_none(tmp_path):
    image = read_bytes(tmp_path, compose(GOOD[:2] + [(T.METADATA, b"null")] + GOOD[3:]))
    assert image.metadata is None


def test_sections_in_other_orders_measure_like_nitro_cli(tmp_path):
    """nitro-cli hashes sections in file order; a kernel after the ramdisks still counts
    in PCR1 (kernel+cmdline+first ramdisk streams in file order)."""
    import hashlib

    def ext(b):
        return hashlib.sha384(bytes(48) + hashlib.sha384(b).digest()).digest()

    sections = [(T.CMDLINE, b"c"), (T.RAMDISK, b"R1"), (T.RAMDISK, b"R2"),
                (T.KERNEL, b"K"), (T.RAMDISK, b"R3")]
    for threaded in (False, True):
        path = tmp_path / "odd.eif"
        path.write_bytes(compose(sections))
        m = read_eif(path, threaded=threaded).measurements
        assert m.pcr0 == ext(b"cR1R2KR3")
        assert m.pcr1 == ext(b"cR1K")
        assert m.pcr2 == ext(b"R2R3")


def test_not_a_regular_file_and_missing(tmp_path):
    with pytest.raises(EifError, match="Is a directory|not a regular file"):
        read_eif(tmp_path)
    os.mkfifo(tmp_path / "fifo")  # must not block waiting for a writer
    with pytest.raises(EifError, match="fifo: a FIFO, not a regular file"):
        read_eif(tmp_path / "fifo")
    with pytest.raises(EifError, match="cannot read EIF .*nope.eif: No such file"):
        read_eif(tmp_path / "nope.eif")


def _mutation_outcome(path, data, position, value):
    mutated = bytearray(data)
    mutated[position] = value
    path.write_bytes(mutated)
    try:
        image = read_eif(path, threaded=False)
    except EifError:
        return "error"
    assert not image.crc_ok, f"change at offset {position} to {value:#x} went unnoticed"
    return "crc"


def test_every_single_byte_change_is_detected(tmp_path):
    """All positions of a small two-ramdisk EIF, each with several new values."""
    data = compose(GOOD)
    path = tmp_path / "m.eif"
    rng = random.Random(1)
    outcomes = {"error": 0, "crc": 0}
    for position in range(len(data)):
        for value in {data[position] ^ 0x01, data[position] ^ 0x80, rng.randrange(256)} \
                - {data[position]}:
            outcomes[_mutation_outcome(path, data, position, value)] += 1
    assert outcomes["error"] > 100 and outcomes["crc"] > 100


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_bytes_raise_only_eif_error(tmp_path, data):
    path = tmp_path / "fuzz.eif"
    path.write_bytes(data)
    try:
        read_eif(path)
    except EifError:
        pass


SIGNED = GOOD + [(T.SIGNATURE, bytes.fromhex("81a2737369676e696e675f636572746966696361746580"
                                             "697369676e61747572658a"))]


def mutate(data, raw: bytearray) -> bytearray:
    """Several random edits of `raw`: overwrite, truncate, insert."""
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "truncate", "insert"]))
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "set" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    return raw


@given(st.data())
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_valid_files_raise_only_eif_error(tmp_path, data):
    """Several random edits of a valid file with a signature-like tail: the reader either
    reads it or raises EifError, nothing else."""
    path = tmp_path / "mut.eif"
    path.write_bytes(bytes(mutate(data, bytearray(compose(SIGNED)))))
    try:
        read_eif(path)
    except EifError:
        pass


def outcome(read, path):
    try:
        return read(path)
    except EifError as error:
        return str(error)


@given(st.data())
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_check_eif_accepts_and_refuses_what_read_eif_does(tmp_path, data):
    """check_eif (no hashing) and read_eif agree on every file, with the same error."""
    path = tmp_path / "mut.eif"
    path.write_bytes(bytes(mutate(data, bytearray(compose(data.draw(st.sampled_from(
        [GOOD, SIGNED, [(T.KERNEL, b"K"), (T.CMDLINE, b"a\0b"), (T.RAMDISK, b"R")]])))))))
    checked, image = outcome(check_eif, path), outcome(read_eif, path)
    if isinstance(image, str):
        assert checked == image
    else:
        assert (checked.arch, checked.sections) == (image.arch, image.sections)


def test_check_eif_reports_the_architecture(tmp_path):
    path = tmp_path / "x.eif"
    path.write_bytes(compose(GOOD, flags=layout.FLAG_ARCH_AARCH64))
    checked = check_eif(path)
    assert checked.arch == "aarch64" and len(checked.sections) == len(GOOD)
