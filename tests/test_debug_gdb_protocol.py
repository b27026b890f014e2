"""The GDB stub at the protocol level, against a real guest (hello.eif held before its
first instruction): the target description, registers, memory by virtual address,
breakpoints, steps, watchpoints, Ctrl-C, detach and kill, guest time standing still while
held, and a connection that sends garbage, which never hurts the emulator."""
from __future__ import annotations

import io
import random
import re
import socket
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import pytest

from support.images import GUEST_DIR, guest_image
from nitro_emu import Machine
from nitro_emu.boot.loader import BOOT_PARAMS_ADDRESS
from nitro_emu.debug import rsp
from nitro_emu.debug.config import DebugConfig
from nitro_emu.debug.registers import NUMBERS, REGISTERS
from nitro_emu.debug.symbols import SystemMap
from support.gdb_client import GdbClient

pytestmark = pytest.mark.guest
HELLO = b"Hello from the enclave side!"


@dataclass
class Held:
    machine: Machine
    client: GdbClient
    thread: threading.Thread
    results: list
    announcements: list

    def finish(self, timeout: float = 300):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the machine did not end"
        return self.results[0]

    @property
    def entry(self) -> int:
        """Where the vCPU starts (vmlinux's startup_64, or the decompressor's 64-bit entry)."""
        return self.machine.boot.entry

    def register(self, name: str) -> int:
        return int.from_bytes(rsp.from_hex(self.client.command(b"p%x" % NUMBERS[name])), "little")


