"""The machine's reactor for host file descriptors (implements `interfaces.HostIo`).

Devices register sockets and the terminal here; the run loop polls it between CPU slices
(timeout 0) and blocks in it while the guest idles, so host I/O never needs a thread."""
from __future__ import annotations

import selectors
from typing import Callable


class HostReactor:
    """A `selectors` wrapper whose callbacks take the ready event mask."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def register(self, fileobj: object, events: int, callback: Callable[[int], None]) -> None:
        self._selector.register(fileobj, events, callback)

    def modify(self, fileobj: object, events: int, callback: Callable[[int], None]) -> None:
        self._selector.modify(fileobj, events, callback)

    def unregister(self, fileobj: object) -> None:
        try:
            self._selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def is_empty(self) -> bool:
        return not self._selector.get_map()

    def poll(self, timeout: float | None = 0.0) -> int:
        """Run the callbacks of every ready file; wait at most `timeout` seconds
        (None: forever). Returns how many callbacks ran."""
        if not self._selector.get_map():
            return 0
        ready = self._selector.select(timeout)
        for key, events in ready:
            key.data(events)
        return len(ready)

    def close(self) -> None:
        self._selector.close()
