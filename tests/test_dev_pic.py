"""The 8259A pair driven through its ports exactly as Linux 6.12's arch/x86/kernel/i8259.c
does: probe, ICW sequence, mask_and_ack (mask, specific EOI), the ISR read on the
spurious path; plus the chip features Linux does not use."""
from __future__ import annotations

import pytest

from devices.legacy.pic import Pic8259Pair

MASTER_CMD, MASTER_IMR, SLAVE_CMD, SLAVE_IMR = 0x20, 0x21, 0xA0, 0xA1


class Guest:
    """The port accesses of Linux's i8259 driver, with its cached mask."""

    def __init__(self, pic: Pic8259Pair) -> None:
        self.pic = pic
        self.cached_irq_mask = 0xFFFF

    def outb(self, value: int, port: int) -> None:
        self.pic.port_write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.pic.port_read(port, 1)

    def probe(self) -> bool:
        probe_val = 0xFF & ~(1 << 2)
        self.outb(0xFF, SLAVE_IMR)
        self.outb(probe_val, MASTER_IMR)
        return self.inb(MASTER_IMR) == probe_val

    def init(self, auto_eoi: bool = False) -> None:
        self.outb(0xFF, MASTER_IMR)
        self.outb(0x11, MASTER_CMD)
        self.outb(0x30, MASTER_IMR)
        self.outb(1 << 2, MASTER_IMR)
        self.outb(0x03 if auto_eoi else 0x01, MASTER_IMR)
        self.outb(0x11, SLAVE_CMD)
        self.outb(0x38, SLAVE_IMR)
        self.outb(2, SLAVE_IMR)
        self.outb(0x01, SLAVE_IMR)
        self.outb(self.cached_irq_mask & 0xFF, MASTER_IMR)
        self.outb(self.cached_irq_mask >> 8, SLAVE_IMR)

    def unmask(self, irq: int) -> None:
        self.cached_irq_mask &= ~(1 << irq)
        if irq & 8:
            self.outb(self.cached_irq_mask >> 8, SLAVE_IMR)
        else:
            self.outb(self.cached_irq_mask & 0xFF, MASTER_IMR)

    def irq_real(self, irq: int) -> int:
        """i8259A_irq_real: is `irq` in service? (OCW3 0x0B, read, OCW3 0x0A)."""
        cmd = SLAVE_CMD if irq & 8 else MASTER_CMD
        self.outb(0x0B, cmd)
        value = self.inb(cmd) & (1 << (irq & 7))
        self.outb(0x0A, cmd)
        return value

    def mask_and_ack(self, irq: int) -> bool:
        """Returns True when Linux would call the IRQ spurious."""
        spurious = False
        if self.cached_irq_mask & (1 << irq):
            spurious = not self.irq_real(irq)
        self.cached_irq_mask |= 1 << irq
        if irq & 8:
            self.inb(SLAVE_IMR)
            self.outb(self.cached_irq_mask >> 8, SLAVE_IMR)
            self.outb(0x60 + (irq & 7), SLAVE_CMD)
            self.outb(0x60 + 2, MASTER_CMD)
        else:
            self.inb(MASTER_IMR)
            self.outb(self.cached_irq_mask & 0xFF, MASTER_IMR)
            self.outb(0x60 + irq, MASTER_CMD)
        return spurious

    def isr(self, cmd: int) -> int:
        self.outb(0x0B, cmd)
        value = self.inb(cmd)
        self.outb(0x0A, cmd)
        return value


@pytest.fixture
def board():
    requests: list[int] = []
    pic = Pic8259Pair(lambda: requests.append(1))
    guest = Guest(pic)
    assert guest.probe()
    guest.init()
    guest.unmask(2)                                       # Linux requests the "cascade" IRQ
    return pic, guest, requests


def test_probe_reads_back_the_mask_and_unclaimed_ports_read_ones():
    pic = Pic8259Pair(lambda: None)
    assert Guest(pic).probe()
    assert pic.port_read(0x22, 1) == 0xFF
    assert set(pic.ports) >= {0x20, 0x21, 0xA0, 0xA1}


def test_init_sets_vector_bases_and_masks(board):
    pic, guest, _ = board
    assert guest.inb(MASTER_IMR) == 0xFB and guest.inb(SLAVE_IMR) == 0xFF
    assert pic.master.base == 0x30 and pic.slave.base == 0x38
    assert not pic.has_interrupt()


