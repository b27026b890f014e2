"""The guest images: what each one runs, and how its two ramdisks are laid out.

Layout as nitro-cli writes it (eif.ramdisks, shared with build-enclave): ramdisk 1
(bootstrap) holds `dev/` and `init`; ramdisk 2 (application) holds `rootfs/` (busybox-static,
our test programs, the standard empty directories), `cmd` (one argv element per line) and
`env` (KEY=value per line).
"""
from __future__ import annotations

import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from eif import cpio, ramdisks
from eif.errors import EifError
from guest import python_image
from guest.errors import GuestBuildError

# AWS's x86_64 enclave command line (blobs/x86_64/cmdline), exactly (docs/spec/eif.md §4.1).
AWS_CMDLINE = ("reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux "
               "i8042.nopnp i8042.dumbkbd random.trust_cpu=on")
BUSYBOX = Path("/bin/busybox")
HELLO_LINE = "Hello from the enclave side!"
DEFAULT_ENV = ("PATH=/sbin:/usr/sbin:/bin:/usr/bin", "HOME=/root", "TERM=linux")
TEST_PROGRAMS = ("nsm", "vsock-echo", "vsock-send", "vsock-recv", "sysbench-lite")


@dataclass(frozen=True)
class Image:
    """One EIF: its name, kernel profile, and the command init runs in /rootfs."""

    name: str
    kernel: str
    cmd: tuple[str, ...]
    env: tuple[str, ...] = field(default=DEFAULT_ENV)


IMAGES = {
    "hello": Image("hello", "tiny", ("echo", HELLO_LINE)),
    "echo": Image("echo", "tiny", ("vsock-echo", "5000")),
    "attest": Image("attest", "tiny", (
        "sh", "-c",
        "nsm describe-nsm && nsm attest --nonce 00112233 --user-data 68656c6c6f")),
    # cttyhack makes the real console tty (ttyS0) the shell's controlling terminal.
    "shell": Image("shell", "tiny", ("cttyhack", "sh")),
    "sysbench": Image("sysbench", "tiny", ("sysbench-lite",)),
    # a guest that never stops, for stopping it from a debugger (Ctrl-C)
    "spin": Image("spin", "tiny", ("sh", "-c", "while :; do :; done")),
    "hello-aws": Image("hello-aws", "aws", ("echo", HELLO_LINE)),
    "sysbench-aws": Image("sysbench-aws", "aws", ("sysbench-lite",)),
    # The soak benchmark's enclave: echoes on vsock port 5000 and attests once a second
    # (nonce = a counter) until it is stopped; the host checks both.
    "soak": Image("soak", "tiny", (
        "sh", "-c",
        "vsock-echo 5000 & n=0; while :; do n=$((n+1)); "
        "nsm attest --nonce $(printf %08x $n) || exit 1; sleep 1; done")),
}


@dataclass(frozen=True)
class ContainerImage:
    """An EIF made from a container image by build-enclave: `write_layout(dir, work, log)`
    writes its OCI layout; the kernel profile names the blobs directory it is built with."""

    name: str
    kernel: str
    cmd: tuple[str, ...]
    write_layout: Callable[..., None]


CONTAINER_IMAGES = {
    "python": ContainerImage("python", "aws", tuple(python_image.CMD), python_image.write_layout),
}
# nitro-cli-style blobs directories the build writes (name -> kernel profile): `blobs` is
# what build-enclave finds by default; `blobs-tiny` boots faster, for tests.
BLOB_SETS = {"blobs": "aws", "blobs-tiny": "tiny"}


def bootstrap_ramdisk(init: Path, mtime: int) -> bytes:
    """Ramdisk 1: dev/ (with a console node for the kernel's first open) and init."""
    return cpio.newc_archive(ramdisks.bootstrap_entries(init.read_bytes()), mtime)


def busybox_entries() -> list[cpio.Entry]:
    """rootfs/bin/busybox and one symlink per applet at busybox's own install paths."""
    if not BUSYBOX.is_file():
        raise GuestBuildError(f"{BUSYBOX} is missing: install Debian's busybox-static")
    r = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True)
    if r.returncode != 0:
        raise GuestBuildError(f"{BUSYBOX} --list-full failed: {r.stderr.strip()}")
    entries = [cpio.file("rootfs/bin/busybox", BUSYBOX.read_bytes(), 0o755)]
    for applet in sorted(set(r.stdout.split())):
        if applet != "bin/busybox":
            entries.append(cpio.symlink(f"rootfs/{applet}", "/bin/busybox"))
    return entries


def application_ramdisk(image: Image, programs: dict[str, Path], mtime: int) -> bytes:
    """Ramdisk 2: rootfs/ with busybox and the test programs, plus cmd and env."""
    entries = busybox_entries()
    for d in ("root", "etc"):   # the mount point directories: eif.ramdisks
        entries.append(cpio.directory(f"rootfs/{d}"))
    entries.append(cpio.Entry("rootfs/tmp", stat.S_IFDIR | 0o1777))
    entries.append(cpio.file("rootfs/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"))
    entries.append(cpio.file("rootfs/etc/group", b"root:x:0:\n"))
    for name in TEST_PROGRAMS:
        entries.append(cpio.file(f"rootfs/bin/{name}", programs[name].read_bytes(), 0o755))
    try:
        return cpio.newc_archive(ramdisks.customer_entries(entries, image.cmd, image.env), mtime)
    except EifError as error:
        raise GuestBuildError(f"image {image.name}: {error}") from None
