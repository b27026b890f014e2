"""The MC146818 read as Linux 6.12 reads it (mc146818_avoid_UIP + mc146818_get_time), and
the reset ports used as reboot.c and the i8042 probe use them."""
from __future__ import annotations

import calendar
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.legacy.reset import ResetPorts
from devices.legacy.rtc import Rtc146818
from board.clock import VirtualClock

LEAP_EVE = calendar.timegm((2024, 2, 29, 23, 59, 58))     # a Thursday


class WallClock:
    """Host wall time standing still, or moving by `step` per reading (a slow guest)."""

    def __init__(self, t: float, step: float = 0.0) -> None:
        self.t = t
        self.step = step

    def __call__(self) -> float:
        t = self.t
        self.t += self.step
        return t


def cmos_read(rtc: Rtc146818, index: int) -> int:
    rtc.port_write(0x70, 1, index)
    return rtc.port_read(0x71, 1)


def cmos_write(rtc: Rtc146818, index: int, value: int) -> None:
    rtc.port_write(0x70, 1, index)
    rtc.port_write(0x71, 1, value)


def linux_read_time(rtc: Rtc146818) -> tuple[dict, int]:
    """mc146818_avoid_UIP with the get_time callback; returns (fields, loops)."""
    for loops in range(1, 10_000):
        seconds = cmos_read(rtc, 0)
        if cmos_read(rtc, 0x0A) & 0x80:
            continue
        if seconds != cmos_read(rtc, 0):
            continue
        fields = {"sec": seconds, "min": cmos_read(rtc, 2), "hour": cmos_read(rtc, 4),
                  "mday": cmos_read(rtc, 7), "mon": cmos_read(rtc, 8), "year": cmos_read(rtc, 9),
                  "ctrl": cmos_read(rtc, 0x0B)}
        if cmos_read(rtc, 0x0A) & 0x80:
            continue
        if seconds != cmos_read(rtc, 0):
            continue
        return fields, loops
    raise AssertionError("the RTC read loop never ended")


def test_linux_read_loop_gets_bcd_24h_time():
    rtc = Rtc146818(WallClock(LEAP_EVE + 0.5))
    fields, loops = linux_read_time(rtc)
    assert loops == 1
    assert fields == {"sec": 0x58, "min": 0x59, "hour": 0x23, "mday": 0x29, "mon": 0x02,
                      "year": 0x24, "ctrl": 0x02}
    assert cmos_read(rtc, 6) == 5 and cmos_read(rtc, 0x32) == 0x20


def test_uip_is_set_just_before_the_second_and_the_loop_waits_it_out():
    rtc = Rtc146818(WallClock(LEAP_EVE + 0.9999))
    assert cmos_read(rtc, 0x0A) == 0xA6
    rtc = Rtc146818(WallClock(LEAP_EVE + 0.5))
    assert cmos_read(rtc, 0x0A) == 0x26
    slow = WallClock(LEAP_EVE + 1 - 300e-6, step=20e-6)    # crosses into 23:59:59
    fields, loops = linux_read_time(Rtc146818(slow))
    assert loops > 1 and fields["sec"] == 0x59 and fields["min"] == 0x59


def test_binary_and_12_hour_modes():
    rtc = Rtc146818(WallClock(LEAP_EVE + 0.5))
    cmos_write(rtc, 0x0B, 0x04)                          # binary, 12-hour
    assert cmos_read(rtc, 4) == 0x80 | 11                # 11 PM
    assert cmos_read(rtc, 0) == 58 and cmos_read(rtc, 9) == 24
    cmos_write(rtc, 0x0B, 0x00)                          # BCD, 12-hour
    assert cmos_read(rtc, 4) == 0x80 | 0x11


def test_guest_sets_the_clock_with_the_set_bit():
    wall = WallClock(LEAP_EVE + 0.5)
    rtc = Rtc146818(wall)
    cmos_write(rtc, 0x0B, 0x82)                          # SET: updates stop
    for index, value in ((0, 0x30), (2, 0x15), (4, 0x08), (7, 0x01), (8, 0x01), (9, 0x30)):
        cmos_write(rtc, index, value)
    wall.t += 5
    assert cmos_read(rtc, 0) == 0x30                     # frozen while SET
    cmos_write(rtc, 0x0B, 0x02)
    wall.t += 2
    assert linux_read_time(rtc)[0] == {"sec": 0x32, "min": 0x15, "hour": 0x08, "mday": 0x01,
                                       "mon": 0x01, "year": 0x30, "ctrl": 0x02}


def test_single_field_write_and_nonsense_dates():
    wall = WallClock(LEAP_EVE + 0.5)
    rtc = Rtc146818(wall)
    cmos_write(rtc, 2, 0x10)                             # minutes only
    assert cmos_read(rtc, 2) == 0x10 and cmos_read(rtc, 4) == 0x23
    before = rtc.now()
    cmos_write(rtc, 8, 0x13)                             # month 13: ignored
    cmos_write(rtc, 0x0B, 0x82)
    cmos_write(rtc, 7, 0x31)                             # 31 February
    cmos_write(rtc, 0x0B, 0x02)
    assert rtc.now() == before


