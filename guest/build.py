"""Builds the guest images: `python -m guest.build --out build/guest [--only NAME ...]`.

For each image: the kernel of its profile (guest/kernel.py), the static programs
(guest/programs.py), the bootstrap and application ramdisks (guest/images.py) and the
EIF (the project's `eif` package). Finished outputs are cached under
~/.cache/nitro-emu/images/<hash of guest/>/, so a second run only copies files.

Written to --out: <name>.eif, <name>/bzImage, <name>/initrd.cpio (both ramdisks joined,
what a boot loader hands the kernel), <name>/ramdisk-1.cpio, <name>/ramdisk-2.cpio,
<name>/cmdline, <profile>/bzImage with its <profile>/vmlinux and <profile>/System.map (for
debuggers and post-mortem reports), programs/<program> (the guest programs with their
symbols, for debuggers), and manifest.json (sizes, PCRs, paths).

Container images (images.CONTAINER_IMAGES, e.g. `python`) are written as an OCI layout
(<name>/oci) and made into <name>.eif by build-enclave with <name>/blobs. The blobs
directories (images.BLOB_SETS: `blobs` on the aws kernel, where build-enclave looks by
default, and `blobs-tiny`) hold nitro-cli's bzImage, bzImage.config, init and cmdline.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from eif import EifError, build_eif, read_eif
from guest import images as img
from guest.env import (BUILD_TIME, GUEST_DIR, SOURCE_DATE_EPOCH, cache_root, hash_tree, locked,
                       try_locked)
from guest.errors import GuestBuildError
from guest.kernel import build_kernel, kernel_artifacts
from guest.programs import build_programs, debug_copy

EIF_VERSION_NAME = "nitro-emu-guest"


def images_key() -> str:
    """Cache key of finished images: every file under guest/ (plus the busybox binary)."""
    bb = img.BUSYBOX.read_bytes() if img.BUSYBOX.is_file() else b""
    return hash_tree(GUEST_DIR, hashlib.sha256(bb).digest())


def write_eif(out: Path, kernel: Path, cmdline: str, ramdisks: list[Path], name: str) -> dict:
    """Write the EIF with the project's eif package; returns its PCRs as hex strings."""
    try:
        m = build_eif(out, kernel=kernel, cmdline=cmdline, ramdisks=ramdisks, name=name,
                      version="1.0", build_time=BUILD_TIME)
    except EifError as e:
        raise GuestBuildError(f"writing {out}: {e}") from e
    return _pcrs_of(m)


def _pcrs_of(m) -> dict:
    """eif.Measurements → {"PCR0": hex, "PCR1": hex, "PCR2": hex}."""
    d = m.to_json_dict()
    d.pop("HashAlgorithm", None)
    return d


def build_image(image: img.Image, stage: Path, programs: dict[str, Path], log=print,
                jobs: int = 2) -> dict:
    """Build one image's files into `stage`; returns its manifest entry."""
    kernel = build_kernel(image.kernel, jobs=jobs, log=log)
    d = stage / image.name
    d.mkdir(parents=True, exist_ok=True)
    r1 = img.bootstrap_ramdisk(programs["init"], SOURCE_DATE_EPOCH)
    r2 = img.application_ramdisk(image, programs, SOURCE_DATE_EPOCH)
    (d / "ramdisk-1.cpio").write_bytes(r1)
    (d / "ramdisk-2.cpio").write_bytes(r2)
    (d / "initrd.cpio").write_bytes(r1 + r2)
    (d / "cmdline").write_text(img.AWS_CMDLINE)
    shutil.copyfile(kernel, d / "bzImage")
    for fname in ("vmlinux", "System.map"):
        _link_or_copy(kernel_artifacts(kernel)[fname], d / fname)
    entry = {"kernel": image.kernel, "cmd": list(image.cmd), "cmdline": img.AWS_CMDLINE}
    eif = stage / f"{image.name}.eif"
    pcrs = write_eif(eif, d / "bzImage", img.AWS_CMDLINE,
                     [d / "ramdisk-1.cpio", d / "ramdisk-2.cpio"], f"{EIF_VERSION_NAME}-{image.name}")
    entry.update(eif=f"{image.name}.eif", size=eif.stat().st_size, pcrs=pcrs)
    return entry


def write_blobs(directory: Path, kernel: Path, init: Path) -> None:
    """A nitro-cli-style blobs directory: bzImage (+ .config), init, cmdline."""
    directory.mkdir(parents=True, exist_ok=True)
    _link_or_copy(kernel, directory / "bzImage")
    _link_or_copy(kernel_artifacts(kernel)[".config"], directory / "bzImage.config")
    _link_or_copy(init, directory / "init")
    (directory / "cmdline").write_text(img.AWS_CMDLINE + "\n")


def build_container_image(image: img.ContainerImage, stage: Path, programs: dict[str, Path],
                          log=print, jobs: int = 2) -> dict:
    """Write a container image's OCI layout and make its EIF with build-enclave, the
    path a user's image takes; returns its manifest entry."""
    from nitro_emu.container.build import build_enclave
    from nitro_emu.container.enclave_blobs import load_blobs
    from nitro_emu.container.reference import parse_reference
    from nitro_emu.errors import NitroEmuError

    kernel = build_kernel(image.kernel, jobs=jobs, log=log)
    d = stage / image.name
    write_blobs(d / "blobs", kernel, programs["init"])
    image.write_layout(d / "oci", stage / f".work-{image.name}", log)
    eif = stage / f"{image.name}.eif"
    started = time.monotonic()
    try:
        result = build_enclave(parse_reference(f"oci:{d / 'oci'}:latest"), str(eif),
                               load_blobs(str(d / "blobs")),
                               name=f"{EIF_VERSION_NAME}-{image.name}", version="1.0",
                               scratch_dir=str(stage))
    except (NitroEmuError, EifError) as e:
        raise GuestBuildError(f"image {image.name}: build-enclave: {e}") from e
    seconds = time.monotonic() - started
    built = read_eif(eif)
    (d / "initrd.cpio").write_bytes(built.read_ramdisks())
    (d / "cmdline").write_text(built.cmdline)
    for fname, path in kernel_artifacts(kernel).items():
        if fname != ".config":
            _link_or_copy(path, d / fname)
    return {"kernel": image.kernel, "cmd": list(image.cmd), "cmdline": built.cmdline,
            "eif": f"{image.name}.eif", "size": eif.stat().st_size,
            "pcrs": _pcrs_of(result.measurements), "build_enclave_seconds": round(seconds, 2)}


