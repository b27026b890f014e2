"""Stock GDB (Debian's) in batch mode against a real enclave run with
`python -m nitro_emu ... --gdb 127.0.0.1:0`: the kernel by name with its DWARF, the
enclave's user-space program by name, Ctrl-C on a guest that spins, and the enclave
running to its end under the debugger."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.images import GUEST_DIR, ROOT, guest_image

pytestmark = [pytest.mark.guest,
              pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")]
HELLO = "Hello from the enclave side!"


class Enclave:
    """`python -m nitro_emu IMAGE --gdb 127.0.0.1:0 ...` with the port it chose."""

    def __init__(self, image: str, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nitro_emu", str(guest_image(image)), "--guest-cid", "16",
             "--gdb", "127.0.0.1:0", *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        first = self.process.stderr.readline().decode()
        found = re.search(r"gdb stub listening on 127\.0\.0\.1:(\d+)", first)
        assert found, first
        self.port = int(found.group(1))

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        return self.process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def gdb_command(program: Path, port: int, *commands: str) -> list[str]:
    arguments = ["gdb", "-nx", "-batch", "-ex", "set pagination off",
                 "-ex", "set confirm off", str(program), "-ex", f"target remote 127.0.0.1:{port}"]
    for command in commands:
        arguments += ["-ex", command]
    return arguments


def run_gdb(program: Path, port: int, *commands: str, timeout: float = 300) -> str:
    completed = subprocess.run(gdb_command(program, port, *commands), capture_output=True,
                               text=True, timeout=timeout)
    return completed.stdout + completed.stderr


def test_the_kernel_by_name_from_start_kernel_to_the_end_of_the_enclave() -> None:
    enclave = Enclave("hello.eif", "--gdb-wait")
    output = run_gdb(GUEST_DIR / "tiny" / "vmlinux", enclave.port,
                     "break start_kernel", "continue", "bt", "stepi", "print $pc",
                     "print linux_banner", "print panic_timeout",
                     "set var panic_timeout = 77", "print panic_timeout",
                     "print/x $cr3", "delete", "continue")
    status, console, errors = enclave.finish()
    assert "Breakpoint 1, start_kernel () at" in output, output
    assert re.search(r"#1 .* in x86_64_start_reservations", output), output
    assert re.search(r"\$1 = \(void \(\*\)\(\)\) 0x[0-9a-f]+ <start_kernel\+\d+>", output), output
    assert '<linux_banner> "Linux version 6.12' in output, output
    assert "$3 = 0" in output and "$4 = 77" in output, output
    assert re.search(r"\$5 = 0x[0-9a-f]+", output), output
    assert "exited normally" in output, output
    assert status == 0, errors
    assert HELLO in console


def test_a_breakpoint_in_the_enclave_program_is_hit_by_name() -> None:
    enclave = Enclave("echo.eif", "--gdb-wait")
    output = run_gdb(GUEST_DIR / "programs" / "vsock-echo", enclave.port,
                     "break main", "continue", "print argc", "print argv[1]",
                     "print $cs & 3", "next", "kill")
    status, _, errors = enclave.finish()
    assert "Breakpoint 1, main (argc=2, argv=" in output, output
    assert '"5000"' in output, output
    assert "$3 = 3" in output, output           # user mode
    assert "vsock-echo.c:" in output, output    # stepping by source line
    assert status != 0 and "the debugger killed the enclave" in errors


def test_ctrl_c_in_gdb_stops_a_guest_that_spins() -> None:
    enclave = Enclave("spin.eif")
    gdb = subprocess.Popen(gdb_command(GUEST_DIR / "tiny" / "vmlinux", enclave.port,
                                       "continue", "print $pc", "kill"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(8)  # attach, resume, let the shell loop run
    gdb.send_signal(signal.SIGINT)
    output, _ = gdb.communicate(timeout=120)
    status, console, errors = enclave.finish()
    assert "Program received signal SIGINT, Interrupt." in output, output
    assert re.search(r"\$1 = .*0x[0-9a-f]+", output), output
    assert "Run /init as init process" in console
    assert "the debugger killed the enclave" in errors


def test_a_hardware_breakpoint_and_a_watchpoint_on_a_kernel_variable() -> None:
    enclave = Enclave("hello.eif", "--gdb-wait")
    output = run_gdb(GUEST_DIR / "tiny" / "vmlinux", enclave.port,
                     "hbreak kernel_init", "continue", "delete", "watch jiffies_64", "continue",
                     "delete", "detach")
    status, console, _ = enclave.finish()
    assert "Breakpoint 1, kernel_init (" in output, output
    assert "Hardware watchpoint 2: jiffies_64" in output, output
    old, new = (int(value) for value in re.search(r"Old value = (\d+)\nNew value = (\d+)", output).groups())
    assert new == old + 1
    assert re.search(r"was accessed by the instruction at 0xffffffff[0-9a-f]{8}", output), output
    assert status == 0 and HELLO in console  # detached: the enclave ran to its end
