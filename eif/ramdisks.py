"""nitro-cli's two ramdisks (enclave_build's yaml_generator), as cpio entries:

* bootstrap: `dev/` (with a console node for the kernel's first open), `init`, and
  `nsm.ko` when the kernel needs the NSM driver as a module;
* customer: the application's root file system under `rootfs/`, the directories init
  mounts on (`rootfs/{dev,run,sys,var,proc,tmp}`, added when the image lacks them), `cmd`
  (one argv element per line) and `env` (KEY=value per line), which init reads.

Shared by build-enclave and the project's guest build, so both boot the same way.
"""
from __future__ import annotations

import stat
from typing import Iterable

from eif import cpio
from eif.errors import EifError

ROOTFS = "rootfs"
MOUNT_DIRS = ("dev", "run", "sys", "var", "proc", "tmp")


def lines_file(what: str, items: Iterable[str]) -> bytes:
    """One item per line; EifError if an item holds a newline or NUL (init could not
    split it back)."""
    out = []
    for item in items:
        if "\n" in item or "\0" in item:
            raise EifError(f"{what} element {item!r} contains a newline or NUL")
        out.append(item.encode("utf-8", "surrogateescape") + b"\n")
    return b"".join(out)


def bootstrap_entries(init: bytes, nsm_ko: bytes | None = None) -> list[cpio.Entry]:
    """Ramdisk 1: dev/ with dev/console, init, and nsm.ko when given."""
    entries = [cpio.directory("dev"), cpio.chardev("dev/console", 5, 1),
               cpio.file("init", init, 0o755)]
    if nsm_ko is not None:
        entries.append(cpio.file("nsm.ko", nsm_ko, 0o755))
    return entries


def customer_entries(rootfs: Iterable[cpio.Entry], cmd: Iterable[str],
                     env: Iterable[str]) -> list[cpio.Entry]:
    """Ramdisk 2: `rootfs` (entries already under rootfs/), the mount point directories
    it lacks, and the cmd and env files."""
    cmd, env = list(cmd), list(env)
    if not cmd:
        raise EifError("the enclave has no command to run (cmd is empty)")
    entries = list(rootfs)
    have = {e.path: e for e in entries}
    for name in MOUNT_DIRS:
        path = f"{ROOTFS}/{name}"
        if path not in have:
            entries.append(cpio.directory(path))
        elif not stat.S_ISDIR(have[path].mode):
            raise EifError(f"/{name} in the root file system is not a directory; init "
                           "mounts a file system there")
    entries.append(cpio.file("cmd", lines_file("cmd", cmd)))
    entries.append(cpio.file("env", lines_file("env", env)))
    return entries
