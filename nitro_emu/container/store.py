"""Named files of an image archive or layout, read without trusting the names or sizes:
`DirectoryStore` (an OCI layout directory) and `TarStore` (docker-archive, oci-archive).
Also the small JSON documents (manifests, configs) with a size limit, and sha256 digests.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from typing import BinaryIO, Protocol

from eif.errors import FileError
from eif.files import InputKind, open_input
from nitro_emu.container.errors import ContainerError

MAX_JSON = 4 << 20          # manifests, indexes and configs (registries use 4 MiB too)
LAYOUT_FILE = InputKind("image layout file")   # streamed; JSON ones are held to MAX_JSON
ARCHIVE = InputKind("image archive")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, OverflowError, UnicodeError)


def digest_hex(digest: object, where: str) -> str:
    """The hex part of a "sha256:<64 hex>" digest; ContainerError otherwise."""
    if not isinstance(digest, str) or not (m := _DIGEST.match(digest)):
        raise ContainerError(f"{where}: digest {str(digest)[:80]!r} is not sha256:<64 hex "
                             "digits> (the only algorithm read)")
    return m.group(1)


class Store(Protocol):
    """Files of an archive or layout, by relative name."""

    where: str

    def open(self, name: str) -> tuple[BinaryIO, int]:
        """The named regular file and its size; ImageNotFound-like ContainerError if absent."""

    def exists(self, name: str) -> bool: ...


def _clean(name: str, where: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts or "\0" in name:
        raise ContainerError(f"{where}: file name {name[:200]!r} is absolute, empty or "
                             "leaves the archive")
    return "/".join(parts)


class DirectoryStore:
    """An OCI image layout directory. Names are checked to stay inside it, and only
    regular files are read (a blob that is a device or FIFO is refused)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.where = root
        if not os.path.isdir(root):
            what = "does not exist" if not os.path.exists(root) else "is not a directory"
            raise ContainerError(f"{root}: {what} (oci: wants an OCI image layout directory)")

    def close(self) -> None:
        pass

    def exists(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.root, _clean(name, self.where)))

    def open(self, name: str) -> tuple[BinaryIO, int]:
        path = os.path.join(self.root, _clean(name, self.where))
        if not os.path.lexists(path):
            raise ContainerError(f"{self.where}: {name} is missing")
        try:  # a FIFO or device blob is refused before it could block or never end
            opened = open_input(path, LAYOUT_FILE)
        except FileError as error:
            raise ContainerError(str(error)) from None
        return opened.file, opened.size


class TarStore:
    """Members of a tar archive (docker save / podman save output, OCI archives), read in
    place. Links inside the archive are followed by tarfile only to earlier members."""

    def __init__(self, path: str) -> None:
        self.where = path
        if not os.path.lexists(path):
            raise ContainerError(f"{path}: no such file")
        try:  # a FIFO or a device is refused before tarfile could wait on it or read it
            self.file = open_input(path, ARCHIVE)
        except FileError as error:
            raise ContainerError(str(error)) from None
        try:
            self.tar = tarfile.open(fileobj=self.file.file, mode="r:*")
            self.members = {}
            for member in self.tar:
                try:
                    self.members[_clean(member.name, path)] = member
                except ContainerError:
                    continue             # "./", absolute or ".." names: never looked up
        except (OSError, *TAR_ERRORS) as error:
            self.file.close()
            if isinstance(error, OSError):
                raise ContainerError(f"{path}: {error.strerror or error}") from None
            raise ContainerError(f"{path}: not a readable tar archive ({error})") from None

    def close(self) -> None:
        self.tar.close()
        self.file.close()

    def exists(self, name: str) -> bool:
        member = self.members.get(_clean(name, self.where))
        return member is not None and (member.isfile() or member.issym() or member.islnk())

    def open(self, name: str) -> tuple[BinaryIO, int]:
        member = self.members.get(_clean(name, self.where))
        if member is None:
            raise ContainerError(f"{self.where}: {name} is missing from the archive")
        try:
            file = self.tar.extractfile(member)      # follows links to earlier members
            if file is None:
                raise ContainerError(f"{self.where}: {name} is not a regular file")
            size = file.seek(0, os.SEEK_END)         # of what a link points to, too
            file.seek(0)
        except TAR_ERRORS + (KeyError,) as error:
            raise ContainerError(f"{self.where}: {name}: unreadable ({error})") from None
        return file, size


def read_limited(file: BinaryIO, size: int, limit: int, where: str) -> bytes:
    """All of a file of announced `size`, refusing more than `limit` bytes."""
    if size > limit:
        raise ContainerError(f"{where}: {size} bytes; more than the {limit} bytes allowed")
    data = file.read(limit + 1)
    if len(data) > limit:
        raise ContainerError(f"{where}: more than the {limit} bytes allowed")
    return data


def parse_json(data: bytes, where: str) -> object:
    """JSON from untrusted bytes; ContainerError for bad syntax, encoding or nesting
    (json's scanner raises RecursionError on deep nesting)."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ContainerError(f"{where}: invalid JSON ({error})") from None


def read_json(store: Store, name: str, what: str) -> tuple[object, bytes]:
    """A JSON file of the store: (value, raw bytes)."""
    file, size = store.open(name)
    with file:
        data = read_limited(file, size, MAX_JSON, f"{store.where}: {what} {name}")
    return parse_json(data, f"{store.where}: {what} {name}"), data


def check_digest(data: bytes, digest: str, where: str) -> None:
    """ContainerError unless sha256(data) is `digest` ("sha256:...")."""
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise ContainerError(f"{where}: content digest {got} does not match {digest}")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ContainerError(message)
