"""`--trace`: a real guest's system calls in order, strace-style; its exceptions,
interrupts and device accesses with the instruction that caused them; nothing installed
when no trace is asked for; and the options' errors as one line."""
from __future__ import annotations

import io
import re
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from board.bus import PortBus
from board.memory import GuestRam
from support.images import ROOT, guest_image
from nitro_emu import Machine
from nitro_emu.cpu.cpuid import CpuidModel, host_tsc_hz
from nitro_emu.cpu.delivery import ExceptionDelivery
from nitro_emu.cpu.vcpu import Vcpu
from nitro_emu.debug.config import DebugConfig, DebugOptionsError
from nitro_emu.debug.syscalls import format_call, quote
from nitro_emu.debug.trace import parse_events

LINE = re.compile(r"^ *(\d+\.\d{9}) cpl([03]) ([0-9a-f]{16})  (\S.*?)  +(\S.*)$")


def traced_run(tmp_path: Path, image: str, events: str, state_dir: Path) -> list[re.Match]:
    trace = tmp_path / "trace.txt"
    machine = Machine(guest_image(image), guest_cid=16, console=io.BytesIO(), state_dir=state_dir,
                      debug=DebugConfig(trace=parse_events(events), trace_file=trace))
    try:
        result = machine.run(timeout=600)
    finally:
        machine.close()
    assert result.ok, result.message
    lines = trace.read_text().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), [line for line, match in zip(lines, matches) if not match][:3]
    times = [float(match.group(1)) for match in matches]
    assert times == sorted(times)
    return matches


def in_order(texts: list[str], expected: list[str]) -> bool:
    position = 0
    for text in texts:
        if position < len(expected) and text.startswith(expected[position]):
            position += 1
    return position == len(expected)


@pytest.mark.guest
def test_the_system_calls_of_a_test_program_appear_in_order(tmp_path: Path, state_dir: Path) -> None:
    matches = traced_run(tmp_path, "attest.eif", "syscalls", state_dir)
    assert all(match.group(4).strip() == "syscall" and match.group(2) == "3" for match in matches)
    calls = [match.group(5) for match in matches]
    assert in_order(calls, [
        'execve("/bin/nsm", ["nsm", "describe-nsm"], 0x',
        'openat(AT_FDCWD, "/dev/nsm", O_RDWR|O_CLOEXEC)',
        "ioctl(3, 0xc0200a00, 0x",
        "close(3)",
        'write(1, "{\\n", 2)',
        'write(1, "  \\"max_pcrs\\": 32,\\n", 18)',
        "exit_group(0)",
        'execve("/bin/nsm", ["nsm", "attest", "--nonce", "00112233", "--user-data", "68656c6c6f"], 0x',
        'openat(AT_FDCWD, "/dev/nsm", O_RDWR|O_CLOEXEC)',
        "exit_group(0)",
        "reboot(0xfee1dead, 0x28121969, 0x1234567, 0x0)",
    ]), "\n".join(calls)
    nsm_rips = [int(match.group(3), 16) for match in matches if match.group(5).startswith("ioctl(3, 0xc0200a00")]
    assert nsm_rips and all(0x10000000 <= rip < 0x20000000 for rip in nsm_rips)  # in nsm's text


@pytest.mark.guest
def test_exceptions_interrupts_and_device_accesses_name_their_instruction(
        tmp_path: Path, state_dir: Path) -> None:
    matches = traced_run(tmp_path, "hello.eif", "exceptions,interrupts,io", state_dir)
    events = [(match.group(4).strip(), match.group(5)) for match in matches]
    assert not any(event.startswith(("execve", "write(")) for _, event in events)
    faults = [event for _, event in events if event.startswith("#PF")]
    assert faults and all(re.fullmatch(r"#PF error=0x[0-9a-f]+ cr2=0x[0-9a-f]+", f) for f in faults)
    assert any(event == "interrupt irq 0 (vector 0x30)" for _, event in events)   # the PIT
    assert any(event == "interrupt irq 4 (vector 0x34)" for _, event in events)   # the UART
    assert ("out dx, al", "out port 0x03f8 (1) <- 0x48") in events  # 'H' of the hello line
    magic = [insn for insn, event in events if event == "mmio read  0xd0000000 (4) -> 0x74726976"]
    assert magic and all(insn.startswith("mov e") and "ptr [" in insn for insn in magic)
    assert any(event.startswith("mmio write 0xd0000070 (4)") for _, event in events)  # status


@pytest.mark.guest
def test_no_trace_and_no_debugger_install_nothing(state_dir: Path) -> None:
    ram = GuestRam(1 << 20)
    ports = PortBus()
    bare = Vcpu(ram, ports.read, ports.write, CpuidModel(host_tsc_hz()))
    machine = Machine(guest_image("hello.eif"), guest_cid=16, console=io.BytesIO(),
                      state_dir=state_dir)
    try:
        assert machine.debug is None
        assert type(machine.vcpu.delivery) is ExceptionDelivery
        assert len(machine.vcpu.uc._callbacks) == len(bare.uc._callbacks)
    finally:
        machine.close()
        bare.close()


@pytest.mark.parametrize("options, message", [
    (["--trace", "bogus"], "unknown trace event 'bogus'"),
    (["--trace", ""], "unknown trace event"),
    (["--trace-file", "t.txt"], "--trace-file needs --trace EVENTS"),
    (["--gdb-wait"], "--gdb-wait needs --gdb [HOST:]PORT"),
    (["--gdb", "99999"], "is not [HOST:]PORT"),
    (["--gdb", "host:"], "is not [HOST:]PORT"),
])
def test_debug_options_errors_are_one_line(options: list[str], message: str) -> None:
    completed = subprocess.run([sys.executable, "-m", "nitro_emu", "x.eif", "--guest-cid", "16",
                                *options], capture_output=True, text=True, cwd=ROOT)
    assert completed.returncode != 0
    assert message in completed.stderr and len(completed.stderr.strip().splitlines()) == 1


