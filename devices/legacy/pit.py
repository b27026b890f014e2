"""The 8254 programmable interval timer (ports 0x40-0x43) and the PC's port 0x61.

Counters are not stepped: each channel remembers when it started counting, and its value
and OUT pin are computed from the virtual clock when the guest looks. Channel 0 drives
IRQ 0: each rising edge of its OUT is one clock timer that pulses the line, and a periodic
mode re-arms itself for the next edge after "now" (ticks missed while the host was slow
are merged, as the 8259 would merge them). A stopped channel has no timer.

What Linux does (drivers/clocksource/i8253.c): periodic tick = control 0x34 (mode 2,
lo/hi) then the count; one-shot = control 0x38 (mode 4) then a count per event; shutdown =
0x30, 0, 0, 0x30 (mode 0, which stops counting until a count is written). TSC calibration
(arch/x86/kernel/tsc.c) runs channel 2 in mode 0 with its gate on port 0x61 bit 0 and
watches OUT2 on bit 5, or reads the live count.

Port 0x61: bits 0-3 are stored (bit 0 gate 2, bit 1 speaker data, 2-3 NMI masks); reads
add the refresh toggle (bit 4, every 15.085 us) and OUT2 (bit 5). Mode 1 and 5 start on a
gate rising edge only; channel 0's gate is tied high, so they never start there.
"""
from __future__ import annotations

from typing import Callable

from devices.legacy._ports import ByteRegisterPorts
from board.clock import Timer, VirtualClock
from board.interfaces import IrqLine

PIT_HZ = 1_193_182
_NS = 1_000_000_000


