"""The debugging tools of one machine, put together from a `DebugConfig`: the GDB stub and
the event trace, wired in by `Machine(..., debug=DebugConfig(...))`."""
from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Callable, TextIO

from board.clock import VirtualClock
from board.interfaces import MmioDevice
from board.reactor import HostReactor
from nitro_emu.cpu.vcpu import Vcpu
from nitro_emu.debug.config import DebugConfig, DebugError
from nitro_emu.debug.gdbstub import GdbStub
from nitro_emu.debug.target import MachineTarget


def open_trace_file(path: str | os.PathLike) -> TextIO:
    """The trace's stream: a regular file (created or emptied), or a FIFO or character
    device to follow the trace live (`mkfifo`, /dev/stderr). Never waits: a FIFO nobody
    reads yet is refused (opening it would block until a reader came), as are
    directories and block devices."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK
                             | os.O_CLOEXEC, 0o666)
    except OSError as error:
        reason = "a FIFO that nothing reads yet" if error.errno == errno.ENXIO \
            else error.strerror or str(error)
        raise DebugError(f"trace file {path}: {reason}") from None
    mode = os.fstat(descriptor).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        os.close(descriptor)
        raise DebugError(f"trace file {path}: not a regular file, FIFO or terminal")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "w", encoding="utf-8")


class DebugSession:
    """Built before the machine's vCPU (the I/O trace wraps the buses it is wired to),
    attached once the vCPU, clock and reactor exist."""

    def __init__(self, config: DebugConfig) -> None:
        self.stub = GdbStub(config.gdb, config.gdb_wait, config.announce) if config.gdb else None
        self.target: MachineTarget | None = None
        self._trace_out: TextIO | None = None
        self.tracer = None
        if config.trace:
            from nitro_emu.debug.trace import Tracer  # capstone and the taps: only for a trace
            if config.trace_file is None:
                out = sys.stderr
            else:
                out = self._trace_out = open_trace_file(config.trace_file)
            self.tracer = Tracer(config.trace, out)

    def ports(self, read: Callable[[int, int], int], write: Callable[[int, int, int], None]
              ) -> tuple[Callable[[int, int], int], Callable[[int, int, int], None]]:
        return self.tracer.ports(read, write) if self.tracer else (read, write)

    def mmio_windows(self, map_window: Callable[[int, int, MmioDevice], None]
                     ) -> Callable[[int, int, MmioDevice], None]:
        return self.tracer.mmio_windows(map_window) if self.tracer else map_window

    def attach(self, vcpu: Vcpu, clock: VirtualClock, reactor: HostReactor,
               end_machine: Callable[[str], None], finished: Callable[[], bool]) -> None:
        if self.tracer is not None:
            self.tracer.attach(vcpu, clock)
        if self.stub is not None:
            self.target = MachineTarget(vcpu, clock, end_machine, finished)
            self.stub.attach(self.target, reactor)

    def between_slices(self) -> None:
        if self.stub is not None:
            self.stub.pause_point()

    def abandon(self) -> None:
        """The user stopped nitro-emu: a debugger is no longer waited for."""
        if self.stub is not None:
            self.stub.abandon()

    def machine_ended(self, reason: str, ok: bool) -> None:
        if self.stub is not None:
            self.stub.machine_ended(reason, ok)

    def close(self) -> None:
        if self.tracer is not None:
            self.tracer.close()
        if self._trace_out is not None:
            self._trace_out.close()
        if self.stub is not None:
            self.stub.close()
        if self.target is not None:
            self.target.close()
