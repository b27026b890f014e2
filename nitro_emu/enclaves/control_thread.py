"""The enclave process's second thread: the control socket is served there, because the
emulator thread can be held for as long as a debugger likes (a GDB stub waiting for its
debugger, or the CPU stopped at a breakpoint), and describe-enclaves and
terminate-enclave must still get their answers meanwhile.

- `ServingThread`: a reactor of its own, polled by a thread that sleeps in `select` until
  a request comes (an idle enclave costs no CPU for it).
A stop asked for on that thread is seen by the emulator thread at once: `Machine.stop()`
wakes the machine's reactor.
"""
from __future__ import annotations

import signal
import threading

from board.reactor import HostReactor
from nitro_emu.stop_signals import STOP_SIGNALS

JOIN_SECONDS = 5.0


class ServingThread:
    """`reactor` (a `HostIo`) served by a daemon thread from `start()` until `close()`.
    Register on it before `start()`, or from its own callbacks."""

    def __init__(self, name: str = "nitro-emu control") -> None:
        self.reactor = HostReactor()
        self._running = True
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self) -> None:
        # The stop signals are handled on the main (emulator) thread; blocked here, the
        # kernel never delivers them to this thread, where they would go unnoticed while
        # the main thread sleeps in select.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self._thread.start()          # the thread inherits the blocked signals
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _serve(self) -> None:
        while self._running:
            self.reactor.poll(None)

    def stop(self) -> None:
        """End the thread (waiting for a callback that is running to return)."""
        self._running = False
        self.reactor.wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(JOIN_SECONDS)

    def close(self) -> None:
        self.stop()
        self.reactor.close()
