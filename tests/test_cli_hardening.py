"""The hardening issue's user-facing items, each reproduced at the command line in a
subprocess: special files as inputs (4) and outputs (5), stop signals on a terminal (6),
--timeout values (7), a closed stdout (8) and the smaller option checks (9).

Children that only read files run under a 2 GiB address-space limit, so that a regression
that reads /dev/zero again ends in a MemoryError there instead of the host's OOM killer.
"""
from __future__ import annotations

import fcntl
import os
import resource
import select
import signal
import stat
import subprocess
import sys
import termios
import time
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization

from support.container_images import write_fake_blobs
from support.images import ROOT, guest_image
from eif.builder import build_eif
from eif.reader import read_eif
from nitro_emu.attestation.ca import LocalCA
from test_eif_cli import assert_one_line_error

ADDRESS_SPACE_LIMIT = 2 << 30
SHELL_PROMPT = b"/ # "


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def cli(*args, cwd: Path | None = None, stdin=None, stdout=subprocess.PIPE, umask=None,
        limited: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m nitro_emu ARGS`; a hang fails the test (TimeoutExpired)."""
    def prepare() -> None:
        if limited:
            _limited()
        if umask is not None:
            os.umask(umask)
    return subprocess.run([sys.executable, "-m", "nitro_emu", *map(str, args)],
                          cwd=cwd or ROOT, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
                          preexec_fn=prepare, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def work(tmp_path: Path, state_dir: Path) -> Path:
    """Inputs of every kind, a FIFO nobody writes, a symlink to /dev/zero, a CA."""
    (tmp_path / "kernel").write_bytes(b"KERNEL")
    (tmp_path / "ramdisk").write_bytes(b"RAMDISK")
    (tmp_path / "doc").write_bytes(b"not looked at")
    write_fake_blobs(tmp_path / "blobs")
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/dev/zero", tmp_path / "zero-link")
    ca = LocalCA.create()
    (tmp_path / "cert.pem").write_bytes(ca.root_pem())
    (tmp_path / "key.pem").write_bytes(ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return tmp_path


BUILD = ["build-eif", "--cmdline", "console=ttyS0", "--output", "out.eif"]

# (arguments with X for the special file, what the error calls the input)
INPUTS = [
    (["attest", "verify", "X"], "attestation document"),
    (["attest", "verify", "--root", "X", "doc"], "root certificate"),
    (["pcr", "--input", "X"], "input file"),
    (["pcr", "--signing-certificate", "X"], "signing certificate"),
    (BUILD + ["--kernel", "X", "--ramdisk", "ramdisk"], "kernel"),
    (BUILD + ["--kernel", "kernel", "--ramdisk", "X"], "ramdisk"),
    (BUILD + ["--kernel", "kernel", "--ramdisk", "ramdisk", "--metadata", "X"], "metadata file"),
    (BUILD + ["--kernel", "kernel", "--ramdisk", "ramdisk", "--signing-certificate", "X",
              "--private-key", "key.pem"], "signing certificate"),
    (BUILD + ["--kernel", "kernel", "--ramdisk", "ramdisk", "--signing-certificate",
              "cert.pem", "--private-key", "X"], "private key"),
    (["describe-eif", "--eif-path", "X"], "EIF"),
    (["X", "--guest-cid", "8"], "EIF"),
]
SPECIALS = [("/dev/zero", "a character device"), ("fifo", "a FIFO"),
            ("zero-link", "(a symlink to /dev/zero): a character device")]


# -- 4: special files as inputs --------------------------------------------------------

@pytest.mark.parametrize("special, kind_of_file", SPECIALS, ids=["dev-zero", "fifo", "link"])
@pytest.mark.parametrize("args, name", INPUTS, ids=[" ".join(a[:2]) + f" {n}" for a, n in INPUTS])
def test_special_files_are_refused_with_one_line(work, args, name, special, kind_of_file):
    result = cli(*[special if a == "X" else a for a in args], cwd=work)
    assert_one_line_error(result, f"{name} {special} {kind_of_file}"
                          if special == "zero-link" else f"{name} {special}: {kind_of_file}",
                          "not a regular file")
    assert not (work / "out.eif").exists()


# Verbs whose errors are nitro-cli's ([ Exx ] ..., status xx) or that print progress first.
OTHER_INPUTS = [
    (["sign-eif", "--eif-path", "X", "--signing-certificate", "cert.pem", "--private-key",
      "key.pem"], "EIF", 35),
    (["run-enclave", "--config", "X"], "config file", 19),
    (["run-enclave", "--eif-path", "eif", "--memory", "512", "--cpu-count", "2",
      "--system-map", "X"], "System.map", 19),
    (["x.eif", "--guest-cid", "8", "--system-map", "X"], "System.map", 1),
    (["build-enclave", "--docker-uri", "docker-archive:X", "--output-file", "out.eif",
      "--blobs", "blobs"], "image archive", 1),
    (["build-enclave", "--docker-uri", "oci-archive:X", "--output-file", "out.eif",
      "--blobs", "blobs"], "image archive", 1),
]


@pytest.mark.parametrize("special, kind_of_file", SPECIALS, ids=["dev-zero", "fifo", "link"])
@pytest.mark.parametrize("args, name, status", OTHER_INPUTS,
                         ids=[" ".join(a[:2]) for a, _, _ in OTHER_INPUTS])
def test_special_files_are_refused_by_the_other_verbs(work, args, name, status, special,
                                                      kind_of_file):
    build_eif(work / "eif", kernel=work / "kernel", cmdline="c", ramdisks=[work / "ramdisk"])
    result = cli(*[a.replace("X", special) for a in args], cwd=work)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{name} {special}" in result.stderr and kind_of_file in result.stderr
    assert not (work / "out.eif").exists()


def test_a_ca_key_that_is_a_fifo_is_refused(work, state_dir):
    assert cli("ca", "export").returncode == 0
    key = state_dir / "ca" / "root-key.pem"
    key.unlink()
    os.mkfifo(key)
    assert_one_line_error(cli("ca", "export"), f"CA key {key}: a FIFO, not a regular file")


def test_documents_are_held_to_their_size_limit(work):
    (work / "big").write_bytes(b"A" * (64 * 1024 + 1))
    assert_one_line_error(cli("attest", "verify", "big", cwd=work),
                          "attestation document big: 65537 bytes, over the 64 KiB limit")
    with open("/dev/zero", "rb") as endless:
        assert_one_line_error(cli("attest", "verify", "-", stdin=endless),
                              "attestation document from standard input: more than the "
                              "64 KiB limit")


# -- 5: outputs ------------------------------------------------------------------------

def _build(work: Path, output, **options) -> subprocess.CompletedProcess:
    return cli("build-eif", "--kernel", "kernel", "--ramdisk", "ramdisk", "--cmdline", "c",
               "--build-time", "2024-01-01T00:00:00Z", "--output", output, cwd=work, **options)


def test_a_character_device_as_output_is_left_alone(work):
    """Unprivileged, /dev/null itself is the target. As root (who could replace it), a
    null device node made in the test's directory stands in for it, so that a regression
    can never take /dev/null away from the machine."""
    if os.geteuid() == 0:
        device = work / "null"
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:
        device = Path("/dev/null")
    before = os.stat(device)
    assert_one_line_error(_build(work, device),
                          f"EIF {device}: a character device is there; refusing to replace it")
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino


def test_a_fifo_or_a_symlink_to_a_device_as_output_is_left_alone(work):
    assert_one_line_error(_build(work, "fifo"), "EIF fifo: a FIFO is there; refusing")
    assert stat.S_ISFIFO(os.lstat(work / "fifo").st_mode)
    os.symlink("/dev/full", work / "full-link")
    assert_one_line_error(_build(work, "full-link"), "(a symlink to /dev/full): a character "
                          "device is there; refusing")
    assert os.readlink(work / "full-link") == "/dev/full"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert not [p for p in os.listdir(work) if p.endswith(".tmp")]


def test_an_output_symlink_to_a_regular_file_is_written_through(work):
    (work / "images").mkdir()
    (work / "images" / "real.eif").write_bytes(b"old")
    os.symlink("images/real.eif", work / "link.eif")
    assert _build(work, "link.eif").returncode == 0
    assert os.readlink(work / "link.eif") == "images/real.eif"
    assert (work / "images" / "real.eif").read_bytes()[:4] == b".eif"


def test_sign_eif_writes_through_a_symlink_and_keeps_the_mode(work):
    (work / "images").mkdir()
    real = work / "images" / "real.eif"
    build_eif(real, kernel=work / "kernel", cmdline="c", ramdisks=[work / "ramdisk"])
    os.chmod(real, 0o640)
    os.symlink("images/real.eif", work / "link.eif")
    result = cli("sign-eif", "--eif-path", "link.eif", "--signing-certificate", "cert.pem",
                 "--private-key", "key.pem", cwd=work)
    assert result.returncode == 0, result.stderr
    assert os.readlink(work / "link.eif") == "images/real.eif"
    assert read_eif(real).is_signed
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640


def test_a_failed_build_keeps_the_old_output(work):
    (work / "out.eif").write_bytes(b"precious")
    (work / "ramdisk").unlink()
    assert_one_line_error(_build(work, "out.eif"), "cannot read ramdisk ramdisk")
    assert (work / "out.eif").read_bytes() == b"precious"
    assert not [p for p in os.listdir(work) if p.endswith(".tmp")]


def test_a_new_output_has_the_mode_the_umask_gives(work):
    assert _build(work, "new.eif", umask=0o027).returncode == 0
    assert stat.S_IMODE(os.stat(work / "new.eif").st_mode) == 0o640


# -- 6: stop signals on a terminal -----------------------------------------------------

def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyRun:
    """The run verb on a new pseudo-terminal, as a user's shell would start it: stdin,
    stdout and stderr share the terminal's one open file with the test (`slave`)."""

    def __init__(self, *args, controlling: bool = False) -> None:
        self.master, self.slave = os.openpty()
        self.mode_before = termios.tcgetattr(self.slave)
        self.output = bytearray()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nitro_emu", *map(str, args)], stdin=self.slave,
            stdout=self.slave, stderr=self.slave, cwd=ROOT, start_new_session=True,
            preexec_fn=_take_terminal if controlling else None)

    def read_until(self, marker: bytes, limit: float = 300) -> None:
        deadline = time.monotonic() + limit
        while marker not in self.output:
            assert time.monotonic() < deadline, self.output[-2000:].decode(errors="replace")
            assert self.process.poll() is None, self.output[-2000:].decode(errors="replace")
            if select.select([self.master], [], [], 1)[0]:
                self.output += os.read(self.master, 65536)

    def drain(self) -> None:
        try:
            while select.select([self.master], [], [], 0.2)[0]:
                chunk = os.read(self.master, 65536)
                if not chunk:
                    break
                self.output += chunk
        except OSError:
            pass

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def pty_run():
    runs: list[PtyRun] = []

    def start(*args, **options) -> PtyRun:
        runs.append(PtyRun(*args, **options))
        return runs[-1]
    yield start
    for run in runs:
        run.close()


@pytest.mark.guest
@pytest.mark.parametrize("number, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129),
                                            (signal.SIGINT, 130)])
def test_a_stop_signal_gives_the_terminal_back(tmp_path, state_dir, pty_run, number, status):
    uds = tmp_path / "vsock.sock"
    run = pty_run(guest_image("shell.eif"), "--guest-cid", "8", "--vsock-uds", uds)
    run.read_until(SHELL_PROMPT)
    mode = termios.tcgetattr(run.slave)
    assert not mode[3] & (termios.ICANON | termios.ECHO)  # raw while the guest runs
    assert os.get_blocking(run.slave)                     # and never made non-blocking
    assert stat.S_ISSOCK(os.stat(uds).st_mode)
    run.process.send_signal(number)
    assert run.process.wait(timeout=120) == status
    run.drain()
    assert termios.tcgetattr(run.slave) == run.mode_before
    assert termios.tcgetattr(run.slave)[3] & termios.ICANON
    assert termios.tcgetattr(run.slave)[3] & termios.ECHO
    assert os.get_blocking(run.slave)
    assert not os.path.lexists(uds)
    assert f"nitro-emu: enclave stopped by {number.name}".encode() in run.output
    assert b"Traceback" not in run.output


@pytest.mark.guest
def test_a_terminal_that_hangs_up_ends_the_run_and_removes_the_socket(tmp_path, state_dir,
                                                                       pty_run):
    uds = tmp_path / "vsock.sock"
    run = pty_run(guest_image("shell.eif"), "--guest-cid", "8", "--vsock-uds", uds,
                  controlling=True)
    run.read_until(SHELL_PROMPT)
    os.write(run.master, b"while true; do echo tick; done\n")
    run.read_until(b"tick")
    os.close(run.master)  # the terminal window closes: SIGHUP, and output fails from now on
    os.close(run.slave)
    assert run.process.wait(timeout=120) == 129
    assert not os.path.lexists(uds)


@pytest.mark.guest
def test_a_slow_terminal_loses_no_console_output(state_dir, pty_run):
    """Console output blocks while the terminal is full instead of failing (the shared
    terminal file is never made non-blocking): everything arrives, in the end."""
    run = pty_run(guest_image("shell.eif"), "--guest-cid", "8")
    run.read_until(SHELL_PROMPT)
    os.write(run.master, b"for i in 1 2 3 4 5 6 7 8; do dmesg; done; echo done-$((6*7))\n")
    time.sleep(5)  # nobody reads the terminal meanwhile: its buffer fills up
    run.read_until(b"done-42")
    os.write(run.master, b"\x1d")  # Ctrl-] stops the enclave
    assert run.process.wait(timeout=120) == 130


def test_a_machine_that_cannot_boot_removes_its_socket_file(work):
    (work / "garbage").write_bytes(os.urandom(64 * 1024))
    build_eif(work / "garbage.eif", kernel=work / "garbage", cmdline="c",
              ramdisks=[work / "ramdisk"])
    uds = work / "vsock.sock"
    assert_one_line_error(cli("garbage.eif", "--guest-cid", "8", "--vsock-uds", uds,
                              cwd=work, limited=False), "not a Linux bzImage")
    assert not os.path.lexists(uds)


# -- 7: --timeout ----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e9", "soon"])
def test_timeouts_that_are_not_a_positive_finite_time_are_refused(value):
    assert_one_line_error(cli("hello.eif", "--guest-cid", "8", "--timeout", value),
                          "--timeout")


@pytest.mark.guest
def test_a_timeout_ends_an_idle_run(state_dir):
    result = cli(guest_image("shell.eif"), "--guest-cid", "8", "--timeout", "3",
                 stdin=subprocess.PIPE, limited=False)
    assert result.returncode == 1
    assert "nitro-emu: enclave ended: timeout" in result.stderr


# -- 8: a closed stdout ----------------------------------------------------------------

def _closed_pipe_run(*args, limited: bool = True) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader is already gone: any write fails (EPIPE)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return cli(*args, stdout=writer, limited=limited)
    finally:
        os.close(writer)


@pytest.mark.parametrize("args", [["describe-eif", "--eif-path", "EIF"], ["ca", "export"],
                                  ["pcr", "--input", "EIF"]])
def test_a_closed_stdout_ends_quietly_with_141(work, args):
    build_eif(work / "x.eif", kernel=work / "kernel", cmdline="c", ramdisks=[work / "ramdisk"])
    result = _closed_pipe_run(*[work / "x.eif" if a == "EIF" else a for a in args])
    assert (result.returncode, result.stderr) == (141, "")


@pytest.mark.guest
def test_a_closed_stdout_ends_a_run_quietly(tmp_path, state_dir):
    uds = tmp_path / "vsock.sock"
    result = _closed_pipe_run(guest_image("hello.eif"), "--guest-cid", "8", "--vsock-uds", uds,
                              limited=False)
    assert (result.returncode, result.stderr) == (141, "")
    assert not os.path.lexists(uds)


# -- 9: smaller checks -----------------------------------------------------------------

def test_the_build_time_must_be_rfc3339(work):
    assert_one_line_error(cli(*BUILD, "--kernel", "kernel", "--ramdisk", "ramdisk",
                              "--build-time", "last tuesday", cwd=work),
                          "build time 'last tuesday' is not an RFC 3339 date-time")
    assert not (work / "out.eif").exists()


def test_a_ca_key_others_can_write_is_refused_with_the_fix(work, state_dir):
    assert cli("ca", "export").returncode == 0
    key = state_dir / "ca" / "root-key.pem"
    os.chmod(key, 0o666)
    assert_one_line_error(cli("ca", "export"), f"CA key {key} is writable by others",
                          f"fix with: chmod go-w {key}")
    os.chmod(key, 0o600)
    os.chmod(state_dir / "ca", 0o770)
    assert_one_line_error(cli("ca", "export"), "CA directory", "writable by its group")
    os.chmod(state_dir / "ca", 0o700)
    assert cli("ca", "export").returncode == 0


def test_an_empty_state_dir_is_refused(work):
    for args in (["ca", "export", "--state-dir", ""],
                 ["attest", "verify", "doc", "--state-dir", ""]):
        assert_one_line_error(cli(*args, cwd=work), "--state-dir: empty path")
    assert not (work / "ca").exists()


@pytest.mark.parametrize("option", [["--pcr", "0="], ["--pcr", "0= "], ["--nonce", ""],
                                    ["--user-data", ""]])
def test_empty_expectations_are_refused(work, option):
    assert_one_line_error(cli("attest", "verify", "doc", *option, cwd=work),
                          f"{option[0]}", "empty value")


def test_a_plain_cbor_map_is_called_a_cbor_map(work):
    (work / "map.cbor").write_bytes(cbor2.dumps({"module_id": "x", "pcrs": {}}))
    assert_one_line_error(cli("attest", "verify", "map.cbor", cwd=work),
                          "document is a CBOR map, not a COSE_Sign1 array of 4 elements")
