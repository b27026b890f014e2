"""The machine's reactor for host file descriptors (implements `interfaces.HostIo`).

Devices register sockets and the terminal here; the run loop polls it between CPU slices
(timeout 0) and blocks in it while the guest idles, so host I/O never needs a thread.
`wake()` (from another thread or a signal handler) ends a blocking poll at once."""
from __future__ import annotations

import selectors
import socket
from typing import Callable


def _is_listening_socket(fileobj: object) -> bool:
    if not isinstance(fileobj, socket.socket):
        return False
    try:
        return bool(fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


class HostReactor:
    """A `selectors` wrapper whose callbacks take the ready event mask."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._active: set[int] = set()  # registered descriptors that are not listeners
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, self._drain_wakes)

    def wake(self) -> None:
        """Make a poll that is waiting (or the next one) return at once. Safe from any
        thread and from signal handlers."""
        try:
            self._wake_writer.send(b"\0")
        except OSError:        # full (a wake is already pending) or closed: nothing to do
            pass

    def _drain_wakes(self, _mask: int) -> None:
        try:
            while self._wake_reader.recv(256):
                pass
        except OSError:
            pass

    def register(self, fileobj: object, events: int, callback: Callable[[int], None], *,
                 background: bool = False) -> None:
        """Call `callback(events)` when the file is ready. A `background` file carries no
        guest traffic (a debugger's connection): like a listening socket, it never holds
        back idle skipping."""
        key = self._selector.register(fileobj, events, callback)
        if not background and not _is_listening_socket(fileobj):
            self._active.add(key.fd)

    def modify(self, fileobj: object, events: int, callback: Callable[[int], None]) -> None:
        self._selector.modify(fileobj, events, callback)

    def unregister(self, fileobj: object) -> None:
        try:
            key = self._selector.unregister(fileobj)
        except (KeyError, ValueError):
            return
        self._active.discard(key.fd)

    def is_empty(self) -> bool:
        """True when no file but the reactor's own waker is registered."""
        return len(self._selector.get_map()) <= 1

    def only_listening(self) -> bool:
        """True when nothing but listening sockets is registered: no host conversation is
        in progress, so an idle guest may skip ahead in time (a new host connection still
        wakes it whenever it comes)."""
        return not self._active

    def poll(self, timeout: float | None = 0.0) -> int:
        """Run the callbacks of every ready file; wait at most `timeout` seconds
        (None: forever). Returns how many callbacks ran."""
        ready = self._selector.select(timeout)
        for key, events in ready:
            key.data(events)
        return len(ready)

    def close(self) -> None:
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()
