"""A small, reproducible writer (and reader, for checks) of uncompressed newc cpio archives.

newc is the format Linux unpacks as an initramfs and nitro-cli puts in EIF ramdisks. The
writer sorts entries by path, adds missing parent directories, numbers inodes from 1 and
pins every mtime that an entry leaves unset, so the same files always give the same bytes.
Entries may carry their own owner and time (a container image's files keep theirs), their
data may be read from a file only while the archive is written (`FileSlice`, so a large
image never sits in memory), and hard links share an inode as Linux's unpacker expects:
the group's first entry (in path order) carries the data, the others are size 0.
"""
from __future__ import annotations

import stat
from dataclasses import dataclass, replace
from typing import BinaryIO, Iterable

from eif.errors import EifError

MAGIC = b"070701"
HEADER_LEN = 110
TRAILER = "TRAILER!!!"
MAX_FIELD = 0xFFFFFFFF
COPY_CHUNK = 1 << 20
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
           "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")
_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO)


class CpioError(EifError):
    """A cpio entry or archive is malformed; the message names the entry or offset."""


@dataclass(frozen=True)
class FileSlice:
    """A regular file's contents: `size` bytes of the file `path` from `offset`, read only
    when the archive is written."""

    path: str
    offset: int
    size: int


@dataclass(frozen=True)
class Entry:
    """One archive member: a path relative to the root, its full st_mode and contents.

    A symlink's data is its target; a device node's numbers are in rdev. `mtime` None
    takes the archive's pinned time. `link` names the regular file this entry is another
    (hard) name of; such an entry has the same mode and no data of its own.
    """

    path: str
    mode: int
    data: bytes | FileSlice = b""
    rdev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0
    mtime: int | None = None
    link: str | None = None

    @property
    def size(self) -> int:
        return self.data.size if isinstance(self.data, FileSlice) else len(self.data)


def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode("utf-8", "surrogateescape"))


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
    if e.size and stat.S_IFMT(e.mode) not in (stat.S_IFREG, stat.S_IFLNK):
        raise CpioError(f"cpio entry {p!r}: only files and symlinks carry data")
    if stat.S_ISLNK(e.mode) and not e.size:
        raise CpioError(f"cpio entry {p!r}: symlink without a target")
    if isinstance(e.data, FileSlice) and (e.data.offset < 0 or e.data.size < 0):
        raise CpioError(f"cpio entry {p!r}: negative file offset or size")
    numbers = (e.size, *e.rdev, e.uid, e.gid, e.mtime or 0)
    if not all(0 <= n <= MAX_FIELD for n in numbers):
        raise CpioError(f"cpio entry {p!r}: size, device number, owner or time does not "
                        "fit newc (0 to 2^32-1)")
    if e.link is not None and (not stat.S_ISREG(e.mode) or e.size):
        raise CpioError(f"cpio entry {p!r}: a hard link must be a regular file without data")


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
    for e in by_path.values():
        if e.link is not None:
            target = by_path.get(e.link)
            if target is None or target.link is not None or not stat.S_ISREG(target.mode):
                raise CpioError(f"cpio entry {e.path!r}: hard link to {e.link!r}, which is "
                                "not a regular file of the archive")
    return [by_path[p] for p in sorted(by_path)]


def write_newc(out: BinaryIO, entries: Iterable[Entry], mtime: int = 0) -> int:
    """Write the newc archive of the entries (normalized) to `out`, ending with the
    TRAILER!!! record; returns the number of bytes written."""
    if not 0 <= mtime <= MAX_FIELD:
        raise CpioError(f"cpio archive time {mtime} does not fit newc")
    ordered = normalize(entries)
    by_path = {e.path: e for e in ordered}
    group_size: dict[str, int] = {}          # hard link target -> names of its inode
    for e in ordered:
        key = e.link or e.path
        group_size[key] = group_size.get(key, 0) + 1
    inode: dict[str, int] = {}
    written = 0
    for e in ordered:
        key = e.link or e.path
        first = key not in inode
        if first:
            inode[key] = len(inode) + 1
        owner = by_path[key]                  # the inode's metadata and data
        data = owner.data if first else b""
        size = owner.size if first else 0
        name = e.path.encode("utf-8", "surrogateescape") + b"\0"
        nlink = 2 if stat.S_ISDIR(e.mode) else group_size[key]
        header = _header({
            "ino": inode[key], "mode": owner.mode, "uid": owner.uid, "gid": owner.gid,
            "nlink": nlink, "mtime": mtime if owner.mtime is None else owner.mtime,
            "filesize": size, "rdevmajor": owner.rdev[0], "rdevminor": owner.rdev[1],
            "namesize": len(name)}, name)
        out.write(header)
        if isinstance(data, FileSlice):
            _copy_slice(data, out, e.path)
        else:
            out.write(data)
        out.write(_pad4(size))
        written += len(header) + size + (-size % 4)
    name = TRAILER.encode() + b"\0"
    trailer = _header({"ino": 0, "nlink": 1, "namesize": len(name)}, name)
    out.write(trailer)
    return written + len(trailer)


def _copy_slice(data: FileSlice, out: BinaryIO, path: str) -> None:
    with open(data.path, "rb") as source:
        source.seek(data.offset)
        remaining = data.size
        while remaining:
            chunk = source.read(min(remaining, COPY_CHUNK))
            if not chunk:
                raise CpioError(f"cpio entry {path!r}: its data file {data.path} ended "
                                f"{remaining} bytes early")
            out.write(chunk)
            remaining -= len(chunk)


def newc_archive(entries: Iterable[Entry], mtime: int = 0) -> bytes:
    """The newc archive of the entries (normalized), ending with the TRAILER!!! record."""
    import io

    buffer = io.BytesIO()
    write_newc(buffer, entries, mtime)
    return buffer.getvalue()


def read_newc(data: bytes) -> list[Entry]:
    """Parse one newc archive (up to its trailer) back into entries, with their owners,
    times and hard links; for checks and tests."""
    out: list[Entry] = []
    first_name: dict[int, str] = {}
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
        entry = Entry(name, v["mode"], bytes(data[dstart:dend]),
                      (v["rdevmajor"], v["rdevminor"]), v["uid"], v["gid"], v["mtime"])
        if stat.S_ISREG(v["mode"]) and v["nlink"] >= 2:
            if v["ino"] in first_name:
                entry = replace(entry, link=first_name[v["ino"]])
            else:
                first_name[v["ino"]] = name
        out.append(entry)
        off = dend + (-v["filesize"] % 4)
