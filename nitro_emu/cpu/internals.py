"""Unicorn's internal CPU state, found by probing and checked before use.

Unicorn has no API for delivering guest exceptions, external interrupts or SYSCALL, and
none for the error code of a fault or the TSC offset (docs/architecture.md §3.1-3.5). Its
library exports QEMU's own delivery routines, and those work on the `CPUState` and
`CPUX86State` structures. This module finds those structures and the fields used, by
writing known values through the public API and looking for them, and refuses to run
(`UnsupportedUnicornError`) if any check fails, so another Unicorn build stops with one
clear line instead of corrupting memory.
"""
from __future__ import annotations

import ctypes
import functools
import os
import struct
from typing import Callable

import unicorn
from unicorn import x86_const as x86

from nitro_emu.errors import NitroEmuError

SUPPORTED_UNICORN = "2.1.4"

# Offsets inside QEMU 5's CPUX86State that are fixed relative to fields we can find.
EIP_OFFSET, EFLAGS_OFFSET, HFLAGS_OFFSET, SEGS_OFFSET = 128, 136, 176, 184
CC_OP_OFFSET = 168  # cc_dst, cc_src, cc_src2 follow eflags; then cc_op, df, hflags (176)
CC_OP_EFLAGS = 1
EFER_MSR = 0xC0000080
SEG_SIZE = 24  # {u32 selector; u32 pad; u64 base; u32 limit; u32 flags}
R_CS, R_SS = 1, 2
HF_CPL_MASK = 0x3
HF_INHIBIT_IRQ_MASK = 1 << 3
# From dr[0] (found by probing): error_code, exception_is_int, exception_next_eip, dr[8],
# cpu_breakpoint[4], old_exception, vm_vmcb, tsc_offset.
ERROR_CODE_FROM_DR0 = -16
EXCEPTION_IS_INT_FROM_DR0 = ERROR_CODE_FROM_DR0 + 4
EXCEPTION_NEXT_EIP_FROM_DR0 = ERROR_CODE_FROM_DR0 + 8
OLD_EXCEPTION_FROM_DR0 = 8 * 8 + 4 * 8
TSC_OFFSET_FROM_DR0 = OLD_EXCEPTION_FROM_DR0 + 16
# segs[6] are followed by the ldt, tr, gdt and idt caches (same layout), then cr[5].
TABLE_INDEX = {"ldt": 6, "tr": 7, "gdt": 8, "idt": 9}
CR_OFFSET = SEGS_OFFSET + 10 * SEG_SIZE
# CPUState: cflags_next_tb (u32, -1 after reset) sits just before interrupt_request; the
# uc pointer and CPUClass pointer follow exception_index; icount_decr_ptr follows env_ptr.
INTERRUPT_REQUEST_OFFSET = 0x1C
ENV_PTR_OFFSET = 0x128
ICOUNT_DECR_FROM_ENV_PTR = 8
CPU_INTERRUPT_HARD = 0x0002
UC_PROT_READ, UC_PROT_WRITE = 1, 2


class UnsupportedUnicornError(NitroEmuError):
    """This Unicorn build does not have the internal layout nitro-emu relies on."""


def _library() -> ctypes.CDLL:
    from unicorn.unicorn_py3 import unicorn as binding
    return binding.uclib


def library_function(name: str) -> int:
    """The address of one of Unicorn's exported functions (for native hooks)."""
    return ctypes.cast(getattr(_library(), name), ctypes.c_void_p).value


class _SafeReader:
    """Reads process memory through /proc/self/mem, so a wrong guess is an error, not a
    segmentation fault."""

    def __init__(self) -> None:
        self._fd = os.open("/proc/self/mem", os.O_RDONLY)

    def read(self, address: int, size: int) -> bytes | None:
        if address <= 0x10000 or address >= 1 << 47:
            return None
        try:
            data = os.pread(self._fd, size, address)
        except OSError:
            return None
        return data if len(data) == size else None

    def u64(self, address: int) -> int | None:
        data = self.read(address, 8)
        return struct.unpack("<Q", data)[0] if data else None

    def close(self) -> None:
        os.close(self._fd)


