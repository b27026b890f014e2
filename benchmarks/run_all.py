"""`make bench`: every benchmark in turn, each printing its own figures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ["boot.py", "--runs", "5"],
    ["sysbench.py", "--runs", "5"],
    ["vsock.py"],
    ["nsm.py"],
    ["eif_describe.py"],
    ["debug.py", "--runs", "5"],
    ["build_enclave.py"],
]


def main() -> int:
    failed = []
    for script, *options in BENCHMARKS:
        print(f"\n== {script} {' '.join(options)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *options]).returncode != 0:
            failed.append(script)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
