"""Boot-path benchmark: wall time from process start to the hello line for hello.eif (tiny
kernel) and hello-aws.eif (AWS-configuration kernel) under nitro-emu and, alternating run by
run so that the shared machine's load falls on all alike, the same kernel and ramdisks under
QEMU's TCG with tests/test_guest_qemu.py's reference command line (`-M microvm -cpu
qemu64,-apic -accel tcg`, `microvm,acpi=off` for the AWS kernel), and once more with
`mitigations=off` appended, as nitro-emu's machine appends it; medians, the ratios and the
peak RSS (sysbench-lite's per-event costs: benchmarks/sysbench.py). Prints figures only.

`--baseline DIR` times another nitro-emu source tree in the same alternation (e.g. an older
commit unpacked with `git archive`), for before/after figures from one run.

    .venv/bin/python benchmarks/boot.py [--runs 5] [--guest-dir build/guest] [--baseline DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eif import read_eif  # noqa: E402

HELLO = b"Hello from the enclave side!"
# The kernels compared: image, QEMU machine type (tests/test_guest_qemu.py).
KERNELS = [("tiny", "hello.eif", "microvm"), ("aws", "hello-aws.eif", "microvm,acpi=off")]
PEAK_RSS_MIB: dict[str, float] = {}


def time_to_line(command: list[str], marker: bytes, limit: float = 600, stop: bool = False,
                 cwd: Path = ROOT) -> tuple[float, bytes]:
    """Seconds from starting `command` (in `cwd`) to `marker` on its stdout; then waits for
    exit (or, with `stop`, ends the process: for guests that serve until stopped) and keeps
    the process's peak RSS in PEAK_RSS_MIB under `command[0]`."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, cwd=cwd)
    output = bytearray()
    seen = None
    assert process.stdout is not None
    while True:
        line = process.stdout.readline()
        if not line:
            break
        output += line
        if seen is None and marker in line:
            seen = time.monotonic() - started
            if stop:
                process.kill()
                break
        if time.monotonic() - started > limit:
            process.kill()
            break
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    PEAK_RSS_MIB[command[0]] = max(PEAK_RSS_MIB.get(command[0], 0), usage.ru_maxrss / 1024)
    if seen is None:
        raise SystemExit(f"{command[0]} never printed {marker!r}:\n{output[-2000:].decode(errors='replace')}")
    return seen, bytes(output)


def qemu_command(eif_path: Path, work: Path, machine: str = "microvm",
                 append: str = "") -> list[str]:
    image = read_eif(eif_path)
    kernel, initrd = work / f"{eif_path.stem}.bzImage", work / f"{eif_path.stem}.initrd"
    kernel.write_bytes(image.read_kernel())
    initrd.write_bytes(image.read_ramdisks())
    return ["qemu-system-x86_64", "-M", machine, "-cpu", "qemu64,-apic", "-accel", "tcg",
            "-m", "512", "-nographic", "-no-reboot", "-device", "i8042",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"{image.cmdline} nitro_emu.heartbeat=off {append}".rstrip()]


def emulator_command(eif_path: Path) -> list[str]:
    return [sys.executable, "-m", "nitro_emu", str(eif_path), "--guest-cid", "8"]


def _runs(times: list[float]) -> str:
    return f"median {statistics.median(times):5.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})"


def boot_figures(guest_dir: Path, runs: int, baseline: Path | None, qemu: bool) -> None:
    """Per kernel: nitro-emu[, the baseline tree], QEMU twice, one after the other `runs`
    times; then the medians and the ratios of nitro-emu (and the baseline) to each."""
    with tempfile.TemporaryDirectory() as work:
        for kernel, name, machine in KERNELS:
            eif_path = guest_dir / name
            if not eif_path.exists():
                print(f"{kernel:5} {name}: not built, skipped")
                continue
            commands = {"nitro-emu": (emulator_command(eif_path), ROOT)}
            if baseline is not None:
                commands["baseline"] = (emulator_command(eif_path), baseline)
            if qemu:
                commands["QEMU TCG"] = (qemu_command(eif_path, Path(work), machine), ROOT)
                commands["QEMU m=off"] = (qemu_command(eif_path, Path(work), machine,
                                                       "mitigations=off"), ROOT)
            times: dict[str, list[float]] = {label: [] for label in commands}
            for _ in range(runs):
                for label, (command, cwd) in commands.items():
                    times[label].append(time_to_line(command, HELLO, cwd=cwd)[0])
            for label, measured in times.items():
                print(f"{kernel:5} {name:14} {label:10} {_runs(measured)}")
            medians = {label: statistics.median(measured) for label, measured in times.items()}
            for ours in ("nitro-emu", "baseline"):
                for theirs in ("baseline", "QEMU TCG", "QEMU m=off"):
                    if ours != theirs and ours in medians and theirs in medians \
                            and (ours, theirs) != ("baseline", "baseline"):
                        print(f"{kernel:5} {name:14} ratio {ours} / {theirs}: "
                              f"{medians[ours] / medians[theirs]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--guest-dir", type=Path, default=ROOT / "build" / "guest")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="another nitro-emu source tree to time alongside")
    args = parser.parse_args()
    qemu = shutil.which("qemu-system-x86_64") is not None
    if not qemu:
        print("qemu-system-x86_64 not installed: no comparison")
    boot_figures(args.guest_dir, args.runs, args.baseline, qemu)
    print(f"peak RSS: nitro-emu {PEAK_RSS_MIB.get(sys.executable, 0):.0f} MiB, QEMU "
          f"{PEAK_RSS_MIB.get('qemu-system-x86_64', 0):.0f} MiB")


if __name__ == "__main__":
    main()
