"""The 16550A driven as Linux 6.12's 8250 driver does (drivers/tty/serial/8250/8250_port.c):
autoconfig (IER test, loopback test, FIFO probe, the 16550A-variant probes, size_fifo),
the startup THRE tests, printk's polled output, interrupt-driven transmit and receive
through a real 8259 pair."""
from __future__ import annotations

import pytest

from devices.legacy.pic import Pic8259Pair
from devices.legacy.uart import INPUT_LIMIT, Uart16550

BASE = 0x3F8
RX = TX = DLL = 0
IER = DLM = 1
IIR = FCR = EFR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


class Board:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.pic = Pic8259Pair(lambda: None)
        for port, value in ((0x21, 0xFF), (0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01),
                            (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01),
                            (0x21, 0xEB), (0xA1, 0xFF)):
            self.pic.port_write(port, 1, value)          # Linux's init; IRQ 2 and 4 unmasked
        self.uart = Uart16550(self.pic.line(4), self.out.append)

    def inb(self, reg: int) -> int:
        return self.uart.port_read(BASE + reg, 1)

    def outb(self, value: int, reg: int) -> None:
        self.uart.port_write(BASE + reg, 1, value)

    def take_irq4(self) -> bool:
        if not self.pic.has_interrupt():
            return False
        assert self.pic.acknowledge() == 0x34
        self.pic.port_write(0x20, 1, 0x64)               # specific EOI
        return True

    def output(self) -> bytes:
        self.uart.flush()
        return b"".join(self.out)


def autoconfig(b: Board) -> str:
    """autoconfig() + autoconfig_16550a() with CONFIG_SERIAL_8250_16550A_VARIANTS."""
    scratch = b.inb(IER)
    b.outb(0, IER)
    scratch2 = b.inb(IER) & 0x0F
    b.outb(0x0F, IER)
    scratch3 = b.inb(IER) & 0x0F
    b.outb(scratch, IER)
    if scratch2 != 0 or scratch3 != 0x0F:
        return "IER test failed"
    save_mcr, save_lcr = b.inb(MCR), b.inb(LCR)
    b.outb(0x10 | 0x08 | 0x02, MCR)                       # LOOP | OUT2 | RTS
    status1 = b.inb(MSR) & 0xF0
    b.outb(save_mcr, MCR)
    if status1 != 0x80 | 0x10:                            # DCD | CTS
        return "LOOP test failed"
    b.outb(0xBF, LCR)
    b.outb(0, EFR)
    b.outb(0, LCR)
    b.outb(0x01, FCR)
    kind = {0: "8250", 1: "unknown", 2: "16550", 3: "16550A"}[b.inb(IIR) >> 6]
    if kind == "16550A":
        kind = autoconfig_16550a(b)
    b.outb(save_lcr, LCR)
    b.outb(save_mcr, MCR)
    b.outb(0x01, FCR)                                     # serial8250_clear_fifos
    b.outb(0x07, FCR)
    b.outb(0, FCR)
    b.inb(RX)
    b.outb(0, IER)
    return kind


def autoconfig_16550a(b: Board) -> str:
    b.outb(0x80, LCR)
    if b.inb(EFR) == 0:
        return "EFRv1 or Motorola"
    b.outb(0xBF, LCR)
    if b.inb(EFR) == 0:
        return "EFRv2"
    b.outb(0, LCR)
    status1 = b.inb(MCR)
    b.outb(0xE0, LCR)
    status2 = b.inb(2)
    if not ((status2 ^ status1) & 0x10):
        b.outb(0, LCR)
        b.outb(status1 ^ 0x10, MCR)
        b.outb(0xE0, LCR)
        status2 = b.inb(2)
        b.outb(0, LCR)
        b.outb(status1, MCR)
        if (status2 ^ status1) & 0x10:
            return "NS16550A"
    b.outb(0, LCR)
    b.outb(0x21, FCR)
    status1 = b.inb(IIR) & 0xE0
    b.outb(0x01, FCR)
    b.outb(0x80, LCR)
    b.outb(0x21, FCR)
    status2 = b.inb(IIR) & 0xE0
    b.outb(0x01, FCR)
    b.outb(0, LCR)
    if status1 == 0xC0 and status2 == 0xE0:
        return "16750"
    iersave = b.inb(IER)
    b.outb(iersave & ~0x40, IER)
    if not b.inb(IER) & 0x40:
        b.outb(iersave | 0x40, IER)
        if b.inb(IER) & 0x40:
            return "XScale"
    b.outb(iersave, IER)
    if size_fifo(b) == 64:
        return "U6_16550A"
    return "16550A"


