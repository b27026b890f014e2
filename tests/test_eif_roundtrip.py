"""build_eif -> read_eif round trips over generated inputs; PCRs checked against a
direct computation from the inputs; inline and threaded hashing agree."""
import hashlib
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from eif import jsonfmt
from eif.builder import build_eif
from eif.errors import EifError
from eif.layout import SectionType
from eif.reader import read_eif


def extend(stream: bytes) -> bytes:
    return hashlib.sha384(bytes(48) + hashlib.sha384(stream).digest()).digest()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

cmdlines = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                   max_size=200)


@given(kernel=st.binary(max_size=3000), cmdline=cmdlines,
       ramdisks=st.lists(st.binary(max_size=3000), min_size=1, max_size=6),
       name=st.text(max_size=30), custom=json_values,
       arch=st.sampled_from(["x86_64", "aarch64"]), threaded=st.booleans())
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_round_trip(kernel, cmdline, ramdisks, name, custom, arch, threaded):
    with tempfile.TemporaryDirectory() as tmp:
        kpath = os.path.join(tmp, "kernel")
        with open(kpath, "wb") as f:
            f.write(kernel)
        rpaths = []
        for i, data in enumerate(ramdisks):
            rpaths.append(os.path.join(tmp, f"r{i}"))
            with open(rpaths[-1], "wb") as f:
                f.write(data)
        out = os.path.join(tmp, "out.eif")
        m = build_eif(out, kernel=kpath, cmdline=cmdline, ramdisks=rpaths, name=name,
                      metadata=custom, arch=arch, build_time="2025-10-05T13:12:27+00:00",
                      threaded=threaded)
        c = cmdline.encode()
        assert m.pcr0 == extend(kernel + c + b"".join(ramdisks))
        assert m.pcr1 == extend(kernel + c + ramdisks[0])
        assert m.pcr2 == extend(b"".join(ramdisks[1:]))
        image = read_eif(out, threaded=not threaded)
        assert image.crc_ok
        assert image.measurements == m
        assert image.arch == arch and image.cmdline == cmdline
        assert image.read_kernel() == kernel
        assert image.read_ramdisks() == b"".join(ramdisks)
        assert [s.size for s in image.ramdisk_sections] == [len(r) for r in ramdisks]
        assert image.metadata.image_name == name
        # the custom metadata survives as serde_json would re-read it
        assert jsonfmt.dumps_compact(image.metadata.custom_metadata) == \
            jsonfmt.dumps_compact(custom)
        assert os.path.getsize(out) == 548 + sum(12 + s.size for s in image.sections)
        assert [s.type for s in image.sections[:3]] == \
            [SectionType.KERNEL, SectionType.CMDLINE, SectionType.METADATA]


def test_large_sections_stream_in_chunks_and_threads_agree(tmp_path):
    """Sections bigger than a chunk and than the thread threshold, both hashing modes."""
    kernel = os.urandom(3 << 20) + b"k"
    r1 = os.urandom(5 << 20) + b"1"
    r2 = os.urandom((1 << 20) + 7)
    for name, data in (("k", kernel), ("r1", r1), ("r2", r2)):
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "big.eif"
    m = build_eif(out, kernel=tmp_path / "k", cmdline="x", ramdisks=[tmp_path / "r1",
                  tmp_path / "r2"], build_time="2024-01-01T00:00:00+00:00")
    assert m.pcr0 == extend(kernel + b"x" + r1 + r2)
    assert m.pcr1 == extend(kernel + b"x" + r1)
    assert m.pcr2 == extend(r2)
    inline, threaded = read_eif(out, threaded=False), read_eif(out, threaded=True)
    assert inline.measurements == threaded.measurements == read_eif(out).measurements == m
    assert inline.crc_ok and threaded.crc_ok
    view = memoryview(bytearray(len(r1) + len(r2) + 10))
    assert inline.read_ramdisks_into(view) == len(r1) + len(r2)
    assert bytes(view[:len(r1) + len(r2)]) == r1 + r2


def test_reader_detects_file_replaced_after_validation(tmp_path):
    (tmp_path / "k").write_bytes(b"kernel")
    (tmp_path / "r").write_bytes(b"ramdisk")
    out = tmp_path / "x.eif"
    build_eif(out, kernel=tmp_path / "k", cmdline="", ramdisks=[tmp_path / "r"])
    image = read_eif(out)
    build_eif(out, kernel=tmp_path / "k", cmdline="longer", ramdisks=[tmp_path / "r"])
    with pytest.raises(EifError, match="changed since it was validated"):
        image.read_kernel()


def test_builder_rejects_bad_input(tmp_path):
    (tmp_path / "k").write_bytes(b"kernel")
    (tmp_path / "r").write_bytes(b"ramdisk")
    k, r, out = tmp_path / "k", tmp_path / "r", tmp_path / "o.eif"
    with pytest.raises(EifError, match="NUL"):
        build_eif(out, kernel=k, cmdline="a\0b", ramdisks=[r])
    with pytest.raises(EifError, match="at least one ramdisk"):
        build_eif(out, kernel=k, cmdline="", ramdisks=[])
    with pytest.raises(EifError, match="at most 29"):
        build_eif(out, kernel=k, cmdline="", ramdisks=[r] * 30)
    with pytest.raises(EifError, match="architecture"):
        build_eif(out, kernel=k, cmdline="", ramdisks=[r], arch="riscv")
    with pytest.raises(EifError, match="a directory, not a regular file"):
        build_eif(out, kernel=tmp_path, cmdline="", ramdisks=[r])
    with pytest.raises(EifError, match="both"):
        build_eif(out, kernel=k, cmdline="", ramdisks=[r], signing_certificate=k)
    with pytest.raises(EifError, match="cannot read .*missing: No such file"):
        build_eif(out, kernel=tmp_path / "missing", cmdline="", ramdisks=[r])
    with pytest.raises(EifError, match="cannot be written as JSON"):
        build_eif(out, kernel=k, cmdline="", ramdisks=[r], metadata={"x": float("nan")})
    with pytest.raises(EifError, match="cmdline is not valid Unicode"):
        build_eif(out, kernel=k, cmdline="\ud800", ramdisks=[r])
    with pytest.raises(EifError, match="metadata holds a string that is not valid Unicode"):
        build_eif(out, kernel=k, cmdline="", ramdisks=[r], name="\udfff")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "r"]  # no temp files left


def test_29_ramdisks_fill_the_table(tmp_path):
    (tmp_path / "k").write_bytes(b"kernel")
    paths = []
    for i in range(29):
        paths.append(tmp_path / f"r{i}")
        paths[-1].write_bytes(bytes([i]) * i)
    out = tmp_path / "full.eif"
    m = build_eif(out, kernel=tmp_path / "k", cmdline="c", ramdisks=paths)
    image = read_eif(out)
    assert len(image.sections) == 32 and image.measurements == m
    assert image.read_ramdisks() == b"".join(bytes([i]) * i for i in range(29))
