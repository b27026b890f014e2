"""The CPU layer on small hand-assembled guest programs: exception delivery through the
IDT (with error codes and CR2), SYSCALL from ring 3, external interrupts, CPUID, and a
guest that wrecks its own IDT (a triple fault the emulator survives and reports)."""
from __future__ import annotations

import struct

import pytest

from nitro_emu.boot.loader import GDT_ADDRESS, enter_long_mode, write_identity_page_tables
from board.bus import PortBus
from nitro_emu.cpu.cpuid import CpuidModel, host_tsc_hz
from nitro_emu.cpu.fastpath import load_library
from nitro_emu.cpu.vcpu import Vcpu
from board.memory import GuestRam

CODE, USER_CODE, IDT, TSS, STACK, HANDLERS = 0x10000, 0x20000, 0x3000, 0x4000, 0x8000, 0x30000
HLT, INT3, UD2, STI, SYSCALL, SYSRETQ = b"\xf4", b"\xcc", b"\x0f\x0b", b"\xfb", b"\x0f\x05", b"\x48\x0f\x07"
MOV_RAX_FROM_RBX = b"\x48\x8b\x03"          # mov rax, [rbx]
POP_R14 = b"\x41\x5e"                         # pop r14
MOV_R12_CR2 = b"\x41\x0f\x20\xd4"            # mov r12, cr2
MOV_R13_RCX = b"\x49\x89\xcd"                # mov r13, rcx
MOV_R14_R11 = b"\x4d\x89\xde"                # mov r14, r11


def mov_r12(value: int) -> bytes:
    return b"\x49\xc7\xc4" + struct.pack("<i", value)  # mov r12, imm32


GDT = [0, 0,
       0x00AF9B000000FFFF,   # 0x10 kernel code
       0x00CF93000000FFFF,   # 0x18 kernel data
       0x00CFFB000000FFFF,   # 0x20 user code32 (unused)
       0x00CFF3000000FFFF,   # 0x28 user data
       0x00AFFB000000FFFF]   # 0x30 user code64


def gate(handler: int, dpl: int = 0, ist: int = 0) -> bytes:
    """A 64-bit interrupt gate to `handler` in the kernel code segment."""
    return struct.pack("<HHBBHII", handler & 0xFFFF, 0x10, ist, 0x8E | (dpl << 5),
                       (handler >> 16) & 0xFFFF, handler >> 32, 0)


@pytest.fixture(params=[True, False], ids=["native-hooks", "python-hooks"])
def native(request) -> bool:
    """Every delivery test runs on both hook sets: the C ones and the Python ones."""
    if request.param and load_library() is None:
        pytest.skip("the native hooks cannot be built here (no C compiler)")
    return request.param


class MiniMachine:
    """Just a vCPU and 4 MiB of RAM, in long mode with an IDT of our own."""

    def __init__(self, user_pages: bool = False, native: bool = True) -> None:
        self.ram = GuestRam(4 << 20)
        ports = PortBus()
        self.vcpu = Vcpu(self.ram, ports.read, ports.write, CpuidModel(host_tsc_hz()),
                         native=native)
        assert self.vcpu.native == (native and load_library() is not None)
        write_identity_page_tables(self.ram, 0x7 if user_pages else 0x3)
        self.ram.write(GDT_ADDRESS, struct.pack(f"<{len(GDT)}Q", *GDT))
        enter_long_mode(self.vcpu, CODE)
        self.vcpu.write_register("gdtr", (GDT_ADDRESS, len(GDT) * 8 - 1))
        self.vcpu.write_register("idtr", (IDT, 256 * 16 - 1))
        self.vcpu.write_register("rsp", STACK)
        self.next_handler = HANDLERS

    def handler(self, vector: int, code: bytes, dpl: int = 0, ist: int = 0) -> int:
        address = self.next_handler
        self.ram.write(address, code)
        self.ram.write(IDT + vector * 16, gate(address, dpl, ist))
        self.next_handler += 0x100
        return address

    def tss(self, rsp0: int, ist1: int = 0) -> None:
        """A 64-bit TSS with these stacks, loaded as TR (descriptor cache set directly)."""
        self.ram.write(TSS, bytes(0x68))
        self.ram.write_u64(TSS + 4, rsp0)
        self.ram.write_u64(TSS + 36, ist1)
        tr = self.vcpu.internals.tables["tr"]
        tr.selector, tr.base, tr.limit, tr.flags = 0x40, TSS, 0x67, (1 << 15) | (0xB << 8)

    def run(self, code: bytes, at: int = CODE) -> None:
        self.ram.write(at, code)
        self.vcpu.write_register("rip", at)
        self.vcpu.run_slice()

    def reg(self, name: str) -> int:
        return self.vcpu.read_register(name)


