"""Files the user names on the command line: the one way every verb reads and writes them.

Inputs (`open_input`, `read_input`, `read_stream`): only regular files are read. The path
is checked before it is opened (a symlink is followed, to a regular file only), opened
without blocking (a FIFO with no writer cannot hang us) and checked again on the open
descriptor. Each kind of input has a size limit, named in the error; kinds that are
streamed (EIFs, kernels, ramdisks) have none and are read exactly as large as they were
when opened, so a file that grows or shrinks meanwhile is an error, not a surprise.

Outputs (`atomic_output`, `write_output`): what exists at the path must be a regular file
(or a symlink to one, which is written through); anything else is refused, never
replaced. The new content goes to a temporary file beside the target and is renamed over
it only when complete, so any failure leaves the old file as it was. A new file gets the
mode `open()` would give it under the umask; a replaced file keeps its mode.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from eif.errors import FileError

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

# Limits of the small inputs held in memory (see the README's table of limits).
PEM_CERTIFICATE_LIMIT = 1 * MIB     # a certificate or a bundle of them
PRIVATE_KEY_LIMIT = 64 * KIB        # a PEM key (RSA-16384 is about 12 KiB)
CUSTOM_METADATA_LIMIT = 4096        # nitro-cli's limit on `--metadata`

_TEMPORARY_ATTEMPTS = 32
_NAME_KEPT = 200                    # of the target's name, in the temporary file's name
_SET_ID = stat.S_ISUID | stat.S_ISGID


@dataclass(frozen=True)
class InputKind:
    """What an input is called in messages, and the most bytes it may have (None: any
    size; it is streamed, never held whole)."""

    name: str
    limit: int | None = None


EIF = InputKind("EIF")
KERNEL = InputKind("kernel")
RAMDISK = InputKind("ramdisk")
MEASURED_FILE = InputKind("input file")
SIGNING_CERTIFICATE = InputKind("signing certificate", PEM_CERTIFICATE_LIMIT)
PRIVATE_KEY = InputKind("private key", PRIVATE_KEY_LIMIT)
CUSTOM_METADATA = InputKind("metadata file", CUSTOM_METADATA_LIMIT)


def format_size(size: int) -> str:
    """4096 -> '4096 bytes', 65536 -> '64 KiB', 1048576 -> '1 MiB'."""
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _named(name: str) -> str:
    """The path as messages show it: with the target when it is a symlink."""
    if os.path.islink(name):
        return f"{name} (a symlink to {os.path.realpath(name)})"
    return name


class InputFile:
    """A regular file opened for reading: `file` (binary), `info` (its fstat when opened)
    and `size`. A context manager that closes the file."""

    def __init__(self, file: BinaryIO, info: os.stat_result, name: str,
                 kind: InputKind) -> None:
        self.file = file
        self.info = info
        self.name = name
        self.kind = kind
        self.remaining = info.st_size

    @property
    def size(self) -> int:
        return self.info.st_size

    def _describe(self) -> str:
        return f"{self.kind.name} {self.name}"

    def read_all(self) -> bytes:
        """The whole content (at most the kind's limit; FileError if the file grew past
        it since it was opened)."""
        limit = self.kind.limit if self.kind.limit is not None else self.size
        try:
            data = self.file.read(limit + 1)
        except OSError as error:
            raise FileError(f"cannot read {self._describe()}: "
                            f"{error.strerror or error}") from None
        if len(data) > limit:
            raise FileError(f"{self._describe()}: the file grew past {format_size(limit)} "
                            "while being read")
        self.remaining = 0
        return data

    def readinto(self, view: memoryview) -> int:
        """Read the next bytes of the file as large as it was when opened, at most
        `len(view)`; 0 at its end. FileError if it shrinks or grows meanwhile."""
        if not self.remaining:
            return 0
        try:
            n = self.file.readinto(view[:min(len(view), self.remaining)])
            if not n:
                raise FileError(f"{self._describe()}: the file shrank while being read "
                                f"({self.remaining} bytes missing)")
            self.remaining -= n
            if not self.remaining and self.file.read(1):
                raise FileError(f"{self._describe()}: the file grew while being read")
        except OSError as error:
            raise FileError(f"cannot read {self._describe()}: "
                            f"{error.strerror or error}") from None
        return n

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> InputFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _check_input(name: str, info: os.stat_result, kind: InputKind) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise FileError(f"{kind.name} {_named(name)}: {_file_type(info.st_mode)}, not a "
                        "regular file")
    if kind.limit is not None and info.st_size > kind.limit:
        raise FileError(f"{kind.name} {name}: {info.st_size} bytes, over the "
                        f"{format_size(kind.limit)} limit")


def open_input(path: str | os.PathLike, kind: InputKind) -> InputFile:
    """Open a user-named input: a regular file within the kind's size limit, opened
    without blocking. FileError (one line naming the kind and the path) otherwise."""
    name = os.fspath(path)
    try:
        _check_input(name, os.stat(name), kind)  # never open a device or a FIFO at all
        descriptor = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        raise FileError(f"cannot read {kind.name} {name}: {error.strerror or error}") \
            from None
    try:
        info = os.fstat(descriptor)
        _check_input(name, info, kind)       # what was opened, if the path changed since
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return InputFile(os.fdopen(descriptor, "rb"), info, name, kind)


def read_input(path: str | os.PathLike, kind: InputKind) -> bytes:
    """The content of a small user-named input (see `open_input`)."""
    with open_input(path, kind) as file:
        return file.read_all()


def read_stream(stream: BinaryIO, kind: InputKind, name: str = "standard input") -> bytes:
    """Everything in `stream` (e.g. standard input), refused past the kind's limit."""
    if kind.limit is None:
        raise ValueError(f"{kind.name} has no size limit: stream it instead")
    data = stream.read(kind.limit + 1)
    if len(data) > kind.limit:
        raise FileError(f"{kind.name} from {name}: more than the "
                        f"{format_size(kind.limit)} limit")
    return data