class CpuInternals:
    """Typed access to one Unicorn instance's CPU state and delivery routines."""

    def __init__(self, uc: unicorn.Uc) -> None:
        if unicorn.__version__ != SUPPORTED_UNICORN:
            raise UnsupportedUnicornError(
                f"unicorn {unicorn.__version__} is installed; nitro-emu needs exactly "
                f"{SUPPORTED_UNICORN} (pip install unicorn=={SUPPORTED_UNICORN})")
        self._uc = uc
        self.uc_handle = uc._uch.value
        reader = _SafeReader()
        try:
            self.cpu, self.env = self._find_cpu_and_env(uc, reader)
            self._check_fixed_fields(uc, reader)
            dr0 = self._find_u64(uc, reader, x86.UC_X86_REG_DR0, 0x0D0D0D0D00112230, "dr[0]")
            self.star_offset = self._find_msr(uc, reader, 0xC0000081, 0x0023001000000000, "star")
            self.lstar_offset = self._find_msr(uc, reader, 0xC0000082, 0xFFFFFFFF81C00040, "lstar")
            self.fmask_offset = self._find_msr(uc, reader, 0xC0000084, 0x0000000000047700, "fmask")
            self.efer_offset = _efer_offset()
            if reader.u64(self.env + self.efer_offset) != uc.msr_read(EFER_MSR):
                raise UnsupportedUnicornError("unexpected Unicorn CPU layout: efer")
        finally:
            reader.close()
        uc.reg_write(x86.UC_X86_REG_DR0, 0)
        for msr in (0xC0000081, 0xC0000082, 0xC0000084):
            uc.msr_write(msr, 0)
        env = self.env
        self.error_code = ctypes.c_int32.from_address(env + dr0 + ERROR_CODE_FROM_DR0)
        self.exception_is_int = ctypes.c_int32.from_address(env + dr0 + EXCEPTION_IS_INT_FROM_DR0)
        self.exception_next_eip = ctypes.c_uint64.from_address(
            env + dr0 + EXCEPTION_NEXT_EIP_FROM_DR0)
        self.exception_index = ctypes.c_int32.from_address(
            self.cpu + find_exception_index_offset())
        self.old_exception = ctypes.c_int32.from_address(env + dr0 + OLD_EXCEPTION_FROM_DR0)
        self.tsc_offset = ctypes.c_uint64.from_address(env + dr0 + TSC_OFFSET_FROM_DR0)
        if self.old_exception.value != -1:
            raise UnsupportedUnicornError(
                "unexpected Unicorn CPU layout: old_exception is not -1 after reset")
        self.regs = (ctypes.c_uint64 * 16).from_address(env)
        self.eip = ctypes.c_uint64.from_address(env + EIP_OFFSET)
        self.hflags = ctypes.c_uint32.from_address(env + HFLAGS_OFFSET)
        self.star = ctypes.c_uint64.from_address(env + self.star_offset)
        self.lstar = ctypes.c_uint64.from_address(env + self.lstar_offset)
        self.fmask = ctypes.c_uint64.from_address(env + self.fmask_offset)
        self.efer = ctypes.c_uint64.from_address(env + self.efer_offset)
        self.eflags = ctypes.c_uint64.from_address(env + EFLAGS_OFFSET)
        self.cc_op = ctypes.c_uint32.from_address(env + CC_OP_OFFSET)
        self.segs = [_SegmentCache.from_address(env + SEGS_OFFSET + i * SEG_SIZE) for i in range(6)]
        self.tables = {name: _SegmentCache.from_address(env + SEGS_OFFSET + i * SEG_SIZE)
                       for name, i in TABLE_INDEX.items()}
        self.cr = (ctypes.c_uint64 * 5).from_address(env + CR_OFFSET)
        lib = _library()
        self._vmem_translate = lib.uc_vmem_translate
        self._vmem_translate.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                                         ctypes.POINTER(ctypes.c_uint64)]
        self._vmem_translate.restype = ctypes.c_int
        self._physical = ctypes.c_uint64()
        self._physical_ref = ctypes.byref(self._physical)
        self._do_interrupt = lib.x86_cpu_do_interrupt_x86_64
        self._do_interrupt.argtypes = [ctypes.c_void_p]
        self._do_interrupt.restype = None
        self._hardirq = lib.do_interrupt_x86_hardirq_x86_64
        self._hardirq.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self._hardirq.restype = None
        read_eflags = lib.helper_read_eflags_x86_64
        read_eflags.argtypes = [ctypes.c_void_p]
        read_eflags.restype = ctypes.c_uint64
        write_eflags = lib.helper_write_eflags_x86_64
        write_eflags.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32]
        write_eflags.restype = None
        self._read_eflags, self._write_eflags = read_eflags, write_eflags

    # -- probing ---------------------------------------------------------------------------

    @staticmethod
    def _find_cpu_and_env(uc: unicorn.Uc, reader: _SafeReader) -> tuple[int, int]:
        """Find CPUState (a pointer in uc_struct) and env (CPUState->env_ptr) by writing
        distinct values into the 16 general registers and finding them at env + 0."""
        values = [0x5A5A000000000000 | (i << 16) | 0xC3 for i in range(16)]
        regs = [x86.UC_X86_REG_RAX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX, x86.UC_X86_REG_RBX,
                x86.UC_X86_REG_RSP, x86.UC_X86_REG_RBP, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDI,
                x86.UC_X86_REG_R8, x86.UC_X86_REG_R9, x86.UC_X86_REG_R10, x86.UC_X86_REG_R11,
                x86.UC_X86_REG_R12, x86.UC_X86_REG_R13, x86.UC_X86_REG_R14, x86.UC_X86_REG_R15]
        for reg, value in zip(regs, values):
            uc.reg_write(reg, value)
        expected = struct.pack("<16Q", *values)
        uc_struct = uc._uch.value
        # Known answers for 2.1.4 first (uc_struct+440 -> CPUState; CPUState+0x128 -> env),
        # then a scan of the first 1 KiB of uc_struct and of CPUState.
        cpu_slots = [440] + [o for o in range(0, 1024, 8) if o != 440]
        for cpu_slot in cpu_slots:
            cpu = reader.u64(uc_struct + cpu_slot)
            if cpu is None:
                continue
            for env_slot in [0x128] + [o for o in range(0, 0x400, 8) if o != 0x128]:
                env = reader.u64(cpu + env_slot)
                if env is None or not cpu < env < cpu + 0x20000:
                    continue
                if reader.read(env, 128) == expected:
                    for reg in regs:
                        uc.reg_write(reg, 0)
                    return cpu, env
        raise UnsupportedUnicornError(
            "cannot find Unicorn's CPU state (uc_struct -> CPUState -> env); "
            f"this unicorn build is not the {SUPPORTED_UNICORN} wheel nitro-emu supports")

    def _check_fixed_fields(self, uc: unicorn.Uc, reader: _SafeReader) -> None:
        """eip, eflags and the FS segment cache sit at QEMU 5's offsets from env."""
        uc.reg_write(x86.UC_X86_REG_RIP, 0x0000123456789AB0)
        uc.reg_write(x86.UC_X86_REG_FS_BASE, 0x00007F00DEAD0000)
        eip = reader.u64(self.env + EIP_OFFSET)
        fs_base = reader.u64(self.env + SEGS_OFFSET + 4 * SEG_SIZE + 8)
        uc.reg_write(x86.UC_X86_REG_RIP, 0)
        uc.reg_write(x86.UC_X86_REG_FS_BASE, 0)
        if eip != 0x0000123456789AB0 or fs_base != 0x00007F00DEAD0000:
            raise UnsupportedUnicornError(
                "unexpected Unicorn CPU layout: eip or segment caches are not where "
                f"unicorn {SUPPORTED_UNICORN} keeps them")

    def _find_u64(self, uc: unicorn.Uc, reader: _SafeReader, reg: int, value: int,
                  name: str) -> int:
        uc.reg_write(reg, value)
        return self._scan_env(reader, value, name)

    def _find_msr(self, uc: unicorn.Uc, reader: _SafeReader, msr: int, value: int,
                  name: str) -> int:
        uc.msr_write(msr, value)
        return self._scan_env(reader, value, name)

    def _scan_env(self, reader: _SafeReader, value: int, name: str) -> int:
        data = reader.read(self.env, 0x3000)
        if data is None:
            raise UnsupportedUnicornError("cannot read Unicorn's CPU state")
        needle = struct.pack("<Q", value)
        hits = [i for i in range(0, len(data) - 7, 8) if data[i:i + 8] == needle]
        if len(hits) != 1:
            raise UnsupportedUnicornError(
                f"unexpected Unicorn CPU layout: field {name} found {len(hits)} times")
        return hits[0]

    # -- use -------------------------------------------------------------------------------

    def deliver_pending_exception(self) -> None:
        """From an interrupt or invalid-instruction hook: deliver the exception Unicorn
        raised through the guest IDT (with its error code), as the real CPU would."""
        self._do_interrupt(self.cpu)

    def deliver_hardware_interrupt(self, vector: int) -> None:
        """Between slices, with RFLAGS.IF set: deliver an external interrupt."""
        self._hardirq(self.env, vector, 1)

    def compute_rflags(self) -> int:
        """RFLAGS with the lazily kept arithmetic flags folded in (QEMU's
        cpu_compute_eflags), valid inside a hook."""
        return self._read_eflags(self.env)

    def load_rflags(self, value: int) -> None:
        """Make `value` the whole RFLAGS, arithmetic flags included (cpu_load_eflags)."""
        self._write_eflags(self.env, value, 0xFFFFFFFF)
        self.cc_op.value = CC_OP_EFLAGS

    def interrupts_inhibited(self) -> bool:
        """True in the shadow of STI or MOV SS, when no interrupt may be taken yet."""
        return bool(self.hflags.value & HF_INHIBIT_IRQ_MASK)

    def load_flat_segment(self, index: int, selector: int, flags: int) -> None:
        """Set a segment register's hidden cache directly (SYSCALL's CS/SS load: the API
        refuses ring-0 selectors at CPL 3)."""
        seg = self.segs[index]
        seg.selector, seg.base, seg.limit, seg.flags = selector, 0, 0xFFFFFFFF, flags

    def set_cpl(self, cpl: int) -> None:
        self.hflags.value = (self.hflags.value & ~HF_CPL_MASK) | cpl

    def translate(self, linear: int, write: bool) -> int | None:
        """The physical address of `linear` through Unicorn's own MMU in probe mode (no
        fault is raised, no longjmp), as an access at the current CPL; None if the MMU
        would fault."""
        status = self._vmem_translate(self.uc_handle, linear,
                                      UC_PROT_WRITE if write else UC_PROT_READ,
                                      self._physical_ref)
        return self._physical.value if status == 0 else None

    def route_exec_interrupt(self, handler: Callable[[int], bool]) -> "ExecInterruptRoute":
        """Replace this CPU's `cpu_exec_interrupt` (QEMU's check for a pending hardware
        interrupt at TB exits) by `handler(request) -> delivered`; see interrupt_window."""
        return ExecInterruptRoute(self, handler)


