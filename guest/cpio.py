"""A small, reproducible writer (and reader, for checks) of uncompressed newc cpio archives.

newc is the format Linux unpacks as an initramfs and nitro-cli puts in EIF ramdisks. The
writer sorts entries by path, adds missing parent directories, numbers inodes from 1 and
pins mtime/uid/gid, so the same files always give the same bytes.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Iterable

from guest.errors import GuestBuildError

MAGIC = b"070701"
HEADER_LEN = 110
TRAILER = "TRAILER!!!"
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
           "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")
_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO)


class CpioError(GuestBuildError):
    """A cpio entry or archive is malformed; the message names the entry or offset."""


@dataclass(frozen=True)
class Entry:
    """One archive member: a path relative to the root, its full st_mode and contents.

    A symlink's data is its target; a device node's numbers are in rdev.
    """

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, b"", (major, minor))


def _check(e: Entry) -> None:
    p = e.path
    if not p or p.startswith("/") or "\0" in p or p == TRAILER:
        raise CpioError(f"cpio entry {p!r}: path must be relative, non-empty, without NUL")
    if any(part in ("", ".", "..") for part in p.split("/")):
        raise CpioError(f"cpio entry {p!r}: empty, '.' or '..' path component")
    if stat.S_IFMT(e.mode) not in _TYPES or e.mode >> 16:
        raise CpioError(f"cpio entry {p!r}: unsupported mode {e.mode:#o}")
    if e.data and stat.S_IFMT(e.mode) not in (stat.S_IFREG, stat.S_IFLNK):
        raise CpioError(f"cpio entry {p!r}: only files and symlinks carry data")
    if stat.S_ISLNK(e.mode) and not e.data:
        raise CpioError(f"cpio entry {p!r}: symlink without a target")
    if len(e.data) > 0xFFFFFFFF or not all(0 <= n <= 0xFFFFFFFF for n in e.rdev):
        raise CpioError(f"cpio entry {p!r}: size or device number does not fit newc")


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(values: dict[str, int], name: bytes) -> bytes:
    head = MAGIC + b"".join(b"%08X" % values.get(f, 0) for f in _FIELDS)
    return head + name + _pad4(HEADER_LEN + len(name))


def normalize(entries: Iterable[Entry]) -> list[Entry]:
    """Checked entries, sorted by path, with missing parent directories added (0755)."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        _check(e)
        if e.path in by_path and by_path[e.path] != e:
            raise CpioError(f"cpio entry {e.path!r} given twice with different contents")
        by_path[e.path] = e
    for path in list(by_path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in by_path:
                by_path[parent] = directory(parent)
            elif not stat.S_ISDIR(by_path[parent].mode):
                raise CpioError(f"cpio entry {path!r}: parent {parent!r} is not a directory")
    return [by_path[p] for p in sorted(by_path)]


def newc_archive(entries: Iterable[Entry], mtime: int = 0) -> bytes:
    """The newc archive of the entries (normalized), ending with the TRAILER!!! record."""
    out = bytearray()
    ino = 0
    for ino, e in enumerate(normalize(entries), start=1):
        name = e.path.encode() + b"\0"
        out += _header({
            "ino": ino, "mode": e.mode, "nlink": 2 if stat.S_ISDIR(e.mode) else 1,
            "mtime": mtime, "filesize": len(e.data), "rdevmajor": e.rdev[0],
            "rdevminor": e.rdev[1], "namesize": len(name),
        }, name)
        out += e.data + _pad4(len(e.data))
    name = TRAILER.encode() + b"\0"
    out += _header({"ino": 0, "nlink": 1, "namesize": len(name)}, name)
    return bytes(out)


def read_newc(data: bytes) -> list[Entry]:
    """Parse one newc archive (up to its trailer) back into entries; for checks and tests."""
    out: list[Entry] = []
    off = 0
    while True:
        if off + HEADER_LEN > len(data):
            raise CpioError(f"cpio: truncated header at offset {off}")
        if data[off:off + 6] != MAGIC:
            raise CpioError(f"cpio: bad magic {data[off:off + 6]!r} at offset {off}")
        try:
            v = {f: int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i, f in enumerate(_FIELDS)}
        except ValueError:
            raise CpioError(f"cpio: non-hex header field at offset {off}") from None
        nstart = off + HEADER_LEN
        nend = nstart + v["namesize"]
        if v["namesize"] < 1 or nend > len(data) or data[nend - 1] != 0:
            raise CpioError(f"cpio: bad name field at offset {off}")
        name = data[nstart:nend - 1].decode("utf-8", "surrogateescape")
        dstart = nend + (-(HEADER_LEN + v["namesize"]) % 4)
        dend = dstart + v["filesize"]
        if dend > len(data):
            raise CpioError(f"cpio: entry {name!r} at offset {off} runs past the end")
        if name == TRAILER:
            return out
        out.append(Entry(name, v["mode"], bytes(data[dstart:dend]), (v["rdevmajor"], v["rdevminor"])))
        off = dend + (-v["filesize"] % 4)
