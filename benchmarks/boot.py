"""Boot-path benchmark (issue 4): wall time from process start to the hello line for
hello.eif under nitro-emu, and in the same run the same kernel and ramdisks under QEMU's
TCG (`-M microvm -cpu qemu64,-apic -accel tcg`); medians, the ratio and the emulator's
peak RSS (sysbench-lite's per-event costs: benchmarks/sysbench.py). Prints figures only.

    .venv/bin/python benchmarks/boot.py [--runs 5] [--guest-dir build/guest]
"""
from __future__ import annotations

import argparse
import resource
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


def time_to_line(command: list[str], marker: bytes, limit: float = 600,
                 stop: bool = False) -> tuple[float, bytes]:
    """Seconds from starting `command` to `marker` on its stdout; then waits for exit (or,
    with `stop`, ends the process: for guests that serve until stopped)."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, cwd=ROOT)
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
    process.wait()
    if seen is None:
        raise SystemExit(f"{command[0]} never printed {marker!r}:\n{output[-2000:].decode(errors='replace')}")
    return seen, bytes(output)


def qemu_command(eif_path: Path, work: Path) -> list[str]:
    image = read_eif(eif_path)
    kernel, initrd = work / f"{eif_path.stem}.bzImage", work / f"{eif_path.stem}.initrd"
    kernel.write_bytes(image.read_kernel())
    initrd.write_bytes(image.read_ramdisks())
    return ["qemu-system-x86_64", "-M", "microvm", "-cpu", "qemu64,-apic", "-accel", "tcg",
            "-m", "512", "-nographic", "-no-reboot", "-device", "i8042",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"{image.cmdline} nitro_emu.heartbeat=off"]


def emulator_command(eif_path: Path) -> list[str]:
    return [sys.executable, "-m", "nitro_emu", str(eif_path), "--guest-cid", "8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--guest-dir", type=Path, default=ROOT / "build" / "guest")
    args = parser.parse_args()
    hello = args.guest_dir / "hello.eif"

    emulator = [time_to_line(emulator_command(hello), HELLO)[0] for _ in range(args.runs)]
    peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"nitro-emu  hello.eif: median {statistics.median(emulator):.2f} s to the hello line "
          f"(runs: {', '.join(f'{t:.2f}' for t in emulator)}), peak RSS {peak_rss_mib:.0f} MiB")

    if shutil.which("qemu-system-x86_64") is None:
        print("qemu-system-x86_64 not installed: no comparison")
        return
    with tempfile.TemporaryDirectory() as work:
        qemu_hello = qemu_command(hello, Path(work))
        qemu = [time_to_line(qemu_hello, HELLO)[0] for _ in range(args.runs)]
    print(f"QEMU TCG   hello.eif: median {statistics.median(qemu):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in qemu)})")
    print(f"ratio nitro-emu / QEMU: {statistics.median(emulator) / statistics.median(qemu):.2f}")


if __name__ == "__main__":
    main()
