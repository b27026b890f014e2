"""One x86-64 vCPU on Unicorn: RAM mapped from the host buffer, I/O ports and MMIO routed
to the buses, and the hooks that make up for what Unicorn leaves out (exceptions, SYSCALL,
CPUID, external interrupts; docs/architecture.md §3)."""
from __future__ import annotations

from typing import Callable

import unicorn
from unicorn import x86_const as x86

from nitro_emu.cpu.cpuid import CpuidModel
from nitro_emu.cpu.delivery import ExceptionDelivery, TripleFault
from nitro_emu.cpu.fastpath import NativeHooks, load_library
from nitro_emu.cpu.internals import (EFER_MSR, R_CS, R_SS, CpuInternals,
                                     disable_mid_instruction_exits)
from nitro_emu.cpu.interrupt_window import InterruptWindow
from nitro_emu.errors import NitroEmuError
from board.interfaces import MmioDevice
from board.memory import GuestRam

# Translated code is bump-allocated in one buffer and dropped all at once when it is full
# (QEMU's tb_flush). Unicorn's default is 1 GiB, which a long-running enclave fills page by
# page: its RSS crept ~1 MiB a minute in the soak benchmark. A boot and the test workloads
# translate 20-40 MiB; 128 MiB keeps flushes rare and every enclave's RSS bounded.
TCG_BUFFER_BYTES = 128 << 20
# An address no guest code can reach (non-canonical): emu_start runs until stopped.
_NEVER = 0x8000_0000_0000_0000
_RF = 1 << 16
_IF = 1 << 9
_EFER_SCE = 1
_HF_CS64 = 1 << 15
_UD = 6
# Hidden-cache flags of flat ring-0 segments (what SYSCALL loads, QEMU's helper_syscall,
# and what the boot protocol's __BOOT_CS / __BOOT_DS descriptors give).
FLAT_CODE64_FLAGS = (1 << 23) | (1 << 15) | (1 << 12) | (0xB << 8) | (1 << 21)  # G P S code/R/A L
FLAT_DATA_FLAGS = (1 << 23) | (1 << 22) | (1 << 15) | (1 << 12) | (0x3 << 8)  # G B P S data/W/A
_SEGMENT_INDEX = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}
KERNEL_GS_BASE_MSR = 0xC0000102
_TABLE_REGISTERS = ("gdtr", "idtr", "ldtr", "tr")
_SIZE_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


def _register_id(name: str) -> int:
    register = getattr(x86, f"UC_X86_REG_{name.upper()}", None)
    if not name.islower() or register is None:
        raise ValueError(f"unknown x86 register {name!r}")
    return register


class GuestFault(NitroEmuError):
    """The guest did something the machine cannot continue from (triple fault, access to
    unmapped memory)."""

    def __init__(self, message: str, rip: int) -> None:
        super().__init__(message)
        self.rip = rip