def test_timer_irq_delivered_acked_and_eoied_like_linux(board):
    pic, guest, requests = board
    guest.unmask(0)
    pic.line(0).pulse()
    assert requests == [1] and pic.has_interrupt()
    assert pic.acknowledge() == 0x30
    assert not pic.has_interrupt()
    assert guest.isr(MASTER_CMD) == 0x01
    assert not guest.mask_and_ack(0)
    assert guest.isr(MASTER_CMD) == 0x00
    guest.unmask(0)
    pic.line(0).pulse()
    assert pic.acknowledge() == 0x30 and len(requests) == 2


def test_request_while_masked_is_kept_in_irr_until_unmasked(board):
    pic, guest, requests = board
    pic.line(3).pulse()
    assert not pic.has_interrupt() and requests == []
    assert guest.inb(MASTER_CMD) & 0x08                  # IRR is the default read
    guest.unmask(3)
    assert pic.has_interrupt() and requests == [1]
    assert pic.acknowledge() == 0x33


def test_slave_irq_goes_through_the_cascade(board):
    pic, guest, _ = board
    guest.unmask(12)
    pic.line(12).set_level(True)
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x3C
    assert guest.isr(SLAVE_CMD) == 0x10 and guest.isr(MASTER_CMD) == 0x04
    guest.mask_and_ack(12)
    assert guest.isr(SLAVE_CMD) == 0 and guest.isr(MASTER_CMD) == 0


def test_priority_and_nesting(board):
    pic, guest, _ = board
    for irq in (0, 1, 3):
        guest.unmask(irq)
    pic.line(3).pulse()
    pic.line(1).pulse()
    assert pic.acknowledge() == 0x31                     # IR1 outranks IR3
    assert not pic.has_interrupt()                        # IR3 waits behind IR1 in service
    pic.line(0).pulse()
    assert pic.has_interrupt() and pic.acknowledge() == 0x30   # IR0 preempts
    guest.outb(0x20, MASTER_CMD)                          # non-specific EOI ends IR0
    assert guest.isr(MASTER_CMD) == 0x02
    guest.outb(0x20, MASTER_CMD)
    assert pic.acknowledge() == 0x33


def test_spurious_irq7_when_request_masked_before_inta(board):
    pic, guest, _ = board
    guest.unmask(3)
    pic.line(3).pulse()
    assert pic.has_interrupt()
    guest.outb(0xFF, MASTER_IMR)                          # masked between INTR and INTA
    assert pic.acknowledge() == 0x37
    assert guest.isr(MASTER_CMD) == 0                     # no ISR bit for a spurious IRQ
    assert guest.mask_and_ack(7)                          # Linux's slow path agrees


def test_spurious_irq15_sets_only_the_master_cascade_bit(board):
    pic, guest, _ = board
    guest.unmask(10)
    pic.line(10).pulse()
    assert pic.has_interrupt()
    guest.outb(0xFF, SLAVE_IMR)
    assert pic.acknowledge() == 0x3F
    assert guest.isr(SLAVE_CMD) == 0 and guest.isr(MASTER_CMD) == 0x04
    assert guest.mask_and_ack(15)
    assert guest.isr(MASTER_CMD) == 0


def test_edge_input_held_high_gives_one_interrupt(board):
    pic, guest, _ = board
    guest.unmask(4)
    line = pic.line(4)
    line.set_level(True)
    assert pic.acknowledge() == 0x34
    line.set_level(True)                                  # still high: no new edge
    guest.mask_and_ack(4)
    guest.unmask(4)
    assert not pic.has_interrupt()
    line.set_level(False)
    line.set_level(True)
    assert pic.has_interrupt()


def test_edge_request_withdrawn_before_inta_is_gone(board):
    pic, guest, requests = board
    guest.unmask(5)
    line = pic.line(5)
    line.set_level(True)
    assert pic.has_interrupt() and requests == [1]
    line.set_level(False)                                 # the device's condition was cleared
    assert not pic.has_interrupt() and guest.inb(MASTER_CMD) & 0x20 == 0
    line.set_level(True)
    assert pic.acknowledge() == 0x35


