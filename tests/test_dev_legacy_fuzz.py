"""Hypothesis: whatever an untrusted guest does with the legacy ports (any port, any size,
any value, in any order, mixed with interrupts, time passing and console input), the
devices never raise, every read is a value of the access size, and the state stays sane."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.legacy.pic import Pic8259Pair
from devices.legacy.pit import Pit8254
from devices.legacy.reset import ResetPorts
from devices.legacy.rtc import Rtc146818
from devices.legacy.uart import Uart16550
from board.clock import VirtualClock

SIZES = st.sampled_from([1, 1, 1, 2, 4, 3, 8, 0])
VALUES = st.one_of(st.integers(0, 0xFF), st.integers(0, 2**32 - 1), st.integers(-2**40, 2**70))


def port_ops(ports):
    """Reads and writes mostly on the device's ports, sometimes beside them."""
    near = sorted({p + d for p in ports for d in (-1, 0, 1, 2)} | {0, 0xFFFF})
    port = st.one_of(st.sampled_from(list(ports)), st.sampled_from(near), st.integers(-5, 0x10005))
    return st.tuples(st.sampled_from(["r", "w"]), port, SIZES, VALUES)


def do_port_op(device, op) -> None:
    kind, port, size, value = op
    if kind == "r":
        result = device.port_read(port, size)
        assert isinstance(result, int) and 0 <= result < (1 << (8 * max(size, 0)))
    else:
        device.port_write(port, size, value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(port_ops(Pic8259Pair.ports),
                          st.tuples(st.just("irq"), st.integers(0, 15), st.sampled_from(["hi", "lo", "pulse"])),
                          st.just(("inta",))), max_size=80))
def test_pic_never_fails(ops):
    pic = Pic8259Pair(lambda: None)
    for op in ops:
        if op[0] == "irq":
            line = pic.line(op[1])
            if op[2] == "pulse":
                line.pulse()
            else:
                line.set_level(op[2] == "hi")
        elif op[0] == "inta":
            assert 0 <= pic.acknowledge() <= 0xFF
        else:
            do_port_op(pic, op)
        for chip in (pic.master, pic.slave):
            assert 0 <= chip.irr <= 0xFF and 0 <= chip.isr <= 0xFF and 0 <= chip.imr <= 0xFF
        assert pic.has_interrupt() == (pic.master.output() >= 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(port_ops(Pit8254.ports),
                          st.tuples(st.just("time"), st.integers(0, 10**9))), max_size=80))
def test_pit_never_fails(ops):
    clock = VirtualClock()
    pic = Pic8259Pair(lambda: None)
    pit = Pit8254(clock, pic.line(0))
    for op in ops:
        if op[0] == "time":
            clock.skip_to(clock.now_ns() + op[1])
            clock.fire_due()
        else:
            do_port_op(pit, op)
        deadline = pit.next_irq_ns
        assert deadline is None or deadline >= pit.channels[0].start_ns
    clock.skip_to(clock.now_ns() + 10**10)
    assert clock.fire_due() <= 1                           # at most one live timer


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(port_ops(range(0x3F8, 0x400)),
                          st.tuples(st.just("feed"), st.binary(max_size=40)),
                          st.just(("flush",))), max_size=80))
def test_uart_never_fails(ops):
    out: list[bytes] = []
    pic = Pic8259Pair(lambda: None)
    uart = Uart16550(pic.line(4), out.append)
    for op in ops:
        if op[0] == "feed":
            uart.feed(op[1])
        elif op[0] == "flush":
            uart.flush()
        else:
            do_port_op(uart, op)
        assert len(uart._rx) <= 16
        expected = bool(uart._mcr & 0x08) and not uart._mcr & 0x10 and uart._iir() != 0x01
        assert bool(pic.master.level & 0x10) == expected
    uart.flush()
    assert all(chunk for chunk in out) and not uart._tx     # no empty writes, nothing left


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=2**34, allow_nan=False),
       st.lists(port_ops(Rtc146818.ports), max_size=80))
def test_rtc_never_fails(wall, ops):
    rtc = Rtc146818(lambda: wall)
    for op in ops:
        do_port_op(rtc, op)
    for index in range(128):
        rtc.port_write(0x70, 1, index)
        assert 0 <= rtc.port_read(0x71, 1) <= 0xFF


@settings(max_examples=200, deadline=None)
@given(st.lists(port_ops(ResetPorts.ports), max_size=80))
def test_reset_ports_never_fail(ops):
    resets: list[str] = []
    ports = ResetPorts(resets.append)
    for op in ops:
        do_port_op(ports, op)
    assert set(resets) <= {"keyboard controller", "port 0xcf9"}
