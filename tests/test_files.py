"""eif.files (the one way user-named files are read and written) and the small parsers
that guard options: RFC 3339 build times, --timeout, hex expectations, documents."""
from __future__ import annotations

import datetime as dt
import math
import os
import stat
import threading

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from eif import files
from eif.errors import EifError, FileError
from eif.files import InputKind, atomic_output, open_input, read_input, write_output
from eif.metadata import check_rfc3339, format_rfc3339
from nitro_emu.attestation.errors import VerificationError
from nitro_emu.attestation.verify import decode_document, read_document
from nitro_emu.cli.attest_commands import expected_hex
from nitro_emu.cli.run_command import MAX_TIMEOUT_S, timeout_seconds
from nitro_emu.errors import UsageError

SMALL = InputKind("test input", 16)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- inputs ----------------------------------------------------------------------------

def test_a_regular_file_is_read(tmp_path):
    (tmp_path / "f").write_bytes(b"0123456789abcdef")
    assert read_input(tmp_path / "f", SMALL) == b"0123456789abcdef"
    os.symlink(tmp_path / "f", tmp_path / "link")
    assert read_input(tmp_path / "link", SMALL) == b"0123456789abcdef"


SPECIAL_FILES = [(os.mkfifo, "a FIFO"), (os.mkdir, "a directory"),
                 (lambda p: os.symlink("/dev/null", p),
                  "(a symlink to /dev/null): a character device")]


@pytest.mark.parametrize("make, what", SPECIAL_FILES, ids=["fifo", "directory", "link"])
def test_special_files_are_refused_without_blocking(tmp_path, make, what):
    path = tmp_path / "special"
    make(path)
    result: list[BaseException] = []

    def attempt() -> None:
        try:
            read_input(path, SMALL)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            result.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), f"reading {what} blocked"
    assert isinstance(result[0], FileError)
    assert f"test input {path}" in str(result[0]) and what in str(result[0])
    assert "not a regular file" in str(result[0])


def test_character_device_is_refused():
    with pytest.raises(FileError, match="/dev/zero: a character device, not a regular file"):
        read_input("/dev/zero", SMALL)


def test_the_size_limit_is_named(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 17)
    with pytest.raises(FileError, match=r"test input .*big: 17 bytes, over the 16 bytes limit"):
        read_input(tmp_path / "big", SMALL)
    with pytest.raises(FileError, match="cannot read test input .*none: No such file"):
        read_input(tmp_path / "none", SMALL)


def test_streamed_input_is_read_as_large_as_it_was_when_opened(tmp_path):
    path = tmp_path / "grows"
    path.write_bytes(b"abc")
    with open_input(path, files.RAMDISK) as opened:
        with open(path, "ab") as other:
            other.write(b"d")
        view = memoryview(bytearray(16))
        with pytest.raises(FileError, match="ramdisk .*grows: the file grew while being read"):
            opened.readinto(view)
    path.write_bytes(b"abc")
    with open_input(path, files.RAMDISK) as opened:
        os.truncate(path, 1)
        assert opened.readinto(memoryview(bytearray(1))) == 1
        with pytest.raises(FileError, match="shrank while being read .2 bytes missing"):
            opened.readinto(memoryview(bytearray(16)))


@pytest.mark.parametrize("size, text", [(4096, "4 KiB"), (4097, "4097 bytes"),
                                        (1 << 20, "1 MiB"), (64 << 10, "64 KiB"),
                                        (3 << 30, "3 GiB"), (0, "0 bytes")])
def test_format_size(size, text):
    assert files.format_size(size) == text


# -- outputs ---------------------------------------------------------------------------

def test_a_new_output_gets_the_mode_open_would_give(tmp_path):
    write_output(tmp_path / "new", b"data")
    assert (tmp_path / "new").read_bytes() == b"data"
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o666 & ~_umask()
    (tmp_path / "kept").write_bytes(b"old")
    os.chmod(tmp_path / "kept", 0o640)
    write_output(tmp_path / "kept", b"new")
    assert stat.S_IMODE(os.stat(tmp_path / "kept").st_mode) == 0o640