def test_int3_is_delivered_through_the_idt_with_the_return_address(native) -> None:
    machine = MiniMachine(native=native)
    machine.handler(3, mov_r12(0x33) + HLT)
    machine.run(INT3 + HLT)
    assert machine.vcpu.fault is None
    assert machine.reg("r12") == 0x33
    rip, cs = struct.unpack("<QQ", machine.ram.read(STACK - 40, 16))
    assert (rip, cs) == (CODE + 1, 0x10)


def test_page_fault_has_cr2_and_error_code(native) -> None:
    machine = MiniMachine(native=native)
    machine.handler(14, POP_R14 + MOV_R12_CR2 + HLT)
    machine.vcpu.write_register("rbx", 0x1_0000_0000)  # beyond the mapped 4 GiB
    machine.run(MOV_RAX_FROM_RBX + HLT)
    assert machine.vcpu.fault is None
    assert machine.reg("r12") == 0x1_0000_0000
    assert machine.reg("r14") == 0  # supervisor read of a page that is not present
    assert machine.vcpu.counters["exceptions"] == 1


def test_invalid_opcode_is_delivered(native) -> None:
    machine = MiniMachine(native=native)
    machine.handler(6, mov_r12(6) + HLT)
    machine.run(UD2 + HLT)
    assert machine.vcpu.fault is None and machine.reg("r12") == 6


def enter_ring_3(machine: MiniMachine, user_code: bytes, syscall_entry: int = 0,
                 syscall_enabled: bool = True) -> None:
    """IRETQ to `user_code` at USER_CODE in ring 3 (user pages; the user stack is the RSP
    set before), SYSCALL set up to enter `syscall_entry` with IF masked; runs until the
    CPU halts or faults."""
    vcpu = machine.vcpu
    efer = vcpu.read_msr(0xC0000080)
    vcpu.write_msr(0xC0000080, efer | 1 if syscall_enabled else efer & ~1)  # EFER.SCE
    vcpu.write_msr(0xC0000081, (0x23 << 48) | (0x10 << 32))  # STAR
    vcpu.write_msr(0xC0000082, syscall_entry)  # LSTAR
    vcpu.write_msr(0xC0000084, 0x200)  # FMASK: clear IF
    machine.ram.write(USER_CODE, user_code)
    frame = STACK - 0x100
    machine.ram.write(frame, struct.pack("<5Q", USER_CODE, 0x33, 0x202, machine.reg("rsp"), 0x2B))
    vcpu.write_register("rsp", frame)
    machine.run(b"\x48\xcf")  # iretq


def test_syscall_from_ring_3_enters_lstar_in_ring_0(native) -> None:
    machine = MiniMachine(user_pages=True, native=native)
    vcpu = machine.vcpu
    entry = machine.handler(0x80, MOV_R13_RCX + MOV_R14_R11 + HLT)  # used as LSTAR target
    enter_ring_3(machine, SYSCALL + HLT, entry)
    assert vcpu.fault is None
    assert machine.reg("r13") == USER_CODE + 2        # RCX = return address
    assert machine.reg("r14") & 0x200                 # R11 = user RFLAGS (IF set)
    assert not machine.reg("rflags") & 0x200          # FMASK applied
    assert machine.reg("cs") == 0x10 and vcpu.cpl == 0
    assert vcpu.counters["syscalls"] == 1


