"""The console: guest serial output to the user's stream, a transcript for tests, and
watching for a kernel panic line (the machine stops at once instead of sitting through
`panic=30`'s busy-wait)."""
from __future__ import annotations

from typing import BinaryIO, Callable

PANIC_MARKER = b"Kernel panic - not syncing"
TRANSCRIPT_LIMIT = 16 << 20


class ConsoleLog:
    """Receives UART output in chunks; forwards, records, and spots panics."""

    def __init__(self, sink: BinaryIO | Callable[[bytes], None],
                 on_panic: Callable[[str], None] | None = None,
                 transcript_limit: int = TRANSCRIPT_LIMIT) -> None:
        if callable(sink) and not hasattr(sink, "write"):
            self._write, self._flush = sink, lambda: None
        else:
            self._write, self._flush = sink.write, sink.flush
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = transcript_limit
        self._tail = b""
        self.panic_line: str | None = None
        self.on_panic = on_panic

    def write(self, data: bytes) -> None:
        self._write(data)
        if self._limit:
            self._chunks.append(data)
            self._size += len(data)
            if self._size > self._limit:
                joined = b"".join(self._chunks)[-self._limit // 2:]
                self._chunks, self._size = [joined], len(joined)
        if self.panic_line is None:
            window = self._tail + data
            index = window.find(PANIC_MARKER)
            if index >= 0:
                end = window.find(b"\n", index)
                if end < 0:
                    self._tail = window[index:]
                    return
                self.panic_line = window[index:end].decode("utf-8", "replace").strip()
                if self.on_panic:
                    self.on_panic(self.panic_line)
            self._tail = window[-(len(PANIC_MARKER) + 256):]

    def flush(self) -> None:
        try:
            self._flush()
        except (OSError, ValueError):
            pass

    def transcript(self) -> bytes:
        return b"".join(self._chunks)
