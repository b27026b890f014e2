"""Compiles the static guest programs (init and the test programs) with gcc against glibc.

Each program is built with debug information into `debug/<name>`, and a stripped copy
`<name>` goes into the images; the unstripped ones are copied to the build output
(build/guest/programs/) so that a debugger can set breakpoints in them by name
(`gdb build/guest/programs/vsock-echo`, then `target remote`).

The test programs are linked at TEST_PROGRAM_BASE instead of the usual 0x400000 where
init and busybox (static too) sit: a breakpoint is a virtual address that every process
shares, so at the same base a breakpoint in a test program would also stop in whatever
init or busybox code happens to be at that address.

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
CFLAGS = ["-static", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
          f"-ffile-prefix-map={GUEST_DIR}=guest", "-Wl,--build-id=sha1"]
TEST_PROGRAM_BASE = 0x10000000
LINK_FLAGS = {name: [f"-Wl,-Ttext-segment={TEST_PROGRAM_BASE:#x}"]
              for name in PROGRAMS if name != "init"}
DEBUG_DIR = "debug"


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
    flags = " ".join(CFLAGS + [f"{name}:{' '.join(LINK_FLAGS.get(name, []))}" for name in PROGRAMS])
    return hash_files(sources, b"|".join([_toolchain_id(), flags.encode(), b"strip --strip-all"]))


def compile_programs(out: Path) -> dict[str, Path]:
    """Compile every program into `out/debug/` and strip a copy into directory `out` (no
    caching); returns name -> stripped path."""
    (out / DEBUG_DIR).mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in PROGRAMS}
    for name, src in PROGRAMS.items():
        unstripped = debug_copy(paths[name])
        _run(["gcc", *CFLAGS, *LINK_FLAGS.get(name, []), "-o", str(unstripped),
              str(GUEST_DIR / src)], f"compiling {src}")
        _run(["strip", "--strip-all", "-o", str(paths[name]), str(unstripped)],
             f"stripping {name}")
    return paths


def debug_copy(program: Path) -> Path:
    """The unstripped build of a program returned by `build_programs`."""
    return program.parent / DEBUG_DIR / program.name


def _run(cmd: list[str], what: str) -> None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=pinned_env())
    except OSError as e:
        raise GuestBuildError(f"{what} failed: {e}") from e
    if r.returncode != 0:
        raise GuestBuildError(f"{what} failed:\n{r.stderr.strip()}")


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
