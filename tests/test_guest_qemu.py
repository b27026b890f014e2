"""The guest images on a reference machine: QEMU's microvm boots hello.eif's kernel and
joined ramdisks (as QEMU's nitro-enclave machine would) and the enclave prints its line.

This checks the images independently of nitro-emu. Skipped only when QEMU is missing.
"""
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from eif import read_eif
from guest.build import build
from guest.images import HELLO_LINE
from guest.kernel import cached_kernel
from support.images import require_guest_marker

pytestmark = pytest.mark.guest  # boots real guest images

QEMU = shutil.which("qemu-system-x86_64")
# Not a timing check: only a bound so that a hung guest fails instead of blocking CI.
HANG_LIMIT_S = 600


@pytest.fixture(scope="module")
def guest_dir(tmp_path_factory) -> Path:
    require_guest_marker()
    out = tmp_path_factory.mktemp("guest")
    build(out, ["hello", "sysbench", "shell"], log=lambda *_: None)
    return out


def qemu_command(eif_path: Path, work: Path, append: str = "nitro_emu.heartbeat=off",
                 machine: str = "microvm") -> list[str]:
    """QEMU's command line for the EIF's kernel, joined ramdisks and command line."""
    image = read_eif(eif_path)
    (work / "bzImage").write_bytes(image.read_kernel())
    (work / "initrd").write_bytes(image.read_ramdisks())
    cmd = [QEMU, "-M", machine, "-cpu", "qemu64,-apic", "-accel", "tcg", "-m", "512",
           # The i8042 gives `reboot=k` its reset line (as nitro-emu's port 0x64 does);
           # microvm has none, and without it the guest's reboot never ends QEMU.
           "-nographic", "-no-reboot", "-device", "i8042", "-kernel", str(work / "bzImage"),
           "-initrd", str(work / "initrd"),
           "-append", f"{image.cmdline} {append}"]
    return cmd


def boot(eif_path: Path, work: Path, append: str = "nitro_emu.heartbeat=off",
         machine: str = "microvm") -> subprocess.CompletedProcess:
    return subprocess.run(qemu_command(eif_path, work, append, machine), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=HANG_LIMIT_S)


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_hello_boots_under_qemu_microvm(guest_dir, tmp_path):
    r = boot(guest_dir / "hello.eif", tmp_path)
    console = r.stdout.decode(errors="replace")
    assert HELLO_LINE in console.splitlines() or (HELLO_LINE + "\r") in console.splitlines(), console[-3000:]
    assert "init: heartbeat skipped" in console
    assert "Kernel panic" not in console, console[-3000:]
    # reboot(RB_AUTOBOOT) after the command: with -no-reboot QEMU exits by itself.
    assert r.returncode == 0, r.stderr.decode(errors="replace")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_without_vsock_the_heartbeat_fails_and_the_enclave_dies(guest_dir, tmp_path):
    """No `nitro_emu.heartbeat=off` and no vsock device: init must give up, not run the app."""
    r = boot(guest_dir / "hello.eif", tmp_path, append="panic=1")
    console = r.stdout.decode(errors="replace")
    assert "init: heartbeat: " in console, console[-3000:]
    assert "Kernel panic" in console
    assert HELLO_LINE not in console


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_sysbench_runs_and_exits(guest_dir, tmp_path):
    r = boot(guest_dir / "sysbench.eif", tmp_path)
    console = r.stdout.decode(errors="replace")
    for name in ("syscall", "pagefault", "fork-exec"):
        assert re.search(rf"^{name} +\d+ ops +[\d.]+ s +[\d.]+ us/op", console, re.M), console[-3000:]
    assert r.returncode == 0


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_shell_is_interactive_on_the_console(guest_dir, tmp_path):
    """Type into the console once the shell prompts; the shell runs it and exits."""
    proc = subprocess.Popen(qemu_command(guest_dir / "shell.eif", tmp_path), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = bytearray()
    timer = threading.Timer(HANG_LIMIT_S, proc.kill)
    timer.start()
    try:
        while b"# " not in seen.split(b"Run /init")[-1]:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                break
            seen += chunk
        proc.stdin.write(b"echo marker-$((6*7)); tty; exit\n")
        proc.stdin.flush()
        seen += proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
    console = seen.decode(errors="replace")
    assert "marker-42" in console, console[-3000:]
    assert "/dev/ttyS0" in console  # cttyhack gave the shell the real tty
    assert proc.returncode == 0


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
@pytest.mark.skipif(cached_kernel("aws") is None,
                    reason="the aws kernel is not built yet (about 30 min): run `make guest`")
def test_hello_aws_boots_under_qemu_microvm(tmp_path):
    """AWS's kernel configuration (SMP, ACPI, x2APIC, ...) on the same APIC-less machine.
    No ACPI tables (acpi=off machine option), as on nitro-emu's machine."""
    out = tmp_path / "guest"
    build(out, ["hello-aws"], log=lambda *_: None)
    r = boot(out / "hello-aws.eif", tmp_path, machine="microvm,acpi=off")
    console = r.stdout.decode(errors="replace")
    assert HELLO_LINE in console, console[-3000:]
    assert "Kernel panic" not in console
    assert r.returncode == 0
