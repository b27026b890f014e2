"""Booting real Linux guests on the machine (issue 4): the test images from `make guest`,
the console, how runs end, and images that cannot boot."""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import eif
from support.images import ROOT, guest_image
from eif import cpio
from nitro_emu import Machine
from nitro_emu.boot.bzimage import BadKernelError

HELLO = "Hello from the enclave side!"
KERNEL_TROUBLE = re.compile(r"WARNING:|BUG:|Oops|Call Trace|Kernel panic|general protection")


@pytest.mark.guest
def test_hello_boots_prints_its_line_and_resets(boot) -> None:
    run = boot("hello.eif")
    assert run.result.ok, run.result.message
    assert run.result.reason == "reset"
    assert HELLO in run.console
    assert "Run /init as init process" in run.console
    assert not KERNEL_TROUBLE.search(run.console), KERNEL_TROUBLE.search(run.console).group(0)
    # the machine's own parameters reach the kernel after the EIF's command line
    assert "virtio_mmio.device=4K@0xd0000000:5" in run.console
    assert run.result.stats["syscalls"] > 0 and run.result.stats["exceptions"] > 0


@pytest.mark.guest
def test_hello_on_the_aws_configured_kernel_boots_too(boot) -> None:
    """The kernel users really run (AWS's enclave config: SMP, x2APIC, ACPI, paravirt, HPET,
    modules) on a machine without APIC, ACPI or HPET."""
    run = boot("hello-aws.eif", timeout=900)
    assert run.result.ok, f"{run.result.reason}: {run.result.message}\n{run.console[-3000:]}"
    assert HELLO in run.console
    # mitigations=off: no page-table isolation (a TLB flush per system call) on a CPU that
    # does not speculate
    assert "Kernel/User page tables isolation: disabled on command line" in run.console
    assert not KERNEL_TROUBLE.search(run.console), KERNEL_TROUBLE.search(run.console).group(0)


@pytest.mark.guest
def test_hello_boots_on_the_python_hooks_too(boot, monkeypatch) -> None:
    """The fallback when the native hooks cannot be built: the same guest, same result."""
    monkeypatch.setenv("NITRO_EMU_NATIVE", "0")
    run = boot("hello.eif")
    assert not run.machine.vcpu.native
    assert run.result.ok, run.result.message
    assert HELLO in run.console
    assert run.result.stats["syscalls"] > 0 and run.result.stats["exceptions"] > 0
    assert not KERNEL_TROUBLE.search(run.console)


@pytest.mark.guest
def test_sysbench_runs_to_the_end_with_every_operation_counted(boot) -> None:
    from benchmarks.sysbench import intloop_result, pattern_sha256
    run = boot("sysbench.eif", timeout=900)
    assert run.result.ok, run.result.message
    lines = {m.group(1): (int(m.group(2)), float(m.group(3)), m.group(4))
             for m in re.finditer(r"^(syscall|pagefault|fork-exec|intloop|sha256-int|sha256)\s+(\d+) ops"
                                  r"\s+[\d.]+ s\s+([\d.]+) us/op(.*)$", run.console, re.M)}
    header = re.search(r"sysbench-lite: syscalls=(\d+) faults=(\d+) forks=(\d+) "
                       r"loops=(\d+) sha_mib=(\d+)", run.console)
    assert header, run.console[-2000:]
    syscalls, faults, forks, loops, mib = map(int, header.groups())
    assert lines["syscall"][0] == syscalls
    assert lines["pagefault"][0] == faults
    assert lines["fork-exec"][0] == forks
    assert all(cost > 0 for _, cost, _ in lines.values())
    # the emulated CPU computed what the host computes
    assert lines["intloop"][0] == loops
    assert f"result {intloop_result(loops):016x}" in lines["intloop"][2]
    for name in ("sha256", "sha256-int"):
        assert lines[name][0] == mib
        assert f"digest {pattern_sha256(mib)}" in lines[name][2]
    stats = run.result.stats
    assert stats["syscalls"] >= syscalls
    assert stats["exceptions"] >= faults
    if run.machine.vcpu.native:  # the C hooks take the common cases themselves
        assert stats["slow_exceptions"] < stats["exceptions"] // 100
    assert not KERNEL_TROUBLE.search(run.console)


