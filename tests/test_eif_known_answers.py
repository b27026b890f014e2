"""Known answers from docs/spec/eif.md §12: the synthetic EIF (length, CRC, file hash, PCRs),
the widely published one-ramdisk PCR2, PCR3/PCR4, serde_cbor vectors, sizes."""
import hashlib
import zlib

import pytest

import eif
from eif import layout, pcr, signature
from eif.builder import build_eif
from eif.reader import read_eif

SYNTHETIC = dict(cmdline="console=ttyS0", name="test", version="1.0",
                 build_time="2024-01-01T00:00:00+00:00", build_tool="eif_build",
                 build_tool_version="0.0.0", operating_system="OS", kernel_version="kernel")
PUBLISHED_ONE_RAMDISK_PCR2 = (
    "21b9efbc184807662e966d34f390821309eeac6802309798826296bf3e8bec7c"
    "10edb30948c90ba67310f7b964fc500a")
SYNTH_PCR0 = ("501688b0181f09350c6c26ddaf67753f86d56e18ce4ed3311807ace73d90146b"
              "80bada418bac61e78d5d07a86f6f16fa")
SYNTH_PCR1 = ("d1c14ef97f2ec1d88858a54562275a1071f4cb51c4627e47bc6e72be68fefc15"
              "a0b15ca67dd1723478a5bcf1b77ed487")
SYNTH_PCR2 = ("f33eabf2c1c9c8488352690b8d9f5dded507ecfe30ea2d738e6f60c53adad8f4"
              "99733128196224d78b0ae05b7be6544e")


@pytest.fixture
def inputs(tmp_path):
    files = {}
    for name, content in (("kernel", b"KERNEL"), ("r1", b"RAMDISK-ONE"), ("r2", b"RAMDISK-TWO")):
        files[name] = tmp_path / name
        files[name].write_bytes(content)
    return files


@pytest.mark.parametrize("threaded", [False, True])
def test_synthetic_two_ramdisk_eif(tmp_path, inputs, threaded):
    out = tmp_path / "synthetic.eif"
    m = build_eif(out, kernel=inputs["kernel"], ramdisks=[inputs["r1"], inputs["r2"]],
                  threaded=threaded, **SYNTHETIC)
    data = out.read_bytes()
    assert len(data) == 887
    assert data[:32].hex() == ("2e656966000400000000000040000000"
                               "00000000000000020000000500000000")
    assert int.from_bytes(data[544:548], "big") == 0x34BA9EF3
    assert hashlib.sha256(data).hexdigest() == \
        "81ef522a21baab8f13a47db188b7fec109dd7ff9a9b0ae7d1e051c1f913ab21d"
    assert (m.pcr0.hex(), m.pcr1.hex(), m.pcr2.hex(), m.pcr8) == \
        (SYNTH_PCR0, SYNTH_PCR1, SYNTH_PCR2, None)
    image = read_eif(out, threaded=threaded)
    assert image.crc_ok and image.crc_computed == 0x34BA9EF3
    assert image.measurements == m
    assert image.version == 4 and image.arch == "x86_64" and image.cmdline == "console=ttyS0"
    assert image.read_kernel() == b"KERNEL"
    assert image.read_ramdisks() == b"RAMDISK-ONERAMDISK-TWO"
    assert [s.offset for s in image.ramdisk_sections] == [560 + 6 + 12 + 13 + 12 + 238 + 12,
                                                           887 - 11]
    assert image.metadata.image_name == "test" and image.metadata.custom_metadata is None


def test_synthetic_one_ramdisk_eif_has_the_published_pcr2(tmp_path, inputs):
    out = tmp_path / "one.eif"
    m = build_eif(out, kernel=inputs["kernel"], ramdisks=[inputs["r1"]], **SYNTHETIC)
    data = out.read_bytes()
    assert len(data) == 864
    assert zlib.crc32(data[:544] + data[548:]) == 0xE90B38EF
    assert int.from_bytes(data[544:548], "big") == 0xE90B38EF
    assert m.pcr0 == m.pcr1
    assert m.pcr1.hex() == SYNTH_PCR1
    assert m.pcr2.hex() == PUBLISHED_ONE_RAMDISK_PCR2
    assert read_eif(out).measurements == m


def test_reproducible_build_same_inputs_same_bytes(tmp_path, inputs):
    a, b = tmp_path / "a.eif", tmp_path / "b.eif"
    for out in (a, b):
        build_eif(out, kernel=inputs["kernel"], ramdisks=[inputs["r1"]], **SYNTHETIC)
    assert a.read_bytes() == b.read_bytes()


def test_pcr3_pcr4_from_strings():
    assert pcr.pcr_of_string("arn:aws:iam::123456789012:role/testrole").hex() == (
        "ae2d3baa6ad51909b69c0a3bb39ebebc787c799862545cbfa795ab70e32a8d77"
        "99af382ec584e053bf76cbbd69911a63")
    assert eif.pcr_of_string("i-1234567890abcdef0").hex() == (
        "08f996b5d43e047a9eb51e7f548bfee7e164fd7dc8f65541f2ac09d6545ac812"
        "719327281c401a67a10fcba87ae79ce0")


