"""build-enclave figures (issue 12) for the CPython image of the guest build: its EIF size,
build-enclave's wall time from the OCI layout, and boot-to-application-ready (process
start to the server's "listening on vsock port" line) under nitro-emu and under QEMU TCG
with the same kernel and initrd; medians of --runs. Prints figures only.

    .venv/bin/python benchmarks/build_enclave.py [--runs 3] [--guest-dir build/guest]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from boot import emulator_command, qemu_command, time_to_line  # noqa: E402
from guest.python_image import READY_LINE  # noqa: E402
from nitro_emu.container.build import build_enclave  # noqa: E402
from nitro_emu.container.enclave_blobs import load_blobs  # noqa: E402
from nitro_emu.container.reference import parse_reference  # noqa: E402


def qemu_microvm_without_acpi(eif: Path, work: Path) -> list[str]:
    """benchmarks/boot.py's QEMU command with microvm's ACPI off: the aws kernel (ACPI on)
    would route the UART's interrupt through the IOAPIC, which `-cpu qemu64,-apic` leaves
    unusable, and the guest's user-space console output would never drain."""
    command = qemu_command(eif, work)
    command[command.index("microvm")] = "microvm,acpi=off"
    return command


def runs(label: str, values: list[float], unit: str = "s") -> str:
    return (f"{label}: median {statistics.median(values):.2f} {unit} "
            f"(runs: {', '.join(f'{v:.2f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--guest-dir", type=Path, default=ROOT / "build" / "guest")
    args = parser.parse_args()
    image_dir = args.guest_dir / "python"
    layout, blobs = image_dir / "oci", load_blobs(str(image_dir / "blobs"))
    layout_size = sum(p.stat().st_size for p in layout.rglob("*") if p.is_file())
    marker = READY_LINE.encode()
    with tempfile.TemporaryDirectory() as work:
        eif = Path(work) / "python.eif"
        build_times = []
        for _ in range(args.runs):
            started = time.monotonic()
            build_enclave(parse_reference(f"oci:{layout}:latest"), str(eif), blobs)
            build_times.append(time.monotonic() - started)
        print(f"python image: OCI layout {layout_size / 2**20:.1f} MiB, EIF "
              f"{eif.stat().st_size / 2**20:.1f} MiB ({eif.stat().st_size} bytes), kernel "
              f"{Path(blobs.kernel).stat().st_size / 2**20:.1f} MiB")
        print(runs("build-enclave (oci layout -> EIF)", build_times))
        emulator = [time_to_line(emulator_command(eif), marker, stop=True)[0]
                    for _ in range(args.runs)]
        print(runs("nitro-emu boot to application ready", emulator))
        if shutil.which("qemu-system-x86_64") is None:
            print("qemu-system-x86_64 not installed: no comparison")
            return
        qemu = [time_to_line(qemu_microvm_without_acpi(eif, Path(work)), marker, stop=True)[0]
                for _ in range(args.runs)]
        print(runs("QEMU TCG  boot to application ready", qemu))
        print(f"ratio nitro-emu / QEMU: {statistics.median(emulator) / statistics.median(qemu):.2f}")


if __name__ == "__main__":
    main()