def _output_target(name: str, what: str) -> tuple[str, os.stat_result | None]:
    """The path to replace (a symlink's target) and what is there now (None: nothing)."""
    target = name
    try:
        info = os.lstat(name)
        if stat.S_ISLNK(info.st_mode):
            target = os.path.realpath(name)
            info = os.stat(target)
    except FileNotFoundError:
        return target, None      # nothing there (or a dangling symlink, created as open() would)
    except OSError as error:
        raise FileError(f"cannot write {what} {name}: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileError(f"{what} {_named(name)}: {_file_type(info.st_mode)} is there; "
                        "refusing to replace it (remove it or choose another path)")
    return target, info


def _create_temporary(target: str, existing: os.stat_result | None, what: str,
                      name: str) -> tuple[int, str]:
    directory, base = os.path.split(target)
    for _ in range(_TEMPORARY_ATTEMPTS):
        temporary = os.path.join(directory, f".{base[:_NAME_KEPT]}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666: the kernel applies the umask, exactly as for a file open() creates
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                                 os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise FileError(f"cannot write {what} {name}: {error.strerror or error}") \
                from None
        break
    else:
        raise FileError(f"cannot write {what} {name}: no free temporary name in "
                        f"{directory or '.'}")
    if existing is not None:  # a replaced file keeps its mode and, if allowed, its owner
        with contextlib.suppress(OSError):
            if (existing.st_uid, existing.st_gid) != (os.getuid(), os.getgid()):
                os.fchown(descriptor, existing.st_uid, existing.st_gid)
        with contextlib.suppress(OSError):
            os.fchmod(descriptor, stat.S_IMODE(existing.st_mode) & ~_SET_ID)
    return descriptor, temporary


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, what: str = "output file") -> Iterator[BinaryIO]:
    """A binary file to write the new content of `path` into; it replaces `path` (or the
    regular file a symlink there leads to) only when the block ends without an error.
    FileError before anything is written when `path` is something else."""
    name = os.fspath(path)
    target, existing = _output_target(name, what)
    descriptor, temporary = _create_temporary(target, existing, what, name)
    try:
        with os.fdopen(descriptor, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        target, _ = _output_target(name, what)  # still nothing but a regular file there
        os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise FileError(f"cannot write {what} {name}: {error.strerror or error}") \
                from None
        raise


def write_output(path: str | os.PathLike, data: bytes, what: str = "output file") -> None:
    """Replace `path` with `data` (see `atomic_output`)."""
    with atomic_output(path, what) as out:
        out.write(data)
