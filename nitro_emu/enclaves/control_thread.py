"""The enclave process's second thread: the control socket is served there, because the
emulator thread can be held for as long as a debugger likes (a GDB stub waiting for its
debugger, or the CPU stopped at a breakpoint), and describe-enclaves and
terminate-enclave must still get their answers meanwhile.

- `ServingThread`: a reactor of its own, polled by a thread that sleeps in `select` until
  a request comes (an idle enclave costs no CPU for it).
- `Waker`: lets that thread wake the emulator thread out of its idle wait on the
  machine's reactor, so a stop it asks for is seen at once.
"""
from __future__ import annotations

import selectors
import signal
import socket
import threading

from board.reactor import HostReactor

# The enclave process's stop signals are handled on the main (emulator) thread; blocked
# here, the kernel never delivers them to this thread, where they would go unnoticed
# while the main thread sleeps in select.
_MAIN_THREAD_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
JOIN_SECONDS = 5.0


class _WakePair:
    """A socket pair: writing a byte to one end makes the other readable."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def wake(self) -> None:
        try:
            self.writer.send(b"\0")
        except OSError:        # full (a wake is already pending) or closed: nothing to do
            pass

    def drain(self, _mask: int = 0) -> None:
        try:
            while self.reader.recv(256):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class ServingThread:
    """`reactor` (a `HostIo`) served by a daemon thread from `start()` until `close()`.
    Register on it before `start()`, or from its own callbacks."""

    def __init__(self, name: str = "nitro-emu control") -> None:
        self.reactor = HostReactor()
        self._wake = _WakePair()
        self.reactor.register(self._wake.reader, selectors.EVENT_READ, self._wake.drain)
        self._running = True
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS)
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
        self._wake.wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(JOIN_SECONDS)

    def close(self) -> None:
        self.stop()
        self.reactor.close()
        self._wake.close()


class Waker:
    """A background file on the machine's reactor that another thread makes readable:
    the run loop's idle wait returns and sees the stop that thread asked for."""

    def __init__(self, reactor: HostReactor) -> None:
        self._pair = _WakePair()
        self._reactor = reactor
        reactor.register(self._pair.reader, selectors.EVENT_READ, self._pair.drain,
                         background=True)

    def wake(self) -> None:
        self._pair.wake()

    def close(self) -> None:
        self._reactor.unregister(self._pair.reader)
        self._pair.close()
