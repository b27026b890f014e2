"""Backtraces of the guest kernel's stack, for post-mortem reports.

Linux x86-64 kernels are built either with the ORC unwinder (CONFIG_UNWINDER_ORC, the
default, no frame pointers; the tiny kernel) or with frame pointers
(CONFIG_UNWINDER_FRAME_POINTER; AWS's enclave kernel). With ORC, the kernel's own unwind
tables are used: `.orc_unwind_ip` (sorted 32-bit offsets to the code each entry covers)
and `.orc_unwind` (6-byte entries telling where the caller's stack pointer, return address
and frame pointer are), found in guest memory through the System.map; this follows
arch/x86/kernel/unwind_orc.c. Without ORC tables, the RBP chain is followed. When neither
gives a trace, the stack is scanned for words that point into kernel text, as the kernel
does with `?` entries when it cannot unwind.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import Callable

from nitro_emu.debug.symbols import SystemMap

ReadMemory = Callable[[int, int], bytes]
MAX_FRAMES = 48
THREAD_SIZE = 0x4000            # x86-64 kernel stacks (without KASAN)
MAX_ORC_ENTRIES = 1 << 20
# struct orc_entry (arch/x86/include/asm/orc_types.h): sp_offset, bp_offset, then
# sp_reg:4 bp_reg:4 type:3 signal:1 in a 16-bit little-endian word.
_ORC = struct.Struct("<hhH")
REG_UNDEFINED, REG_PREV_SP, REG_DX, REG_DI, REG_BP, REG_SP, REG_R10, REG_R13, \
    REG_BP_INDIRECT, REG_SP_INDIRECT = range(10)
TYPE_UNDEFINED, TYPE_END_OF_STACK, TYPE_CALL, TYPE_REGS, TYPE_REGS_PARTIAL = range(5)
# struct pt_regs offsets, and the iret frame (ip, cs, flags, sp, ss) inside it
PT_REGS = {"r13": 16, "bp": 32, "r10": 56, "dx": 96, "di": 112, "ip": 128, "cs": 136,
           "sp": 152}
IRET_FRAME_OFFSET = PT_REGS["ip"]
_REG_NAMES = {REG_DX: "dx", REG_DI: "di", REG_R10: "r10", REG_R13: "r13"}


@dataclass(frozen=True)
class Frame:
    address: int
    reliable: bool
    note: str = ""


class _Memory:
    def __init__(self, read: ReadMemory) -> None:
        self.read = read

    def u64(self, address: int) -> int | None:
        data = self.read(address, 8)
        return struct.unpack("<Q", data)[0] if len(data) == 8 else None


class OrcTables:
    """The kernel's ORC tables, read once from guest memory."""

    def __init__(self, symbols: SystemMap, read: ReadMemory) -> None:
        start = symbols.address_of("__start_orc_unwind_ip")
        stop = symbols.address_of("__stop_orc_unwind_ip")
        entries = symbols.address_of("__start_orc_unwind")
        if None in (start, stop, entries) or not 0 < stop - start <= 4 * MAX_ORC_ENTRIES:
            raise LookupError("no ORC tables in this kernel's symbols")
        count = (stop - start) // 4
        offsets = read(start, 4 * count)
        table = read(entries, _ORC.size * count)
        if len(offsets) != 4 * count or len(table) != _ORC.size * count:
            raise LookupError("the ORC tables are not readable in guest memory")
        self._ips = [start + 4 * index + offset
                     for index, offset in enumerate(struct.unpack(f"<{count}i", offsets))]
        self._table = table

    def find(self, ip: int) -> tuple[int, int, int, int, int, bool] | None:
        """(sp_offset, bp_offset, sp_reg, bp_reg, type, signal) for the code at `ip`."""
        index = bisect.bisect_right(self._ips, ip) - 1
        if index < 0:
            return None
        sp_offset, bp_offset, bits = _ORC.unpack_from(self._table, index * _ORC.size)
        return (sp_offset, bp_offset, bits & 0xF, (bits >> 4) & 0xF, (bits >> 8) & 0x7,
                bool(bits >> 11 & 1))


