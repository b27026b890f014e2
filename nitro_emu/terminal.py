"""The user's terminal as the enclave's console input.

Keys typed go to the UART's receive FIFO (an interactive guest such as shell.eif reads
them from ttyS0). On a terminal, input is switched to raw mode for the run so that Ctrl-C
and friends reach the guest, and `Ctrl-]` (as in telnet) stops the enclave; the terminal
is restored afterwards. A pipe is fed through as it is; end of input is not passed on.

The descriptor is never made non-blocking: O_NONBLOCK belongs to the open file, which
stdin shares with stdout on a terminal and with the shell that started us, so setting it
would make console writes fail on a slow terminal and outlive a run that is killed. It is
read only when the reactor reports it readable, which a read then never blocks on.
"""
from __future__ import annotations

import os
import selectors
import termios
import tty
from typing import Callable

from board.interfaces import HostIo

ESCAPE = b"\x1d"  # Ctrl-]


INPUT_FILE_LIMIT = 1 << 20


def _read_all(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit:
        try:
            chunk = os.read(fd, min(65536, limit - size))
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class TerminalInput:
    """Attaches a readable file descriptor (normally stdin) to `feed`."""

    def __init__(self, fd: int, host: HostIo, feed: Callable[[bytes], None],
                 on_escape: Callable[[], None]) -> None:
        self._fd = fd
        self._host = host
        self._feed = feed
        self._on_escape = on_escape
        self._saved_mode = None
        self.is_terminal = os.isatty(fd)
        if self.is_terminal:
            self._saved_mode = termios.tcgetattr(fd)
            tty.setraw(fd)
        self._registered = False
        try:
            host.register(fd, selectors.EVENT_READ, self._readable)
            self._registered = True
        except PermissionError:
            # A regular file or /dev/null cannot be polled: it is all there already.
            feed(_read_all(fd, INPUT_FILE_LIMIT))

    def _readable(self, _events: int) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._detach()
            return
        if self.is_terminal and ESCAPE in data:
            data = data[:data.index(ESCAPE)]
            if data:
                self._feed(data)
            self._on_escape()
            return
        self._feed(data)

    def _detach(self) -> None:
        if self._registered:
            self._host.unregister(self._fd)
            self._registered = False

    def close(self) -> None:
        """Stop reading and give the terminal back as it was (a terminal that hung up
        has nothing left to give back)."""
        self._detach()
        if self._saved_mode is not None:
            mode, self._saved_mode = self._saved_mode, None
            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, mode)
            except (termios.error, OSError):
                pass
