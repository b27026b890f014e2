"""Taking external interrupts the moment the guest can, inside a slice.

A PC raises INTR and the CPU takes it at the next instruction boundary where RFLAGS.IF is
set. Unicorn keeps QEMU's mechanism for that (`CPUState.interrupt_request` checked at TB
exits, which TCG forces after STI, POPF and IRET) but its handler delivers vector 0
instead of asking the PIC. So the handler pointer in the CPU class, `cpu_exec_interrupt`,
is replaced by one that asks the machine: set `request_interrupt()` when the PIC raises
INTR, and the guest gets the interrupt as soon as it enables interrupts, without ending the
slice. Offsets are found and checked like the rest of `internals`.
"""
from __future__ import annotations

import ctypes
import struct
from typing import Callable

import unicorn

from nitro_emu.cpu.internals import (CpuInternals, UnsupportedUnicornError, _SafeReader,
                                     _library, find_exception_index_offset)

CPU_INTERRUPT_HARD = 0x0002
# CPUState: cflags_next_tb (u32, -1 after reset) sits just before interrupt_request; the
# uc pointer and CPUClass pointer follow exception_index.
_INTERRUPT_REQUEST_OFFSET = 0x1C
_ENV_PTR_OFFSET = 0x128
_ICOUNT_DECR_FROM_ENV_PTR = 8  # icount_decr_ptr follows env_ptr

_EXEC_INTERRUPT = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_int)
_handlers: dict[int, Callable[[int], bool]] = {}
_original: ctypes._CFuncPtr | None = None


def _dispatch(cpu: int, request: int) -> bool:
    handler = _handlers.get(cpu)
    if handler is not None and request & CPU_INTERRUPT_HARD:
        return handler(request)
    return bool(_original(cpu, request)) if _original is not None else False


_DISPATCH = _EXEC_INTERRUPT(_dispatch)  # kept alive for the life of the process
_DISPATCH_ADDRESS = ctypes.cast(_DISPATCH, ctypes.c_void_p).value


_slot_offset: int | None = None


def _exec_interrupt_slot(table: bytes, original: int) -> int:
    """Offset of `cpu_exec_interrupt` in the CPU class: the first pointer to Unicorn's
    handler (or ours), found once; later classes must have it at the same place. (The
    scan window can reach into a neighbouring CPU class of another live instance, so
    only the first hit counts.)"""
    global _slot_offset
    targets = (original, _DISPATCH_ADDRESS)
    if _slot_offset is None:
        hits = [i for i in range(0, len(table) - 7, 8)
                if struct.unpack_from("<Q", table, i)[0] in targets]
        if not hits:
            raise UnsupportedUnicornError(
                "unexpected Unicorn CPU layout: cpu_exec_interrupt not found in the CPU class")
        _slot_offset = hits[0]
    if struct.unpack_from("<Q", table, _slot_offset)[0] not in targets:
        raise UnsupportedUnicornError(
            "unexpected Unicorn CPU layout: cpu_exec_interrupt moved in the CPU class")
    return _slot_offset


class InterruptWindow:
    """Routes `cpu_exec_interrupt` for one vCPU to `handler(request) -> delivered`."""

    def __init__(self, internals: CpuInternals, uc: unicorn.Uc,
                 handler: Callable[[int], bool]) -> None:
        global _original
        cpu = internals.cpu
        exception_index = find_exception_index_offset()
        reader = _SafeReader()
        try:
            if reader.u64(cpu + exception_index + 8) != uc._uch.value:
                raise UnsupportedUnicornError(
                    "unexpected Unicorn CPU layout: no uc pointer after exception_index")
            cpu_class = reader.u64(cpu + exception_index + 16)
            original = ctypes.cast(_library().x86_cpu_exec_interrupt_x86_64, ctypes.c_void_p).value
            table = reader.read(cpu_class, 1024) if cpu_class else None
            if table is None:
                raise UnsupportedUnicornError("cannot read Unicorn's CPU class")
            slot = _exec_interrupt_slot(table, original)
            if reader.read(cpu + _INTERRUPT_REQUEST_OFFSET - 4, 4) != b"\xff\xff\xff\xff":
                raise UnsupportedUnicornError(
                    "unexpected Unicorn CPU layout: interrupt_request is not where expected")
            icount_decr = reader.u64(cpu + _ENV_PTR_OFFSET + _ICOUNT_DECR_FROM_ENV_PTR)
        finally:
            reader.close()
        if icount_decr is None or not cpu < icount_decr < internals.env + 16:
            raise UnsupportedUnicornError("unexpected Unicorn CPU layout: icount_decr_ptr")
        if _original is None:
            _original = _EXEC_INTERRUPT(original)
        ctypes.c_uint64.from_address(cpu_class + slot).value = _DISPATCH_ADDRESS
        self._request = ctypes.c_uint32.from_address(cpu + _INTERRUPT_REQUEST_OFFSET)
        self._icount_high = ctypes.c_uint16.from_address(icount_decr + 2)
        self._cpu = cpu
        _handlers[cpu] = handler

    def request(self) -> None:
        """INTR is up: have the CPU call the handler at its next TB exit."""
        self._request.value |= CPU_INTERRUPT_HARD
        self._icount_high.value = 0xFFFF

    def clear(self) -> None:
        self._request.value &= ~CPU_INTERRUPT_HARD

    def close(self) -> None:
        _handlers.pop(self._cpu, None)
