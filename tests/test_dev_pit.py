"""The 8254 PIT programmed as Linux 6.12 does (drivers/clocksource/i8253.c, tsc.c), with
virtual time advanced by `skip_to` + `fire_due` and IRQ 0 taken through a real 8259 pair.

The virtual clock follows host time too, so checks of a live count accept every value
between the clock readings taken just before and just after the access."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.legacy.pic import Pic8259Pair
from devices.legacy.pit import PIT_HZ, Pit8254, _from_bcd, _to_bcd, ticks_to_ns
from board.clock import VirtualClock

HZ = 1000
LATCH = (PIT_HZ + HZ // 2) // HZ          # 1193, the kernel's PIT_LATCH


class Board:
    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.pic = Pic8259Pair(lambda: None)
        for port, value in ((0x21, 0xFF), (0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01),
                            (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01),
                            (0x21, 0xFA), (0xA1, 0xFF)):
            self.pic.port_write(port, 1, value)          # Linux's init, IRQ 0 and 2 unmasked
        self.pit = Pit8254(self.clock, self.pic.line(0))

    def outb(self, value: int, port: int) -> None:
        self.pit.port_write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.pit.port_read(port, 1)

    def take_irqs(self) -> int:
        """Deliver every pending IRQ 0 as the CPU would; returns how many there were."""
        taken = 0
        while self.pic.has_interrupt():
            assert self.pic.acknowledge() == 0x30
            self.pic.port_write(0x20, 1, 0x60)           # specific EOI
            taken += 1
        return taken

    def run_to(self, deadline_ns: int) -> int:
        self.clock.skip_to(deadline_ns)
        self.clock.fire_due()
        return self.take_irqs()

    def ticks_between(self, ch: int, before_ns: int, after_ns: int) -> range:
        start = self.pit.channels[ch].start_ns
        return range((before_ns - start) * PIT_HZ // 10**9, (after_ns - start) * PIT_HZ // 10**9 + 1)


def set_periodic(b: Board) -> None:
    b.outb(0x34, 0x43)
    b.outb(LATCH & 0xFF, 0x40)
    b.outb(LATCH >> 8, 0x40)


def test_nothing_runs_before_programming():
    b = Board()
    assert b.pit.next_irq_ns is None and b.clock.next_deadline() is None
    assert b.run_to(b.clock.now_ns() + 10**9) == 0


def edge_index(deadline: int, start: int, period: int) -> int:
    """Which edge of a periodic channel `deadline` is; fails if it is not one exactly."""
    k = round((deadline - start) * PIT_HZ / 10**9 / period)
    assert deadline == start + ticks_to_ns(k * period)
    return k


def test_periodic_mode2_ticks_every_latch():
    b = Board()
    set_periodic(b)
    start = b.pit.channels[0].start_ns
    assert b.pit.next_irq_ns == start + ticks_to_ns(LATCH)
    k = 0
    for _ in range(10):
        deadline = b.pit.next_irq_ns
        j = edge_index(deadline, start, LATCH)
        assert j > k                                      # j > k + 1 only if the host lagged
        k = j
        early = b.run_to(deadline - 1)
        if b.clock.now_ns() < deadline:                   # host time had not got there yet
            assert early == 0
        assert early + b.run_to(deadline) == 1
    period = ticks_to_ns(10 * LATCH) / 10
    assert abs(period - LATCH * 1e9 / PIT_HZ) < 1


def test_periodic_merges_ticks_missed_while_away():
    b = Board()
    set_periodic(b)
    start = b.pit.channels[0].start_ns
    target = start + ticks_to_ns(50 * LATCH) + 10
    assert b.run_to(target) == 1
    assert b.pit.next_irq_ns > target
    assert len(b.clock._timers) <= 2                      # one live timer, no backlog


def test_oneshot_mode4_fires_once_per_count():
    b = Board()
    b.outb(0x38, 0x43)                                    # pit_set_oneshot
    assert b.pit.next_irq_ns is None
    for delta in (100, 0x7FFF, 0xF):
        b.outb(delta & 0xFF, 0x40)                        # pit_next_event
        b.outb(delta >> 8, 0x40)
        start = b.pit.channels[0].start_ns
        assert b.pit.next_irq_ns == start + ticks_to_ns(delta + 1)
        assert b.run_to(b.pit.next_irq_ns) == 1
        assert b.pit.next_irq_ns is None
        assert b.run_to(b.clock.now_ns() + 10**8) == 0


def test_reprogramming_a_oneshot_moves_the_event():
    b = Board()
    b.outb(0x38, 0x43)
    b.outb(0xFF, 0x40)
    b.outb(0x7F, 0x40)
    b.outb(0x10, 0x40)
    b.outb(0x00, 0x40)
    start = b.pit.channels[0].start_ns
    assert b.pit.next_irq_ns == start + ticks_to_ns(0x11)
    assert b.run_to(start + ticks_to_ns(0x7FFF + 1)) == 1


def test_shutdown_sequence_stops_everything():
    b = Board()
    set_periodic(b)
    assert b.run_to(b.pit.next_irq_ns) == 1
    for value, port in ((0x30, 0x43), (0, 0x40), (0, 0x40), (0x30, 0x43)):   # clockevent_i8253_disable
        b.outb(value, port)
    assert b.pit.next_irq_ns is None and b.clock.next_deadline() is None
    assert b.run_to(b.clock.now_ns() + 10**9) == 0


def test_mode0_counts_down_and_fires_once():
    b = Board()
    b.outb(0x30, 0x43)
    b.outb(0x00, 0x40)
    b.outb(0x10, 0x40)                                    # 0x1000 ticks
    assert b.run_to(b.pit.next_irq_ns) == 1
    assert b.pit.next_irq_ns is None


def test_mode0_first_byte_stops_counting():
    b = Board()
    b.outb(0x30, 0x43)
    b.outb(0x00, 0x40)
    b.outb(0x10, 0x40)
    b.outb(0x20, 0x40)                                    # only the low byte of a new count
    assert b.pit.next_irq_ns is None
    b.outb(0x00, 0x40)
    assert b.pit.next_irq_ns is not None


def mode0_values(b: Board, ch: int, before: int, after: int, count: int = 0xFFFF) -> set[int]:
    """Every value a mode 0 counter can show between two clock readings."""
    return {(count - d) & 0xFFFF for d in b.ticks_between(ch, before, after)}


def test_latched_read_holds_the_count():
    b = Board()
    b.outb(0x30, 0x43)                                    # mode 0, count 0xFFFF
    b.outb(0xFF, 0x40)
    b.outb(0xFF, 0x40)
    b.clock.skip_to(b.clock.now_ns() + 10_000_000)        # 10 ms: ~11932 ticks
    before = b.clock.now_ns()
    b.outb(0x00, 0x43)                                    # latch channel 0
    after = b.clock.now_ns()
    b.clock.skip_to(b.clock.now_ns() + 5_000_000)
    value = b.inb(0x40) | b.inb(0x40) << 8
    assert value in mode0_values(b, 0, before, after)    # the count when latched, not now
    before = b.clock.now_ns()
    b.outb(0x00, 0x43)                                    # a new latch after reading
    after = b.clock.now_ns()
    assert b.inb(0x40) | b.inb(0x40) << 8 in mode0_values(b, 0, before, after)


def test_second_latch_before_reading_is_ignored():
    b = Board()
    b.outb(0x30, 0x43)
    b.outb(0xFF, 0x40)
    b.outb(0xFF, 0x40)
    b.outb(0x00, 0x43)
    first = b.pit.channels[0].latch[:]
    b.clock.skip_to(b.clock.now_ns() + 3_000_000)
    b.outb(0x00, 0x43)
    assert [b.inb(0x40), b.inb(0x40)] == first


def test_readback_latches_status_then_count():
    b = Board()
    set_periodic(b)
    b.outb(0xC2, 0x43)                                    # read-back: count + status, channel 0
    status = b.inb(0x40)
    assert status & 0x7F == 0x34                          # lo/hi, mode 2, binary, count loaded
    latched = b.pit.channels[0].latch[:]
    value = b.inb(0x40) | b.inb(0x40) << 8
    assert [value & 0xFF, value >> 8] == latched and 1 <= value <= LATCH
    b.outb(0xE2, 0x43)                                    # status only
    assert b.inb(0x40) & 0x7F == 0x34 and not b.pit.channels[0].latch
    b.outb(0x30, 0x43)                                    # a control word: null count, OUT low
    b.outb(0xE2, 0x43)
    assert b.inb(0x40) == 0x70
    b.outb(0xD2, 0x43)                                    # count only
    assert len(b.pit.channels[0].latch) == 2 and b.pit.channels[0].status_latch is None


def test_bcd_counting():
    b = Board()
    b.outb(0x35, 0x43)                                    # mode 2, BCD
    b.outb(0x00, 0x40)
    b.outb(0x10, 0x40)                                    # BCD 1000
    start = b.pit.channels[0].start_ns
    assert b.pit.next_irq_ns == start + ticks_to_ns(1000)
    b.outb(0x00, 0x43)
    lo, hi = b.inb(0x40), b.inb(0x40)
    assert all(nibble <= 9 for nibble in (lo & 15, lo >> 4, hi & 15, hi >> 4))


def test_mode2_new_count_takes_effect_at_the_end_of_the_cycle():
    b = Board()
    set_periodic(b)
    start = b.pit.channels[0].start_ns
    b.outb(500 & 0xFF, 0x40)                              # no control word: reload only
    b.outb(500 >> 8, 0x40)
    boundary = b.pit.channels[0].start_ns                 # where the 500-tick cycles begin
    assert edge_index(boundary, start, LATCH) >= 1        # an old cycle's end, not "now"
    assert b.pit.next_irq_ns == boundary
    assert b.run_to(boundary) == 1
    assert edge_index(b.pit.next_irq_ns, boundary, 500) >= 1


def test_lsb_only_and_msb_only_access():
    b = Board()
    b.outb(0x10, 0x43)                                    # channel 0, LSB only, mode 0
    b.outb(0x80, 0x40)
    assert b.pit.channels[0].count == 0x80
    b.outb(0x20, 0x43)                                    # MSB only
    b.outb(0x02, 0x40)
    assert b.pit.channels[0].count == 0x200
    assert b.inb(0x40) <= 0x02


def test_tsc_calibration_on_channel_2_through_port_61():
    """pit_calibrate_tsc: gate on, speaker off, mode 0, wait for OUT2 on port 0x61 bit 5."""
    b = Board()
    latch = PIT_HZ // (1000 // 50)
    b.outb((b.inb(0x61) & ~0x02) | 0x01, 0x61)
    b.outb(0xB0, 0x43)
    b.outb(latch & 0xFF, 0x42)
    b.outb(latch >> 8, 0x42)
    start = b.pit.channels[2].start_ns
    out2 = b.inb(0x61) & 0x20
    if b.clock.now_ns() - start < ticks_to_ns(latch):     # 50 ms had not passed on the host
        assert out2 == 0
    b.clock.skip_to(start + ticks_to_ns(latch))
    assert b.inb(0x61) & 0x20
    assert b.inb(0x61) & 0x0F == 0x01
    assert b.pit.next_irq_ns is None                      # channel 2 has no interrupt


def test_quick_calibration_reads_a_live_decreasing_count():
    """quick_pit_calibrate: mode 0 count 0xFFFF on channel 2, reading LSB then MSB."""
    b = Board()
    b.outb((b.inb(0x61) & ~0x02) | 0x01, 0x61)
    b.outb(0xB0, 0x43)
    b.outb(0xFF, 0x42)
    b.outb(0xFF, 0x42)
    for _ in range(5):
        before = b.clock.now_ns()
        lsb = b.inb(0x42)
        mid = b.clock.now_ns()
        msb = b.inb(0x42)
        after = b.clock.now_ns()
        assert lsb in {v & 0xFF for v in mode0_values(b, 2, before, mid)}
        assert msb in {v >> 8 for v in mode0_values(b, 2, mid, after)}
        b.clock.skip_to(b.clock.now_ns() + ticks_to_ns(256))


def test_gate_low_freezes_channel_2():
    b = Board()
    b.outb(0x01, 0x61)
    b.outb(0xB0, 0x43)
    b.outb(0xFF, 0x42)
    b.outb(0xFF, 0x42)
    b.outb(0x00, 0x61)                                    # gate off
    b.outb(0x80, 0x43)
    held = b.inb(0x42) | b.inb(0x42) << 8
    b.clock.skip_to(b.clock.now_ns() + 10_000_000)
    b.outb(0x80, 0x43)
    assert b.inb(0x42) | b.inb(0x42) << 8 == held
    resume_from = b.clock.now_ns()
    b.outb(0x01, 0x61)                                    # counting resumes from there
    resume_to = b.clock.now_ns()
    b.clock.skip_to(b.clock.now_ns() + 10_000_000)
    before = b.clock.now_ns()
    b.outb(0x80, 0x43)
    after = b.clock.now_ns()
    elapsed = range((before - resume_to) * PIT_HZ // 10**9 - 1, (after - resume_from) * PIT_HZ // 10**9 + 2)
    assert b.inb(0x42) | b.inb(0x42) << 8 in {(held - e) & 0xFFFF for e in elapsed}


def test_mode3_square_wave_on_out2():
    b = Board()
    b.outb(0x01, 0x61)
    b.outb(0xB6, 0x43)                                    # channel 2, mode 3
    count = 0xFFFE
    b.outb(count & 0xFF, 0x42)
    b.outb(count >> 8, 0x42)
    start = b.pit.channels[2].start_ns
    checked = 0
    for k in range(12):
        b.clock.skip_to(start + ticks_to_ns(k * count // 4 + count // 8))
        before = b.clock.now_ns()
        out2 = bool(b.inb(0x61) & 0x20)
        after = b.clock.now_ns()
        halves = {(d % count) < count // 2 for d in b.ticks_between(2, before, after)}
        if len(halves) == 1:                              # not read on an edge
            assert out2 == halves.pop()
            checked += 1
    assert checked >= 2


def test_mode1_waits_for_a_gate_edge():
    b = Board()
    b.outb(0xB2, 0x43)                                    # channel 2, mode 1
    b.outb(0x00, 0x42)
    b.outb(0x01, 0x42)
    assert b.inb(0x61) & 0x20                             # OUT high until triggered
    b.outb(0x01, 0x61)
    start = b.pit.channels[2].start_ns
    assert start is not None
    b.clock.skip_to(start + ticks_to_ns(0x100))
    assert b.inb(0x61) & 0x20


def test_refresh_bit_toggles_every_15_us():
    b = Board()
    checked = set()
    for k in range(8):
        phase = b.clock.now_ns() // 15_085 + 1
        phase += (phase & 1) != (k & 1)                   # alternate even and odd phases
        b.clock.skip_to(phase * 15_085 + 7_542)
        before = b.clock.now_ns()
        bit = b.inb(0x61) & 0x10
        after = b.clock.now_ns()
        if before // 15_085 == after // 15_085:           # not read on a toggle
            assert bit == ((before // 15_085) & 1) << 4
            checked.add(bit)
    assert checked


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 0xFFFF), st.sampled_from([0x34, 0x38, 0x30, 0x36]))
def test_any_count_in_any_clockevent_mode_fires_on_time(count, control):
    """Channel 0's first IRQ comes exactly when the datasheet says, for every count."""
    b = Board()
    b.outb(control, 0x43)
    b.outb(count & 0xFF, 0x40)
    b.outb(count >> 8, 0x40)
    mode = (control >> 1) & 7
    edge = count + 1 if mode == 4 else count
    start = b.pit.channels[0].start_ns
    assert b.pit.next_irq_ns == start + ticks_to_ns(edge)
    assert b.run_to(b.pit.next_irq_ns) == 1
    if mode in (2, 3):
        assert b.pit.next_irq_ns >= start + ticks_to_ns(2 * count)
    else:
        assert b.pit.next_irq_ns is None


@given(st.integers(0, 9999))
def test_bcd_counts_round_trip(value):
    assert _from_bcd(_to_bcd(value)) == value