def _eif_with(tmp_path: Path, kernel: bytes, ramdisks: list[bytes], cmdline: str) -> Path:
    kernel_file = tmp_path / "kernel"
    kernel_file.write_bytes(kernel)
    paths = []
    for index, data in enumerate(ramdisks):
        path = tmp_path / f"ramdisk{index}"
        path.write_bytes(data)
        paths.append(path)
    output = tmp_path / "test.eif"
    eif.build_eif(output, kernel=kernel_file, cmdline=cmdline, ramdisks=paths,
                  build_time="2024-01-01T00:00:00+00:00")
    return output


def test_a_kernel_of_random_bytes_is_refused_with_a_clear_error(tmp_path: Path, state_dir) -> None:
    image = _eif_with(tmp_path, os.urandom(1 << 20), [b"ramdisk"], "console=ttyS0")
    with pytest.raises(BadKernelError, match="not a Linux bzImage"):
        Machine(image, guest_cid=16, state_dir=state_dir)


@pytest.mark.guest
def test_a_bzimage_whose_code_is_garbage_ends_with_a_fault_report_not_a_hang(
        tmp_path: Path, state_dir) -> None:
    real = eif.read_eif(guest_image("hello.eif")).read_kernel()
    setup_end = (real[0x1F1] + 1) * 512
    # Seeded, so every run executes the same garbage (no chance of a lucky endless loop).
    garbage = real[:setup_end] + random.Random(20261127).randbytes(len(real) - setup_end)
    image = _eif_with(tmp_path, garbage, [b"ramdisk"], "console=ttyS0")
    machine = Machine(image, guest_cid=16, state_dir=state_dir, console=lambda data: None)
    try:
        result = machine.run(timeout=60)
    finally:
        machine.close()
    assert not result.ok
    assert result.reason in ("triple-fault", "fault"), result
    assert "RIP 0x" in result.message


@pytest.mark.guest
def test_a_missing_init_is_reported_as_the_kernel_panic(tmp_path: Path, state_dir) -> None:
    kernel = eif.read_eif(guest_image("hello.eif")).read_kernel()
    empty_root = cpio.newc_archive([cpio.directory("dev")])
    image = _eif_with(tmp_path, kernel, [empty_root],
                      "reboot=k panic=30 console=ttyS0 rdinit=/no-such-init")
    machine = Machine(image, guest_cid=16, state_dir=state_dir, console=lambda data: None)
    try:
        result = machine.run(timeout=300)
    finally:
        machine.close()
    assert result.reason == "panic" and not result.ok
    assert result.message.startswith("Kernel panic - not syncing")