def test_an_output_symlink_is_written_through(tmp_path):
    (tmp_path / "target").write_bytes(b"old")
    os.symlink("target", tmp_path / "link")
    write_output(tmp_path / "link", b"new")
    assert os.path.islink(tmp_path / "link")
    assert (tmp_path / "target").read_bytes() == b"new"


@pytest.mark.parametrize("make, what", SPECIAL_FILES, ids=["fifo", "directory", "link"])
def test_an_output_that_is_not_a_regular_file_is_never_replaced(tmp_path, make, what):
    path = tmp_path / "out"
    make(path)
    before = os.lstat(path)
    with pytest.raises(FileError, match="refusing to replace it") as caught:
        write_output(path, b"data", "EIF")
    assert f"{what} is there" in str(caught.value)
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert os.listdir(tmp_path) == ["out"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(b"old content")
    with pytest.raises(RuntimeError):
        with atomic_output(path) as out:
            out.write(b"half of the new")
            raise RuntimeError("the builder failed")
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["out"]


def test_an_unwritable_directory_is_one_error(tmp_path):
    with pytest.raises(FileError, match="cannot write EIF .*missing/out: No such file"):
        write_output(tmp_path / "missing" / "out", b"x", "EIF")


@given(st.binary(max_size=2048))
@settings(deadline=None, max_examples=50)
def test_what_is_written_reads_back(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("roundtrip") / "f"
    write_output(path, data)
    assert read_input(path, InputKind("x", 2048)) == data


# -- option parsers --------------------------------------------------------------------

@given(st.datetimes(min_value=dt.datetime(1, 1, 1), timezones=st.just(dt.timezone.utc)))
@settings(deadline=None)
def test_every_time_the_builder_writes_is_rfc3339(moment):
    text = format_rfc3339(moment)
    assert check_rfc3339(text) == text


@pytest.mark.parametrize("text", ["2024-01-01T00:00:00Z", "2024-01-01t00:00:00z",
                                  "2024-01-01 00:00:00+05:30", "2016-12-31T23:59:60Z",
                                  "2024-02-29T12:00:00.123456789-08:00"])
def test_rfc3339_accepts(text):
    assert check_rfc3339(text) == text


@pytest.mark.parametrize("text", ["yesterday", "", "2024-01-01", "2024-01-01T00:00:00",
                                  "2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z",
                                  "2024-01-01T24:00:00Z", "2024-01-01T00:00:61Z",
                                  "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00Z\n",
                                  "２０２４-01-01T00:00:00Z", "2024-01-01T00:00:00.Z"])
def test_rfc3339_refuses(text):
    with pytest.raises(EifError, match="is not an RFC 3339 date-time"):
        check_rfc3339(text, "build time")


@given(st.text(max_size=40))
@settings(deadline=None)
def test_rfc3339_check_never_fails_otherwise(text):
    try:
        assert check_rfc3339(text) == text
    except EifError:
        pass


@given(st.one_of(st.text(max_size=20), st.floats().map(repr), st.integers().map(str)))
@settings(deadline=None)
def test_timeout_is_a_finite_positive_number_or_a_usage_error(text):
    try:
        value = timeout_seconds(text)
    except UsageError as error:
        assert str(error).startswith("--timeout")
        return
    assert math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "-1", "0", "-0",
                                  "1e9", "", "five"])
def test_timeout_refuses(text):
    with pytest.raises(UsageError, match="--timeout"):
        timeout_seconds(text)


@given(st.text(max_size=20))
@settings(deadline=None)
def test_expected_hex_is_non_empty_bytes_or_a_usage_error(text):
    try:
        value = expected_hex(text, "--nonce")
    except UsageError as error:
        assert str(error).startswith("--nonce")
        return
    assert value and value == bytes.fromhex(text)


# -- documents -------------------------------------------------------------------------

def test_a_plain_cbor_map_is_called_a_map():
    raw = read_document(cbor2.dumps({"pcrs": {}}))
    with pytest.raises(VerificationError, match="document is a CBOR map, not a COSE_Sign1"):
        decode_document(raw)


@given(st.binary(max_size=300))
@settings(deadline=None)
def test_any_bytes_are_a_document_or_one_verification_error(data):
    try:
        decode_document(read_document(data))
    except VerificationError:
        pass