def test_pulse_is_held_until_acknowledged(board):
    pic, guest, _ = board
    pic.line(0).pulse()                                   # masked: waits in the IRR
    pic.line(0).pulse()
    assert guest.inb(MASTER_CMD) & 0x01
    guest.unmask(0)
    assert pic.acknowledge() == 0x30
    guest.mask_and_ack(0)
    guest.unmask(0)
    assert not pic.has_interrupt()                        # two pulses, one request


def test_level_mode_by_elcr_redelivers_while_held(board):
    pic, guest, _ = board
    guest.outb(0x20, 0x4D0)
    assert pic.port_read(0x4D0, 1) == 0x20
    guest.outb(0xFF, 0x4D0)
    assert pic.port_read(0x4D0, 1) == 0xF8                # IRQ 0-2 cannot be level
    guest.outb(0x20, 0x4D0)
    guest.unmask(5)
    line = pic.line(5)
    line.set_level(True)
    assert pic.acknowledge() == 0x35
    guest.outb(0x65, MASTER_CMD)
    assert pic.has_interrupt()                            # still asserted: again
    assert pic.acknowledge() == 0x35
    line.set_level(False)
    guest.outb(0x65, MASTER_CMD)
    assert not pic.has_interrupt()
    line.pulse()                                          # a pulse is lost on a level input
    assert not pic.has_interrupt()


def test_auto_eoi_leaves_nothing_in_service():
    pic = Pic8259Pair(lambda: None)
    guest = Guest(pic)
    guest.init(auto_eoi=True)
    guest.unmask(2)
    guest.unmask(1)
    pic.line(1).pulse()
    assert pic.acknowledge() == 0x31
    assert guest.isr(MASTER_CMD) == 0
    pic.line(1).pulse()
    assert pic.has_interrupt()


def test_on_request_only_on_the_transition(board):
    pic, guest, requests = board
    for irq in (3, 4, 5):
        guest.unmask(irq)
    pic.line(5).pulse()
    pic.line(4).pulse()
    pic.line(3).pulse()
    assert requests == [1]
    pic.acknowledge()
    assert len(requests) == 1                             # IR4/5 blocked by IR3 in service
    guest.outb(0x63, MASTER_CMD)
    assert len(requests) == 2


def test_poll_mode_reads_and_acknowledges(board):
    pic, guest, _ = board
    guest.unmask(6)
    pic.line(6).pulse()
    guest.outb(0x0C, MASTER_CMD)                          # OCW3 poll
    assert guest.inb(MASTER_CMD) == 0x86
    assert guest.isr(MASTER_CMD) == 0x40
    guest.outb(0x0C, MASTER_CMD)
    assert guest.inb(MASTER_CMD) == 0x00                  # nothing left


def test_specific_rotation_changes_priorities(board):
    pic, guest, _ = board
    guest.unmask(1)
    guest.unmask(4)
    guest.outb(0xC3, MASTER_CMD)                          # set priority: IR3 lowest, IR4 highest
    pic.line(1).pulse()
    pic.line(4).pulse()
    assert pic.acknowledge() == 0x34
    guest.outb(0x64, MASTER_CMD)
    assert pic.acknowledge() == 0x31


def test_special_mask_mode_lets_lower_priorities_in(board):
    pic, guest, _ = board
    guest.unmask(1)
    guest.unmask(5)
    pic.line(1).pulse()
    assert pic.acknowledge() == 0x31
    pic.line(5).pulse()
    assert not pic.has_interrupt()
    guest.outb(0x68, MASTER_CMD)                          # OCW3: set special mask mode
    guest.outb(guest.cached_irq_mask & 0xFF | 0x02, MASTER_IMR)
    assert pic.has_interrupt() and pic.acknowledge() == 0x35


def test_line_numbers_are_checked_and_irq2_is_irq9(board):
    pic, guest, _ = board
    for bad in (-1, 16, "0"):
        with pytest.raises(ValueError, match="interrupt line"):
            pic.line(bad)  # type: ignore[arg-type]
    guest.unmask(9)
    pic.line(2).pulse()
    assert pic.acknowledge() == 0x39


def test_wide_access_splits_into_bytes(board):
    pic, guest, _ = board
    guest.outb(0x0B, MASTER_CMD)
    assert pic.port_read(0x20, 2) == 0xFB00               # ISR 0x00, IMR 0xFB
    pic.port_write(0x20, 2, 0xFF0A)                       # OCW3 read IRR, then IMR 0xFF
    assert guest.inb(MASTER_IMR) == 0xFF