def ticks_to_ns(ticks: int) -> int:
    """Nanoseconds until `ticks` input clocks have passed (rounded up)."""
    return -(-ticks * _NS // PIT_HZ)


def _to_bcd(value: int) -> int:
    return ((value // 1000 % 10) << 12) | ((value // 100 % 10) << 8) | ((value // 10 % 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return ((value >> 12) & 0xF) * 1000 + ((value >> 8) & 0xF) * 100 + ((value >> 4) & 0xF) * 10 + (value & 0xF)


class _Channel:
    """One counter. Running when `start_ns` is set (tick 0 of the current count); otherwise
    its value and OUT are held in `held_value`/`held_out`."""

    __slots__ = ("index", "mode", "raw_mode", "rw", "bcd", "modulus", "count", "prev_count",
                 "reload", "start_ns", "held_ticks", "held_value", "held_out", "gate",
                 "triggered", "write_lsb", "write_msb_next", "read_msb_next", "latch",
                 "status_latch", "null_count")

    def __init__(self, index: int, gate: bool) -> None:
        self.index = index
        self.mode = 3
        self.raw_mode = 3
        self.rw = 3
        self.bcd = False
        self.modulus = 0x10000
        self.count = 0           # ticks per cycle in use; 0 = no count since control word
        self.prev_count = 0      # mode 2/3: the cycle still running before a deferred reload
        self.reload = 0          # last count written (mode 1/5 take it at the next trigger)
        self.start_ns: int | None = None
        self.held_ticks = 0
        self.held_value = 0
        self.held_out = True
        self.gate = gate
        self.triggered = False
        self.write_lsb = 0
        self.write_msb_next = False
        self.read_msb_next = False
        self.latch: list[int] = []
        self.status_latch: int | None = None
        self.null_count = True

    def ticks(self, now_ns: int) -> int:
        """Input clocks since tick 0 (negative before a deferred mode 2/3 reload)."""
        return (now_ns - self.start_ns) * PIT_HZ // _NS  # type: ignore[operator]

    def value_at(self, d: int) -> int:
        mode = self.mode
        if mode == 2 or mode == 3:
            c = self.count if d >= 0 else self.prev_count
            if mode == 2:
                return (c - d % c) % self.modulus
            return (c - (2 * d) % c) % self.modulus
        return (self.count - d) % self.modulus

    def out_at(self, d: int) -> bool:
        mode = self.mode
        if mode == 0 or mode == 1:
            return d >= self.count
        if mode == 2:
            c = self.count if d >= 0 else self.prev_count
            return c == 1 or d % c != c - 1
        if mode == 3:
            c = self.count if d >= 0 else self.prev_count
            return d % c < (c + 1) // 2
        return d != self.count                    # modes 4 and 5: low for one clock

    def next_edge(self, d: int) -> int | None:
        """The tick of OUT's next rising edge after tick `d`, or None if there is none."""
        mode = self.mode
        if mode == 2 or mode == 3:
            if d < 0:
                return 0
            c = self.count
            return (d // c + 1) * c
        edge = self.count if mode <= 1 else self.count + 1
        return edge if d < edge else None

    def value(self, now_ns: int) -> int:
        if self.start_ns is None:
            return self.held_value
        return self.value_at(self.ticks(now_ns))

    def out(self, now_ns: int) -> bool:
        if self.start_ns is None:
            return self.held_out
        return self.out_at(self.ticks(now_ns))

    def hold(self, now_ns: int, out: bool | None = None) -> None:
        """Stop counting here, keeping value and OUT (or forcing OUT to `out`)."""
        if self.start_ns is not None:
            d = self.ticks(now_ns)
            self.held_ticks = d
            self.held_value = self.value_at(d)
            self.held_out = self.out_at(d) if out is None else out
            self.start_ns = None
        elif out is not None:
            self.held_out = out

    def status(self, now_ns: int) -> int:
        return ((0x80 if self.out(now_ns) else 0) | (0x40 if self.null_count else 0)
                | (self.rw << 4) | (self.raw_mode << 1) | (1 if self.bcd else 0))


class Pit8254(ByteRegisterPorts):
    """Three counters at 1.193182 MHz; channel 0 pulses `irq0`, channel 2 is gated and
    watched through port 0x61."""

    ports: tuple[int, ...] = (0x40, 0x41, 0x42, 0x43, 0x61)

    def __init__(self, clock: VirtualClock, irq0: IrqLine) -> None:
        self._clock = clock
        self._now = clock.now_ns
        self._irq0 = irq0
        self.channels = (_Channel(0, True), _Channel(1, True), _Channel(2, False))
        self._timer: Timer | None = None
        self._port61 = 0
        ch0, ch1, ch2 = self.channels
        self._readers: dict[int, Callable[[], int]] = {
            0x40: lambda: self._read_counter(ch0),
            0x41: lambda: self._read_counter(ch1),
            0x42: lambda: self._read_counter(ch2),
            0x43: lambda: 0xFF,                    # the control word is write-only
            0x61: self._read_port61,
        }
        self._writers: dict[int, Callable[[int], None]] = {
            0x40: lambda v: self._write_counter(ch0, v),
            0x41: lambda v: self._write_counter(ch1, v),
            0x42: lambda v: self._write_counter(ch2, v),
            0x43: self._write_control,
            0x61: self._write_port61,
        }

    # -- registers ----------------------------------------------------------------------

    def _read_counter(self, ch: _Channel) -> int:
        status = ch.status_latch
        if status is not None:
            ch.status_latch = None
            return status
        if ch.latch:
            return ch.latch.pop(0)
        value = ch.value(self._now())
        if ch.bcd:
            value = _to_bcd(value)
        rw = ch.rw
        if rw == 1:
            return value & 0xFF
        if rw == 2:
            return value >> 8
        if ch.read_msb_next:
            ch.read_msb_next = False
            return value >> 8
        ch.read_msb_next = True
        return value & 0xFF

    def _latch_count(self, ch: _Channel) -> None:
        if ch.latch:
            return                                 # a second latch before reading is ignored
        value = ch.value(self._now())
        if ch.bcd:
            value = _to_bcd(value)
        rw = ch.rw
        ch.latch = [value & 0xFF] if rw == 1 else [value >> 8] if rw == 2 else [value & 0xFF, value >> 8]

    def _write_control(self, value: int) -> None:
        select = value >> 6
        if select == 3:                            # read-back command
            now = self._now()
            for ch in self.channels:
                if value & (2 << ch.index):
                    if not value & 0x20:
                        self._latch_count(ch)
                    if not value & 0x10 and ch.status_latch is None:
                        ch.status_latch = ch.status(now)
            return
        ch = self.channels[select]
        rw = (value >> 4) & 3
        if rw == 0:                                # counter latch command
            self._latch_count(ch)
            return
        now = self._now()
        ch.hold(now)
        raw_mode = (value >> 1) & 7
        ch.raw_mode = raw_mode
        ch.mode = raw_mode - 4 if raw_mode >= 6 else raw_mode
        ch.rw = rw
        ch.bcd = bool(value & 1)
        ch.modulus = 10000 if ch.bcd else 0x10000
        ch.count = 0
        ch.reload = 0
        ch.triggered = False
        ch.held_out = ch.mode != 0                 # mode 0: OUT low until terminal count
        ch.write_msb_next = False
        ch.read_msb_next = False
        ch.latch = []
        ch.status_latch = None
        ch.null_count = True
        if ch.index == 0:
            self._arm(now)

    def _write_counter(self, ch: _Channel, value: int) -> None:
        rw = ch.rw
        if rw == 1:
            count = value
        elif rw == 2:
            count = value << 8
        elif not ch.write_msb_next:
            ch.write_lsb = value
            ch.write_msb_next = True
            if ch.mode == 0:                       # the first byte stops a mode 0 count
                now = self._now()
                ch.hold(now, out=False)
                if ch.index == 0:
                    self._arm(now)
            return
        else:
            ch.write_msb_next = False
            count = ch.write_lsb | (value << 8)
        if ch.bcd:
            count = _from_bcd(count) % 10000
        self._load(ch, count or ch.modulus)

    def _load(self, ch: _Channel, count: int) -> None:
        """A complete count was written: start, restart or defer as the mode says."""
        now = self._now()
        ch.reload = count
        ch.null_count = False
        mode = ch.mode
        if mode == 1 or mode == 5:
            if ch.count == 0:                      # nothing running yet: wait for a trigger
                ch.count = count
                ch.held_value = count % ch.modulus
                ch.held_out = True
            return
        if (mode == 2 or mode == 3) and ch.start_ns is not None and ch.count:
            d = ch.ticks(now)                      # running: the new count starts next cycle
            if d >= 0:
                boundary = (d // ch.count + 1) * ch.count
                ch.start_ns += ticks_to_ns(boundary)
                ch.prev_count = ch.count
            ch.count = count
        else:
            ch.count = count
            ch.prev_count = count
            if ch.gate:
                ch.start_ns = now
            else:
                ch.start_ns = None
                ch.held_ticks = 0
                ch.held_value = count % ch.modulus
                ch.held_out = mode != 0
        if ch.index == 0:
            self._arm(now)

    def set_gate(self, ch: _Channel, high: bool) -> None:
        """Gate input change (only channel 2's gate is wired, to port 0x61 bit 0)."""
        if high == ch.gate:
            return
        ch.gate = high
        now = self._now()
        mode = ch.mode
        if not ch.count:
            return
        if high:
            if mode == 1 or mode == 5:
                ch.count = ch.reload
                ch.prev_count = ch.reload
                ch.triggered = True
                ch.start_ns = now
            elif mode == 2 or mode == 3:
                ch.prev_count = ch.count
                ch.start_ns = now
            elif ch.start_ns is None:              # modes 0 and 4 resume where they stopped
                ch.start_ns = now - ticks_to_ns(ch.held_ticks)
        else:
            if mode == 2 or mode == 3:
                ch.hold(now, out=True)
            elif mode == 0 or mode == 4:
                ch.hold(now)
        if ch.index == 0:
            self._arm(now)

    def _read_port61(self) -> int:
        now = self._now()
        refresh = (now // 15085) & 1
        return self._port61 | (refresh << 4) | (0x20 if self.channels[2].out(now) else 0)

    def _write_port61(self, value: int) -> None:
        self._port61 = value & 0x0F
        self.set_gate(self.channels[2], bool(value & 1))

    # -- IRQ 0 --------------------------------------------------------------------------

    def _arm(self, now: int) -> None:
        """(Re)schedule the timer for channel 0's next rising edge after time `now`, if it
        has one. `now` is the moment of the change that re-arms, so an edge cannot be
        missed because host time moved on while the write was handled (a late deadline
        simply fires at the next `fire_due`)."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        ch = self.channels[0]
        start = ch.start_ns
        if start is None:
            return
        mode = ch.mode
        if (mode == 1 or mode == 5) and not ch.triggered:
            return
        edge = ch.next_edge(ch.ticks(now))
        if edge is None:
            return
        self._timer = self._clock.add_timer(start + ticks_to_ns(edge), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._irq0.pulse()
        self._arm(self._now())

    @property
    def next_irq_ns(self) -> int | None:
        """Virtual time of the next IRQ 0 edge, or None when channel 0 will not fire."""
        timer = self._timer
        return timer.deadline_ns if timer is not None else None
