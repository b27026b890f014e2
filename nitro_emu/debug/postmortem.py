"""Post-mortem reports: what the CPU looked like when the enclave died (kernel panic,
triple fault, a fault the machine reports, no progress). The registers, the instruction
where it stopped with its neighbours, and a backtrace of the kernel stack with names from
the kernel's System.map when one is at hand."""
from __future__ import annotations

import os
from typing import Callable

from eif.files import write_output
from nitro_emu.cpu.debugging import VirtualMemory
from nitro_emu.cpu.vcpu import EFER_MSR, KERNEL_GS_BASE_MSR, Vcpu
from nitro_emu.debug.disasm import around
from nitro_emu.debug.registers import EFLAGS_BITS
from nitro_emu.debug.symbols import SymbolError, SystemMap, find_slide, system_map_beside
from nitro_emu.debug.unwind import backtrace

# The ends worth a report: the guest died or hung, as opposed to ending normally or
# being stopped by the user.
REPORTED = frozenset(("panic", "triple-fault", "fault", "no-progress"))
_GENERAL = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
_SYSTEM = ("cr0", "cr2", "cr3", "cr4")


def _rflags_text(value: int) -> str:
    names = [name for name, bit in EFLAGS_BITS if name and value >> bit & 1]
    return f"{value:#x} [{' '.join(names)}]"


class PostMortem:
    """Reads the state of a stopped vCPU and writes the report."""

    def __init__(self, vcpu: Vcpu, system_map: str | os.PathLike | None = None) -> None:
        self._vcpu = vcpu
        self._memory = VirtualMemory(vcpu)
        self._map_path = system_map

    def registers(self) -> dict[str, int]:
        vcpu = self._vcpu
        values = {name: vcpu.read_register(name) for name in
                  _GENERAL + ("rip", "rflags") + _SEGMENTS + _SYSTEM + ("fs_base", "gs_base")}
        values["efer"] = vcpu.read_msr(EFER_MSR)
        values["k_gs_base"] = vcpu.read_msr(KERNEL_GS_BASE_MSR)
        values["cpl"] = vcpu.cpl
        return values

    def symbols(self) -> tuple[SystemMap | None, str]:
        """The System.map relocated to where the kernel runs, and a note on where it came
        from (or why there is none)."""
        if self._map_path is None:
            return None, "no System.map at hand: addresses are not named"
        try:
            symbols = SystemMap.load(self._map_path)
            slide = find_slide(symbols, self._memory.read)
        except (OSError, SymbolError) as error:
            return None, f"symbols not used: {getattr(error, 'strerror', None) or error}"
        note = f"symbols from {self._map_path}"
        if slide:
            note += f" (kernel moved by {slide:#x}: KASLR)"
        return symbols.relocated(slide), note

    def write(self, headline: str, out: Callable[[str], None]) -> None:
        """The report, line by line, through `out`."""
        registers = self.registers()
        symbols, note = self.symbols()
        out(f"--- post-mortem: {headline}")
        out(f"--- {note}")
        out("registers:")
        for row in range(0, len(_GENERAL), 4):
            out("  " + "  ".join(f"{name:>3} {registers[name]:016x}"
                                 for name in _GENERAL[row:row + 4]))
        rip = registers["rip"]
        where = symbols.describe(rip) if symbols else ""
        out(f"  rip {rip:016x}{' ' + where if where else ''}  cpl {registers['cpl']}")
        out(f"  rflags {_rflags_text(registers['rflags'])}")
        out("  " + "  ".join(f"{name} {registers[name]:04x}" for name in _SEGMENTS))
        out(f"  fs_base {registers['fs_base']:016x}  gs_base {registers['gs_base']:016x}  "
            f"k_gs_base {registers['k_gs_base']:016x}")
        out("  " + "  ".join(f"{name} {registers[name]:016x}" for name in _SYSTEM)
            + f"  efer {registers['efer']:x}")
        self._write_code(rip, symbols, out)
        self._write_stack(registers, symbols, out)

    def _write_code(self, rip: int, symbols: SystemMap | None, out: Callable[[str], None]) -> None:
        function = symbols.function(rip) if symbols else None
        start = rip - function[1] if function else None
        instructions, certain = around(self._memory.read, rip, function_start=start)
        if not instructions:
            out(f"code: nothing readable at {rip:#x}")
            return
        out("code:" + ("" if certain else " (instructions before RIP decoded from a guess)"))
        for insn in instructions:
            marker = "=>" if insn.address == rip else "  "
            name = symbols.describe(insn.address) if symbols else ""
            out(f"{marker} {insn.address:016x} {name:<36} {insn.code.hex(' '):<30} {insn.text}")

    def _write_stack(self, registers: dict[str, int], symbols: SystemMap | None,
                     out: Callable[[str], None]) -> None:
        if registers["cpl"] == 3:
            out(f"stack: the CPU was in user mode (rsp {registers['rsp']:#x}); "
                "no kernel stack to unwind")
            return
        if symbols is None:
            out("kernel stack: no symbols to unwind with; words from rsp:")
            data = self._memory.read(registers["rsp"], 8 * 16)
            for offset in range(0, len(data) - 7, 8):
                out(f"  {registers['rsp'] + offset:016x}: "
                    f"{int.from_bytes(data[offset:offset + 8], 'little'):016x}")
            return
        method, frames = backtrace(self._memory.read, registers, symbols)
        out(f"kernel stack ({method}):")
        for index, frame in enumerate(frames):
            if frame.address == 0:
                out(f"  ({frame.note})")
                continue
            mark = "" if frame.reliable else "? "
            note = f"  <- {frame.note}" if frame.note else ""
            out(f"  #{index:<2} {frame.address:016x} {mark}"
                f"{symbols.describe(frame.address) or '(not kernel text)'}{note}")


def death_report(vcpu: Vcpu, reason: str, message: str, image: str | os.PathLike,
                 system_map: str | os.PathLike | None = None) -> list[str] | None:
    """The report's lines for a run that ended with `reason` (None unless that is in
    REPORTED), named with `system_map`, or else the System.map beside `image`'s kernel."""
    if reason not in REPORTED:
        return None
    lines: list[str] = []
    PostMortem(vcpu, system_map or system_map_beside(image)).write(f"{reason}: {message}",
                                                                   lines.append)
    return lines


def save_report(lines: list[str], path: str | os.PathLike) -> None:
    """Write the report to `path` (eif.files.write_output; FileError if it cannot be)."""
    write_output(path, ("\n".join(lines) + "\n").encode("utf-8"), "post-mortem report")
