"""What the guest and host peers can make the vsock device hold on the host, and how often
they can make it log: the shared byte budget of all connections and rate-limited logging.

The numbers come from `VsockConfig` (its docstring and the README's "Limits" say what
happens at each one); this module only keeps the accounts."""
from __future__ import annotations

import logging
import time

from devices.vsock.config import VsockConfig


class BufferBudget:
    """The bytes every connection of one device may hold, in both directions.

    Host-bound: each connection's receive window is reserved here when it opens
    (`open_window`) and given back when its host socket closes (`close_window`).
    Guest-bound: bytes read from host sockets and not yet taken by the guest are counted
    with `take` / `give`; `room()` is what may still be read. Connections that stopped
    reading for want of room wait in `paused` until the muxer resumes them."""

    def __init__(self, config: VsockConfig) -> None:
        self.full_window = config.buf_alloc
        self.small_window = config.min_buf_alloc
        self.window_limit = config.max_host_bound_total
        self.max_connections = config.max_connections
        self.windows = 0                 # bytes reserved by open windows
        self.guest_bound_limit = config.max_guest_bound_total
        self.guest_bound = 0             # bytes read from the host, not yet taken by the guest
        self.paused: set = set()         # muxer entries waiting for guest-bound room

    # -- host-bound windows -------------------------------------------------------------

    def open_window(self, holders: int) -> int:
        """Reserve the receive window of a new connection while `holders` connections hold
        one: the full window if it fits beside the small window kept for every connection
        that may still open, else the small window; 0 (refuse) when not even that fits."""
        free = self.window_limit - self.windows
        kept = max(0, self.max_connections - holders - 1) * self.small_window
        if free - kept >= self.full_window:
            window = self.full_window
        elif free >= self.small_window:
            window = self.small_window
        else:
            return 0
        self.windows += window
        return window

    def close_window(self, window: int) -> None:
        self.windows -= window

    # -- guest-bound bytes --------------------------------------------------------------

    def room(self) -> int:
        """Guest-bound bytes all connections together may still read from the host."""
        return self.guest_bound_limit - self.guest_bound

    def take(self, n: int) -> None:
        self.guest_bound += n

    def give(self, n: int) -> None:
        self.guest_bound -= n


class GuestWarnings:
    """Warnings about a guest's mistakes: the first 20, then every 1000th (a guest must not
    be able to flood the host's log)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self.count = 0

    def __call__(self, message: str, *args) -> None:
        self.count += 1
        n = self.count
        if n <= 20 or n % 1000 == 0:
            suffix = f" [{n} guest warnings so far]" if n >= 20 else ""
            self.log.warning(message + suffix, *args)


class Throttle:
    """Allows one event per `interval_s` of wall time and counts the ones it held back."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: float | None = None
        self.held_back = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval_s:
            self.held_back += 1
            return False
        self._last = now
        return True

    def take_held_back(self) -> int:
        """How many were held back since the last allowed one (and reset the count)."""
        n, self.held_back = self.held_back, 0
        return n