class Vcpu:
    """The CPU of the machine. `run_slice()` runs guest code until something stops it.

    SYSCALL, exceptions and CPUID go through native hooks (fastpath.c) when they can be
    built, else through the Python hooks below; `native=False` forces the Python ones."""

    def __init__(self, ram: GuestRam, port_read: Callable[[int, int], int],
                 port_write: Callable[[int, int, int], None], cpuid: CpuidModel,
                 native: bool = True) -> None:
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER_BYTES)   # before anything translates
        self.uc = uc
        self.internals = CpuInternals(uc)
        disable_mid_instruction_exits(uc)
        uc.mem_map_ptr(0, ram.size, unicorn.UC_PROT_ALL, ram.host_address)
        self.ram = ram
        self.cpuid = cpuid
        phys_bits = cpuid.lookup(0x80000008, 0)[0] & 0xFF
        self._own_delivery = ExceptionDelivery(self.internals, ram, phys_bits)
        self._delivery = self._own_delivery
        self._port_read = port_read
        self._port_write = port_write
        self.fault: GuestFault | None = None
        self._stopped = False
        self._stop_pending = False
        self._counters = {"exceptions": 0, "syscalls": 0, "interrupts": 0}
        regs = self.internals.regs
        self._regs = regs
        library = load_library() if native else None
        self._native: NativeHooks | None = None
        if library is not None:
            self._native = NativeHooks(
                library, self.internals, ram.host_address, ram.size,
                self._own_delivery.reserved_address_bits, FLAT_CODE64_FLAGS, FLAT_DATA_FLAGS,
                slow_exception=self._deliver_pending, slow_syscall=self._syscall_undefined,
                cpuid_table=cpuid.table())
        else:
            uc.hook_add(unicorn.UC_HOOK_INTR, self._on_exception)
            uc.hook_add(unicorn.UC_HOOK_INSN_INVALID, self._on_invalid_instruction)
            uc.hook_add(unicorn.UC_HOOK_INSN, self._on_syscall, None, 1, 0,
                        x86.UC_X86_INS_SYSCALL)
            uc.hook_add(unicorn.UC_HOOK_INSN, self._on_cpuid, None, 1, 0, x86.UC_X86_INS_CPUID)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_in, None, 1, 0, x86.UC_X86_INS_IN)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, x86.UC_X86_INS_OUT)
        # Only above RAM: with any memory hook covering a RAM page Unicorn never clears that
        # page's TLB_NOTDIRTY bit, and every store to RAM takes the slow path.
        uc.hook_add(unicorn.UC_HOOK_MEM_UNMAPPED, self._on_unmapped, None, ram.size,
                    0xFFFFFFFFFFFFFFFF)
        self._has_interrupt: Callable[[], bool] = lambda: False
        self._acknowledge: Callable[[], int] = lambda: 0
        self.window = InterruptWindow(self.internals, self._on_interrupt_window)

    def connect_interrupt_controller(self, has_interrupt: Callable[[], bool],
                                     acknowledge: Callable[[], int]) -> None:
        """The PIC's INTR line and INTA cycle."""
        self._has_interrupt = has_interrupt
        self._acknowledge = acknowledge

    @property
    def delivery(self) -> ExceptionDelivery:
        """How exceptions and interrupts reach the guest's IDT (delivery.py)."""
        return self._delivery

    @delivery.setter
    def delivery(self, delivery: ExceptionDelivery) -> None:
        """Stand another object in its place (a tracer's wrapper): while it is not the
        vCPU's own, the native hooks hand every exception and interrupt to it."""
        self._delivery = delivery
        if self._native is not None:
            self._native.all_deliveries_to_python(delivery is not self._own_delivery)

    @property
    def native(self) -> bool:
        """True when SYSCALL, exceptions and CPUID run through the native hooks."""
        return self._native is not None

    @property
    def counters(self) -> dict[str, int]:
        """Events so far: exceptions, syscalls, interrupts (and, with the native hooks,
        slow_exceptions: those handed back to the Python path)."""
        counters = dict(self._counters)
        if self._native is not None:
            for name, value in self._native.counters.items():
                counters[name] = counters.get(name, 0) + value
        return counters

    # -- state -----------------------------------------------------------------------------

    def enter_long_mode(self, *, rip: int, rsi: int, rsp: int, cr3: int, gdt_base: int,
                        gdt_limit: int, code_selector: int, data_selector: int) -> None:
        """64-bit mode with paging on (PAE, page tables at `cr3`), flat ring-0 segments
        from the given selectors, interrupts off: the state the boot protocol's 64-bit
        entry expects (boot.rst, "64-bit Boot Protocol")."""
        uc, internals = self.uc, self.internals
        uc.reg_write(x86.UC_X86_REG_GDTR, (0, gdt_base, gdt_limit, 0))
        uc.reg_write(x86.UC_X86_REG_CR4, 0x20)  # PAE
        uc.reg_write(x86.UC_X86_REG_CR3, cr3)
        uc.msr_write(EFER_MSR, 0x500)  # LME | LMA
        uc.reg_write(x86.UC_X86_REG_CR0, 0x80000031)  # PG | NE | ET | PE
        internals.load_flat_segment(R_CS, code_selector, FLAT_CODE64_FLAGS)
        for name in ("es", "ss", "ds", "fs", "gs"):
            internals.load_flat_segment(_SEGMENT_INDEX[name], data_selector, FLAT_DATA_FLAGS)
        internals.set_cpl(0)
        uc.reg_write(x86.UC_X86_REG_RFLAGS, 0x2)
        uc.reg_write(x86.UC_X86_REG_RSI, rsi)
        uc.reg_write(x86.UC_X86_REG_RSP, rsp)
        uc.reg_write(x86.UC_X86_REG_RIP, rip)

    def read_register(self, name: str) -> int | tuple[int, int]:
        """A register by its lower-case name ("rax", "rip", "cr3", "fs_base", ...);
        descriptor-table registers ("gdtr", "idtr", "ldtr", "tr") read as (base, limit)."""
        value = self.uc.reg_read(_register_id(name))
        if name in _TABLE_REGISTERS:
            return value[1], value[2]
        return value

    def write_register(self, name: str, value: int | tuple[int, int]) -> None:
        """Set a register by name (see `read_register`)."""
        if name in _TABLE_REGISTERS:
            base, limit = value
            value = (0, base, limit, 0)
        self.uc.reg_write(_register_id(name), value)

    def read_msr(self, index: int) -> int:
        return self.uc.msr_read(index)

    def write_msr(self, index: int, value: int) -> None:
        self.uc.msr_write(index, value)

    def map_mmio(self, base: int, size: int, device: MmioDevice) -> None:
        """Route guest-physical [base, base+size) to `device` (offsets from `base`)."""

        def read(uc: unicorn.Uc, offset: int, access_size: int, _: object) -> int:
            return device.mmio_read(offset, access_size)

        def write(uc: unicorn.Uc, offset: int, access_size: int, value: int, _: object) -> None:
            device.mmio_write(offset, access_size, value)

        self.uc.mmio_map(base, size, read, None, write, None)

    def request_interrupt(self) -> None:
        """INTR went up: the CPU takes the interrupt as soon as RFLAGS.IF allows, inside
        the running slice (or, if halted, the run loop delivers it)."""
        self.window.request()

    # -- running ---------------------------------------------------------------------------

    def run_slice(self) -> str:
        """Run from the current RIP. Returns "halt" (the guest executed HLT), "stopped"
        (`request_stop()`), or "fault" (see `self.fault`)."""
        self.internals.old_exception.value = -1  # docs/architecture.md §3.5
        self._stopped = False
        rip = self.internals.eip.value
        try:
            self.uc.emu_start(rip, _NEVER)
        except TripleFault as error:
            self.fault = GuestFault(str(error), self.internals.eip.value)
        except unicorn.UcError as error:
            if self.fault is None:
                self.fault = GuestFault(f"CPU error: {error}", self.internals.eip.value)
        if self.fault is not None:
            return "fault"
        return "stopped" if self._stopped else "halt"

    def request_stop(self) -> None:
        """End the running slice at the next translation-block boundary. Safe from any
        thread: it only sets flags that the CPU checks itself. (Unicorn's emu_stop from
        another thread can land while an exception is being raised and corrupt the guest
        state, so it is only ever called on the CPU thread, from the handler below.)"""
        self._stop_pending = True
        self.window.request()

    def close(self) -> None:
        self.window.close()

    def end_slice(self) -> None:
        """From inside a CPU callback (a debugger's breakpoint, step or watchpoint): end
        the running slice; `run_slice` returns "stopped"."""
        self._emu_stop()

    def _emu_stop(self) -> None:
        self._stopped = True
        self.uc.emu_stop()

    @property
    def interrupts_enabled(self) -> bool:
        return bool(self.internals.eflags.value & _IF)

    def can_take_interrupt(self) -> bool:
        """IF set and not in an STI/MOV SS shadow."""
        return self.interrupts_enabled and not self.internals.interrupts_inhibited()

    def inject_interrupt(self, vector: int) -> None:
        """Deliver an external interrupt now (between slices)."""
        self._counters["interrupts"] += 1
        try:
            self._deliver_interrupt(vector)
        except TripleFault as error:
            self.fault = GuestFault(str(error), self.internals.eip.value)

    def advance_tsc(self, nanoseconds: int) -> None:
        """Move the guest TSC forward with virtual time skipped while idle."""
        offset = self.internals.tsc_offset
        offset.value = (offset.value + nanoseconds * self.cpuid.tsc_hz // 1_000_000_000) \
            & 0xFFFFFFFFFFFFFFFF

    def disassemble(self, address: int) -> str:
        """The instruction at `address` as text, for error reports."""
        import capstone  # only for error reports: kept off the start-up path
        code = self.delivery.read_linear(address, 15)
        if code is None:
            return "(instruction not readable)"
        for instruction in capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(code, address):
            return f"{instruction.mnemonic} {instruction.op_str}".strip()
        return f"(undecodable bytes {code.hex()})"

    @property
    def rip(self) -> int:
        return self.internals.eip.value

    @property
    def cpl(self) -> int:
        """The current privilege level (0 kernel, 3 user)."""
        return self.internals.hflags.value & 3

    # -- hooks (hot paths: keep them short) ------------------------------------------------
    # They look `self._delivery` up at each event, so a tracer can stand a wrapper in its
    # place (the `delivery` setter; nitro_emu.debug.trace; the native hooks then send every
    # delivery here); an untraced machine pays one attribute load for that.

    def _on_interrupt_window(self, request: int) -> bool:
        """Called by TCG at a TB exit while an interrupt request is pending."""
        try:
            if self._stop_pending:
                self._stop_pending = False
                self._emu_stop()
                if not self._has_interrupt():
                    self.window.clear()
                return False
            if not self._has_interrupt():
                self.window.clear()
                return False
            if not self.internals.eflags.value & _IF or self.internals.interrupts_inhibited():
                return False
            self._counters["interrupts"] += 1
            self._deliver_interrupt(self._acknowledge())
            if not self._has_interrupt():
                self.window.clear()
            return True
        except TripleFault as error:
            self.window.clear()
            self._shut_down(error)
            return True
        except BaseException as error:  # never let an exception unwind into C
            self.window.clear()
            self._emulator_error("delivering an interrupt", error)
            return False

    def _deliver_interrupt(self, vector: int) -> None:
        """An external interrupt through the native check when there is one (it hands
        back any delivery that would fault), else the Python one. Raises TripleFault."""
        if self._native is None or not self._native.deliver_interrupt(vector):
            self._delivery.deliver_external_interrupt(vector)

    def _on_exception(self, uc: unicorn.Uc, vector: int, _: object) -> None:
        self._counters["exceptions"] += 1
        self._deliver_pending()

    def _on_invalid_instruction(self, uc: unicorn.Uc, _: object) -> bool:
        self._counters["exceptions"] += 1
        self._deliver_pending()
        return True

    def _deliver_pending(self) -> None:
        """The exception Unicorn raised, through the checked delivery (also the native
        hooks' path for every case they do not take themselves)."""
        try:
            self._delivery.deliver_pending_exception()
        except TripleFault as error:
            self._shut_down(error)
        except BaseException as error:  # never let an exception unwind into C
            self._emulator_error("delivering an exception", error)

    def _emulator_error(self, doing: str, error: BaseException) -> None:
        self.fault = GuestFault(f"emulator error while {doing}: {error!r}",
                                self.internals.eip.value)
        self._emu_stop()

    def _shut_down(self, error: TripleFault) -> None:
        """The CPU cannot deliver an exception: record it and end the slice. The guest's
        state is left as it was at the faulting instruction."""
        self.fault = GuestFault(str(error), self.internals.eip.value)
        self._emu_stop()

    def _on_in(self, uc: unicorn.Uc, port: int, size: int, _: object) -> int:
        return self._port_read(port, size) & _SIZE_MASK[size]

    def _on_out(self, uc: unicorn.Uc, port: int, size: int, value: int, _: object) -> None:
        self._port_write(port, size, value & _SIZE_MASK[size])

    def _on_syscall(self, uc: unicorn.Uc, _: object) -> None:
        """SYSCALL in 64-bit mode, as QEMU's helper_syscall does it (Unicorn only calls
        hooks and then adds 2 to RIP, so RIP is set to LSTAR - 2)."""
        internals = self.internals
        self._counters["syscalls"] += 1
        rip = internals.eip.value
        if not internals.hflags.value & _HF_CS64 or not internals.efer.value & _EFER_SCE:
            self._syscall_undefined()
            return
        regs = self._regs
        regs[1] = rip + 2
        regs[11] = internals.compute_rflags() & ~_RF
        internals.load_rflags(internals.eflags.value & ~(internals.fmask.value | _RF))
        selector = (internals.star.value >> 32) & 0xFFFF
        internals.load_flat_segment(R_CS, selector & 0xFFFC, FLAT_CODE64_FLAGS)
        internals.load_flat_segment(R_SS, (selector + 8) & 0xFFFC, FLAT_DATA_FLAGS)
        internals.set_cpl(0)
        internals.eip.value = (internals.lstar.value - 2) & 0xFFFFFFFFFFFFFFFF

    def _syscall_undefined(self) -> None:
        """SYSCALL outside 64-bit mode or with EFER.SCE clear: #UD at the instruction."""
        try:
            self._delivery.deliver_exception(_UD, 0)
        except TripleFault as error:
            self._shut_down(error)
        except BaseException as error:  # never let an exception unwind into C
            self._emulator_error("raising #UD for SYSCALL", error)
        self.internals.eip.value -= 2

    def _on_cpuid(self, uc: unicorn.Uc, _: object) -> int:
        regs = self._regs
        leaf, subleaf = regs[0] & 0xFFFFFFFF, regs[1] & 0xFFFFFFFF
        eax, ebx, ecx, edx = self.cpuid.lookup(leaf, subleaf)
        if leaf == 1:  # OSXSAVE mirrors CR4.OSXSAVE
            ecx = (ecx & ~(1 << 27)) | ((self.internals.cr[4] >> 18) & 1) << 27
        regs[0], regs[3], regs[1], regs[2] = eax, ebx, ecx, edx
        return 1

    def _on_unmapped(self, uc: unicorn.Uc, access: int, address: int, size: int,
                     value: int, _: object) -> bool:
        kind = {unicorn.UC_MEM_READ_UNMAPPED: "read", unicorn.UC_MEM_WRITE_UNMAPPED: "write",
                unicorn.UC_MEM_FETCH_UNMAPPED: "instruction fetch"}.get(access, "access")
        self.fault = GuestFault(f"guest {kind} of unmapped memory at {address:#x}",
                                self.internals.eip.value)
        return False
