"""Taking external interrupts the moment the guest can, inside a slice.

A PC raises INTR and the CPU takes it at the next instruction boundary where RFLAGS.IF is
set. Unicorn keeps QEMU's mechanism for that (`CPUState.interrupt_request` checked at TB
exits, which TCG forces after STI, POPF and IRET) but its handler delivers vector 0
instead of asking the PIC. So the handler pointer in the CPU class, `cpu_exec_interrupt`,
is replaced by one that asks the machine (`CpuInternals.route_exec_interrupt`): call
`request()` when the PIC raises INTR, and the guest gets the interrupt as soon as it
enables interrupts, without ending the slice.
"""
from __future__ import annotations

from typing import Callable

from nitro_emu.cpu.internals import CPU_INTERRUPT_HARD, CpuInternals


class InterruptWindow:
    """Routes `cpu_exec_interrupt` for one vCPU to `handler(request) -> delivered`."""

    def __init__(self, internals: CpuInternals, handler: Callable[[int], bool]) -> None:
        self._route = internals.route_exec_interrupt(handler)
        self._request = self._route.interrupt_request
        self._icount_high = self._route.icount_high

    def request(self) -> None:
        """INTR is up: have the CPU call the handler at its next TB exit."""
        self._request.value |= CPU_INTERRUPT_HARD
        self._icount_high.value = 0xFFFF

    def clear(self) -> None:
        self._request.value &= ~CPU_INTERRUPT_HARD

    def close(self) -> None:
        self._route.close()
