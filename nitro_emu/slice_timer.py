"""Ends CPU slices at timer deadlines: a host thread that asks the vCPU to stop (see
`Vcpu.request_stop`) when the next virtual-clock deadline comes due, so the run loop can
fire timers and deliver interrupts (Unicorn's own timeout starts a thread per `emu_start`;
this one thread is reused)."""
from __future__ import annotations

import threading
import time
from typing import Callable


class SliceTimer:
    """`arm(deadline)` before a slice, `disarm()` after; `stop()` at the end."""

    def __init__(self, expire: Callable[[], None]) -> None:
        self._expire = expire
        self._condition = threading.Condition()
        self._deadline: float | None = None
        self._running = True
        self._thread = threading.Thread(target=self._run, name="nitro-emu-slice-timer",
                                        daemon=True)
        self._thread.start()

    def arm(self, deadline: float) -> None:
        """Call `expire()` at host monotonic time `deadline` (seconds) unless disarmed."""
        with self._condition:
            self._deadline = deadline
            self._condition.notify()

    def disarm(self) -> None:
        with self._condition:
            self._deadline = None

    def stop(self) -> None:
        with self._condition:
            self._running = False
            self._condition.notify()
        self._thread.join(timeout=1)

    def _run(self) -> None:
        with self._condition:
            while self._running:
                if self._deadline is None:
                    self._condition.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._condition.wait(remaining)
                    continue
                self._deadline = None
                self._expire()
