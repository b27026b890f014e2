"""One virtual clock for the whole machine.

Virtual time follows the host's monotonic clock, plus the time skipped while the guest
idled (HLT with nothing pending jumps straight to the next deadline), minus the time a
debugger held the CPU. Devices schedule timers on it; they never sleep.
"""
from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable


class Timer:
    """A handle for a scheduled callback; `cancel()` it to drop it."""

    __slots__ = ("deadline_ns", "callback", "cancelled")

    def __init__(self, deadline_ns: int, callback: Callable[[], None]) -> None:
        self.deadline_ns = deadline_ns
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Nanoseconds since the machine was created, in guest time."""

    def __init__(self) -> None:
        self._origin = time.monotonic_ns()
        self._skipped_ns = 0
        self._paused_at: int | None = None
        self._timers: list[tuple[int, int, Timer]] = []
        self._sequence = itertools.count()

    def now_ns(self) -> int:
        return time.monotonic_ns() - self._origin + self._skipped_ns

    @property
    def skipped_ns(self) -> int:
        """Total guest time that passed without host time passing (idle skipping)."""
        return self._skipped_ns

    def pause(self) -> None:
        """Stop guest time while a debugger holds the CPU. Nothing may read the clock
        until `resume()` (no guest code runs then); reading it stays free of any check."""
        if self._paused_at is None:
            self._paused_at = time.monotonic_ns()

    def resume(self) -> int:
        """Let guest time run on from where `pause()` stopped it, so timers do not fire a
        burst for the time the CPU was held. Returns the nanoseconds the clock stood."""
        if self._paused_at is None:
            return 0
        stood = time.monotonic_ns() - self._paused_at
        self._origin += stood
        self._paused_at = None
        return stood

    def add_timer(self, deadline_ns: int, callback: Callable[[], None]) -> Timer:
        """Run `callback` once virtual time reaches `deadline_ns`."""
        timer = Timer(deadline_ns, callback)
        heapq.heappush(self._timers, (deadline_ns, next(self._sequence), timer))
        return timer

    def next_deadline(self) -> int | None:
        """The earliest pending deadline, or None when no timer is armed."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def skip_to(self, deadline_ns: int) -> int:
        """Jump virtual time forward to `deadline_ns` (never back); returns ns skipped."""
        return self.skip(deadline_ns - self.now_ns())

    def skip(self, nanoseconds: int) -> int:
        """Move virtual time forward by `nanoseconds` without host time passing (nothing
        for zero or less); returns the nanoseconds skipped."""
        if nanoseconds <= 0:
            return 0
        self._skipped_ns += nanoseconds
        return nanoseconds

    def fire_due(self) -> int:
        """Run every timer whose deadline has passed; returns how many ran."""
        fired = 0
        timers = self._timers
        now = self.now_ns()
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()
                fired += 1
        return fired