def size_fifo(b: Board) -> int:
    old_lcr = b.inb(LCR)
    b.outb(0, LCR)
    old_fcr = b.inb(FCR)
    old_mcr = b.inb(MCR)
    b.outb(0x07, FCR)
    b.outb(0x10, MCR)
    b.outb(0x80, LCR)
    old_dl = b.inb(DLL) | b.inb(DLM) << 8
    b.outb(1, DLL)
    b.outb(0, DLM)
    b.outb(0x03, LCR)
    for count in range(256):
        b.outb(count, TX)
    count = 0
    while b.inb(LSR) & 0x01 and count < 256:
        b.inb(RX)
        count += 1
    b.outb(old_fcr, FCR)
    b.outb(old_mcr, MCR)
    b.outb(0x80, LCR)
    b.outb(old_dl & 0xFF, DLL)
    b.outb(old_dl >> 8, DLM)
    b.outb(old_lcr, LCR)
    return count


def startup(b: Board) -> set[str]:
    """serial8250_do_startup for an ISA port with an IRQ: returns the bugs it detects."""
    bugs = set()
    b.outb(0x01, FCR)
    b.outb(0x07, FCR)
    b.outb(0, FCR)
    b.inb(LSR), b.inb(RX), b.inb(IIR), b.inb(MSR)
    assert b.inb(LSR) != 0xFF
    b.outb(0x03, LCR)
    b.outb(0x08 | 0x02 | 0x01, MCR)                       # OUT2 | RTS | DTR
    assert b.inb(LSR) & 0x20                               # wait_for_xmitr
    b.outb(0x02, IER)
    iir1 = b.inb(IIR)
    b.outb(0, IER)
    b.outb(0x02, IER)
    iir = b.inb(IIR)
    b.outb(0, IER)
    if not iir1 & 0x01 and iir & 0x01:
        bugs.add("THRE")
    b.outb(0x02, IER)
    lsr, iir = b.inb(LSR), b.inb(IIR)
    b.outb(0, IER)
    if lsr & 0x40 and iir & 0x01:
        bugs.add("TXEN")
    b.inb(LSR), b.inb(RX), b.inb(IIR), b.inb(MSR)
    b.outb(0x81, FCR)                                     # FIFO on, RX trigger 8
    b.outb(0x05, IER)                                     # RLSI | RDI
    return bugs


def test_autoconfig_finds_a_16550a():
    b = Board()
    assert autoconfig(b) == "16550A"
    assert b.inb(LCR) == 0 and b.inb(MCR) == 0 and b.inb(IER) == 0


def test_size_fifo_counts_16_bytes_in_loopback():
    b = Board()
    assert size_fifo(b) == 16
    assert b.inb(LSR) & 0x02 == 0                          # OE was read (and cleared) already
    assert b.output() == b""                              # loopback sends nothing out


def test_startup_detects_no_thre_or_txen_bugs():
    b = Board()
    autoconfig(b)
    assert startup(b) == set()


def test_printk_polled_output_flushes_on_newline():
    b = Board()
    for byte in b"Linux version 6.12\nno newline yet":
        while not b.inb(LSR) & 0x20:
            pass
        b.outb(byte, TX)
    assert b.out == [b"Linux version 6.12\n"]
    assert b.output() == b"Linux version 6.12\nno newline yet"
    assert not b.pic.has_interrupt()                       # IER 0: no interrupt


def test_interrupt_driven_transmit_through_the_pic():
    b = Board()
    autoconfig(b)
    startup(b)
    pending = bytearray(b"x" * 40 + b"\n")
    b.outb(0x05 | 0x02, IER)                              # start_tx: THRI on
    rounds = 0
    while b.take_irq4():
        rounds += 1
        iir = b.inb(IIR)
        assert iir & 0xC0 == 0xC0
        if iir & 0x0F == 0x02:                            # THRE: send up to 16
            chunk, pending[:] = pending[:16], pending[16:]
            for byte in chunk:
                b.outb(byte, TX)
            if not pending:
                b.outb(0x05, IER)                          # __stop_tx
        assert rounds < 10
    assert rounds == 3                                    # 16 + 16 + 9 bytes; no stale IRQ after stop
    assert b.output() == b"x" * 40 + b"\n"
    assert b.inb(IIR) == 0xC1


def test_irq_needs_out2_and_is_cut_in_loopback():
    b = Board()
    b.outb(0x02, IER)                                     # THRE pending, OUT2 clear
    assert not b.pic.has_interrupt()
    b.outb(0x08, MCR)
    assert b.pic.has_interrupt()
    assert b.take_irq4()
    b.outb(0, IER)
    b.outb(0x18, MCR)                                     # loopback: the IRQ pin is cut
    b.outb(0x02, IER)
    assert not b.pic.has_interrupt()
    assert b.inb(IIR) == 0x02                             # pending inside, FIFOs off
    assert b.inb(IIR) == 0x01                             # and the IIR read cleared it


