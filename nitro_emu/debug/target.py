"""The machine as a debugger sees it: registers, memory, breakpoints, watchpoints,
stepping, and a clock that stands still while the debugger holds the CPU."""
from __future__ import annotations

from typing import Callable

from board.clock import VirtualClock
from nitro_emu.cpu.debugging import DebugPort
from nitro_emu.cpu.vcpu import Vcpu
from nitro_emu.debug.registers import RegisterFile


class MachineTarget:
    """What the GDB stub drives. `end_machine(message)` ends the run (a kill);
    `finished()` tells whether the run has ended (or been asked to)."""

    def __init__(self, vcpu: Vcpu, clock: VirtualClock, end_machine: Callable[[str], None],
                 finished: Callable[[], bool]) -> None:
        self.vcpu = vcpu
        self.port = DebugPort(vcpu)
        self.memory = self.port.memory
        self.registers = RegisterFile(vcpu)
        self._clock = clock
        self._end_machine = end_machine
        self.finished = finished

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
        self.port.close()