def test_extend_of_empty_stream_and_constants():
    assert pcr.pcr_of_bytes(b"").hex() == PUBLISHED_ONE_RAMDISK_PCR2
    assert hashlib.sha384(b"").hexdigest().startswith("38b060a751ac9638")
    assert pcr.extend_digest(pcr.ZERO_PCR, hashlib.sha384(b"").digest()).hex() == \
        PUBLISHED_ONE_RAMDISK_PCR2
    assert zlib.crc32(b"123456789") == 0xCBF43926


def test_serde_cbor_vectors():
    assert signature.pcr_info_payload(0, bytes(range(48))).hex() == (
        "a26e72656769737465725f696e646578006e72656769737465725f76616c7565"
        "9830000102030405060708090a0b0c0d0e0f101112131415161718181819181a"
        "181b181c181d181e181f1820182118221823182418251826182718281829182a"
        "182b182c182d182e182f")
    section = signature.encode_section([(
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        bytes.fromhex("d28444a1013822a04040"))])
    assert section.hex() == (
        "81a2737369676e696e675f6365727469666963617465983b182d182d182d182d"
        "182d1842184518471849184e182018431845185218541849184618491843184118"
        "541845182d182d182d182d182d0a184d1849184918420a182d182d182d182d182d"
        "1845184e1844182018431845185218541849184618491843184118541845182d18"
        "2d182d182d182d0a697369676e61747572658a18d21884184418a1011838182218"
        "a018401840")


def test_layout_sizes_and_section_types():
    assert layout.HEADER_SIZE == 548 and layout.SECTION_HEADER_SIZE == 12
    assert [t.value for t in layout.SectionType] == [0, 1, 2, 3, 4, 5]
    header = layout.pack_header(version=4, flags=1, num_sections=3, offsets=[548, 560, 572],
                                sizes=[0, 0, 0], crc=0xDEADBEEF)
    assert len(header) == 548 and header[6:8] == b"\0\1" and header[-4:] == b"\xde\xad\xbe\xef"
    parsed = layout.HEADER.parse(header)
    assert parsed.section_offsets[:4] == [548, 560, 572, 0]


def _spec_writer(kernel, cmdline, metadata, ramdisks):
    """An EIF writer written straight from the spec's struct formats (§1-§5, §8), sharing
    no code with eif/: returns the file bytes and the PCRs it computes itself."""
    import struct

    sections = [(1, kernel), (2, cmdline), (5, metadata)] + [(3, r) for r in ramdisks]
    offsets, sizes, position = [], [], 548
    for _, data in sections:
        offsets.append(position)
        sizes.append(len(data))
        position += 12 + len(data)
    pad = [0] * (32 - len(sections))
    header = struct.pack(">4sHHQQHH32Q32QII", b".eif", 4, 0, 1 << 30, 2, 0, len(sections),
                         *(offsets + pad), *(sizes + pad), 0, 0)
    body = b"".join(struct.pack(">HHQ", kind, 0, len(data)) + data for kind, data in sections)
    crc = zlib.crc32(body, zlib.crc32(header[:544]))

    def ext(stream):
        return hashlib.sha384(bytes(48) + hashlib.sha384(stream).digest()).hexdigest()

    pcrs = {"PCR0": ext(kernel + cmdline + b"".join(ramdisks)),
            "PCR1": ext(kernel + cmdline + ramdisks[0]), "PCR2": ext(b"".join(ramdisks[1:]))}
    return header[:544] + struct.pack(">I", crc) + body, pcrs


def test_eif_from_an_independent_spec_writer(tmp_path, inputs):
    """The reader agrees with a writer that shares no code with it, and the builder
    writes the very same bytes for the same inputs."""
    from eif.metadata import BuildInfo, Metadata

    metadata = Metadata("test", "1.0", BuildInfo("2024-01-01T00:00:00+00:00", "eif_build",
                                                 "0.0.0", "OS", "kernel")).to_bytes()
    data, pcrs = _spec_writer(b"KERNEL", b"console=ttyS0", metadata,
                              [b"RAMDISK-ONE", b"RAMDISK-TWO"])
    (tmp_path / "spec.eif").write_bytes(data)
    image = read_eif(tmp_path / "spec.eif")
    assert image.crc_ok
    assert {k: v for k, v in image.measurements.to_json_dict().items() if k != "HashAlgorithm"} \
        == pcrs
    assert pcrs["PCR0"] == SYNTH_PCR0 and pcrs["PCR2"] == SYNTH_PCR2
    build_eif(tmp_path / "built.eif", kernel=inputs["kernel"],
              ramdisks=[inputs["r1"], inputs["r2"]], **SYNTHETIC)
    assert (tmp_path / "built.eif").read_bytes() == data
