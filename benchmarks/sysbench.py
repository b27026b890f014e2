"""Per-event and compute costs of the emulated CPU: sysbench-lite (guest/programs) on
nitro-emu and on QEMU's TCG (`-M microvm -cpu qemu64,-apic`, the same kernel and ramdisks)
in one run, runs interleaved, the best of the runs per figure with the ratio (on a shared
host, load only ever adds time, so the minimum is the steadiest estimate of the cost).
For every kernel profile that has a sysbench image (sysbench.eif on `tiny`,
sysbench-aws.eif on `aws`). Prints figures only; the intloop result and the SHA-256
digests are checked against the host's.

    .venv/bin/python benchmarks/sysbench.py [--runs 3] [--guest-dir build/guest]
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.boot import emulator_command, qemu_command, time_to_line  # noqa: E402
from nitro_emu.cpu.cpuid import host_tsc_hz  # noqa: E402

FIGURES = ("syscall", "pagefault", "fork-exec", "intloop", "sha256", "sha256-int")
LINE = re.compile(rb"^(" + b"|".join(f.encode() for f in sorted(FIGURES, reverse=True)) +
                  rb")\s+(\d+) ops\s+[\d.]+ s\s+([\d.]+) us/op(.*)$", re.M)
HEADER = re.compile(rb"sysbench-lite: .*loops=(\d+) sha_mib=(\d+)")
IMAGES = (("tiny", "sysbench.eif"), ("aws", "sysbench-aws.eif"))
# QEMU's TCG guest reads the host's TSC. Without these its kernel calibrates the TSC
# against the PIT, which fails under host load and leaves jiffies as the clock (10 ms
# steps); nitro-emu's machine tells its guest the rate through CPUID instead. Both get
# mitigations=off (nitro-emu's machine appends it), so both kernels run the same paths.
QEMU_APPEND = f"tsc=reliable tsc_early_khz={host_tsc_hz() // 1000} mitigations=off"
TSC_CLOCK = b"clocksource: Switched to clocksource tsc"
ATTEMPTS = 3


@functools.lru_cache(maxsize=4)
def intloop_result(loops: int) -> int:
    """What sysbench-lite's intloop must print for `loops` ops of 1000 iterations."""
    mask = (1 << 64) - 1
    x, acc = 88172645463325252, 0
    for _ in range(loops * 1000):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        acc = (acc + (x & 0xFFFF) * 3 + (acc >> 3)) & mask
    return acc ^ x


@functools.lru_cache(maxsize=4)
def pattern_sha256(mib: int) -> str:
    """Digest of `mib` MiB of the pattern byte i = i ^ i>>8 ^ i>>16."""
    block = bytes((i ^ (i >> 8) ^ (i >> 16)) & 0xFF for i in range(1 << 16))
    digest = hashlib.sha256()
    for high in range(mib << 4):  # 64 KiB blocks; the i>>16 term is the block number
        digest.update(bytes(b ^ (high & 0xFF) for b in block))
    return digest.hexdigest()


def parse(output: bytes) -> dict[str, tuple[float, bytes]]:
    return {m.group(1).decode(): (float(m.group(3)), m.group(4)) for m in LINE.finditer(output)}


def check_results(output: bytes, figures: dict[str, tuple[float, bytes]], who: str) -> None:
    """The guest computed the loop and the digest right (else the figures mean nothing)."""
    header = HEADER.search(output)
    if header is None:
        return
    loops, mib = int(header.group(1)), int(header.group(2))
    if "intloop" in figures and f"result {intloop_result(loops):016x}".encode() not in figures["intloop"][1]:
        print(f"  {who}: intloop RESULT MISMATCH: {figures['intloop'][1]!r}")
    for name in ("sha256", "sha256-int"):
        if name in figures and f"digest {pattern_sha256(mib)}".encode() not in figures[name][1]:
            print(f"  {who}: {name} DIGEST MISMATCH: {figures[name][1]!r}")


def one_run(command: list[str], who: str) -> dict[str, float] | None:
    """One boot to the end of sysbench-lite; None if the guest clock was not the TSC."""
    for _ in range(ATTEMPTS):
        _, output = time_to_line(command, b"sha256 ")
        if TSC_CLOCK in output:
            figures = parse(output)
            check_results(output, figures, who)
            return {name: value for name, (value, _) in figures.items()}
    print(f"  {who}: the guest never used the TSC as its clock in {ATTEMPTS} boots; skipped")
    return None


def best_figures(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: min(run[name] for run in runs if name in run)
            for name in FIGURES if any(name in run for run in runs)}


UNITS = {"syscall": "us/op", "pagefault": "us/op", "fork-exec": "us/op",
         "intloop": "us/1000 iterations", "sha256": "us/MiB (SSE2)",
         "sha256-int": "us/MiB (no SSE)"}


def bench_image(eif: Path, profile: str, runs: int, work: Path, with_qemu: bool) -> None:
    # acpi=off: the AWS kernel hangs after /init on microvm's ACPI tables without an APIC
    qemu = [("microvm,acpi=off" if arg == "microvm" else arg) for arg in qemu_command(eif, work)]
    qemu[-1] += f" {QEMU_APPEND}"
    ours, theirs = [], []
    for _ in range(runs):  # interleaved, so a change of load on the host hits both alike
        if (run := one_run(emulator_command(eif), "nitro-emu")) is not None:
            ours.append(run)
        if with_qemu and (run := one_run(qemu, "QEMU")) is not None:
            theirs.append(run)
    if not ours:
        return
    a, b = best_figures(ours), best_figures(theirs) if theirs else {}
    print(f"sysbench-lite on the {profile} kernel ({eif.name}), best of {runs} runs "
          f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
    print(f"  {'figure':10} {'nitro-emu':>11} {'QEMU TCG':>11} {'ratio':>7}  unit")
    for name in FIGURES:
        mine, reference = a.get(name), b.get(name)
        ratio = f"{mine / reference:7.2f}" if mine and reference else "      -"
        print(f"  {name:10} {mine or 0:11.2f} {reference or 0:11.2f} {ratio}  {UNITS[name]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--guest-dir", type=Path, default=ROOT / "build" / "guest")
    args = parser.parse_args(argv)
    with_qemu = shutil.which("qemu-system-x86_64") is not None
    if not with_qemu:
        print("qemu-system-x86_64 not installed: nitro-emu figures only")
    found = False
    with tempfile.TemporaryDirectory() as work:
        for profile, name in IMAGES:
            eif = args.guest_dir / name
            if eif.exists():
                found = True
                bench_image(eif, profile, args.runs, Path(work), with_qemu)
    if not found:
        print(f"no sysbench image in {args.guest_dir} (make guest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
