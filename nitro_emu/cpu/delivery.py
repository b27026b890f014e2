"""Delivering exceptions and interrupts through the guest's IDT, safely.

Unicorn's `x86_cpu_do_interrupt` does the architectural delivery, but when the delivery
itself faults (a bad IDT gate, an unmapped stack, a missing TSS) QEMU's code raises the
new exception with a longjmp to the CPU loop; from inside a Python hook that would jump
over the interpreter's frames and crash the emulator. So every delivery is first checked
here with the same rules QEMU's `do_interrupt64` and page walker apply, read from guest
memory without side effects. A check that fails is turned into the exception the real
CPU would raise instead (#GP, #NP, #TS, #SS, #PF, then #DF), and a fault while
delivering #DF is a triple fault, which ends the run. Only delivery that cannot fault is
handed to Unicorn.
"""
from __future__ import annotations

import struct

from board.memory import GuestRam
from nitro_emu.cpu.internals import CpuInternals

GP, NP, TS, SS_FAULT, PF, DF = 13, 11, 10, 12, 14, 8
# The vectors whose delivery pushes an error code (QEMU's exception_has_error_code).
ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17))
_CONTRIBUTORY = frozenset((0, 10, 11, 12, 13))

HF_LMA = 1 << 14
CR0_WP, CR0_PG = 1 << 16, 1 << 31
CR4_PAE, CR4_LA57, CR4_SMAP = 1 << 5, 1 << 12, 1 << 21
EFER_NXE = 1 << 11
PG_PRESENT, PG_RW, PG_USER, PG_PSE, PG_NX = 1, 2, 4, 0x80, 1 << 63
PG_ADDRESS_MASK = 0x000FFFFFFFFFF000
DESC_P, DESC_S, DESC_CS, DESC_C = 1 << 15, 1 << 12, 1 << 11, 1 << 10
DESC_L, DESC_B = 1 << 21, 1 << 22


class TripleFault(Exception):
    """Delivering an exception faulted while delivering #DF: the CPU shuts down."""

    def __init__(self, vector: int, reason: str) -> None:
        super().__init__(f"triple fault (delivering vector {vector}: {reason})")
        self.vector = vector
        self.reason = reason


class _Fault(Exception):
    def __init__(self, vector: int, error_code: int, cr2: int | None = None,
                 reason: str = "") -> None:
        self.vector, self.error_code, self.cr2, self.reason = vector, error_code, cr2, reason