def orc_backtrace(tables: OrcTables, read: ReadMemory, registers: dict[str, int],
                  symbols: SystemMap) -> list[Frame]:
    """Unwind from the CPU's registers (rip, rsp, rbp, rdi, rdx, r10, r13) while the code
    is kernel text, through interrupt and exception frames, until the entry from user
    mode or the end of the stack."""
    memory = _Memory(read)
    ip, sp, bp = registers["rip"], registers["rsp"], registers["rbp"]
    cpu_registers = {"di": registers["rdi"], "dx": registers["rdx"], "r10": registers["r10"],
                     "r13": registers["r13"]}
    regs_at: int | None = None   # the full pt_regs of the frame being left, if any
    signal = True                # ip is where the CPU was, not a return address
    frames = [Frame(ip, True)]
    while len(frames) < MAX_FRAMES and symbols.is_text(ip):
        orc = tables.find(ip if signal else ip - 1)
        if orc is None or orc[4] == TYPE_UNDEFINED:
            frames.append(Frame(0, False, "no unwind data here: the trace stops"))
            break
        sp_offset, bp_offset, sp_reg, bp_reg, kind, signal = orc
        if kind == TYPE_END_OF_STACK:
            break
        cfa = _caller_stack(memory, sp_reg, sp_offset, sp, bp,
                            lambda name: memory.u64(regs_at + PT_REGS[name]) if regs_at
                            else cpu_registers[name] if len(frames) == 1 else None)
        if cfa is None:
            frames.append(Frame(0, False, "cannot find the caller's stack"))
            break
        if kind == TYPE_CALL:
            regs_at, new_ip, new_sp, user = None, memory.u64(cfa - 8), cfa, False
        else:
            base = cfa if kind == TYPE_REGS else cfa - IRET_FRAME_OFFSET
            new_ip, new_sp = memory.u64(base + PT_REGS["ip"]), memory.u64(base + PT_REGS["sp"])
            cs = memory.u64(base + PT_REGS["cs"])
            regs_at = base if kind == TYPE_REGS else None
            user = cs is not None and cs & 3 == 3
        if new_ip is None or new_sp is None:
            frames.append(Frame(0, False, "the stack is not readable"))
            break
        if bp_reg == REG_PREV_SP:
            bp = memory.u64(cfa + bp_offset) or 0
        elif bp_reg == REG_BP:
            bp = memory.u64(bp + bp_offset) or 0
        elif regs_at is not None:
            bp = memory.u64(regs_at + PT_REGS["bp"]) or 0
        if kind == TYPE_CALL and new_sp <= sp:
            frames.append(Frame(0, False, "the stack goes the wrong way: the trace stops"))
            break
        if user:
            frames.append(Frame(new_ip, True, "entered from user mode"))
            break
        ip, sp = new_ip, new_sp
        frames.append(Frame(ip, True, "" if kind == TYPE_CALL else "interrupted here"))
    return frames


def _caller_stack(memory: _Memory, sp_reg: int, sp_offset: int, sp: int, bp: int,
                  register: Callable[[str], int | None]) -> int | None:
    """The caller's stack pointer (the CFA) from an ORC entry's base register."""
    if sp_reg == REG_SP:
        return sp + sp_offset
    if sp_reg == REG_BP:
        return bp + sp_offset
    if sp_reg == REG_SP_INDIRECT:
        pointed = memory.u64(sp)
        return None if pointed is None else pointed + sp_offset
    if sp_reg == REG_BP_INDIRECT:
        return memory.u64(bp + sp_offset)
    if sp_reg in _REG_NAMES:
        return register(_REG_NAMES[sp_reg])
    return None


def scan_backtrace(read: ReadMemory, rip: int, rsp: int, symbols: SystemMap) -> list[Frame]:
    """Every word on the kernel stack, from RSP to the top of its THREAD_SIZE block, that
    points into kernel text: return addresses and leftovers alike (unreliable)."""
    frames = [Frame(rip, True)]
    top = (rsp | (THREAD_SIZE - 1)) + 1
    data = read(rsp, max(0, min(top - rsp, THREAD_SIZE)))
    for offset in range(0, len(data) - 7, 8):
        value = struct.unpack_from("<Q", data, offset)[0]
        if symbols.is_text(value):
            frames.append(Frame(value, False))
            if len(frames) >= MAX_FRAMES:
                break
    return frames


def frame_pointer_backtrace(read: ReadMemory, rip: int, rsp: int, rbp: int,
                            symbols: SystemMap) -> list[Frame]:
    """The RBP chain ([rbp] the caller's rbp, [rbp + 8] the return address) while it stays
    on the stack RSP is on, goes up, and returns into kernel text."""
    memory = _Memory(read)
    frames = [Frame(rip, True)]
    bottom, top = rsp, (rsp | (THREAD_SIZE - 1)) + 1
    while len(frames) < MAX_FRAMES and bottom <= rbp < top - 16 and not rbp & 7:
        caller_rbp, address = memory.u64(rbp), memory.u64(rbp + 8)
        if address is None or not symbols.is_text(address):
            break
        frames.append(Frame(address, True))
        if caller_rbp is None or caller_rbp <= rbp:
            break
        bottom, rbp = rbp + 16, caller_rbp
    return frames


def backtrace(read: ReadMemory, registers: dict[str, int], symbols: SystemMap
              ) -> tuple[str, list[Frame]]:
    """(method, frames) for the kernel stack: "ORC unwind", "frame pointers" or, when
    neither gives more than the current frame, "stack scan"."""
    try:
        tables = OrcTables(symbols, read)
    except LookupError:
        frames = frame_pointer_backtrace(read, registers["rip"], registers["rsp"],
                                         registers["rbp"], symbols)
        if len(frames) > 1:
            return "frame pointers", frames
        return "stack scan", scan_backtrace(read, registers["rip"], registers["rsp"], symbols)
    return "ORC unwind", orc_backtrace(tables, read, registers, symbols)
