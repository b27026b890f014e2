"""What a debugger needs from the vCPU beyond its registers: breakpoints, single steps,
watchpoints, and guest memory by virtual address. Nothing here exists until a debugger
asks for it, so a machine without one runs exactly as before.

- Breakpoints and single steps are QEMU's own (`internals.DebugSupport`): checked when
  code is translated, no hook per instruction.
- Watchpoints are Unicorn memory hooks bounded to the watched bytes' physical pages. Any
  memory hook sends every guest load and store through Unicorn's slow path (its x86
  backend drops the fast path for all of them), so a run with a watchpoint is slower;
  the hooks go away with the last watchpoint. A hit ends the slice at the end of the
  current translation block (Unicorn cannot leave a block in the middle without risking
  a store executed twice, see internals.disable_mid_instruction_exits), so the stop is
  reported a few instructions after the access, inside the same basic block.
- Memory is reached through the guest's page tables as a debugger sees them: rights are
  ignored (a debugger may read kernel and user pages alike, and write read-only text),
  only RAM is touched (never a device window), and an unmapped address is just
  unreadable.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Iterator

import unicorn

from nitro_emu.cpu.delivery import TripleFault
from nitro_emu.cpu.internals import DebugSupport
from nitro_emu.cpu.vcpu import GuestFault, Vcpu

_U64 = struct.Struct("<Q")
_PG_PRESENT, _PG_LARGE = 1, 0x80
_PG_ADDRESS_MASK = 0x000FFFFFFFFFF000
_CR0_PG, _CR4_LA57, _HF_LMA = 1 << 31, 1 << 12, 1 << 14
_DB_VECTOR = 1
_DR6_HIT_BITS = 0xF
WATCH_KINDS = ("write", "read", "access")
_WATCH_HOOKS = {"write": unicorn.UC_HOOK_MEM_WRITE, "read": unicorn.UC_HOOK_MEM_READ,
                "access": unicorn.UC_HOOK_MEM_READ | unicorn.UC_HOOK_MEM_WRITE}
_WIDEST_ACCESS = 16  # an access that starts this far before a watched byte can reach it


@dataclass(frozen=True)
class Stop:
    """Why the last slice ended for the debugger: "breakpoint", "step", or a watchpoint
    kind ("write", "read", "access") with the watched virtual address it touched and the
    RIP of the instruction that touched it (`by`: the slice ends a little later)."""

    kind: str
    address: int
    by: int | None = None


@dataclass
class _Watchpoint:
    address: int
    length: int
    kind: str
    hooks: list[int]


class VirtualMemory:
    """Guest memory by virtual address through the current page tables, as a debugger or
    a tracer sees it: access rights ignored, only RAM touched, unmapped is unreadable."""

    def __init__(self, vcpu: Vcpu) -> None:
        self._vcpu = vcpu
        self._internals = vcpu.internals
        self._ram = vcpu.ram

    def translate(self, linear: int) -> int | None:
        """The guest-physical address of `linear` through the current page tables, with
        access rights ignored; None when nothing is mapped there."""
        internals = self._internals
        cr = internals.cr
        if not cr[0] & _CR0_PG:
            return linear if linear < self._ram.size else None
        if not internals.hflags.value & _HF_LMA:
            return None  # 32-bit paging: never used by an x86-64 enclave kernel
        shifts = (48, 39, 30, 21, 12) if cr[4] & _CR4_LA57 else (39, 30, 21, 12)
        if linear >> (shifts[0] + 8) not in (0, (1 << (56 - shifts[0])) - 1):
            return None  # not canonical
        memory, size = self._ram.buffer, self._ram.size
        table = cr[3] & _PG_ADDRESS_MASK
        for shift in shifts:
            entry_address = table + ((linear >> shift) & 0x1FF) * 8
            if entry_address + 8 > size:
                return None
            entry = _U64.unpack_from(memory, entry_address)[0]
            if not entry & _PG_PRESENT:
                return None
            if shift in (21, 30) and entry & _PG_LARGE:
                span = 1 << shift
                return (entry & _PG_ADDRESS_MASK & ~(span - 1)) | (linear & (span - 1))
            table = entry & _PG_ADDRESS_MASK
        return table | (linear & 0xFFF)

    def pages(self, linear: int, length: int) -> Iterator[tuple[int, int]]:
        """(physical, length) of each page-sized piece of a virtual range, up to the first
        byte that is not mapped to RAM."""
        while length > 0:
            chunk = min(length, 0x1000 - (linear & 0xFFF))
            physical = self.translate(linear)
            if physical is None or physical + chunk > self._ram.size:
                return
            yield physical, chunk
            linear = (linear + chunk) & 0xFFFFFFFFFFFFFFFF
            length -= chunk

    def read(self, linear: int, length: int) -> bytes:
        """Guest memory at a virtual address: all `length` bytes, or fewer when the range
        runs into an unmapped page (b"" when the first byte is not mapped)."""
        return b"".join(self._ram.read(physical, chunk)
                        for physical, chunk in self.pages(linear, length))

    def write(self, linear: int, data: bytes) -> int:
        """Write guest memory at a virtual address (read-only pages included); returns how
        many bytes were written (fewer when the range runs into an unmapped page).
        Translated code is dropped, so written instructions are the ones that run."""
        done = 0
        for physical, chunk in self.pages(linear, len(data)):
            self._ram.write(physical, data[done:done + chunk])
            done += chunk
        if done:
            self._vcpu.uc.ctl_flush_tb()
        return done


class DebugPort:
    """Breakpoints, stepping, watchpoints and virtual memory of one vCPU, for a debugger.
    `stop` tells why the last slice ended for the debugger (None: it did not)."""

    def __init__(self, vcpu: Vcpu) -> None:
        self._vcpu = vcpu
        self._uc = vcpu.uc
        self._internals = vcpu.internals
        self.memory = VirtualMemory(vcpu)
        self._support = DebugSupport(vcpu.internals, self._on_debug_exception)
        self.breakpoints: set[int] = set()
        self._watchpoints: dict[tuple[int, int, str], _Watchpoint] = {}
        self.stop: Stop | None = None

    # -- breakpoints and watchpoints -------------------------------------------------------

    def add_breakpoint(self, address: int) -> None:
        if address not in self.breakpoints:
            self._support.insert_breakpoint(address)
            self.breakpoints.add(address)

    def remove_breakpoint(self, address: int) -> bool:
        if address not in self.breakpoints:
            return False
        self.breakpoints.discard(address)
        return self._support.remove_breakpoint(address)

    def add_watchpoint(self, address: int, length: int, kind: str) -> bool:
        """Stop after a guest access of `kind` ("write", "read", "access") to the virtual
        range; False when part of it is not mapped (the watch follows the physical pages
        the range maps to now)."""
        if kind not in WATCH_KINDS or not 0 < length <= 1 << 20:
            return False
        key = (address, length, kind)
        if key in self._watchpoints:
            return True
        pieces = list(self.memory.pages(address, length))
        if sum(chunk for _, chunk in pieces) != length:
            return False
        hooks, offset = [], 0
        for physical, chunk in pieces:
            hooks.append(self._uc.hook_add(
                _WATCH_HOOKS[kind], self._watch_callback(address + offset, physical, chunk, kind),
                None, max(0, physical - _WIDEST_ACCESS + 1), physical + chunk - 1))
            offset += chunk
        self._watchpoints[key] = _Watchpoint(address, length, kind, hooks)
        self._support.flush_translations()  # code translated before has fast-path accesses
        return True

    def remove_watchpoint(self, address: int, length: int, kind: str) -> bool:
        watchpoint = self._watchpoints.pop((address, length, kind), None)
        if watchpoint is None:
            return False
        for hook in watchpoint.hooks:
            self._uc.hook_del(hook)
        self._support.flush_translations()
        return True

    def _watch_callback(self, linear: int, physical: int, length: int, kind: str) -> Callable:
        def on_access(uc: unicorn.Uc, access: int, address: int, size: int, value: int,
                      _: object) -> None:
            if address < physical + length and address + size > physical and self.stop is None:
                # Unicorn has set RIP to the accessing instruction before calling the hook
                self.stop = Stop(kind, linear + max(0, address - physical),
                                 self._internals.eip.value)
                self._vcpu.end_slice()
        return on_access

    # -- running ---------------------------------------------------------------------------

    def step(self) -> str:
        """Execute one instruction with interrupts held off (an exception it raises is
        delivered, and the step ends at the handler's first instruction). Returns what
        `Vcpu.run_slice` returns."""
        self._support.set_single_step(True)
        self.stop = None
        hook = self._uc.hook_add(unicorn.UC_HOOK_INTR, self._after_delivery)
        try:
            return self._vcpu.run_slice()
        finally:
            self._uc.hook_del(hook)

    def prepare_to_run(self) -> None:
        """Leave single-stepping before the machine runs on (drops the one-instruction
        translations) and forget the last stop."""
        self._support.set_single_step(False)
        self.stop = None

    def clear(self) -> None:
        """Remove every breakpoint and watchpoint and leave single-stepping (a debugger
        went away)."""
        for key in list(self._watchpoints):
            self.remove_watchpoint(*key)
        for address in list(self.breakpoints):
            self.remove_breakpoint(address)
        self.prepare_to_run()

    def close(self) -> None:
        """`clear()`, and Unicorn's own debug exception handler back."""
        self.clear()
        self._support.close()

    def _after_delivery(self, uc: unicorn.Uc, vector: int, _: object) -> None:
        if self.stop is None:
            self.stop = Stop("step", self._internals.eip.value)
        self._vcpu.end_slice()

    def _on_debug_exception(self) -> None:
        """Called by the CPU loop for a breakpoint or a finished single step (RIP at the
        stop), or for a hardware breakpoint the guest itself set in DR7, which gets its
        #DB as on a real CPU. The slice always ends (see DebugSupport)."""
        rip = self._internals.eip.value
        if self._support.singlestep.value:
            if self.stop is None:
                self.stop = Stop("step", rip)
        elif rip in self.breakpoints:
            self.stop = Stop("breakpoint", rip)
        else:
            self._deliver_guest_breakpoint(rip)
        self._vcpu.end_slice()

    def _deliver_guest_breakpoint(self, rip: int) -> None:
        vcpu = self._vcpu
        dr7 = vcpu.read_register("dr7")
        hits = 0
        for index in range(4):
            kind = (dr7 >> (16 + 4 * index)) & 3
            if kind == 0 and dr7 & (3 << (2 * index)) and vcpu.read_register(f"dr{index}") == rip:
                hits |= 1 << index
        vcpu.write_register("dr6", (vcpu.read_register("dr6") & ~_DR6_HIT_BITS) | hits)
        try:
            vcpu.delivery.deliver_exception(_DB_VECTOR, 0)
        except TripleFault as error:
            vcpu.fault = GuestFault(str(error), rip)
