"""SIGINT, SIGTERM and SIGHUP end a run the same clean way, in the run verb and in a
background enclave's process alike.

A handler may run at any point of the emulator's loop, so it only records the signal and
asks for a stop (`Machine.stop` ends the current CPU slice); the program then leaves
through its ordinary path, which gives the terminal back, closes sockets and removes
socket files. The run verb exits with 128 + the signal's number (130, 143, 129): what a
shell reports for a process that signal ended; an enclave process records the signal as
its end. Other threads block STOP_SIGNALS (enclaves.control_thread), so that the kernel
hands them to the main thread, where the handler runs.
"""
from __future__ import annotations

import signal
from typing import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """While active (a context manager), each stop signal calls the connected stop
    functions; `received` is the first signal that came. A signal ignored on entry (SIGHUP
    under nohup, SIGINT in a background job) stays ignored."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._stops: list[Callable[[], None]] = []
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        for number in STOP_SIGNALS:
            if signal.getsignal(number) is not signal.SIG_IGN:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, _frame: object) -> None:
        if self.received is None:
            self.received = signal.Signals(number)
        for stop in self._stops:
            stop()

    def connect(self, stop: Callable[[], None]) -> None:
        """Call `stop()` on every stop signal from now on (at once if one came already)."""
        self._stops.append(stop)
        if self.received is not None:
            stop()

    @property
    def exit_status(self) -> int | None:
        """128 + the first signal's number, or None when none came."""
        return None if self.received is None else 128 + int(self.received)
