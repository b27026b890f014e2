"""Builds a guest kernel (bzImage) from Debian's linux-source-6.12 and a config fragment.

The source tarball is unpacked once into the cache; each profile is built out of tree in
a directory keyed by the hash of its fragment and of the tarball, so editing init or the
test programs never rebuilds a kernel. Timestamps, user and host are pinned.
"""
from __future__ import annotations

import hashlib
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from guest.env import GUEST_DIR, cache_root, hash_files, locked, pinned_env
from guest.errors import GuestBuildError

SOURCE_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
# Bump when the way a kernel is built changes (so cached kernels are rebuilt).
# recipe 2: vmlinux (symbols, DWARF for tiny) and System.map are kept beside the bzImage.
RECIPE = b"kernel-recipe-2"
# What a kernel build leaves in the cache beside `<profile>-<key>.bzImage`, as
# (file in the build tree, suffix in the cache).
ARTIFACTS = (("arch/x86/boot/bzImage", ".bzImage"), ("vmlinux", ".vmlinux"),
             ("System.map", ".System.map"), (".config", ".config"))


@dataclass(frozen=True)
class Profile:
    """A kernel profile: the make target that gives the base config, and our fragment."""

    name: str
    base_target: str
    fragment: Path


PROFILES = {
    "tiny": Profile("tiny", "allnoconfig", GUEST_DIR / "kernel" / "tiny.config"),
    "aws": Profile("aws", "olddefconfig", GUEST_DIR / "kernel" / "aws.config"),
}

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Kconfig text → {symbol: value}, with 'n' for '# CONFIG_X is not set'."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := _SET.match(line):
            out[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            out[m.group(1)] = "n"
    return out


def _tarball_digest() -> str:
    if not SOURCE_TARBALL.is_file():
        raise GuestBuildError(
            f"kernel source {SOURCE_TARBALL} is missing: install Debian's linux-source-6.12 "
            "(make system-deps)")
    h = hashlib.sha256()
    with SOURCE_TARBALL.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def source_tree(log=print) -> Path:
    """The unpacked kernel source in the cache (unpacked on first use)."""
    digest = _tarball_digest()
    dest = cache_root() / "src" / f"linux-6.12-{digest}"
    if (dest / "Makefile").is_file():
        return dest
    with locked(dest.with_name(dest.name + ".lock")):
        if not (dest / "Makefile").is_file():
            _unpack(dest, log)
    return dest


def _unpack(dest: Path, log) -> None:
    log(f"unpacking {SOURCE_TARBALL} into {dest}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(tmp), "-xf", str(SOURCE_TARBALL)], check=True)
    inner = [p for p in tmp.iterdir() if p.is_dir()]
    if len(inner) != 1:
        raise GuestBuildError(f"{SOURCE_TARBALL}: expected one top-level directory")
    inner[0].rename(dest)
    tmp.rmdir()


def kernel_key(profile: Profile) -> str:
    """Cache key of a profile's kernel: its fragment, the source tarball and the recipe."""
    return hash_files([profile.fragment], RECIPE + _tarball_digest().encode())


def _make(src: Path, out: Path, args: list[str], logfile: Path) -> None:
    cmd = ["make", "-C", str(src), f"O={out}", "ARCH=x86_64", *args]
    with logfile.open("ab") as lf:
        lf.write(("$ " + " ".join(cmd) + "\n").encode())
        lf.flush()
        rc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, env=pinned_env()).returncode
    if rc != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-25:]
        raise GuestBuildError(
            f"kernel build step `make {' '.join(args)}` failed (exit {rc}); log {logfile}:\n"
            + "\n".join(tail))


def _children_cpu() -> float:
    """CPU seconds (user + system) used so far by finished child processes."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def check_config(fragment: dict[str, str], final: dict[str, str]) -> list[str]:
    """Fragment symbols whose value did not survive into the final .config."""
    bad = []
    for sym, want in fragment.items():
        got = final.get(sym, "n")
        if got != want:
            bad.append(f"{sym}: wanted {want}, got {got}")
    return bad


def cached_kernel(name: str) -> Path | None:
    """The profile's bzImage if it is already built for the current sources, else None."""
    image = cache_root() / "kernel" / f"{name}-{kernel_key(PROFILES[name])}.bzImage"
    return image if image.is_file() else None


def kernel_artifacts(bzimage: Path) -> dict[str, Path]:
    """The files a cached kernel build keeps, by name: bzImage, vmlinux, System.map, .config."""
    stem = bzimage.name.removesuffix(".bzImage")
    return {Path(built).name: bzimage.with_name(stem + suffix) for built, suffix in ARTIFACTS}


def build_kernel(name: str, jobs: int = 2, log=print) -> Path:
    """Build (or take from the cache) the bzImage of profile `name`; returns its path."""
    if name not in PROFILES:
        raise GuestBuildError(f"unknown kernel profile {name!r} (known: {', '.join(PROFILES)})")
    profile = PROFILES[name]
    key = kernel_key(profile)
    kdir = cache_root() / "kernel"
    image = kdir / f"{name}-{key}.bzImage"
    if image.is_file():
        return image
    with locked(kdir / f"{name}-{key}.lock"):
        if image.is_file():  # another process built it while we waited
            return image
        return _build(profile, key, image, jobs, log)


def _build(profile: Profile, key: str, image: Path, jobs: int, log) -> Path:
    name = profile.name
    kdir = image.parent
    src = source_tree(log)
    out = kdir / f"{name}-{key}"
    out.mkdir(parents=True, exist_ok=True)
    logfile = out / "nitro-emu-build.log"
    logfile.write_bytes(b"")
    t0 = time.monotonic()
    cpu0 = _children_cpu()
    wanted = parse_config(profile.fragment.read_text())
    if profile.base_target == "allnoconfig":
        _make(src, out, [f"KCONFIG_ALLCONFIG={profile.fragment}", "allnoconfig"], logfile)
    else:
        shutil.copyfile(profile.fragment, out / ".config")
        _make(src, out, [profile.base_target], logfile)
    bad = check_config(wanted, parse_config((out / ".config").read_text()))
    if bad:
        raise GuestBuildError(
            f"kernel profile {name}: {profile.fragment.name} asks for options Kconfig refused:\n  "
            + "\n  ".join(bad))
    log(f"building kernel {name} in {out} (make -j{jobs}; log {logfile})")
    _make(src, out, [f"-j{jobs}", "bzImage"], logfile)
    # The bzImage goes last: its presence is what marks the cache entry complete.
    for (built, _), dest in reversed(list(zip(ARTIFACTS, kernel_artifacts(image).values()))):
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(out / built, tmp)
        tmp.rename(dest)
    log(f"kernel {name}: {image} ({image.stat().st_size} bytes; {time.monotonic() - t0:.0f} s "
        f"wall, {_children_cpu() - cpu0:.0f} s CPU with make -j{jobs})")
    return image
