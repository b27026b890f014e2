"""Post-mortem reports of enclaves that die, from the command line: a kernel panic (an
image with no init) and a triple fault (the running kernel's IDT wiped through the GDB
stub), each with the one-line reason, the registers, the code around RIP and the kernel
stack unwound with the kernel's ORC tables and named from its System.map."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import eif
from support.images import GUEST_DIR, ROOT, guest_image
from nitro_emu.debug.symbols import SymbolError, SystemMap, find_slide, system_map_beside
from support.gdb_client import GdbClient

FRAME = re.compile(r"^  #(\d+) +([0-9a-f]{16}) (\S+)\+0x[0-9a-f]+/0x[0-9a-f]+", re.M)


def no_init_image(tmp_path: Path, image: str = "hello") -> Path:
    """An image's kernel with a ramdisk that is not an initramfs: a kernel panic ('No
    working init found', or on AWS's kernel 'Unable to mount root fs')."""
    ramdisk = tmp_path / "ramdisk"
    ramdisk.write_bytes(b"not a cpio archive")
    output = tmp_path / "panic.eif"
    eif.build_eif(output, kernel=guest_image(f"{image}/bzImage"), cmdline="console=ttyS0 panic=30",
                  ramdisks=[ramdisk], build_time="2024-01-01T00:00:00+00:00")
    return output


def run_cli(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nitro_emu", *arguments, "--guest-cid", "16"],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.guest
@pytest.mark.parametrize("image, profile, method", [
    ("hello", "tiny", "ORC unwind"),            # CONFIG_UNWINDER_ORC
    ("hello-aws", "aws", "frame pointers"),     # AWS's config: CONFIG_UNWINDER_FRAME_POINTER
])
def test_a_kernel_panic_is_followed_by_a_report_with_a_named_backtrace(
        tmp_path: Path, image: str, profile: str, method: str) -> None:
    system_map = GUEST_DIR / profile / "System.map"
    completed = run_cli(str(no_init_image(tmp_path, image)), "--system-map", str(system_map),
                        timeout=900)
    lines = completed.stderr.splitlines()
    assert completed.returncode == 1
    assert lines[0].startswith("nitro-emu: enclave ended: panic: Kernel panic - not syncing: "), \
        completed.stderr
    report = completed.stderr
    assert lines[1].startswith("--- post-mortem: panic: Kernel panic")
    assert f"--- symbols from {system_map}" in report
    assert re.search(r"^  rip ffffffff[0-9a-f]{8} \S+\+0x[0-9a-f]+/0x[0-9a-f]+  cpl 0$", report, re.M)
    assert re.search(r"^=> ffffffff[0-9a-f]{8} ", report, re.M), report
    assert f"kernel stack ({method}):" in report
    functions = [name for _, _, name in FRAME.findall(report)]
    assert "panic" in functions and "kernel_init" in functions, report
    assert functions.index("panic") < functions.index("kernel_init")
    assert functions[-1] == "ret_from_fork_asm"


@pytest.mark.guest
def test_a_triple_fault_report_goes_to_the_file_named_in_the_reason(tmp_path: Path) -> None:
    symbols = SystemMap.load(GUEST_DIR / "hello" / "System.map")
    report_file = tmp_path / "report.txt"
    process = subprocess.Popen(
        [sys.executable, "-m", "nitro_emu", str(guest_image("hello.eif")), "--guest-cid", "16",
         "--gdb", "127.0.0.1:0", "--gdb-wait", "--post-mortem", str(report_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    port = int(re.search(rb"listening on 127\.0\.0\.1:(\d+)", process.stderr.readline()).group(1))
    client = GdbClient(("127.0.0.1", port))
    kernel_init, idt = symbols.address_of("kernel_init"), symbols.address_of("idt_table")
    client.command(b"Z0,%x,1" % kernel_init)
    assert client.command(b"c") == b"T05thread:01;"
    client.command(b"z0,%x,1" % kernel_init)
    assert client.command(b"M%x,1000:" % idt + b"00" * 0x1000) == b"OK"  # every gate gone
    assert client.command(b"c") == b"T0bthread:01;"  # the dead machine, to look at
    assert client.command(b"c") == b"X0b"
    client.close()
    _, errors = process.communicate(timeout=120)
    errors = errors.decode()
    assert process.returncode == 1
    reason = [line for line in errors.splitlines() if line.startswith("nitro-emu: enclave ended")]
    assert reason == [reason[0]] and reason[0].startswith(
        "nitro-emu: enclave ended: triple-fault: triple fault (delivering vector 8"), errors
    assert reason[0].endswith(f" (post-mortem report in {report_file})")
    assert "registers:" not in errors
    report = report_file.read_text()
    assert report.startswith("--- post-mortem: triple-fault: triple fault")
    assert f"--- symbols from {GUEST_DIR / 'hello' / 'System.map'}" in report  # found beside the image
    rip = int(re.search(r"^  rip ([0-9a-f]{16})", report, re.M).group(1), 16)
    frames = FRAME.findall(report)
    assert int(frames[0][1], 16) == rip
    assert [name for _, _, name in frames][-2:] == ["ret_from_fork", "ret_from_fork_asm"]


@pytest.mark.guest
def test_without_symbols_the_report_still_has_registers_and_code(tmp_path: Path) -> None:
    completed = run_cli(str(no_init_image(tmp_path)))
    report = completed.stderr
    assert "--- no System.map at hand: addresses are not named" in report
    assert "registers:" in report and re.search(r"^=> ffffffff", report, re.M)
    assert "kernel stack: no symbols to unwind with" in report


@pytest.mark.guest
def test_a_system_map_of_another_kernel_is_not_used(tmp_path: Path) -> None:
    wrong = tmp_path / "System.map"
    wrong.write_text("ffffffff81000000 T _stext\nffffffff8162cec8 D linux_banner\n")
    completed = run_cli(str(no_init_image(tmp_path)), "--system-map", str(wrong))
    assert "does not match the running kernel" in completed.stderr
    assert "registers:" in completed.stderr


def test_a_missing_system_map_is_a_one_line_usage_error(tmp_path: Path) -> None:
    completed = run_cli("nonexistent.eif", "--system-map", str(tmp_path / "missing"))
    assert completed.returncode == 1
    assert completed.stderr.strip().endswith("missing: No such file or directory")
    assert "Traceback" not in completed.stderr


def test_system_map_parsing_naming_and_relocation(tmp_path: Path) -> None:
    path = tmp_path / "System.map"
    path.write_text("ffffffff81000000 T _stext\nffffffff81000100 t helper\n"
                    "ffffffff81000180 T main_loop\nffffffff81001000 T _etext\n"
                    "ffffffff81200000 D linux_banner\nnot a symbol line\n")
    symbols = SystemMap.load(path)
    assert symbols.describe(0xFFFFFFFF81000104) == "helper+0x4/0x80"
    assert symbols.describe(0xFFFFFFFF81001004) == ""           # past _etext
    assert symbols.describe(0x401000) == ""
    moved = symbols.relocated(0x400000)
    assert moved.describe(0xFFFFFFFF81400184) == "main_loop+0x4/0xe80"
    memory = {0xFFFFFFFF81600000: b"Linux version 6.12"}

    def read(address: int, length: int) -> bytes:
        return memory.get(address, b"")[:length]

    assert find_slide(symbols, read) == 0x400000
    with pytest.raises(SymbolError, match="does not match"):
        find_slide(symbols, lambda address, length: b"")
    (tmp_path / "empty").write_text("nothing here\n")
    with pytest.raises(SymbolError, match="not a System.map"):
        SystemMap.load(tmp_path / "empty")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "System.map").write_text("")
    assert system_map_beside(tmp_path / "img.eif") == tmp_path / "img" / "System.map"
    assert system_map_beside(tmp_path / "other.eif") is None
