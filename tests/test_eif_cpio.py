"""The newc writer (eif.cpio): round trip, reproducibility, compatibility with GNU cpio, bad input."""
import shutil
import stat
import subprocess
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from eif import cpio

name_part = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12) \
    .filter(lambda s: s not in (".", ".."))
paths = st.lists(name_part, min_size=1, max_size=4).map("/".join)


@st.composite
def entry_sets(draw):
    """A set of files/symlinks at distinct paths, none a prefix directory of another's file."""
    entries = {}
    for p in draw(st.lists(paths, max_size=12, unique=True)):
        if any(q.startswith(p + "/") or p.startswith(q + "/") for q in entries):
            continue
        kind = draw(st.sampled_from(["file", "link", "dir", "chr"]))
        if kind == "file":
            entries[p] = cpio.file(p, draw(st.binary(max_size=300)), draw(st.integers(0, 0o7777)))
        elif kind == "link":
            entries[p] = cpio.symlink(p, draw(st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s)))
        elif kind == "dir":
            entries[p] = cpio.directory(p, draw(st.integers(0, 0o7777)))
        else:
            entries[p] = cpio.chardev(p, draw(st.integers(0, 4095)), draw(st.integers(0, 2**20)))
    return list(entries.values())


@given(entry_sets(), st.integers(0, 2**32 - 1))
@settings(max_examples=200)
def test_round_trip_and_layout(entries, mtime):
    data = cpio.newc_archive(entries, mtime)
    assert len(data) % 4 == 0
    back = cpio.read_newc(data)
    assert back == [replace(e, mtime=mtime) for e in cpio.normalize(entries)]
    assert [e.path for e in back] == sorted(e.path for e in back)
    # every parent directory is present
    have = {e.path for e in back}
    for e in back:
        parts = e.path.split("/")
        assert all("/".join(parts[:i]) in have for i in range(1, len(parts)))


@given(entry_sets())
@settings(max_examples=50)
def test_same_entries_any_order_same_bytes(entries):
    assert cpio.newc_archive(entries, 5) == cpio.newc_archive(list(reversed(entries)), 5)


def test_known_bytes():
    data = cpio.newc_archive([cpio.file("a", b"xy", 0o644)], mtime=0x10)
    head = data[:110]
    assert head == (b"070701" + b"00000001" + b"000081A4" + b"00000000" * 2 + b"00000001"
                    + b"00000010" + b"00000002" + b"00000000" * 4 + b"00000002" + b"00000000")
    assert data[110:116] == b"a\0" + b"xy" + b"\0\0"
    assert data.endswith(b"TRAILER!!!\0" + b"\0" * (-(110 + 11) % 4))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_reads_it(tmp_path):
    entries = [cpio.file("d/f.txt", b"hello\n", 0o640), cpio.symlink("d/l", "f.txt"),
               cpio.directory("e", 0o700), cpio.file("z", b"")]
    (tmp_path / "a.cpio").write_bytes(cpio.newc_archive(entries, 1704067200))
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=(tmp_path / "a.cpio").open("rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    assert listing == ["d", "d/f.txt", "d/l", "e", "z"]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "--no-preserve-owner"], cwd=out,
                   stdin=(tmp_path / "a.cpio").open("rb"), check=True)
    assert (out / "d/f.txt").read_bytes() == b"hello\n"
    assert stat.S_IMODE((out / "d/f.txt").stat().st_mode) == 0o640
    assert (out / "d/l").readlink().as_posix() == "f.txt"


@pytest.mark.parametrize("entry, msg", [
    (cpio.file("/abs", b""), "relative"),
    (cpio.file("a/../b", b""), "'..'"),
    (cpio.file("a//b", b""), "component"),
    (cpio.file("", b""), "relative"),
    (cpio.Entry("p", stat.S_IFSOCK | 0o644), "unsupported mode"),
    (cpio.Entry("d", stat.S_IFDIR | 0o755, b"x"), "carry data"),
    (cpio.Entry("l", stat.S_IFLNK | 0o777, b""), "without a target"),
])
def test_bad_entries_rejected(entry, msg):
    with pytest.raises(cpio.CpioError, match=msg):
        cpio.newc_archive([entry])


def test_conflicts_rejected():
    with pytest.raises(cpio.CpioError, match="given twice"):
        cpio.newc_archive([cpio.file("a", b"1"), cpio.file("a", b"2")])
    with pytest.raises(cpio.CpioError, match="not a directory"):
        cpio.newc_archive([cpio.file("a", b"1"), cpio.file("a/b", b"2")])


@given(st.binary(max_size=400))
def test_reader_never_crashes_on_garbage(data):
    try:
        cpio.read_newc(data)
    except cpio.CpioError:
        pass


@given(entry_sets(), st.data())
@settings(max_examples=50)
def test_reader_reports_truncation(entries, data):
    blob = cpio.newc_archive(entries)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(cpio.CpioError):
        cpio.read_newc(blob[:cut])


def test_owners_times_file_slices_and_hard_links(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"....payload....")
    entries = [cpio.Entry("b", stat.S_IFREG | 0o640, cpio.FileSlice(str(blob), 4, 7),
                          uid=1000, gid=100, mtime=12345),
               cpio.Entry("a", stat.S_IFREG | 0o640, link="b"),
               cpio.Entry("c", stat.S_IFREG | 0o640, link="b")]
    data = cpio.newc_archive(entries, mtime=1)
    back = {e.path: e for e in cpio.read_newc(data)}
    # the first name in path order carries the data; the others share its inode
    assert back["a"].data == b"payload" and back["a"].link is None
    assert back["b"].link == "a" and back["c"].link == "a" and back["c"].data == b""
    assert (back["a"].uid, back["a"].gid, back["a"].mtime) == (1000, 100, 12345)
    if shutil.which("cpio"):
        out = tmp_path / "x"
        out.mkdir()
        subprocess.run(["cpio", "-idm", "--quiet"], cwd=out, input=data, check=True)
        inodes = {(out / n).stat().st_ino for n in "abc"}
        assert len(inodes) == 1 and (out / "c").read_bytes() == b"payload"
        assert (out / "a").stat().st_mtime == 12345


@pytest.mark.parametrize("entries, message", [
    ([cpio.Entry("a", stat.S_IFREG | 0o644, link="missing")], "not a regular file of the archive"),
    ([cpio.directory("d"), cpio.Entry("a", stat.S_IFREG | 0o644, link="d")],
     "not a regular file of the archive"),
    ([cpio.Entry("a", stat.S_IFREG | 0o644, b"x", link="b"), cpio.file("b", b"")],
     "hard link must be a regular file without data"),
    ([cpio.Entry("a", stat.S_IFREG | 0o644, uid=-1)], "does not fit newc"),
    ([cpio.Entry("a", stat.S_IFREG | 0o644, mtime=1 << 32)], "does not fit newc"),
])
def test_bad_links_and_numbers_rejected(entries, message):
    with pytest.raises(cpio.CpioError, match=message):
        cpio.newc_archive(entries)


def test_a_file_slice_that_shrank_is_an_error(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"short")
    with pytest.raises(cpio.CpioError, match="ended 5 bytes early"):
        cpio.newc_archive([cpio.Entry("f", stat.S_IFREG | 0o644, cpio.FileSlice(str(blob), 0, 10))])