@pytest.fixture
def held(state_dir):
    announcements: list[str] = []
    machine = Machine(guest_image("hello.eif"), guest_cid=16, console=io.BytesIO(),
                      state_dir=state_dir,
                      debug=DebugConfig(gdb=("127.0.0.1", 0), gdb_wait=True,
                                        announce=announcements.append))
    results: list = []
    thread = threading.Thread(target=lambda: results.append(machine.run(timeout=600)),
                              daemon=True)
    thread.start()
    client = GdbClient(machine.debug.stub.address)
    client.command(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    yield Held(machine, client, thread, results, announcements)
    machine.stop()
    thread.join(60)
    client.close()
    machine.close()


def kernel_symbols() -> SystemMap:
    return SystemMap.load(GUEST_DIR / "hello" / "System.map")


def test_the_target_description_names_every_register_gdb_needs(held: Held) -> None:
    xml, offset = b"", 0
    while True:  # in small pieces, as GDB may ask
        reply = held.client.command(b"qXfer:features:read:target.xml:%x,100" % offset)
        xml += rsp.unescape(reply[1:])
        offset += len(rsp.unescape(reply[1:]))
        if reply[:1] == b"l":
            break
        assert reply[:1] == b"m"
    root = ElementTree.fromstring(xml)
    assert root.find("architecture").text == "i386:x86-64"
    names = [reg.get("name") for reg in root.iter("reg")]
    assert names == [register.name for register in REGISTERS]
    assert {"rip", "eflags", "cs", "fs_base", "gs_base", "st7", "fop", "xmm15", "mxcsr",
            "cr3", "efer"} <= set(names)
    assert held.client.command(b"qXfer:features:read:other.xml:0,100").startswith(b"E")


def test_registers_at_the_boot_entry_read_and_write(held: Held) -> None:
    client = held.client
    assert client.command(b"?") == b"T05thread:01;"
    registers = rsp.from_hex(client.command(b"g"))
    assert len(registers) == sum(register.bits // 8 for register in REGISTERS)
    assert int.from_bytes(registers[16 * 8:17 * 8], "little") == held.entry  # rip follows r15
    assert held.register("rip") == held.entry
    assert held.register("rsi") == BOOT_PARAMS_ADDRESS
    assert held.register("cr0") & 0x80000001 == 0x80000001   # paging, protection
    assert client.command(b"P%x=%s" % (NUMBERS["rax"], rsp.to_hex((0x1122334455).to_bytes(8, "little")))) == b"OK"
    assert held.register("rax") == 0x1122334455
    assert client.command(b"P%x=%s" % (NUMBERS["cs"], b"33000000")).startswith(b"E")
    assert client.command(b"P%x=%s" % (NUMBERS["cr0"], b"00" * 8)).startswith(b"E")  # mode
    eflags = held.register("eflags")
    assert client.command(b"P%x=%s" % (NUMBERS["eflags"], rsp.to_hex((eflags | 0x41).to_bytes(4, "little")))) == b"OK"
    assert held.register("eflags") == eflags | 0x41                  # CF and ZF
    assert client.command(b"P%x=%s" % (NUMBERS["eflags"], rsp.to_hex((eflags | 0x20000).to_bytes(4, "little")))).startswith(b"E")  # VM
    assert client.command(b"p%x" % len(REGISTERS)).startswith(b"E")
    assert client.command(b"P%x=00" % NUMBERS["rbx"]).startswith(b"E")   # wrong size


def test_memory_is_read_and_written_by_virtual_address(held: Held) -> None:
    client, ram = held.client, held.machine.ram
    assert rsp.from_hex(client.command(b"m%x,20" % held.entry)) == ram.read(held.entry, 0x20)
    assert client.command(b"M300000,4:deadbeef") == b"OK"
    assert ram.read(0x300000, 4) == bytes.fromhex("deadbeef")
    special = b"}#$*\x03"
    assert client.command(b"X300010,%x:" % len(special) + rsp.escape(special)) == b"OK"
    assert rsp.from_hex(client.command(b"m300010,5")) == special == ram.read(0x300010, 5)
    big = rsp.from_hex(client.command(b"m300000,100000"))
    assert 0 < len(big) <= rsp.MAX_PACKET // 2
    assert client.command(b"mffff888000000000,8") == b"E0e"     # not mapped at boot
    assert client.command(b"m8000000000000000,8") == b"E0e"     # not canonical
    assert client.command(b"md0000000,4") == b"E0e"             # a device window, not RAM
    assert client.command(b"Mffff888000000000,1:00") == b"E0e"


def test_a_breakpoint_a_step_and_running_to_the_end(held: Held) -> None:
    client = held.client
    start_kernel = kernel_symbols().address_of("start_kernel")
    assert client.command(b"Z0,%x,1" % start_kernel) == b"OK"
    client.send(b"vCont;c")
    assert client.read_ack() == b"+"
    assert client.reply() == b"T05swbreak:;thread:01;"
    assert held.register("rip") == start_kernel
    assert client.command(b"z0,%x,1" % start_kernel) == b"OK"
    assert client.command(b"vCont;s:1") == b"T05thread:01;"
    assert start_kernel < held.register("rip") < start_kernel + 16
    client.send(b"c")
    assert client.read_ack() == b"+"
    assert client.reply() == b"W00"
    result = held.finish()
    assert result.ok and HELLO in held.machine.console_output


def test_a_write_watchpoint_reports_the_variable(held: Held) -> None:
    client = held.client
    jiffies = kernel_symbols().address_of("jiffies_64")
    start_kernel = kernel_symbols().address_of("start_kernel")
    client.command(b"Z0,%x,1" % start_kernel)     # the kernel's page tables map jiffies
    client.command(b"c")
    client.command(b"z0,%x,1" % start_kernel)
    assert client.command(b"Z2,%x,8" % jiffies) == b"OK"
    note = client.command(b"c")            # console text first: who wrote it
    writer = re.search(rb"accessed by the instruction at 0x([0-9a-f]+)", rsp.from_hex(note[1:]))
    assert note[:1] == b"O" and writer, note
    assert client.reply() == b"T05watch:%x;thread:01;" % jiffies
    stopped_at = held.register("rip")
    assert int(writer.group(1), 16) != stopped_at   # the writer, not where the block ended
    code = rsp.from_hex(held.client.command(b"m%s,10" % writer.group(1)))
    assert code  # the writing instruction is readable kernel text
    assert client.command(b"z2,%x,8" % jiffies) == b"OK"
    assert client.command(b"D") == b"OK"
    assert held.finish().ok


def test_ctrl_c_stops_the_running_guest_and_detach_lets_it_finish(held: Held) -> None:
    client = held.client
    client.send(b"c")
    assert client.read_ack() == b"+"
    time.sleep(0.05)  # well inside the boot (the kernel takes 0.2 s or more to its init)
    client.send_raw(b"\x03")
    assert client.reply() == b"T02thread:01;"
    assert held.register("rip") != held.entry
    assert client.command(b"D") == b"OK"
    assert held.finish().ok
    assert any("detached" in line for line in held.announcements)


def test_kill_ends_the_run(held: Held) -> None:
    held.client.send(b"k")
    result = held.finish()
    assert (result.reason, result.message) == ("stopped", "the debugger killed the enclave")


def test_guest_time_stands_still_while_the_debugger_holds_the_cpu(held: Held) -> None:
    machine, client = held.machine, held.client
    client.command(b"?")
    hold = 3.0
    before, tsc_before = machine.clock.now_ns(), machine.vcpu.internals.tsc_offset.value
    time.sleep(hold)
    client.command(b"s")  # guest time runs again for the one instruction only
    elapsed = machine.clock.now_ns() - before
    tsc_moved = (machine.vcpu.internals.tsc_offset.value - tsc_before) & (2 ** 64 - 1)
    tsc_moved -= 2 ** 64 if tsc_moved >> 63 else 0
    # Had the clock run, guest time would have moved by the whole hold; what it moved is
    # the step's own round trip (a bound with seconds of room, not a timing test).
    assert elapsed < (hold - 1.5) * 1e9, f"guest time moved {elapsed / 1e9:.3f} s in a {hold} s hold"
    assert tsc_moved < -(hold - 1.5) * machine.cpuid.tsc_hz  # the TSC was moved back by the hold


def test_garbage_from_the_debugger_never_hurts_the_emulator(held: Held) -> None:
    client = held.client
    client.send_raw(b"$?#00")                               # bad checksum
    assert client.read_ack() == b"-"
    client.send_raw(b"$" + b"A" * (rsp.MAX_PACKET + 100) + b"#00")  # far too long
    assert client.read_ack() == b"-"
    junk = random.Random(13).randbytes(1 << 16)
    client.send_raw(junk + b"#00")
    client.pending(1.0)
    for packet in (b"m", b"mzz,4", b"m10", b"M0,2:zz", b"M300000,2:00", b"X300000,1:}",
                   b"Z0", b"zq,1,1", b"P", b"G0", b"p", b"vCont;x", b"qXfer:features:read:target.xml:zz",
                   b"c zz", b"Z2,300000,0", b"C"):
        assert client.command(packet).startswith(b"E"), packet
    for packet in (b"Z9,0,1", b"Qfoo", b"vMustReplyEmpty", b"qFoo", b"!", b"\xff\xfe"):
        assert client.command(packet) == b"", packet
    assert client.command(b"?") == b"T05thread:01;"
    assert client.command(b"QStartNoAckMode") == b"OK"
    client.send(b"?")                                       # no more acks either way
    assert client.reply() == b"T05thread:01;"
    client.send(b"D")
    assert client.reply() == b"OK"
    assert held.finish().ok


def test_one_debugger_at_a_time(held: Held) -> None:
    second = socket.create_connection(held.machine.debug.stub.address, timeout=30)
    assert second.recv(16) == b""
    second.close()
    assert held.client.command(b"?") == b"T05thread:01;"


def test_a_debugger_that_floods_a_running_guest_with_packets_is_cut_off(held: Held) -> None:
    client = held.client
    client.send(b"c")
    assert client.read_ack() == b"+"
    client.send_raw(rsp.frame(b"?") * 2000)
    assert held.finish().ok   # dropped like a detach: the enclave ran to its end
    assert any("without waiting for answers" in line for line in held.announcements)