def test_status_registers_cmos_ram_and_index_port():
    rtc = Rtc146818(WallClock(LEAP_EVE + 0.5))
    assert cmos_read(rtc, 0x0D) == 0x80 and cmos_read(rtc, 0x0C) == 0
    cmos_write(rtc, 0x0A, 0xFF)
    assert cmos_read(rtc, 0x0A) & 0x7F == 0x7F
    cmos_write(rtc, 0x40, 0x5A)
    assert cmos_read(rtc, 0x40) == 0x5A
    cmos_write(rtc, 0x40 | 0x80, 0xA5)                   # bit 7 of the index: NMI off
    assert rtc.nmi_disabled and cmos_read(rtc, 0x40) == 0xA5
    assert rtc.port_read(0x70, 1) == 0xFF


def test_idle_time_skipped_by_the_machine_moves_the_rtc():
    clock = VirtualClock()
    rtc = Rtc146818(WallClock(LEAP_EVE + 0.5), clock)
    clock.skip_to(clock.now_ns() + 3_200_000_000)
    expected = time.gmtime(int(LEAP_EVE + 0.5 + clock.skipped_ns / 1e9))
    assert expected.tm_mday == 1 and expected.tm_mon == 3  # about 00:00:01, 1 March
    assert cmos_read(rtc, 0) == int(str(expected.tm_sec), 16)
    assert cmos_read(rtc, 7) == 0x01 and cmos_read(rtc, 8) == 0x03


# -- reset ports --------------------------------------------------------------------------

def reset_board():
    resets: list[str] = []
    return ResetPorts(resets.append), resets


def test_reboot_k_resets_at_once():
    ports, resets = reset_board()
    waited = 0
    for _ in range(0x10000):                              # kb_wait
        if not ports.port_read(0x64, 1) & 0x02:
            break
        waited += 1
    assert waited == 0
    ports.port_write(0x64, 1, 0xFE)
    assert resets == ["keyboard controller"]


def test_i8042_probe_finds_no_controller_quickly():
    ports, resets = reset_board()

    def command(command: int, params: bytes = b"") -> None:
        assert not ports.port_read(0x64, 1) & 0x02        # i8042_wait_write: first try
        ports.port_write(0x64, 1, command & 0xFF)
        for param in params:
            assert not ports.port_read(0x64, 1) & 0x02
            ports.port_write(0x60, 1, param)

    command(0x10D1, b"\xdf")                              # A20 on through the output port
    command(0x00FF)
    reads = 0
    while ports.port_read(0x64, 1) & 0x01:                # i8042_flush
        if reads == 16:
            break
        ports.port_read(0x60, 1)
        reads += 1
    assert reads == 16 and resets == []                   # "No controller found"


def test_output_port_reset_line():
    ports, resets = reset_board()
    ports.port_write(0x64, 1, 0xD1)
    ports.port_write(0x60, 1, 0xDE)
    assert resets == ["keyboard controller"]
    ports.port_write(0x60, 1, 0x00)                       # not after 0xD1: just data
    ports.port_write(0x64, 1, 0xFF)                       # pulse nothing
    assert len(resets) == 1


def test_cf9_reset_as_reboot_pci_does():
    ports, resets = reset_board()
    cf9 = ports.port_read(0xCF9, 1) & ~0x0E
    ports.port_write(0xCF9, 1, cf9 | 2)
    assert resets == [] and ports.port_read(0xCF9, 1) == 2
    ports.port_write(0xCF9, 1, cf9 | 0x0E)
    assert resets == ["port 0xcf9"]
    ports.port_write(0xCF9, 4, 0xFFFFFFFF)                # only byte accesses decode
    assert len(resets) == 1


# -- encoders -----------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.integers(calendar.timegm((1970, 1, 1, 0, 0, 0)), calendar.timegm((2099, 12, 31, 23, 59, 59))),
       st.sampled_from([0x00, 0x02, 0x04, 0x06]))
def test_time_fields_round_trip_in_every_format(t, mode):
    """What the RTC shows for a time, written back with SET, is that time again."""
    wall = WallClock(t + 0.25)
    rtc = Rtc146818(wall)
    cmos_write(rtc, 0x0B, mode)
    shown = {index: cmos_read(rtc, index) for index in (0, 2, 4, 6, 7, 8, 9, 0x32)}
    if not mode & 0x04:                                   # BCD: every nibble a digit
        assert all((v & 0x0F) <= 9 and ((v & 0x7F) >> 4) <= 9 for v in shown.values())
    wall.t = 0.25                                         # host clock jumps to 1970
    cmos_write(rtc, 0x0B, mode | 0x80)
    for index, value in shown.items():
        cmos_write(rtc, index, value)
    cmos_write(rtc, 0x0B, mode)
    assert int(rtc.now()) == t