def test_debug_config_checks_options_that_need_another() -> None:
    """The one check every verb words its own way (run: one line; run-enclave: clap's
    usage error for flags, E01 for --config)."""
    with pytest.raises(DebugOptionsError) as error:
        DebugConfig(trace_file="t.txt")
    assert (error.value.option, error.value.required) == ("trace-file", "trace")
    with pytest.raises(DebugOptionsError) as error:
        DebugConfig(gdb_wait=True, trace=frozenset({"io"}))
    assert (error.value.option, error.value.required) == ("gdb-wait", "gdb")
    assert not DebugConfig().wanted and DebugConfig(trace=frozenset({"io"})).wanted
    assert DebugConfig(gdb=("127.0.0.1", 0), gdb_wait=True).wanted


def test_events_parse() -> None:
    assert parse_events("syscalls, io") == {"syscalls", "io"}
    assert parse_events("all") == {"syscalls", "exceptions", "interrupts", "io"}


def test_system_calls_read_their_strings_from_guest_memory_bounded() -> None:
    memory = {0x1000: b"/dev/nsm\0", 0x2000: b"x" * 100, 0x3000: (0x1000).to_bytes(8, "little") + bytes(8)}

    def read(address: int, length: int) -> bytes:
        for base, data in memory.items():
            if base <= address < base + len(data):
                return data[address - base:address - base + length]
        return b""

    assert format_call(257, (0xFFFFFF9C, 0x1000, 0o2000002, 0, 0, 0), read) == \
        'openat(AT_FDCWD, "/dev/nsm", O_RDWR|O_CLOEXEC)'
    assert format_call(2, (0x1000, 0o101, 0o644, 0, 0, 0), read) == 'open("/dev/nsm", O_WRONLY|O_CREAT, 0644)'
    assert format_call(1, (1, 0x2000, 100, 0, 0, 0), read) == f'write(1, "{"x" * 32}"..., 100)'
    assert format_call(59, (0x1000, 0x3000, 0, 0, 0, 0), read) == 'execve("/dev/nsm", ["/dev/nsm"], 0x0)'
    assert format_call(2, (0x9000, 0, 0, 0, 0, 0), read) == "open(0x9000, O_RDONLY)"   # unmapped
    assert format_call(60, ((1 << 64) - 1, 0, 0, 0, 0, 0), read) == "exit(-1)"
    assert format_call(1000, (1, 2, 3, 4, 5, 6), read) == "syscall_1000(0x1, 0x2, 0x3, 0x4, 0x5, 0x6)"


@given(st.binary(max_size=64), st.booleans())
def test_quoted_bytes_are_printable_ascii(data: bytes, truncated: bool) -> None:
    text = quote(data, truncated)
    assert text.isascii() and text.isprintable()
    assert text.startswith('"') and text.endswith('"...' if truncated else '"')


@pytest.mark.guest
def test_a_busy_gdb_port_or_an_unwritable_trace_file_is_one_line(tmp_path: Path) -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    fifo = tmp_path / "unread.fifo"
    os.mkfifo(fifo)
    cases = [(["--gdb", f"127.0.0.1:{busy.getsockname()[1]}"],
              f"gdb stub: cannot listen on 127.0.0.1:{busy.getsockname()[1]}: Address already in use"),
             (["--trace", "io", "--trace-file", str(tmp_path / "no" / "such" / "dir")],
              "No such file or directory"),
             # opening a FIFO nobody reads would wait for ever (and signals only set flags)
             (["--trace", "io", "--trace-file", str(fifo)], "a FIFO that nothing reads yet"),
             (["--trace", "io", "--trace-file", str(tmp_path)], "Is a directory")]
    try:
        for options, message in cases:
            completed = subprocess.run([sys.executable, "-m", "nitro_emu",
                                        str(guest_image("hello.eif")), "--guest-cid", "16",
                                        *options], capture_output=True, text=True, cwd=ROOT,
                                       timeout=120)
            assert completed.returncode == 1
            assert completed.stderr.startswith("nitro-emu: error: ") and message in completed.stderr
            assert len(completed.stderr.strip().splitlines()) == 1
    finally:
        busy.close()


@pytest.mark.guest
def test_a_trace_can_be_followed_live_through_a_fifo(tmp_path: Path) -> None:
    import threading
    import time
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    lines: list[str] = []
    native_id: list[int] = []

    def follow() -> None:
        native_id.append(threading.get_native_id())
        with open(fifo, encoding="utf-8") as stream:     # waits in open() for the writer
            lines.extend(stream)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not native_id or Path(f"/proc/self/task/{native_id[0]}/wchan").read_text() \
            != "wait_for_partner":   # the reader waits in open(): the FIFO has a reader
        assert time.monotonic() < deadline
        time.sleep(0.01)
    completed = subprocess.run([sys.executable, "-m", "nitro_emu", str(guest_image("hello.eif")),
                                "--guest-cid", "16", "--trace", "syscalls", "--trace-file",
                                str(fifo)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    reader.join(30)
    assert completed.returncode == 0, completed.stderr
    assert any('write(1, "Hello from the enclave side!' in line for line in lines), lines[-5:]