def test_syscall_without_efer_sce_raises_invalid_opcode_at_the_instruction(native) -> None:
    machine = MiniMachine(user_pages=True, native=native)
    machine.tss(rsp0=0x9000)
    machine.handler(6, mov_r12(6) + HLT)
    enter_ring_3(machine, SYSCALL + HLT, machine.handler(0x80, HLT), syscall_enabled=False)
    assert machine.vcpu.fault is None and machine.reg("r12") == 6
    rip, cs = struct.unpack("<QQ", machine.ram.read(0x9000 - 40, 16))
    assert (rip, cs) == (USER_CODE, 0x33)


@pytest.mark.parametrize("ist", [0, 1])
def test_a_user_page_fault_switches_to_the_kernel_stack_from_the_tss(native, ist) -> None:
    machine = MiniMachine(user_pages=True, native=native)
    machine.tss(rsp0=0x9000, ist1=0xA000)
    machine.handler(14, POP_R14 + MOV_R12_CR2 + HLT, ist=ist)
    machine.vcpu.write_register("rbx", 0x1_0000_0000)  # beyond the mapped 4 GiB
    machine.vcpu.write_register("rsp", 0x7F00)
    enter_ring_3(machine, MOV_RAX_FROM_RBX + HLT)
    assert machine.vcpu.fault is None
    assert machine.vcpu.cpl == 0 and machine.reg("r12") == 0x1_0000_0000
    assert machine.reg("r14") == 4  # user-mode read of a page that is not present
    top = 0xA000 if ist else 0x9000
    assert machine.reg("rsp") == top - 40
    rip, cs, rflags, rsp, ss = struct.unpack("<5Q", machine.ram.read(top - 40, 40))
    assert (rip, cs, rsp, ss) == (USER_CODE, 0x33, 0x7F00, 0x2B)
    assert rflags & 0x200
    if native:
        assert machine.vcpu.counters["slow_exceptions"] == 0  # taken by the C hook itself


def test_native_hooks_hand_deliveries_that_would_fault_to_the_python_path() -> None:
    if load_library() is None:
        pytest.skip("the native hooks cannot be built here (no C compiler)")
    machine = MiniMachine(native=True)
    machine.handler(11, mov_r12(11) + HLT)
    not_present = bytearray(gate(HANDLERS))
    not_present[5] &= 0x7F
    machine.ram.write(IDT + 6 * 16, bytes(not_present))  # #UD's gate: #NP instead
    machine.run(UD2 + HLT)
    assert machine.vcpu.fault is None and machine.reg("r12") == 11
    assert machine.vcpu.counters["slow_exceptions"] == 1
    error_code, rip = struct.unpack("<QQ", machine.ram.read(STACK - 48, 16))
    assert (error_code, rip) == (6 * 16 + 2, CODE)  # IDT entry 6, external bit clear


def test_external_interrupt_wakes_a_halted_cpu(native) -> None:
    machine = MiniMachine(native=native)
    machine.handler(0x30, mov_r12(0x30) + HLT)
    machine.run(STI + HLT + b"\xeb\xfe")
    assert machine.vcpu.can_take_interrupt()
    machine.vcpu.inject_interrupt(0x30)
    machine.vcpu.run_slice()
    assert machine.vcpu.fault is None and machine.reg("r12") == 0x30


def test_an_external_interrupt_whose_delivery_faults_raises_that_fault(native) -> None:
    machine = MiniMachine(native=native)
    machine.handler(11, POP_R14 + mov_r12(11) + HLT)
    not_present = bytearray(gate(HANDLERS))
    not_present[5] &= 0x7F
    machine.ram.write(IDT + 0x30 * 16, bytes(not_present))
    machine.run(STI + HLT + b"\xeb\xfe")
    machine.vcpu.inject_interrupt(0x30)
    machine.vcpu.run_slice()
    assert machine.vcpu.fault is None and machine.reg("r12") == 11
    assert machine.reg("r14") == 0x30 * 16 + 2  # #NP names the IDT entry


