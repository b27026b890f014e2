"""Taps on the vCPU's events for tracing: system calls, exceptions and external
interrupts reported to Python callbacks with the state the CPU had just before.

Installed only when a trace asks for them, so an untraced machine runs exactly as
before: the system-call tap is a second SYSCALL hook (Unicorn calls every one, after the
vCPU's own, so it sees the arguments but RIP already at the kernel entry: the user RIP is
RCX - 2), and exceptions and interrupts are seen by standing a wrapper in the place of
the vCPU's delivery object, which its hooks look up at each event. For device (MMIO)
accesses, `sync_device_rip()` makes RIP the accessing instruction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import unicorn
from unicorn import x86_const as x86

from nitro_emu.cpu.delivery import ERROR_CODE_VECTORS, ExceptionDelivery
from nitro_emu.cpu.internals import DeviceAccessPc
from nitro_emu.cpu.vcpu import Vcpu

_PAGE_FAULT = 14
_SYSCALL_LENGTH = 2
SYSCALL_REGISTERS = ("rax", "rdi", "rsi", "rdx", "r10", "r8", "r9")


@dataclass(frozen=True)
class CpuEvent:
    """Where the CPU was when the event came: RIP of the instruction (for `int n`, the
    instruction itself) and the privilege level it ran at."""

    rip: int
    cpl: int


@dataclass(frozen=True)
class ExceptionEvent(CpuEvent):
    vector: int
    software: bool            # int n / int3 / into (not a fault)
    error_code: int | None    # for the vectors that push one
    cr2: int | None           # for page faults


@dataclass(frozen=True)
class InterruptEvent(CpuEvent):
    vector: int


@dataclass(frozen=True)
class SyscallEvent(CpuEvent):
    number: int
    arguments: tuple[int, ...]


class CpuTaps:
    """Reports the events a trace asks for until `close()`."""

    def __init__(self, vcpu: Vcpu, *,
                 on_syscall: Callable[[SyscallEvent], None] | None = None,
                 on_exception: Callable[[ExceptionEvent], None] | None = None,
                 on_interrupt: Callable[[InterruptEvent], None] | None = None) -> None:
        self._vcpu = vcpu
        self._hook = None
        self._device_pc: DeviceAccessPc | None = None
        self._original_delivery: ExceptionDelivery | None = None
        if on_syscall is not None:
            registers = [getattr(x86, f"UC_X86_REG_{name.upper()}") for name in SYSCALL_REGISTERS]
            read = vcpu.uc.reg_read

            def syscall_hook(uc: unicorn.Uc, _: object) -> None:
                values = [read(register) for register in registers]
                rip = (read(x86.UC_X86_REG_RCX) - _SYSCALL_LENGTH) & 0xFFFFFFFFFFFFFFFF
                # SYSCALL comes from user mode in Linux (the upper half is the kernel's)
                on_syscall(SyscallEvent(rip, 3 if rip >> 63 == 0 else 0, values[0],
                                        tuple(values[1:])))

            self._hook = vcpu.uc.hook_add(unicorn.UC_HOOK_INSN, syscall_hook, None, 1, 0,
                                          x86.UC_X86_INS_SYSCALL)
        if on_exception is not None or on_interrupt is not None:
            self._original_delivery = vcpu.delivery
            vcpu.delivery = _TappedDelivery(vcpu, vcpu.delivery, on_exception, on_interrupt)

    def sync_device_rip(self) -> None:
        """From inside an MMIO callback: RIP becomes the accessing instruction."""
        if self._device_pc is None:
            self._device_pc = DeviceAccessPc(self._vcpu.internals)
        self._device_pc.sync()

    def close(self) -> None:
        if self._hook is not None:
            self._vcpu.uc.hook_del(self._hook)
            self._hook = None
        if self._original_delivery is not None:
            self._vcpu.delivery = self._original_delivery
            self._original_delivery = None


class _TappedDelivery:
    """The vCPU's ExceptionDelivery with a report before each delivery."""

    def __init__(self, vcpu: Vcpu, inner: ExceptionDelivery,
                 on_exception: Callable[[ExceptionEvent], None] | None,
                 on_interrupt: Callable[[InterruptEvent], None] | None) -> None:
        self._inner = inner
        self._internals = vcpu.internals
        self._on_exception = on_exception
        self._on_interrupt = on_interrupt

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def deliver_pending_exception(self) -> None:
        if self._on_exception is not None:
            internals = self._internals
            vector = internals.exception_index.value
            software = bool(internals.exception_is_int.value)
            rip = internals.eip.value
            if software:  # Unicorn has already moved RIP past `int n`, `int3` or `into`
                rip = (rip - (2 if vector not in (3, 4) else 1)) & 0xFFFFFFFFFFFFFFFF
            self._report(vector, software, rip, internals.error_code.value)
        self._inner.deliver_pending_exception()

    def deliver_exception(self, vector: int, error_code: int) -> None:
        if self._on_exception is not None:
            self._report(vector, False, self._internals.eip.value, error_code)
        self._inner.deliver_exception(vector, error_code)

    def deliver_external_interrupt(self, vector: int) -> None:
        if self._on_interrupt is not None:
            internals = self._internals
            self._on_interrupt(InterruptEvent(internals.eip.value, internals.hflags.value & 3,
                                              vector))
        self._inner.deliver_external_interrupt(vector)

    def _report(self, vector: int, software: bool, rip: int, error_code: int) -> None:
        internals = self._internals
        has_code = not software and vector in ERROR_CODE_VECTORS
        self._on_exception(ExceptionEvent(
            rip, internals.hflags.value & 3, vector, software,
            error_code & 0xFFFFFFFF if has_code else None,
            internals.cr[2] if vector == _PAGE_FAULT else None))
