"""The kernel, init and command line an EIF is built with, from a nitro-cli-style blobs
directory (`bzImage`, `init`, `cmdline`, optional `nsm.ko` and `bzImage.config`).

Found in order: --blobs, $NITRO_CLI_BLOBS (as nitro-cli), the project's guest build
($NITRO_EMU_GUEST_DIR/blobs, then build/guest/blobs beside the sources), and nitro-cli's
installed /usr/share/nitro_enclaves/blobs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from eif.errors import FileError
from eif.files import KIB, MIB, InputKind, read_input
from nitro_emu.container.errors import ContainerError

CMDLINE = InputKind("blobs cmdline", 64 * KIB)
KERNEL_CONFIG = InputKind("kernel config", 4 * MIB)
REQUIRED = ("bzImage", "init", "cmdline")
NITRO_CLI_DEFAULT = "/usr/share/nitro_enclaves/blobs"
SOURCE_TREE_BLOBS = Path(__file__).resolve().parents[2] / "build" / "guest" / "blobs"
HOW_TO_GET = ("build the project's with `python -m guest.build --only blobs` (writes "
              "build/guest/blobs), or give --blobs DIR / NITRO_CLI_BLOBS=DIR, a nitro-cli "
              "blobs directory (bzImage, init, cmdline, nsm.ko)")
UNKNOWN = "Unknown"


@dataclass(frozen=True)
class EnclaveBlobs:
    directory: str
    kernel: str
    init: str
    cmdline: str
    nsm_ko: str | None
    kernel_config: str | None

    def os_and_kernel_version(self) -> tuple[str, str]:
        """nitro-cli's OperatingSystem and KernelVersion: the third line of
        bzImage.config ("# Linux/x86 6.12.38 Kernel Configuration") split on ' ', '/'
        and '-', words 1 and 3; "Unknown" when absent."""
        line = ""
        if self.kernel_config:
            try:
                lines = read_input(self.kernel_config, KERNEL_CONFIG).decode(
                    "utf-8", "replace").splitlines()
                line = lines[2] if len(lines) > 2 else ""
            except FileError:
                line = ""
        words = line.replace("/", " ").replace("-", " ").split(" ")
        return (words[1] if len(words) > 1 else UNKNOWN,
                words[3] if len(words) > 3 else UNKNOWN)


def load_blobs(directory: str) -> EnclaveBlobs:
    """The blobs of `directory`; ContainerError naming what is missing."""
    missing = [n for n in REQUIRED if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise ContainerError(f"blobs directory {directory}: {', '.join(missing)} missing; "
                             + HOW_TO_GET)
    try:
        cmdline = read_input(os.path.join(directory, "cmdline"), CMDLINE).decode().strip()
    except (FileError, UnicodeDecodeError) as error:
        raise ContainerError(f"{directory}/cmdline: unreadable ({error})") from None

    def optional(name: str) -> str | None:
        path = os.path.join(directory, name)
        return path if os.path.isfile(path) else None

    return EnclaveBlobs(directory, os.path.join(directory, "bzImage"),
                        os.path.join(directory, "init"), cmdline, optional("nsm.ko"),
                        optional("bzImage.config"))


def find_blobs(explicit: str | None = None,
               environ: Mapping[str, str] | None = None) -> EnclaveBlobs:
    """The blobs to build with (see the module's search order)."""
    environ = os.environ if environ is None else environ
    if explicit:
        return load_blobs(explicit)
    if environ.get("NITRO_CLI_BLOBS"):
        return load_blobs(environ["NITRO_CLI_BLOBS"])
    candidates = []
    if environ.get("NITRO_EMU_GUEST_DIR"):
        candidates.append(os.path.join(environ["NITRO_EMU_GUEST_DIR"], "blobs"))
    candidates += [str(SOURCE_TREE_BLOBS), NITRO_CLI_DEFAULT]
    for directory in candidates:
        if all(os.path.isfile(os.path.join(directory, n)) for n in REQUIRED):
            return load_blobs(directory)
    raise ContainerError("no kernel blobs found (looked in " + ", ".join(candidates) + "): "
                         + HOW_TO_GET)
