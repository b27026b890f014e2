"""The vCPU's debugger port on small hand-assembled programs: breakpoints stop before
their instruction, a step runs exactly one, watchpoints catch writes and reads, memory is
read and written by virtual address through the page tables, and nothing of it stays
behind once the port is closed."""
from __future__ import annotations

import struct

from nitro_emu.boot.loader import PD_ADDRESS
from nitro_emu.cpu.debugging import DebugPort, Stop
from test_cpu import CODE, HLT, INT3, MiniMachine, mov_r12

INC_RAX = b"\x48\xff\xc0"
MOV_TO_MEM = b"\x48\x89\x03"        # mov [rbx], rax
MOV_FROM_MEM = b"\x48\x8b\x0b"      # mov rcx, [rbx]
NOP = b"\x90"
DATA = 0x50000


def machine_with_port() -> tuple[MiniMachine, DebugPort]:
    machine = MiniMachine()
    return machine, DebugPort(machine.vcpu)


def test_a_breakpoint_stops_before_its_instruction_and_the_run_resumes_from_there() -> None:
    machine, port = machine_with_port()
    machine.ram.write(CODE, INC_RAX * 5 + HLT)
    port.add_breakpoint(CODE + 9)
    machine.vcpu.write_register("rip", CODE)
    assert machine.vcpu.run_slice() == "stopped"
    assert port.stop == Stop("breakpoint", CODE + 9)
    assert machine.reg("rip") == CODE + 9 and machine.reg("rax") == 3
    assert port.remove_breakpoint(CODE + 9)
    port.prepare_to_run()
    assert machine.vcpu.run_slice() == "halt"
    assert machine.reg("rax") == 5 and port.stop is None


def test_single_steps_run_one_instruction_each_then_the_machine_runs_on_at_full_speed() -> None:
    machine, port = machine_with_port()
    machine.ram.write(CODE, INC_RAX * 4 + HLT)
    machine.vcpu.write_register("rip", CODE)
    for count in (1, 2):
        assert port.step() == "stopped"
        assert machine.reg("rax") == count and machine.reg("rip") == CODE + 3 * count
        assert port.stop == Stop("step", CODE + 3 * count)
    port.prepare_to_run()
    assert machine.vcpu.run_slice() == "halt"
    assert machine.reg("rax") == 4


def test_a_step_into_an_exception_ends_at_the_handler_entry() -> None:
    machine, port = machine_with_port()
    handler = machine.handler(3, mov_r12(0x33) + HLT)
    machine.ram.write(CODE, INT3)
    machine.vcpu.write_register("rip", CODE)
    assert port.step() == "stopped"
    assert machine.reg("rip") == handler and machine.reg("r12") == 0
    assert machine.vcpu.fault is None


def test_a_step_into_an_invalid_instruction_ends_after_the_handler_first_instruction() -> None:
    """#UD is delivered from Unicorn's invalid-instruction hook, which ends the hook chain,
    so the step only ends at the next instruction boundary, inside the handler."""
    machine, port = machine_with_port()
    handler = machine.handler(6, mov_r12(0x66) + HLT)
    machine.ram.write(CODE, b"\x0f\x0b")  # ud2
    machine.vcpu.write_register("rip", CODE)
    assert port.step() == "stopped"
    assert machine.reg("rip") == handler + 7 and machine.reg("r12") == 0x66


def test_a_write_watchpoint_stops_the_slice_soon_after_the_write_and_names_the_address() -> None:
    machine, port = machine_with_port()
    machine.ram.write(CODE, INC_RAX + MOV_TO_MEM + b"\xeb\x00" + INC_RAX * 3 + HLT)
    machine.vcpu.write_register("rbx", DATA + 4)
    assert port.add_watchpoint(DATA, 16, "write")
    machine.vcpu.write_register("rip", CODE)
    assert machine.vcpu.run_slice() == "stopped"
    assert port.stop == Stop("write", DATA + 4, by=CODE + 3)  # the mov made the write
    assert machine.ram.read_u64(DATA + 4) == 1            # the write happened
    assert machine.reg("rip") == CODE + 8                 # end of the writing block
    assert port.remove_watchpoint(DATA, 16, "write")
    port.prepare_to_run()
    assert machine.vcpu.run_slice() == "halt" and machine.reg("rax") == 4


def test_a_read_watchpoint_ignores_writes_and_catches_an_overlapping_read() -> None:
    machine, port = machine_with_port()
    machine.ram.write(CODE, MOV_TO_MEM + b"\x48\x83\xc3\x04" + MOV_FROM_MEM + HLT)  # add rbx, 4
    machine.vcpu.write_register("rbx", DATA)
    assert port.add_watchpoint(DATA + 8, 2, "read")
    machine.vcpu.write_register("rip", CODE)
    assert machine.vcpu.run_slice() == "stopped"
    assert port.stop == Stop("read", DATA + 8, by=CODE + 7)  # the 8-byte read at DATA+4


def test_memory_is_read_and_written_by_virtual_address_and_unmapped_pages_cut_it_short() -> None:
    machine, port = machine_with_port()
    machine.ram.write_u64(PD_ADDRESS + 8, 0)  # 2 MiB..4 MiB not present
    machine.ram.write(0x1FFFF0, bytes(range(16)))
    assert port.memory.read(0x1FFFF0, 64) == bytes(range(16))
    assert port.memory.read(0x200000, 4) == b""
    assert port.memory.read(0x8000_0000_0000_0000, 8) == b""   # not canonical
    assert port.memory.read(0xFFFF_FFFF_FFFF_FFF8, 8) == b""   # canonical, not mapped
    assert port.memory.read(0x7FFFF0, 8) == b""                # mapped, outside RAM
    assert port.memory.write(0x1FFFFC, b"\xaa" * 8) == 4
    assert machine.ram.read(0x1FFFFC, 4) == b"\xaa" * 4


def test_written_code_is_the_code_that_runs_next() -> None:
    machine, port = machine_with_port()
    machine.ram.write(CODE, INC_RAX + HLT)
    machine.vcpu.write_register("rip", CODE)
    machine.vcpu.run_slice()
    assert port.memory.write(CODE, NOP * 3) == 3
    machine.vcpu.write_register("rip", CODE)
    machine.vcpu.run_slice()
    assert machine.reg("rax") == 1


def test_large_pages_and_4k_pages_translate_like_the_mmu() -> None:
    machine, port = machine_with_port()
    assert port.memory.translate(0x123456) == 0x123456           # identity, 2 MiB page
    table = 0x60000
    machine.ram.write(table, struct.pack("<512Q", *[(0x300000 + i * 0x1000) | 3 for i in range(512)]))
    machine.ram.write_u64(PD_ADDRESS + 8, table | 3)      # 2..4 MiB through a page table
    assert port.memory.translate(0x200000 + 0x1234) == 0x301234


def test_closing_the_port_removes_breakpoints_and_watchpoints() -> None:
    machine, port = machine_with_port()
    machine.ram.write(CODE, INC_RAX + MOV_TO_MEM + INC_RAX + HLT)
    machine.vcpu.write_register("rbx", DATA)
    port.add_breakpoint(CODE + 3)
    port.add_watchpoint(DATA, 8, "write")
    port.close()
    machine.vcpu.write_register("rip", CODE)
    assert machine.vcpu.run_slice() == "halt"
    assert machine.reg("rax") == 2