def test_startup_thre_test_leaves_no_stale_interrupt():
    """The THRE test raises and clears IRQ 4 with the CPU's interrupts off: the 8259's
    request is withdrawn with the line, so nothing is delivered afterwards."""
    b = Board()
    autoconfig(b)
    startup(b)
    assert not b.pic.has_interrupt() and b.pic.master.irr & 0x10 == 0


def test_receive_with_fifo_trigger_and_timeout():
    b = Board()
    autoconfig(b)
    startup(b)
    b.uart.feed(b"ls\n")                                  # below the trigger of 8
    assert b.take_irq4()
    assert b.inb(IIR) == 0xCC                             # character timeout
    got = bytearray()
    while b.inb(LSR) & 0x01:
        got.append(b.inb(RX))
    assert got == b"ls\n" and b.inb(IIR) == 0xC1
    b.uart.feed(bytes(range(40)))
    assert b.take_irq4() and b.inb(IIR) == 0xC4           # 16 bytes in: trigger reached
    assert b.uart.input_waiting == 24
    got.clear()
    for _ in range(256):                                  # serial8250_rx_chars
        if not b.inb(LSR) & 0x01:
            break
        got.append(b.inb(RX))
    assert got == bytes(range(40)) and b.uart.input_waiting == 0
    assert not b.inb(LSR) & 0x02                          # no overrun: input waited


def test_receive_without_fifo_holds_one_byte():
    b = Board()
    b.uart.feed(b"ab")
    assert b.uart.input_waiting == 1
    assert b.inb(LSR) & 0x01 and b.inb(RX) == ord("a")
    assert b.inb(RX) == ord("b")
    assert not b.inb(LSR) & 0x01
    assert b.inb(RX) == ord("b")                          # RBR keeps the last byte


def test_input_is_held_back_in_loopback_and_capped():
    b = Board()
    b.outb(0x10, MCR)
    b.uart.feed(b"hi")
    assert not b.inb(LSR) & 0x01
    b.outb(0x00, MCR)
    assert b.inb(LSR) & 0x01 and b.inb(RX) == ord("h")
    assert b.uart.input_waiting == 0                      # "i" moved into the RBR
    b.uart.feed(b"z" * (INPUT_LIMIT + 10))
    assert b.uart.dropped_input == 10 and b.uart.input_waiting == INPUT_LIMIT


def test_overrun_and_line_status_interrupt():
    b = Board()
    b.outb(0x01, FCR)
    b.outb(0x18, MCR)                                     # loopback
    b.outb(0x04, IER)                                     # RLSI
    for byte in range(17):
        b.outb(byte, TX)
    assert b.inb(IIR) == 0xC6
    assert b.inb(LSR) & 0x03 == 0x03                      # DR | OE, and the read clears OE
    assert b.inb(LSR) & 0x02 == 0 and b.inb(IIR) == 0xC1


def test_modem_status_deltas_and_interrupt():
    b = Board()
    assert b.inb(MSR) == 0xB0                             # CTS, DSR, DCD: a terminal is there
    b.outb(0x08, IER)                                     # MSI
    b.outb(0x10 | 0x01, MCR)                              # loopback, DTR: DSR only
    msr_iir = b.inb(IIR)
    assert msr_iir & 0x0F == 0x00
    assert b.inb(MSR) == 0x20 | 0x08 | 0x01               # DSR; CTS and DCD dropped (DCTS, DDCD)
    assert b.inb(MSR) & 0x0F == 0 and b.inb(IIR) & 0x0F == 0x01
    b.outb(0x10 | 0x04, MCR)                              # OUT1 -> RI
    b.outb(0x10, MCR)
    assert b.inb(MSR) & 0x04                              # trailing edge of RI


def test_divisor_latch_and_scratch():
    b = Board()
    b.outb(0x83, LCR)
    b.outb(0x01, DLL)
    b.outb(0x00, DLM)
    assert b.inb(DLL) == 1 and b.inb(DLM) == 0
    b.outb(0x03, LCR)
    assert b.inb(IER) == 0 and b.output() == b""          # the divisor write sent nothing
    b.outb(0x5A, SCR)
    assert b.inb(SCR) == 0x5A
    b.outb(0xFF, IER)
    assert b.inb(IER) == 0x0F                             # only four IER bits exist


def test_wide_access_and_bad_base():
    b = Board()
    b.uart.port_write(BASE + 3, 2, 0x0B03)                # LCR 3, MCR 0x0B
    assert b.inb(LCR) == 3 and b.inb(MCR) == 0x0B
    assert b.uart.port_read(BASE + 5, 2) == 0xB060
    with pytest.raises(ValueError, match="UART base"):
        Uart16550(b.pic.line(3), print, base=0x10000)
    com2 = Uart16550(b.pic.line(3), print, base=0x2F8)
    assert tuple(com2.ports) == tuple(range(0x2F8, 0x300))
