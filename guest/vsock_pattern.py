"""The host's side of the vsock test programs' byte pattern (guest/programs/vsock-common.h):
byte i of a transfer is (i ^ i >> 8 ^ i >> 16) & 0xFF, which repeats every 16 MiB. Tests
and benchmarks send it to vsock-recv (which checks it) and check what vsock-send sends."""
from __future__ import annotations

from functools import lru_cache

PERIOD = 16 << 20
_BLOCK = 1 << 16


@lru_cache(maxsize=1)
def one_period() -> bytes:
    """The first 16 MiB. Block k of 64 KiB is the first block with every byte XOR k."""
    first = bytes((j ^ (j >> 8)) & 0xFF for j in range(_BLOCK))
    return b"".join(first.translate(bytes(b ^ k for b in range(256))) for k in range(256))


def pattern(offset: int, length: int) -> bytes:
    """Bytes [offset, offset + length) of the stream."""
    period = one_period()
    parts = []
    while length > 0:
        start = offset % PERIOD
        part = period[start:start + length]
        parts.append(part)
        offset += len(part)
        length -= len(part)
    return b"".join(parts)


class PatternCheck:
    """Feed it a received stream in order: `count` bytes so far, `first_wrong` the offset of
    the first byte that is not the pattern (None while all are right)."""

    def __init__(self) -> None:
        self.count = 0
        self.first_wrong: int | None = None

    def feed(self, data: bytes) -> None:
        if self.first_wrong is None:
            expected = pattern(self.count, len(data))
            if data != expected:
                self.first_wrong = self.count + next(
                    i for i, (a, b) in enumerate(zip(data, expected)) if a != b)
        self.count += len(data)

    @property
    def ok(self) -> bool:
        return self.first_wrong is None