class ExceptionDelivery:
    """Checks and performs delivery of exceptions and external interrupts."""

    def __init__(self, internals: CpuInternals, ram: GuestRam, phys_bits: int) -> None:
        self._cpu = internals
        self._u64 = struct.Struct("<Q").unpack_from
        self._mem = ram.buffer
        self._ram_size = ram.size
        self._rsvd_high = ((1 << 52) - 1) & ~((1 << phys_bits) - 1)
        self._efer = internals.efer
        self._exception_index = internals.exception_index
        self._exception_is_int = internals.exception_is_int
        self._exception_next_eip = internals.exception_next_eip
        self._cr = internals.cr
        self._idt = internals.tables["idt"]
        self._gdt = internals.tables["gdt"]
        self._ldt = internals.tables["ldt"]
        self._tr = internals.tables["tr"]
        self._hflags = internals.hflags

    # -- public ----------------------------------------------------------------------------

    @property
    def reserved_address_bits(self) -> int:
        """Page-table address bits above the CPU's physical address width (reserved)."""
        return self._rsvd_high

    def deliver_pending_exception(self) -> None:
        """From a Unicorn interrupt/invalid-instruction hook: deliver the exception that
        Unicorn raised (vector in exception_index, error code in env). Raises TripleFault."""
        vector = self._exception_index.value
        is_int = bool(self._exception_is_int.value)
        self._deliver(vector, is_int, False, self._cpu.error_code.value,
                      self._exception_next_eip.value)

    def deliver_exception(self, vector: int, error_code: int) -> None:
        """Deliver a fault the emulator itself detected (RIP = faulting instruction)."""
        self._deliver(vector, False, False, error_code, 0)

    def deliver_external_interrupt(self, vector: int) -> None:
        """Between slices, RFLAGS.IF set: deliver a hardware interrupt. Raises TripleFault."""
        self._deliver(vector, False, True, 0, 0)

    def read_linear(self, linear: int, length: int) -> bytes | None:
        """Guest memory at a linear address through the current page tables, or None."""
        try:
            return self._read(linear, length, False)
        except (_Fault, TripleFault):
            return None

    # -- delivery --------------------------------------------------------------------------

    def _deliver(self, vector: int, is_int: bool, is_hw: bool, error_code: int,
                 next_eip: int) -> None:
        benign = is_int or is_hw
        while True:
            try:
                self._check(vector, is_int, is_hw)
            except _Fault as fault:
                if vector == DF and not benign:
                    raise TripleFault(vector, fault.reason) from None
                new_vector, new_error = fault.vector, fault.error_code
                if not benign and ((vector in _CONTRIBUTORY and new_vector in _CONTRIBUTORY)
                                   or (vector == PF and (new_vector in _CONTRIBUTORY
                                                         or new_vector == PF))):
                    new_vector, new_error = DF, 0
                if new_vector == PF and fault.cr2 is not None:
                    self._cr[2] = fault.cr2
                vector, error_code, is_int, is_hw, benign = new_vector, new_error, False, False, False
                continue
            if is_hw:
                self._cpu.deliver_hardware_interrupt(vector)
            else:
                self._exception_index.value = vector
                self._cpu.error_code.value = error_code
                self._exception_is_int.value = int(is_int)
                self._exception_next_eip.value = next_eip
                self._cpu.deliver_pending_exception()
            self._cpu.old_exception.value = -1
            return

    def _check(self, vector: int, is_int: bool, is_hw: bool) -> None:
        """Raise _Fault if QEMU's do_interrupt64 would fault delivering `vector`."""
        hflags = self._cpu.hflags.value
        if not hflags & HF_LMA or not self._cr[0] & CR0_PG or not self._cr[4] & CR4_PAE \
                or self._cr[4] & CR4_LA57:
            raise TripleFault(vector, "the CPU is not in 4-level long mode")
        cpl = hflags & 3
        idt = self._idt
        if vector * 16 + 15 > idt.limit:
            raise _Fault(GP, vector * 16 + 2, reason="IDT limit")
        low, high, upper = struct.unpack("<III", self._read(idt.base + vector * 16, 12, False))
        gate_type = (high >> 8) & 0x1F
        if gate_type not in (14, 15):
            raise _Fault(GP, vector * 16 + 2, reason=f"IDT gate type {gate_type}")
        dpl = (high >> 13) & 3
        if is_int and dpl < cpl:
            raise _Fault(GP, vector * 16 + 2, reason="gate privilege")
        if not high & DESC_P:
            raise _Fault(NP, vector * 16 + 2, reason="gate not present")
        selector = low >> 16
        ist = high & 7
        if selector & 0xFFFC == 0:
            raise _Fault(GP, 0, reason="null code selector")
        e2 = self._descriptor_high(selector)
        if e2 is None or not e2 & DESC_S or not e2 & DESC_CS:
            raise _Fault(GP, selector & 0xFFFC, reason="bad code segment")
        dpl = (e2 >> 13) & 3
        if dpl > cpl:
            raise _Fault(GP, selector & 0xFFFC, reason="code segment privilege")
        if not e2 & DESC_P:
            raise _Fault(NP, selector & 0xFFFC, reason="code segment not present")
        if not e2 & DESC_L or e2 & DESC_B:
            raise _Fault(GP, selector & 0xFFFC, reason="not a 64-bit code segment")
        if e2 & DESC_C:
            dpl = cpl
        if dpl < cpl or ist:
            rsp = self._rsp_from_tss(ist + 3 if ist else dpl)
        else:
            rsp = self._cpu.regs[4]
        rsp &= ~0xF
        frame = 48 if (not is_int and not is_hw and vector in ERROR_CODE_VECTORS) else 40
        self._read(rsp - frame, frame, True, fault_vector=SS_FAULT)

    def _descriptor_high(self, selector: int) -> int | None:
        """Bytes 4-7 of the GDT/LDT descriptor for `selector`, or None if out of limit."""
        table = self._ldt if selector & 4 else self._gdt
        if selector & 4 and not table.flags & DESC_P:
            return None
        index = selector & ~7
        if index + 7 > table.limit:
            return None
        return struct.unpack("<I", self._read(table.base + index + 4, 4, False))[0]

    def _rsp_from_tss(self, level: int) -> int:
        tr = self._tr
        if not tr.flags & DESC_P:
            raise TripleFault(0, "no task state segment loaded")  # QEMU would abort()
        index = 8 * level + 4
        if index + 7 > tr.limit:
            raise _Fault(TS, tr.selector & 0xFFFC, reason="TSS limit")
        return struct.unpack("<Q", self._read(tr.base + index, 8, False))[0]

    # -- guest memory through the guest's page tables --------------------------------------

    def _read(self, linear: int, length: int, write: bool, fault_vector: int = GP) -> bytes:
        """Bytes at a linear address as a supervisor access, faulting like the MMU."""
        out = b""
        while length:
            page_left = 0x1000 - (linear & 0xFFF)
            chunk = min(length, page_left)
            physical = self._translate(linear, write, fault_vector)
            if physical + chunk > self._ram_size:
                raise TripleFault(0, f"delivery touches {physical:#x}, outside RAM")
            out += self._mem[physical:physical + chunk]
            linear = (linear + chunk) & 0xFFFFFFFFFFFFFFFF
            length -= chunk
        return out

    def _translate(self, linear: int, write: bool, fault_vector: int) -> int:
        """Supervisor translation of `linear`: Unicorn's own MMU in probe mode (no fault is
        raised, no longjmp) with CPL forced to 0 for the call, as delivery accesses are
        supervisor accesses; if it refuses, the walk below finds the exact fault."""
        hflags = self._hflags
        saved = hflags.value
        hflags.value = saved & ~3
        physical = self._cpu.translate(linear, write)
        hflags.value = saved
        if physical is not None:
            return physical
        return self._walk(linear, write, fault_vector)

    def _walk(self, linear: int, write: bool, fault_vector: int) -> int:
        """The page walk done in Python, with the fault the MMU would raise."""
        top = linear >> 47
        if top not in (0, 0x1FFFF):
            raise _Fault(fault_vector, 0, reason=f"non-canonical address {linear:#x}")
        rsvd = self._rsvd_high
        if not (self._efer.value & EFER_NXE):
            rsvd |= PG_NX
        error = 2 if write else 0
        table = self._cr[3] & PG_ADDRESS_MASK
        rights = PG_RW | PG_USER
        for level, shift in enumerate((39, 30, 21, 12)):
            entry_address = table + ((linear >> shift) & 0x1FF) * 8
            if entry_address + 8 > self._ram_size:
                raise TripleFault(0, f"page table outside RAM at {entry_address:#x}")
            entry = self._u64(self._mem, entry_address)[0]
            if not entry & PG_PRESENT:
                raise _Fault(PF, error, linear, reason=f"page not present at {linear:#x}")
            if entry & rsvd or (level == 0 and entry & PG_PSE):
                raise _Fault(PF, error | 9, linear, reason="reserved page-table bits")
            rights &= entry
            if level in (1, 2) and entry & PG_PSE:
                size = 1 << shift
                if entry & (size - 1) & PG_ADDRESS_MASK & ~0x1000:
                    raise _Fault(PF, error | 9, linear, reason="reserved large-page bits")
                physical = (entry & PG_ADDRESS_MASK & ~(size - 1)) | (linear & (size - 1))
                break
            table = entry & PG_ADDRESS_MASK
        else:
            physical = table | (linear & 0xFFF)
        if rights & PG_USER and self._cr[4] & CR4_SMAP:
            raise _Fault(PF, error | 1, linear, reason="SMAP")
        if write and not rights & PG_RW and self._cr[0] & CR0_WP:
            raise _Fault(PF, error | 1, linear, reason="read-only page")
        return physical