@pytest.mark.guest
def test_an_eif_without_a_ramdisk_is_a_one_line_error(tmp_path: Path) -> None:
    valid = guest_image("hello.eif").read_bytes()
    broken = tmp_path / "no-ramdisk.eif"
    broken.write_bytes(valid[:len(valid) // 2])  # truncated: sections missing
    completed = subprocess.run([sys.executable, "-m", "nitro_emu", str(broken), "--guest-cid", "8"],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert completed.returncode != 0
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr
    assert completed.stderr.startswith("nitro-emu: error:")


@pytest.mark.guest
def test_the_command_line_runs_hello_in_the_foreground(state_dir) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "nitro_emu", str(guest_image("hello.eif")), "--guest-cid", "8"],
        capture_output=True, timeout=300, cwd=ROOT, env=dict(os.environ))
    assert completed.returncode == 0, completed.stderr
    assert HELLO.encode() in completed.stdout


@pytest.mark.parametrize("options, message", [
    (["--guest-cid", "3"], "not a valid enclave CID"),
    (["--guest-cid", "4294967295"], "not a valid enclave CID"),
    (["--guest-cid", "eight"], "is not a number"),
    (["--guest-cid", "8", "--memory", "16"], "--memory"),
    ([], "--guest-cid"),
    (["--guest-cid", "8", "--no-such-option"], "unrecognized arguments"),
])
def test_bad_run_options_are_one_line_errors(options, message) -> None:
    completed = subprocess.run([sys.executable, "-m", "nitro_emu", "hello.eif", *options],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert completed.returncode != 0
    assert message in completed.stderr
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr


def _read_until(process: subprocess.Popen, marker: bytes, output: bytearray, limit: float = 300) -> None:
    import select
    import time
    deadline = time.monotonic() + limit
    while marker not in output:
        assert time.monotonic() < deadline, output[-2000:].decode(errors="replace")
        ready, _, _ = select.select([process.stdout], [], [], 1)
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            assert chunk, f"emulator exited before {marker!r}: {output[-2000:].decode(errors='replace')}"
            output += chunk


@pytest.mark.guest
def test_the_shell_image_takes_console_input_from_stdin(state_dir) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "nitro_emu", str(guest_image("shell.eif")), "--guest-cid", "8"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    output = bytearray()
    try:
        _read_until(process, b"/ # ", output)
        process.stdin.write(b"echo typed-$((6*7))\n")
        process.stdin.flush()
        _read_until(process, b"typed-42", output)
        process.stdin.write(b"exit\n")
        process.stdin.flush()
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
        process.wait()


@pytest.mark.guest
def test_an_idle_guest_skips_ahead_only_a_few_seconds_then_runs_in_real_time(state_dir) -> None:
    """Idle skipping is capped (runloop.MAX_IDLE_LEAD_NS): an enclave left idle must not
    race its clock ahead of the host's, nor spin on ever smaller skips at the cap."""
    import io
    import threading

    from nitro_emu import Machine
    from nitro_emu.runloop import MAX_IDLE_LEAD_NS

    machine = Machine(guest_image("echo.eif"), guest_cid=16, state_dir=state_dir,
                      console=io.BytesIO())
    threading.Timer(8, machine.stop).start()
    started = time.monotonic()
    try:
        result = machine.run(timeout=120)
    finally:
        machine.close()
    wall_ns = (time.monotonic() - started) * 1e9
    assert result.reason == "stopped"
    assert machine.clock.skipped_ns == MAX_IDLE_LEAD_NS
    assert machine.clock.now_ns() <= wall_ns + MAX_IDLE_LEAD_NS + 1e9
    # At the cap the loop waits for the guest's timers: a few idle rounds per timer, not
    # the hundreds of thousands a loop spinning on ever smaller skips makes.
    assert result.stats["idle_rounds"] < 20_000, result.stats


@pytest.mark.guest
def test_stop_ends_an_idle_guest_at_once(state_dir) -> None:
    """stop() from another thread wakes the run loop out of its idle wait (the reactor's
    waker): it does not wait for the guest's next timer."""
    import io
    import threading

    from nitro_emu import Machine

    machine = Machine(guest_image("echo.eif"), guest_cid=16, state_dir=state_dir,
                      console=io.BytesIO())
    next_timer = []

    def stop_when_idle() -> None:
        time.sleep(8)            # booted, lead spent: the loop waits in real time
        clock = machine.clock

        def next_deadline() -> int | None:   # read-only: the emulator thread owns the heap
            return min((d for d, _, timer in list(clock._timers) if not timer.cancelled),
                       default=None)

        while (deadline := next_deadline()) is not None \
                and deadline - clock.now_ns() < 200_000_000:
            time.sleep(0.01)     # stop while the guest's next timer is well away
        next_timer.append(deadline)
        machine.stop()

    threading.Thread(target=stop_when_idle, daemon=True).start()
    try:
        result = machine.run(timeout=120)
        ended = machine.clock.now_ns()
    finally:
        machine.close()
    assert result.reason == "stopped"
    # The loop left its wait before the guest's next timer would have woken it.
    assert next_timer[0] is None or ended < next_timer[0], (ended, next_timer)


@pytest.mark.guest
def test_a_small_translation_cache_is_flushed_and_refilled_without_harm(
        boot, monkeypatch: pytest.MonkeyPatch) -> None:
    """The translated-code cache is bounded (vcpu.TCG_BUFFER_BYTES) so a long-running
    enclave's memory stays flat; when it fills, TCG drops every block and translates
    afresh. With a 2 MiB cache a boot does that many times and must still reach init."""
    from nitro_emu.cpu import vcpu

    monkeypatch.setattr(vcpu, "TCG_BUFFER_BYTES", 2 << 20)
    run = boot("attest.eif", timeout=900)
    assert run.machine.vcpu.uc.ctl_get_tcg_buffer_size() == 2 << 20
    assert run.result.ok, run.result.message
    assert "-----END ATTESTATION DOCUMENT-----" in run.console