def test_cpuid_hides_the_apic_and_reports_the_tsc_frequency(native) -> None:
    machine = MiniMachine(native=native)
    cpuid = b"\x0f\xa2"
    machine.vcpu.write_register("rax", 1)
    machine.run(cpuid + HLT)
    assert not machine.reg("edx") & (1 << 9)      # no local APIC
    assert not machine.reg("ecx") & (1 << 21)     # no x2APIC
    machine.vcpu.write_register("rax", 7)
    machine.vcpu.write_register("rcx", 0)
    machine.run(cpuid + HLT)
    assert not machine.reg("ebx") & (1 << 9)      # no ERMS: REP STOSQ pages, not STOSB
    assert not machine.reg("edx") & (1 << 4)      # no FSRM
    machine.vcpu.write_register("rax", 0x15)
    machine.run(cpuid + HLT)
    denominator, numerator, crystal = machine.reg("eax"), machine.reg("ebx"), machine.reg("ecx")
    assert crystal * numerator // denominator == machine.vcpu.cpuid.tsc_hz // 1000 * 1000


def cpuid_answers(machine: MiniMachine, queries) -> list[tuple[int, int, int, int]]:
    answers = []
    for leaf, subleaf in queries:
        machine.vcpu.write_register("rax", leaf)
        machine.vcpu.write_register("rcx", subleaf)
        machine.run(b"\x0f\xa2" + HLT)
        answers.append(tuple(machine.reg(r) for r in ("eax", "ebx", "ecx", "edx")))
    return answers


def test_native_and_python_cpuid_answer_alike() -> None:
    if load_library() is None:
        pytest.skip("the native hooks cannot be built here (no C compiler)")
    queries = [(leaf, subleaf) for leaf in (*range(0x20), *range(0x80000000, 0x8000000A),
                                            0x40000000, 0xFFFFFFFF)
               for subleaf in (0, 1, 2, 3, 0xFFFFFFFF)]
    machines = [MiniMachine(native=True), MiniMachine(native=False)]
    native, python = (cpuid_answers(m, queries) for m in machines)
    assert native == python
    assert any(answer != (0, 0, 0, 0) for answer in native)
    for machine in machines:  # OSXSAVE follows CR4.OSXSAVE in both
        machine.vcpu.write_register("cr4", machine.reg("cr4") | 1 << 18)
    native, python = (cpuid_answers(m, [(1, 0)]) for m in machines)
    assert native == python and native[0][2] & 1 << 27


@pytest.mark.parametrize("idt_limit", [0, 6 * 16 - 1])
def test_a_guest_without_a_usable_idt_triple_faults_without_harming_the_emulator(idt_limit, native) -> None:
    machine = MiniMachine(native=native)
    machine.vcpu.write_register("idtr", (IDT, idt_limit))
    machine.run(UD2 + HLT)
    assert machine.vcpu.fault is not None
    assert "triple fault" in str(machine.vcpu.fault)
    assert machine.vcpu.fault.rip == CODE
    assert "ud2" in machine.vcpu.disassemble(CODE)


def test_a_fault_on_an_unmapped_kernel_stack_becomes_a_double_fault(native) -> None:
    machine = MiniMachine(native=native)
    machine.handler(8, mov_r12(8) + HLT)
    machine.handler(6, mov_r12(6) + HLT)
    machine.vcpu.write_register("rsp", 0x1_0000_0010)
    machine.run(UD2 + HLT)
    # #UD's frame cannot be pushed (#PF on the stack), the #PF's cannot either: #DF, which
    # also needs the same stack, so the CPU shuts down.
    assert machine.vcpu.fault is not None and "triple fault" in str(machine.vcpu.fault)


def run_with_frequent_stops(machine: MiniMachine, slice_seconds: float = 0.00003) -> int:
    """Run to HLT, asking the vCPU to stop every few microseconds from another thread."""
    import time
    from nitro_emu.slice_timer import SliceTimer
    timer = SliceTimer(machine.vcpu.request_stop)
    slices = 0
    try:
        while True:
            timer.arm(time.monotonic() + slice_seconds)
            ended = machine.vcpu.run_slice()
            timer.disarm()
            slices += 1
            if ended != "stopped":
                return slices
    finally:
        timer.stop()


