"""The MC146818 real-time clock and its CMOS RAM (index port 0x70, data port 0x71).

The time registers report host wall time (UTC), in BCD or binary and 12- or 24-hour form as
register B says (reset value 0x02: BCD, 24-hour). When a `VirtualClock` is given, the time
skipped while the guest idled is added, so the RTC agrees with the guest's own clock.
Register A's UIP bit is set during the last 244 us before each second boundary, as on the
chip: Linux's `mc146818_avoid_UIP` loop (drivers/rtc/rtc-mc146818-lib.c) waits it out
and then reads a consistent set. Register D reports VRT (valid RAM and time).

The guest may set the clock: with register B's SET bit it writes the fields and the new
time runs from the moment SET is cleared (kept as an offset from host time); a field
written without SET takes effect at once. Values that are not a date are ignored.

No interrupts: register C always reads 0 and IRQ 8 is never raised (periodic, alarm and
update-ended interrupts are not modelled). Bit 7 of the index write (NMI disable) is kept
but has no effect (there are no NMI sources).
"""
from __future__ import annotations

import calendar
import datetime
import time
from typing import Callable

from devices.legacy._ports import read_wide, write_wide
from board.clock import VirtualClock

REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY = 0x00, 0x02, 0x04, 0x06
REG_DAY, REG_MONTH, REG_YEAR = 0x07, 0x08, 0x09
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
REG_CENTURY = 0x32

A_UIP = 0x80
B_SET, B_24H, B_BINARY = 0x80, 0x02, 0x04
D_VRT = 0x80
UIP_WINDOW_S = 244e-6

_TIME_REGS = frozenset((REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR,
                        REG_CENTURY))


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _unbcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class Rtc146818:
    """CMOS clock at ports 0x70/0x71; 128 bytes of CMOS RAM."""

    ports: tuple[int, ...] = (0x70, 0x71)

    def __init__(self, wall_time: Callable[[], float] = time.time,
                 clock: VirtualClock | None = None) -> None:
        self._wall_time = wall_time
        self._clock = clock
        self._offset = 0.0                 # guest-set time minus host time, seconds
        self._cmos = bytearray(128)
        self._cmos[REG_A] = 0x26           # 32.768 kHz time base, 1024 Hz periodic rate
        self._cmos[REG_B] = B_24H
        self._cmos[REG_D] = D_VRT
        self._index = 0
        self.nmi_disabled = False
        self._fields_key: tuple[int, int] | None = None
        self._fields: dict[int, int] = {}

    # -- the bus side -------------------------------------------------------------------

    def port_read(self, port: int, size: int) -> int:
        if size == 1:
            return self._read_byte(port)
        return read_wide(self._read_byte, port, size)

    def port_write(self, port: int, size: int, value: int) -> None:
        if size == 1:
            self._write_byte(port, value & 0xFF)
        else:
            write_wide(self._write_byte, port, size, value)

    def _read_byte(self, port: int) -> int:
        if port == 0x71:
            return self.read_register(self._index)
        return 0xFF                          # the index port is write-only

    def _write_byte(self, port: int, value: int) -> None:
        if port == 0x70:
            self._index = value & 0x7F
            self.nmi_disabled = bool(value & 0x80)
        elif port == 0x71:
            self.write_register(self._index, value)

    # -- registers ----------------------------------------------------------------------

    def now(self) -> float:
        """The RTC's time, seconds since the epoch (UTC)."""
        t = self._wall_time() + self._offset
        clock = self._clock
        if clock is not None:
            t += clock.skipped_ns / 1e9
        return t

    def read_register(self, index: int) -> int:
        """CMOS byte `index` (0-127) as the guest reads it."""
        cmos = self._cmos
        if index in _TIME_REGS and not cmos[REG_B] & B_SET:
            return self._time_fields(self.now())[index]
        if index == REG_A:
            return cmos[REG_A] | (A_UIP if self._updating() else 0)
        if index == REG_C:
            return 0
        if index == REG_D:
            return D_VRT
        return cmos[index & 0x7F]

    def write_register(self, index: int, value: int) -> None:
        """CMOS byte `index` (0-127) written by the guest."""
        index &= 0x7F
        value &= 0xFF
        cmos = self._cmos
        if index == REG_A:
            cmos[REG_A] = value & 0x7F      # UIP is read-only
        elif index == REG_B:
            old = cmos[REG_B]
            if value & B_SET and not old & B_SET:      # freeze: the guest edits a copy
                for reg, field in self._time_fields(self.now()).items():
                    cmos[reg] = field
            cmos[REG_B] = value
            if old & B_SET and not value & B_SET:      # run from the edited fields
                self._start_from(cmos)
        elif index in (REG_C, REG_D):
            pass                                       # read-only
        elif index in _TIME_REGS and not cmos[REG_B] & B_SET:
            fields = dict(self._time_fields(self.now()))
            fields[index] = value
            self._start_from(fields)
        else:
            cmos[index] = value

    def _updating(self) -> bool:
        """UIP: the 244 us before a second boundary, while the divider runs and SET is clear."""
        cmos = self._cmos
        if cmos[REG_B] & B_SET or (cmos[REG_A] & 0x70) != 0x20:
            return False
        return self.now() % 1.0 >= 1.0 - UIP_WINDOW_S

    def _time_fields(self, t: float) -> dict[int, int]:
        """The time registers for time `t`, encoded per register B. Computed once per
        second and format; the dict is shared, so callers copy it before changing it."""
        key = (int(t // 1), self._cmos[REG_B] & (B_24H | B_BINARY))
        if key != self._fields_key:
            self._fields_key = key
            self._fields = self._encode_fields(*key)
        return self._fields

    def _encode_fields(self, second: int, b: int) -> dict[int, int]:
        tm = time.gmtime(second)
        encode = (lambda v: v) if b & B_BINARY else _bcd
        hour = tm.tm_hour
        if b & B_24H:
            hours = encode(hour)
        else:
            hours = encode(hour % 12 or 12) | (0x80 if hour >= 12 else 0)
        return {
            REG_SECONDS: encode(tm.tm_sec), REG_MINUTES: encode(tm.tm_min), REG_HOURS: hours,
            REG_WEEKDAY: encode((tm.tm_wday + 1) % 7 + 1), REG_DAY: encode(tm.tm_mday),
            REG_MONTH: encode(tm.tm_mon), REG_YEAR: encode(tm.tm_year % 100),
            REG_CENTURY: encode(tm.tm_year // 100),
        }

    def _start_from(self, fields: dict[int, int] | bytearray) -> None:
        """Make the clock run from the time `fields` encode; ignore them if not a date."""
        b = self._cmos[REG_B]
        decode = (lambda v: v) if b & B_BINARY else _unbcd
        raw_hour = fields[REG_HOURS]
        if b & B_24H:
            hour = decode(raw_hour)
        else:
            hour = decode(raw_hour & 0x7F) % 12 + (12 if raw_hour & 0x80 else 0)
        year = decode(fields[REG_YEAR])
        century = decode(fields[REG_CENTURY])
        if not 19 <= century <= 99:
            century = 20 if year < 70 else 19
        try:
            moment = datetime.datetime(century * 100 + year, decode(fields[REG_MONTH]),
                                       decode(fields[REG_DAY]), hour,
                                       decode(fields[REG_MINUTES]), decode(fields[REG_SECONDS]))
        except ValueError:
            return
        now = self.now()
        self._offset += calendar.timegm(moment.timetuple()) - now // 1
