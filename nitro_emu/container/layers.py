"""Reading one layer: its stored bytes are hashed against the manifest's digest while
they are decompressed (gzip, zstd or none, told apart by their first bytes), and the
uncompressed tar, hashed against the config's diff_id, is written to a scratch file that
the flattened tree later reads file contents from. A budget bounds the uncompressed size,
so a decompression bomb ends in an error, not a full disk."""
from __future__ import annotations

import gzip
import hashlib
import zlib
from typing import BinaryIO

import zstandard

from nitro_emu.container.errors import ContainerError
from nitro_emu.container.image import LayerBlob

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _Reader:
    """The file-object surface gzip and zstandard need, over a `read` method."""

    def read(self, size: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class HashingReader(_Reader):
    """Reads a file, hashing and counting what passes through."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class Budget:
    """Bytes the uncompressed layers may still take."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, n: int, where: str) -> None:
        self.left -= n
        if self.left < 0:
            raise ContainerError(f"{where}: the image's layers expand to more than "
                                 f"{self.limit} bytes")


def _decompressor(source: HashingReader, head: bytes, where: str):
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=_Prefixed(head, source), mode="rb")
    if head.startswith(ZSTD_MAGIC):
        return zstandard.ZstdDecompressor().stream_reader(_Prefixed(head, source),
                                                          read_across_frames=True)
    return _Prefixed(head, source)


class _Prefixed(_Reader):
    """A reader that first returns `head` (already read to sniff the format)."""

    def __init__(self, head: bytes, rest: HashingReader) -> None:
        self.head = head
        self.rest = rest

    def read(self, size: int = -1) -> bytes:
        if self.head:
            n = len(self.head) if size < 0 else min(size, len(self.head))
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self.rest.read(size)


def unpack_layer(blob: LayerBlob, out: BinaryIO, budget: Budget) -> int:
    """Write the layer's uncompressed tar to `out`, checking the stored digest and size
    (when the manifest gives them) and the diff_id; returns the tar's size."""
    stored, stored_size = blob.open()
    with stored:
        source = HashingReader(stored)
        head = source.read(4)
        reader = _decompressor(source, head, blob.where)
        diff = hashlib.sha256()
        total = 0
        try:
            while chunk := reader.read(CHUNK):
                budget.take(len(chunk), blob.where)
                diff.update(chunk)
                out.write(chunk)
                total += len(chunk)
            source.drain()
        except (OSError, EOFError, zlib.error, ValueError, zstandard.ZstdError) as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise                        # a real I/O error (disk full, ...)
            raise ContainerError(f"{blob.where}: corrupt compressed data ({error})") from None
    if blob.size is not None and source.count != blob.size:
        raise ContainerError(f"{blob.where}: {source.count} bytes stored, the manifest says "
                             f"{blob.size}")
    if blob.digest is not None and "sha256:" + source.hash.hexdigest() != blob.digest:
        raise ContainerError(f"{blob.where}: digest sha256:{source.hash.hexdigest()} does not "
                             f"match the manifest's {blob.digest}")
    if "sha256:" + diff.hexdigest() != blob.diff_id:
        raise ContainerError(f"{blob.where}: uncompressed digest sha256:{diff.hexdigest()} "
                             f"does not match the config's diff_id {blob.diff_id}")
    return total