def test_stopping_a_slice_never_runs_a_read_modify_write_instruction_twice() -> None:
    # add [rbx], rcx; dec rcx; jnz: Unicorn's default exit check after the store would
    # leave with RIP still on the add, which then runs again on resume.
    machine = MiniMachine()
    count = 300_000
    body = bytes.fromhex("48010b" "48ffc9")
    loop = body + b"\x75" + bytes([(-(len(body) + 2)) & 0xFF]) + HLT
    machine.vcpu.write_register("rbx", 0x200000)
    machine.vcpu.write_register("rcx", count)
    machine.ram.write(CODE, loop)
    machine.vcpu.write_register("rip", CODE)
    slices = run_with_frequent_stops(machine)
    assert slices > 10  # the stops really happened
    assert machine.ram.read_u64(0x200000) == count * (count + 1) // 2


def test_stopping_between_a_fault_and_its_handler_loses_and_repeats_nothing(native) -> None:
    machine = MiniMachine(native=native)
    faults = 5000
    # #PF handler: count in r15, skip the 3-byte faulting load, return.
    machine.handler(14, POP_R14 + b"\x49\xff\xc7" + b"\x48\x83\x04\x24\x03" + b"\x48\xcf")
    body = MOV_RAX_FROM_RBX + b"\x49\x01\xcc" + b"\x48\xff\xc9"  # load (faults); r12 += rcx; rcx--
    loop = body + b"\x75" + bytes([(-(len(body) + 2)) & 0xFF]) + HLT
    vcpu = machine.vcpu
    vcpu.write_register("rbx", 0x1_0000_0000)
    vcpu.write_register("rcx", faults)
    machine.ram.write(CODE, loop)
    vcpu.write_register("rip", CODE)
    run_with_frequent_stops(machine)
    assert machine.vcpu.fault is None
    assert machine.reg("r15") == faults
    assert machine.reg("r12") == faults * (faults + 1) // 2
    assert machine.reg("rsp") == STACK


def test_many_cpus_in_one_process_each_find_their_own_state() -> None:
    # CPU classes of live instances sit next to each other on the heap; probing one must
    # not pick up its neighbour's fields.
    machines = [MiniMachine() for _ in range(12)]
    del machines[::3]
    machines += [MiniMachine() for _ in range(6)]
    for machine in machines:
        machine.handler(0x30, mov_r12(0x30) + HLT)
        machine.run(STI + HLT)
        machine.vcpu.inject_interrupt(0x30)
        machine.vcpu.run_slice()
        assert machine.reg("r12") == 0x30


def test_a_delivery_object_stood_in_its_place_sees_every_exception_and_interrupt(native) -> None:
    """What tracing does (nitro_emu/cpu/taps.py): the native hooks then take none
    themselves, and all of them still reach the guest."""
    machine = MiniMachine(native=native)
    seen = []

    class Watching:
        def __init__(self, inner) -> None:
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def deliver_pending_exception(self) -> None:
            seen.append(("exception", machine.vcpu.internals.exception_index.value))
            self._inner.deliver_pending_exception()

        def deliver_external_interrupt(self, vector: int) -> None:
            seen.append(("interrupt", vector))
            self._inner.deliver_external_interrupt(vector)

    own = machine.vcpu.delivery
    machine.vcpu.delivery = Watching(own)
    machine.handler(6, mov_r12(6) + STI + HLT)
    machine.handler(0x30, mov_r12(0x30) + HLT)
    machine.run(UD2 + HLT)
    machine.vcpu.inject_interrupt(0x30)
    machine.vcpu.run_slice()
    assert seen == [("exception", 6), ("interrupt", 0x30)]
    assert machine.vcpu.fault is None and machine.reg("r12") == 0x30
    machine.vcpu.delivery = own  # and back to the fast path
    machine.run(UD2 + HLT)
    assert len(seen) == 2 and machine.reg("r12") == 6
