"""`--trace EVENTS`: one line per guest event, for finding out what an enclave did.

    0.612003417 cpl3 00000000004185e2  syscall                           write(1, "Hello\\n", 6)
    0.612017301 cpl3 00000000004185e8  mov qword ptr [rbp], rax          #PF error=0x6 cr2=0x7ffe3000

Columns: virtual time in seconds, privilege level, RIP, the instruction there (capstone;
at least two spaces follow it, which capstone never writes inside one), and the event: a
system call with its arguments (strace's style, `syscalls`), an exception with its error
code (`exceptions`), an external interrupt with its IRQ line (`interrupts`), or a port or
MMIO access with its value (`io`). Hooks are installed only for the events asked for; a
machine without `--trace` runs without any. Strings a system call points at are read from
guest memory at entry: one on a page the program has not touched yet shows as an address.
"""
from __future__ import annotations

from typing import Callable, TextIO

from board.clock import VirtualClock
from board.interfaces import MmioDevice
from nitro_emu.cpu.debugging import VirtualMemory
from nitro_emu.cpu.taps import CpuTaps, ExceptionEvent, InterruptEvent, SyscallEvent
from nitro_emu.cpu.vcpu import Vcpu
from nitro_emu.debug.disasm import instruction_at
from nitro_emu.debug.syscalls import format_call

EVENTS = ("syscalls", "exceptions", "interrupts", "io")
PIC_VECTOR_BASE = 0x30  # where Linux puts IRQ 0 on the 8259 pair (x86-64)
VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD",
                7: "#NM", 8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF",
                16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP"}
_SIZE_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


def parse_events(text: str) -> frozenset[str]:
    """`syscalls,io` -> {"syscalls", "io"}; `all` is every kind. ValueError otherwise."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    if names == {"all"}:
        return frozenset(EVENTS)
    unknown = sorted(names - set(EVENTS))
    if unknown or not names:
        raise ValueError(f"unknown trace event {unknown[0] if unknown else text!r} "
                         f"(choose from {', '.join(EVENTS)}, or all)")
    return frozenset(names)


class Tracer:
    """Writes the trace of one machine to `out`. The I/O wrappers are put in place while
    the machine is wired (`ports`, `mmio_windows`), the CPU taps once its vCPU and clock
    exist (`attach`)."""

    def __init__(self, events: frozenset[str], out: TextIO) -> None:
        self.events = events
        self._out = out
        self._vcpu: Vcpu | None = None
        self._clock: VirtualClock | None = None
        self._memory: VirtualMemory | None = None
        self._taps: CpuTaps | None = None

    # -- wiring ----------------------------------------------------------------------------

    def ports(self, read: Callable[[int, int], int], write: Callable[[int, int, int], None]
              ) -> tuple[Callable[[int, int], int], Callable[[int, int, int], None]]:
        """The port bus's read and write, traced when `io` is asked for."""
        if "io" not in self.events:
            return read, write

        def traced_read(port: int, size: int) -> int:
            value = read(port, size) & _SIZE_MASK[size]
            self._line(f"in  port {port:#06x} ({size}) -> {value:#x}")
            return value

        def traced_write(port: int, size: int, value: int) -> None:
            self._line(f"out port {port:#06x} ({size}) <- {value & _SIZE_MASK[size]:#x}")
            write(port, size, value)

        return traced_read, traced_write

    def mmio_windows(self, map_window: Callable[[int, int, MmioDevice], None]
                     ) -> Callable[[int, int, MmioDevice], None]:
        """The vCPU's MMIO window mapper, handing it traced devices when `io` is asked for."""
        if "io" not in self.events:
            return map_window

        def traced_map(base: int, size: int, device: MmioDevice) -> None:
            map_window(base, size, _TracedMmio(device, base, self._device_line))

        return traced_map

    def attach(self, vcpu: Vcpu, clock: VirtualClock) -> None:
        self._vcpu, self._clock = vcpu, clock
        self._memory = VirtualMemory(vcpu)
        self._taps = CpuTaps(
            vcpu,
            on_syscall=self._syscall if "syscalls" in self.events else None,
            on_exception=self._exception if "exceptions" in self.events else None,
            on_interrupt=self._interrupt if "interrupts" in self.events else None)

    def close(self) -> None:
        if self._taps is not None:
            self._taps.close()
            self._taps = None
        try:
            self._out.flush()
        except (OSError, ValueError):
            pass

    # -- lines -----------------------------------------------------------------------------

    def _syscall(self, event: SyscallEvent) -> None:
        self._write(event.rip, event.cpl, format_call(event.number, event.arguments,
                                                      self._memory.read))

    def _exception(self, event: ExceptionEvent) -> None:
        name = VECTOR_NAMES.get(event.vector, f"vector {event.vector:#x}")
        if event.software:
            text = f"int {event.vector:#x} ({name})" if event.vector in VECTOR_NAMES else \
                f"int {event.vector:#x}"
        else:
            text = name
        if event.error_code is not None:
            text += f" error={event.error_code:#x}"
        if event.cr2 is not None:
            text += f" cr2={event.cr2:#x}"
        self._write(event.rip, event.cpl, text)

    def _interrupt(self, event: InterruptEvent) -> None:
        irq = event.vector - PIC_VECTOR_BASE
        where = f"irq {irq} " if 0 <= irq < 16 else ""
        self._write(event.rip, event.cpl, f"interrupt {where}(vector {event.vector:#x})")

    def _device_line(self, text: str) -> None:
        if self._taps is not None:
            self._taps.sync_device_rip()
        self._line(text)

    def _line(self, text: str) -> None:
        vcpu = self._vcpu
        if vcpu is not None:
            self._write(vcpu.rip, vcpu.cpl, text)

    def _write(self, rip: int, cpl: int, text: str) -> None:
        instruction = instruction_at(self._memory.read, rip)
        seconds = self._clock.now_ns() / 1e9
        try:
            self._out.write(f"{seconds:14.9f} cpl{cpl} {rip:016x}  {instruction:<32}  {text}\n")
        except (OSError, ValueError):
            pass  # a closed trace file must not stop the enclave


class _TracedMmio:
    """An MMIO device whose accesses are traced with their guest-physical address."""

    def __init__(self, device: MmioDevice, base: int, line: Callable[[str], None]) -> None:
        self._device, self._base, self._line = device, base, line

    def mmio_read(self, offset: int, size: int) -> int:
        value = self._device.mmio_read(offset, size)
        self._line(f"mmio read  {self._base + offset:#x} ({size}) -> {value:#x}")
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self._line(f"mmio write {self._base + offset:#x} ({size}) <- {value:#x}")
        self._device.mmio_write(offset, size, value)
