"""Compiles the static guest programs (init and the test programs) with gcc against glibc.

Outputs are cached under ~/.cache/nitro-emu/programs/<key>/, the key hashing the C
sources, the compiler flags and the toolchain's identity (gcc and glibc versions).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from guest.env import GUEST_DIR, cache_root, hash_files, pinned_env
from guest.errors import GuestBuildError

# name -> source file (relative to guest/)
PROGRAMS = {
    "init": "init/init.c",
    "nsm": "programs/nsm.c",
    "vsock-echo": "programs/vsock-echo.c",
    "vsock-send": "programs/vsock-send.c",
    "vsock-recv": "programs/vsock-recv.c",
    "sysbench-lite": "programs/sysbench-lite.c",
}
CFLAGS = ["-static", "-O2", "-s", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
          f"-ffile-prefix-map={GUEST_DIR}=guest", "-Wl,--build-id=sha1"]


def _toolchain_id() -> bytes:
    try:
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True)
        libc = subprocess.run(["ldd", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise GuestBuildError(f"gcc/glibc not usable ({e}); install build-essential") from e
    return (gcc.stdout.splitlines()[0] + "|" + libc.stdout.splitlines()[0]).encode()


def programs_key() -> str:
    """Cache key of the compiled programs."""
    sources = sorted(GUEST_DIR.glob("init/*.[ch]")) + sorted(GUEST_DIR.glob("programs/*.[ch]"))
    return hash_files(sources, b"|".join([_toolchain_id(), " ".join(CFLAGS).encode()]))


def compile_programs(out: Path) -> dict[str, Path]:
    """Compile every program into directory `out` (no caching); returns name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in PROGRAMS}
    for name, src in PROGRAMS.items():
        cmd = ["gcc", *CFLAGS, "-o", str(paths[name]), str(GUEST_DIR / src)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=pinned_env())
        if r.returncode != 0:
            raise GuestBuildError(f"compiling {src} failed:\n{r.stderr.strip()}")
    return paths


def build_programs(log=print) -> dict[str, Path]:
    """Compile (or take from the cache) every program; returns name -> binary path."""
    out = cache_root() / "programs" / programs_key()
    done = out / ".done"
    if done.is_file():
        return {name: out / name for name in PROGRAMS}
    shutil.rmtree(out, ignore_errors=True)
    paths = compile_programs(out)
    done.write_text("ok\n")
    log(f"programs: compiled {', '.join(PROGRAMS)} into {out}")
    return paths
