"""The machine as a debugger sees it: registers, memory, breakpoints, watchpoints,
stepping, and a clock that stands still while the debugger holds the CPU. The vCPU's
debug port is made when a debugger first needs it, so a stub that only listens costs
nothing (not even the scratch CPU that proves Unicorn's debug offsets)."""
from __future__ import annotations

from typing import Callable

from board.clock import VirtualClock
from nitro_emu.cpu.debugging import DebugPort, Stop, VirtualMemory
from nitro_emu.cpu.vcpu import Vcpu
from nitro_emu.debug.registers import RegisterFile


class MachineTarget:
    """What the GDB stub drives. `end_machine(message)` ends the run (a kill);
    `finished()` tells whether the run has ended (or been asked to)."""

    def __init__(self, vcpu: Vcpu, clock: VirtualClock, end_machine: Callable[[str], None],
                 finished: Callable[[], bool]) -> None:
        self.vcpu = vcpu
        self._port: DebugPort | None = None
        self.memory = VirtualMemory(vcpu)
        self.registers = RegisterFile(vcpu)
        self._clock = clock
        self._end_machine = end_machine
        self.finished = finished

    @property
    def port(self) -> DebugPort:
        if self._port is None:
            self._port = DebugPort(self.vcpu)
        return self._port

    def take_stop(self) -> Stop | None:
        """Why the last slice ended for the debugger, once (None: it did not)."""
        if self._port is None or self._port.stop is None:
            return None
        stop, self._port.stop = self._port.stop, None
        return stop

    def forget_debugger(self) -> None:
        """No breakpoint, watchpoint or step left behind by a debugger that went away."""
        if self._port is not None:
            self._port.clear()

    def hold(self) -> None:
        """The debugger has the CPU: guest time stops (virtual clock and TSC)."""
        self._clock.pause()

    def release(self) -> None:
        """Guest time runs on from where it stopped; the TSC is moved back by the time
        the clock stood, so the guest sees no jump either way."""
        stood = self._clock.resume()
        if stood:
            self.vcpu.advance_tsc(-stood)

    def step(self) -> str:
        """One instruction, with guest time running only for it (see DebugPort.step)."""
        self.release()
        try:
            return self.port.step()
        finally:
            self.hold()

    def resume(self) -> None:
        self.port.prepare_to_run()

    def kill(self) -> None:
        self._end_machine("the debugger killed the enclave")

    def close(self) -> None:
        if self._port is not None:
            self._port.close()
