"""An enclave's serial console on disk: written by its process, followed by `console`.

The log starts at boot, so `console` shows an enclave's whole life whenever it attaches,
and stays after the enclave exits (nitro-cli's console is gone with the enclave). It is
capped at LIMIT bytes so a chatty guest cannot fill the disk.
"""
from __future__ import annotations

import os
import time
from typing import BinaryIO, Callable

LIMIT = 64 << 20
TRUNCATED = b"\r\n[nitro-emu: console log limit reached; further output is not kept]\r\n"
POLL_SECONDS = 0.05


class ConsoleFile:
    """A sink for `Machine(console=...)` appending to `path` (created 0600)."""

    def __init__(self, path: str | os.PathLike, limit: int = LIMIT) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._left = limit - os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        if self._fd < 0 or self._left <= 0:
            return
        view = memoryview(data)[:self._left]
        self._left -= len(view)
        if self._left <= 0:
            view = memoryview(bytes(view) + TRUNCATED)
        while view:
            try:
                view = view[os.write(self._fd, view):]
            except OSError:      # a full disk loses console output, never the enclave
                return

    def flush(self) -> None:
        """Nothing is buffered: every write reaches the file at once."""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def follow(path: str | os.PathLike, out: BinaryIO, alive: Callable[[], bool],
           disconnect_after: float | None = None) -> None:
    """Copy the log at `path` to `out` from its start, then what is appended to it, until
    the enclave is gone (`alive()` false and everything read) or `disconnect_after`
    seconds have passed."""
    deadline = None if disconnect_after is None else time.monotonic() + disconnect_after
    with open(path, "rb", buffering=0) as log:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            data = log.read(1 << 16)
            if data:
                out.write(data)
                out.flush()
                continue
            if not alive():
                data = log.read()
                if data:
                    out.write(data)
                    out.flush()
                return
            pause = POLL_SECONDS if deadline is None else \
                max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))
            time.sleep(pause)
