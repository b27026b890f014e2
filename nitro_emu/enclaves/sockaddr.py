"""Unix socket addresses for paths of any length.

`sun_path` holds 108 bytes, and a state directory under a deep home or a test's temporary
directory easily goes past that. A longer path is reached through the directory's file
descriptor instead: `/proc/self/fd/N/name` resolves to the same socket for bind() and
connect(), as long as N stays open.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

SUN_PATH_MAX = 107     # bytes, leaving room for the terminating NUL


def fits(path: str) -> bool:
    return len(os.fsencode(path)) <= SUN_PATH_MAX


class DirectoryAlias:
    """Short socket addresses for the entries of one directory, valid while open."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self._fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.prefix = f"/proc/self/fd/{self._fd}/"

    def address(self, name: str) -> str:
        return self.prefix + name

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def long_lived_address(path: str | os.PathLike) -> tuple[str, DirectoryAlias | None]:
    """An address for `path` to keep using (a listener, a forwarding target): the path
    itself when it fits, else an alias the caller must keep open, then close."""
    text = os.fspath(path)
    if fits(text):
        return text, None
    alias = DirectoryAlias(os.path.dirname(text) or ".")
    return alias.address(os.path.basename(text)), alias


@contextlib.contextmanager
def address(path: str | os.PathLike) -> Iterator[str]:
    """An address for one bind() or connect() to `path`."""
    text, alias = long_lived_address(path)
    try:
        yield text
    finally:
        if alias is not None:
            alias.close()
