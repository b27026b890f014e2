"""Unix socket paths of any length, where sockets are bound and connected (the vsock
device's --vsock-uds listener and unix: forward targets; the enclave processes' control
sockets), and the removal of stale socket files.

`sun_path` holds 108 bytes, and a state directory under a deep home or a test's temporary
directory easily goes past that. A longer path is reached through its directory's file
descriptor instead: `/proc/self/fd/N/name` resolves to the same socket for bind() and
connect() while N is open, and the socket file still appears at the real path.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Iterator

SUN_PATH_MAX = 107     # bytes, leaving room for the terminating NUL


def fits(path: str | os.PathLike) -> bool:
    """Whether `path` can be a Unix socket address as it is."""
    return len(os.fsencode(path)) <= SUN_PATH_MAX


@contextlib.contextmanager
def address(path: str | os.PathLike) -> Iterator[str]:
    """An address for one bind() or connect() to `path`: the path itself when it fits,
    else its name under its directory's /proc/self/fd entry (open while the block runs).
    OSError with a readable strerror when even that is too long, or the directory cannot
    be opened."""
    text = os.fspath(path)
    if fits(text):
        yield text
        return
    directory, name = os.path.split(text)
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        prefix = f"/proc/self/fd/{fd}/"
        alias = prefix + name
        if not fits(alias):
            room = SUN_PATH_MAX - len(prefix)
            raise OSError(errno.ENAMETOOLONG,
                          f"path too long for a Unix socket ({len(os.fsencode(text))} bytes; "
                          f"a socket address holds {SUN_PATH_MAX}), and its file name "
                          f"({len(os.fsencode(name))} bytes) too long to reach through its "
                          f"directory (at most {room})")
        yield alias
    finally:
        os.close(fd)


def remove_socket(path: str | os.PathLike) -> None:
    """Remove a stale Unix socket file (never any other kind of file)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