def _build_missing(missing: list[str], cache: Path, manifest: dict, log, jobs: int) -> None:
    """Build the images not yet in the cache and record them in the manifest."""
    manifest_path = cache / "manifest.json"
    programs = build_programs(log)
    for n in missing:
        t0 = time.monotonic()
        stage = cache / ".stage"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        if n in img.CONTAINER_IMAGES:
            entry = build_container_image(img.CONTAINER_IMAGES[n], stage, programs, log, jobs)
        else:
            entry = build_image(img.IMAGES[n], stage, programs, log, jobs)
        shutil.rmtree(cache / n, ignore_errors=True)
        (stage / n).rename(cache / n)
        (stage / f"{n}.eif").replace(cache / f"{n}.eif")
        shutil.rmtree(stage)
        manifest[n] = entry
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        log(f"image {n}: {entry['size']} bytes, PCR0 {entry['pcrs'].get('PCR0', '?')} "
            f"({time.monotonic() - t0:.1f} s)")


def build(out: Path, only: list[str] | None = None, log=print, jobs: int = 2) -> dict:
    """Build the selected images (all by default) into `out`; returns the manifest.
    `jobs` is make's -j for kernel builds."""
    known = [*img.IMAGES, *img.CONTAINER_IMAGES, *img.BLOB_SETS]
    selected = only or known
    unknown = [n for n in selected if n not in known]
    if unknown:
        raise GuestBuildError(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(known)}")
    names = [n for n in selected if n not in img.BLOB_SETS]
    cache = cache_root() / "images" / images_key()
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = cache / "manifest.json"
    # The entry stays locked until its files are out: another build's prune skips it.
    with locked(cache / ".lock"):
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        missing = [n for n in names if n not in manifest]
        if missing:
            _build_missing(missing, cache, manifest, log, jobs)
        for n in names:
            shutil.copyfile(cache / f"{n}.eif", out / f"{n}.eif")
            shutil.copytree(cache / n, out / n, dirs_exist_ok=True, copy_function=_link_or_copy)
            prof = out / manifest[n]["kernel"]
            prof.mkdir(exist_ok=True)
            for fname in ("bzImage", "vmlinux", "System.map"):
                _link_or_copy(cache / n / fname, prof / fname)
    _prune(cache.parent, keep=cache)
    _copy_debug_programs(out / "programs", log)
    blob_sets = [n for n in selected if n in img.BLOB_SETS]
    if blob_sets:
        programs = build_programs(log)
        for n in blob_sets:
            write_blobs(out / n, build_kernel(img.BLOB_SETS[n], jobs=jobs, log=log),
                        programs["init"])
    out_manifest = out / "manifest.json"
    old = json.loads(out_manifest.read_text()) if out_manifest.is_file() else {}
    old.update({n: manifest[n] for n in names})
    out_manifest.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    return {n: manifest[n] for n in names}


def _copy_debug_programs(dest: Path, log) -> None:
    """The unstripped guest programs (what the images hold, with symbols) for debuggers."""
    dest.mkdir(exist_ok=True)
    for name, program in build_programs(log).items():
        _link_or_copy(debug_copy(program), dest / name)


def _link_or_copy(src: Path | str, dest: Path | str) -> None:
    """dest becomes the same file as src: a hard link where possible (vmlinux with debug
    info is tens of MB, copied into several places), else a copy."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    tmp.replace(dest)


def _prune(images_dir: Path, keep: Path, count: int = 3) -> None:
    """Drop all but the `count` most recently used image cache entries (each guest/ edit
    makes a new one of ~130 MB)."""
    os.utime(keep)
    entries = sorted((d for d in images_dir.iterdir() if d.is_dir()),
                     key=lambda d: d.stat().st_mtime, reverse=True)
    for d in entries[count:]:
        if d == keep:
            continue
        with try_locked(d / ".lock") as ours:
            if ours:   # never an entry another build is filling or copying from
                shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guest.build", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("build/guest"), help="output directory")
    p.add_argument("--only", nargs="+", metavar="NAME", help="images to build ("
                   f"{', '.join([*img.IMAGES, *img.CONTAINER_IMAGES, *img.BLOB_SETS])})")
    p.add_argument("--jobs", "-j", type=int, default=2, metavar="N",
                   help="parallel jobs for kernel builds (default 2)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    try:
        result = build(args.out, args.only, jobs=args.jobs)
    except GuestBuildError as e:
        print(f"guest build: {e}", file=sys.stderr)
        return 1
    for n in args.only or []:
        if n in img.BLOB_SETS:
            print(f"{args.out / n}: blobs on the {img.BLOB_SETS[n]} kernel")
    for n, e in result.items():
        print(f"{args.out / e['eif']}: {e['size']} bytes, PCR0 {e['pcrs'].get('PCR0', '?')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