class _SegmentCache(ctypes.Structure):
    _fields_ = [("selector", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("base", ctypes.c_uint64), ("limit", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


@functools.lru_cache(maxsize=1)
def _efer_offset() -> int:
    """Offset of EFER in env: found on a fresh scratch CPU (the layout is the same for every
    instance) as the one place that follows four different values written to the MSR."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    reader = _SafeReader()
    try:
        env = CpuInternals._find_cpu_and_env(uc, reader)[1]
        candidates = None
        for value in (0xD01, 0x501, 0xD00, 0x500):
            uc.msr_write(EFER_MSR, value)
            data = reader.read(env, 0x3000) or b""
            needle = struct.pack("<Q", value)
            hits = {i for i in range(0, len(data) - 7, 8) if data[i:i + 8] == needle}
            candidates = hits if candidates is None else candidates & hits
    finally:
        reader.close()
    if not candidates or len(candidates) != 1:
        raise UnsupportedUnicornError("unexpected Unicorn CPU layout: efer not found")
    return candidates.pop()


def disable_mid_instruction_exits(uc: unicorn.Uc) -> None:
    """Make Unicorn honour exit requests only at translation-block starts.

    Unicorn 2 emits an exit check after every guest load and store; when an exit was
    requested (emu_stop, or any asynchronous kick) it leaves with the PC of the current
    instruction even if that instruction already stored, so the instruction runs twice
    on resume: `add [mem], reg`, `inc [mem]`, `xadd` and friends then corrupt the guest
    (seen as random kernel oopses). Its translator skips those checks while
    `uc_struct.no_exit_request` is set (a flag meant for ARM IT blocks). The field is found
    after the page-size fields (4096, 4095, 4096, 4096) and checked by `init_done` next to
    it. Must be called before any code is translated."""
    reader = _SafeReader()
    try:
        base = uc._uch.value
        data = reader.read(base, 8192)
        if data is None:
            raise UnsupportedUnicornError("cannot read Unicorn's engine state")
        signature = struct.pack("<IIQQ", 4096, 4095, 4096, 4096)
        hits = [i for i in range(0, len(data) - 64, 4) if data[i:i + 24] == signature]
        if len(hits) != 1:
            raise UnsupportedUnicornError(
                "unexpected Unicorn engine layout: page-size fields not found")
        # target_page_size, align, host page size, real host page size, icache line size,
        # context_content, cpu_context_size (+pad), next_pc, hook_insert, first_tb, then:
        offset = hits[0] + 50
        init_done = data[offset + 1]
        if init_done != 1 or data[offset] not in (0, 1):
            raise UnsupportedUnicornError(
                "unexpected Unicorn engine layout: no_exit_request not found")
    finally:
        reader.close()
    ctypes.c_bool.from_address(base + offset).value = True


@functools.lru_cache(maxsize=1)
def find_exception_index_offset() -> int:
    """Offset of `CPUState.exception_index`: run `int 0x77` and `int 0x5a` in a scratch CPU
    and find the one int32 field that holds the vector inside the interrupt hook."""
    found: list[set[int]] = []
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    reader = _SafeReader()
    cpu, env = CpuInternals._find_cpu_and_env(uc, reader)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\xcd\x77\xcd\x5a")

    def on_interrupt(uc: unicorn.Uc, vector: int, _: object) -> None:
        data = reader.read(cpu, env - cpu)
        if data is not None:
            needle = struct.pack("<i", vector)
            found.append({i for i in range(0, len(data) - 3, 4) if data[i:i + 4] == needle})
        uc.emu_stop()

    hook = uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
    try:
        uc.emu_start(0x1000, 0x1004)
        uc.emu_start(0x1002, 0x1004)
    finally:
        uc.hook_del(hook)
        reader.close()
    common = set.intersection(*found) if len(found) == 2 else set()
    if len(common) != 1:
        raise UnsupportedUnicornError(
            "unexpected Unicorn CPU layout: cannot find CPUState.exception_index")
    return common.pop()


# -- cpu_exec_interrupt -----------------------------------------------------------------

_EXEC_INTERRUPT = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_int)
_exec_interrupt_handlers: dict[int, Callable[[int], bool]] = {}
_original_exec_interrupt: ctypes._CFuncPtr | None = None


def _dispatch_exec_interrupt(cpu: int, request: int) -> bool:
    handler = _exec_interrupt_handlers.get(cpu)
    if handler is not None and request & CPU_INTERRUPT_HARD:
        return handler(request)
    original = _original_exec_interrupt
    return bool(original(cpu, request)) if original is not None else False


_DISPATCH = _EXEC_INTERRUPT(_dispatch_exec_interrupt)  # kept alive for the process
_DISPATCH_ADDRESS = ctypes.cast(_DISPATCH, ctypes.c_void_p).value
_exec_interrupt_slot_offset: int | None = None


def _exec_interrupt_slot(table: bytes, original: int) -> int:
    """Offset of `cpu_exec_interrupt` in the CPU class: the first pointer to Unicorn's
    handler (or ours), found once; later classes must have it at the same place. (The
    scan window can reach into a neighbouring CPU class of another live instance, so
    only the first hit counts.)"""
    global _exec_interrupt_slot_offset
    targets = (original, _DISPATCH_ADDRESS)
    if _exec_interrupt_slot_offset is None:
        hits = [i for i in range(0, len(table) - 7, 8)
                if struct.unpack_from("<Q", table, i)[0] in targets]
        if not hits:
            raise UnsupportedUnicornError(
                "unexpected Unicorn CPU layout: cpu_exec_interrupt not found in the CPU class")
        _exec_interrupt_slot_offset = hits[0]
    if struct.unpack_from("<Q", table, _exec_interrupt_slot_offset)[0] not in targets:
        raise UnsupportedUnicornError(
            "unexpected Unicorn CPU layout: cpu_exec_interrupt moved in the CPU class")
    return _exec_interrupt_slot_offset


def _cpu_class_and_exec_slot(internals: CpuInternals) -> tuple[int, int]:
    """The CPU class of this instance and the offset of cpu_exec_interrupt in it."""
    reader = _SafeReader()
    try:
        exception_index = find_exception_index_offset()
        if reader.u64(internals.cpu + exception_index + 8) != internals.uc_handle:
            raise UnsupportedUnicornError(
                "unexpected Unicorn CPU layout: no uc pointer after exception_index")
        cpu_class = reader.u64(internals.cpu + exception_index + 16)
        table = reader.read(cpu_class, 1024) if cpu_class else None
    finally:
        reader.close()
    if table is None:
        raise UnsupportedUnicornError("cannot read Unicorn's CPU class")
    original = ctypes.cast(_library().x86_cpu_exec_interrupt_x86_64, ctypes.c_void_p).value
    return cpu_class, _exec_interrupt_slot(table, original)


class ExecInterruptRoute:
    """One CPU's `cpu_exec_interrupt` routed to a Python handler, with typed access to the
    two fields that make the CPU call it: `interrupt_request` and the high half of
    `icount_decr` (a negative value ends the current TB at its next exit check)."""

    def __init__(self, internals: CpuInternals, handler: Callable[[int], bool]) -> None:
        global _original_exec_interrupt
        cpu = internals.cpu
        cpu_class, slot = _cpu_class_and_exec_slot(internals)
        original = ctypes.cast(_library().x86_cpu_exec_interrupt_x86_64, ctypes.c_void_p).value
        reader = _SafeReader()
        try:
            if reader.read(cpu + INTERRUPT_REQUEST_OFFSET - 4, 4) != b"\xff\xff\xff\xff":
                raise UnsupportedUnicornError(
                    "unexpected Unicorn CPU layout: interrupt_request is not where expected")
            icount_decr = reader.u64(cpu + ENV_PTR_OFFSET + ICOUNT_DECR_FROM_ENV_PTR)
        finally:
            reader.close()
        if icount_decr is None or not cpu < icount_decr < internals.env + 16:
            raise UnsupportedUnicornError("unexpected Unicorn CPU layout: icount_decr_ptr")
        if _original_exec_interrupt is None:
            _original_exec_interrupt = _EXEC_INTERRUPT(original)
        ctypes.c_uint64.from_address(cpu_class + slot).value = _DISPATCH_ADDRESS
        self.interrupt_request = ctypes.c_uint32.from_address(cpu + INTERRUPT_REQUEST_OFFSET)
        self.icount_high = ctypes.c_uint16.from_address(icount_decr + 2)
        self._cpu = cpu
        _exec_interrupt_handlers[cpu] = handler

    def close(self) -> None:
        _exec_interrupt_handlers.pop(self._cpu, None)


# -- debugging: QEMU's breakpoints and single-stepping ------------------------------------
# In QEMU 5's CPUState, singlestep_enabled follows interrupt_request; in its CPUClass,
# debug_excp_handler sits three pointers before cpu_exec_interrupt (hw/core/cpu.h).
SINGLESTEP_OFFSET = INTERRUPT_REQUEST_OFFSET + 4
DEBUG_EXCP_HANDLER_FROM_EXEC_INTERRUPT = -3 * 8
SSTEP_ENABLE, SSTEP_NOIRQ = 0x1, 0x2
BP_GDB = 0x10

_DEBUG_EXCP = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_debug_handlers: dict[int, Callable[[], None]] = {}


def _dispatch_debug_exception(cpu: int) -> None:
    handler = _debug_handlers.get(cpu)
    if handler is not None:
        handler()


_DEBUG_DISPATCH = _DEBUG_EXCP(_dispatch_debug_exception)  # kept alive for the process
_DEBUG_DISPATCH_ADDRESS = ctypes.cast(_DEBUG_DISPATCH, ctypes.c_void_p).value


class DebugSupport:
    """QEMU's own debugger facilities for one CPU, which cost nothing until used.

    - Breakpoints (`insert_breakpoint`) are checked when code is translated: the block
      ends before the instruction at the breakpoint with a debug exception, so a run
      stops there without executing it; no hook runs for any other instruction.
    - Single-stepping (`set_single_step`) translates one-instruction blocks that each end
      in a debug exception, with external interrupts held off (QEMU's SSTEP_NOIRQ).

    Unicorn keeps QEMU's debug exception but would then loop forever (it marks the CPU
    stopped and never leaves `uc_emu_start`), so the CPU class's `debug_excp_handler` is
    pointed at `handler` for as long as this object lives. The handler runs inside the CPU
    loop, with RIP at the stop, and must end the slice (`uc_emu_stop`)."""

    def __init__(self, internals: CpuInternals, handler: Callable[[], None]) -> None:
        lib = _library()
        cpu = internals.cpu
        cpu_class, exec_slot = _cpu_class_and_exec_slot(internals)
        self._slot = ctypes.c_uint64.from_address(
            cpu_class + exec_slot + DEBUG_EXCP_HANDLER_FROM_EXEC_INTERRUPT)
        self._original = ctypes.cast(lib.breakpoint_handler_x86_64, ctypes.c_void_p).value
        if self._slot.value != self._original or cpu in _debug_handlers:
            raise UnsupportedUnicornError(
                "unexpected Unicorn CPU layout: debug_excp_handler not found in the CPU class")
        self.singlestep = ctypes.c_int32.from_address(cpu + SINGLESTEP_OFFSET)
        if self.singlestep.value != 0:
            raise UnsupportedUnicornError(
                "unexpected Unicorn CPU layout: singlestep_enabled is not after interrupt_request")
        check_single_step()
        self._insert = lib.cpu_breakpoint_insert_x86_64
        self._insert.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p]
        self._insert.restype = ctypes.c_int
        self._remove = lib.cpu_breakpoint_remove_x86_64
        self._remove.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
        self._remove.restype = ctypes.c_int
        self._remove_all = lib.cpu_breakpoint_remove_all_x86_64
        self._remove_all.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._remove_all.restype = None
        self._uc = internals._uc
        self._cpu = cpu
        _debug_handlers[cpu] = handler
        self._slot.value = _DEBUG_DISPATCH_ADDRESS

    def insert_breakpoint(self, address: int) -> None:
        """Stop before the instruction at virtual `address` (drops translated code)."""
        self._insert(self._cpu, address, BP_GDB, None)

    def remove_breakpoint(self, address: int) -> bool:
        return self._remove(self._cpu, address, BP_GDB) == 0

    def set_single_step(self, on: bool) -> None:
        """Translate one instruction per block, each followed by a debug exception. The
        translated code is dropped on each change, as QEMU's cpu_single_step does."""
        value = SSTEP_ENABLE | SSTEP_NOIRQ if on else 0
        if self.singlestep.value != value:
            self.singlestep.value = value
            self._uc.ctl_flush_tb()

    def flush_translations(self) -> None:
        """Drop all translated code (after the debugger wrote guest memory)."""
        self._uc.ctl_flush_tb()

    def close(self) -> None:
        """Back to Unicorn's own handler, with no breakpoint left and stepping off."""
        if _debug_handlers.pop(self._cpu, None) is None:
            return
        self._remove_all(self._cpu, BP_GDB)
        self.set_single_step(False)
        self._slot.value = self._original


@functools.lru_cache(maxsize=1)
def check_single_step() -> None:
    """On a scratch CPU: with singlestep_enabled set and the debug exception routed, one
    `uc_emu_start` runs exactly one instruction, and a breakpoint stops before its
    instruction. Proves the two offsets before any guest relies on them."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    internals = CpuInternals(uc)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x48\xff\xc0" * 4 + b"\xf4")  # inc rax x4; hlt
    stops: list[int] = []

    def on_debug() -> None:
        stops.append(internals.eip.value)
        uc.emu_stop()

    cpu_class, exec_slot = _cpu_class_and_exec_slot(internals)
    slot = ctypes.c_uint64.from_address(cpu_class + exec_slot + DEBUG_EXCP_HANDLER_FROM_EXEC_INTERRUPT)
    original = ctypes.cast(_library().breakpoint_handler_x86_64, ctypes.c_void_p).value
    if slot.value != original:
        raise UnsupportedUnicornError(
            "unexpected Unicorn CPU layout: debug_excp_handler not found in the CPU class")
    singlestep = ctypes.c_int32.from_address(internals.cpu + SINGLESTEP_OFFSET)
    _debug_handlers[internals.cpu] = on_debug
    slot.value = _DEBUG_DISPATCH_ADDRESS
    try:
        singlestep.value = SSTEP_ENABLE | SSTEP_NOIRQ
        uc.emu_start(0x1000, 0x2000)
        stepped = uc.reg_read(x86.UC_X86_REG_RAX)
        singlestep.value = 0
        uc.ctl_flush_tb()
        insert = _library().cpu_breakpoint_insert_x86_64
        insert.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p]
        insert(internals.cpu, 0x1009, BP_GDB, None)
        uc.emu_start(0x1003, 0x2000)
        broke = uc.reg_read(x86.UC_X86_REG_RAX)
    finally:
        _debug_handlers.pop(internals.cpu, None)
        slot.value = original
    if stepped != 1 or broke != 3 or stops != [0x1003, 0x1009]:
        raise UnsupportedUnicornError(
            "unexpected Unicorn CPU layout: single-stepping or breakpoints do not work "
            f"(stepped {stepped}, then {broke}, stops {[hex(s) for s in stops]})")


# -- the exact RIP of a device access -------------------------------------------------------
# CPUState.mem_io_pc (the host address in translated code of the access being done) comes
# after icount_decr_ptr, tb_jmp_cache[1 << 12] and node, breakpoints, watchpoints (two
# pointers each), watchpoint_hit and opaque (QEMU 5's hw/core/cpu.h).
MEM_IO_PC_OFFSET = ENV_PTR_OFFSET + 16 + (1 << 12) * 8 + 3 * 16 + 2 * 8


class DeviceAccessPc:
    """Inside an MMIO callback RIP is only where its translation block last saved it;
    `sync()` sets it to the accessing instruction, as Unicorn itself does before calling
    memory hooks (cpu_restore_state from the host address of the access). Only a trace
    needs this."""

    def __init__(self, internals: CpuInternals) -> None:
        check_device_access_pc()
        self._restore = _restore_state()
        self._cpu = internals.cpu
        self._host_pc = ctypes.c_uint64.from_address(internals.cpu + MEM_IO_PC_OFFSET)

    def sync(self) -> None:
        self._restore(self._cpu, self._host_pc.value, False)


def _restore_state() -> ctypes._CFuncPtr:
    restore = _library().cpu_restore_state_x86_64
    restore.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_bool]
    restore.restype = ctypes.c_bool
    return restore


@functools.lru_cache(maxsize=1)
def check_device_access_pc() -> None:
    """On a scratch CPU: a load from an MMIO window two instructions into a block, with
    RIP synced in the callback, must show the load's address (cpu_restore_state ignores
    any value that is not an address in translated code, so a wrong offset fails here,
    not in a guest)."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    internals = CpuInternals(uc)
    restore = _restore_state()
    host_pc = ctypes.c_uint64.from_address(internals.cpu + MEM_IO_PC_OFFSET)
    seen: list[int] = []

    def read(uc: unicorn.Uc, offset: int, size: int, _: object) -> int:
        restore(internals.cpu, host_pc.value, False)
        seen.append(internals.eip.value)
        return 0

    uc.mem_map(0x1000, 0x1000)
    uc.mmio_map(0x2000, 0x1000, read, None, lambda *args: None, None)
    uc.mem_write(0x1000, b"\x90\x90\x8b\x04\x25\x00\x20\x00\x00\xf4")  # nop; nop; mov eax, [0x2000]
    uc.emu_start(0x1000, 0x100A)
    if seen != [0x1002]:
        raise UnsupportedUnicornError(
            "unexpected Unicorn CPU layout: mem_io_pc not found "
            f"(RIP in an MMIO callback {[hex(s) for s in seen]})")
