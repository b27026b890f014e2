"""Debugging costs (issue 13): wall time from process start to the hello line for
hello.eif, plain and with the debugging tools on but idle: the GDB stub listening with no
debugger attached, and traces of system calls and of everything. Runs are interleaved
(one of each kind in turn) so that load on the host spreads evenly; medians of the wall
time and of the emulator's CPU time (user + system, less disturbed by other work on a
shared host). Prints figures only.

    .venv/bin/python benchmarks/debug.py [--runs 5] [--guest-dir build/guest]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from boot import HELLO, emulator_command, time_to_line  # noqa: E402

VARIANTS = {
    "plain": [],
    "gdb stub listening": ["--gdb", "127.0.0.1:0"],
    "trace syscalls": ["--trace", "syscalls", "--trace-file", "/dev/null"],
    "trace all": ["--trace", "all", "--trace-file", "/dev/null"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--guest-dir", type=Path, default=HERE.parent / "build" / "guest")
    args = parser.parse_args()
    hello = args.guest_dir / "hello.eif"
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.runs):
        for name, options in VARIANTS.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds, _ = time_to_line(emulator_command(hello) + options, HELLO)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[name].append(seconds)
            cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    plain, plain_cpu = statistics.median(times["plain"]), statistics.median(cpu["plain"])
    print(f"boot to hello line, median of {args.runs}: wall seconds, emulator CPU seconds "
          "(whole run)")
    for name in VARIANTS:
        wall, used = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"  {name:<20} wall {wall:6.3f} ({wall / plain - 1:+6.1%})  "
              f"cpu {used:6.3f} ({used / plain_cpu - 1:+6.1%})  "
              f"runs {' '.join(f'{v:.2f}' for v in times[name])}")


if __name__ == "__main__":
    main()
