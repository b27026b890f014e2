"""All the legacy devices wired as the machine wires them, driven through a boot-like
sequence with Linux's handlers: PIC init, PIT periodic tick, 8250 startup, a line of user
output sent by the THRE interrupt while the timer keeps ticking, an RTC read, reboot=k.

The "CPU" here takes an interrupt whenever INTR is up, the way a real CPU does at every
instruction boundary with IF set; the handlers are Linux's (mask_and_ack, the 8250 IRQ
handler, unmask)."""
from __future__ import annotations

from devices.legacy import Pic8259Pair, Pit8254, ResetPorts, Rtc146818, Uart16550
from devices.legacy.pit import ticks_to_ns
from board.clock import VirtualClock

LATCH = 1193                                              # HZ=1000


class Machine:
    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.requests = 0
        self.pic = Pic8259Pair(self._request)
        self.pit = Pit8254(self.clock, self.pic.line(0))
        self.console: list[bytes] = []
        self.uart = Uart16550(self.pic.line(4), self.console.append)
        self.rtc = Rtc146818(clock=self.clock)
        self.resets: list[str] = []
        self.reset = ResetPorts(self.resets.append)
        self.bus = {}
        for device in (self.pic, self.pit, self.uart, self.rtc, self.reset):
            for port in device.ports:
                assert port not in self.bus
                self.bus[port] = device
        self.cached_irq_mask = 0xFFFF
        self.jiffies = 0
        self.tx_queue = bytearray()
        self.received = bytearray()
        self.handled = {0: 0, 4: 0}
        self.unhandled = 0

    def _request(self) -> None:
        self.requests += 1

    def outb(self, value: int, port: int) -> None:
        self.bus[port].port_write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.bus[port].port_read(port, 1)

    # -- Linux ----------------------------------------------------------------------------

    def unmask(self, irq: int) -> None:
        self.cached_irq_mask &= ~(1 << irq)
        self.outb(self.cached_irq_mask & 0xFF, 0x21)
        self.outb(self.cached_irq_mask >> 8, 0xA1)

    def init_irq(self) -> None:
        self.outb(0xFF, 0xA1)
        self.outb(0xFB, 0x21)
        assert self.inb(0x21) == 0xFB                      # probe_8259A
        for value, port in ((0xFF, 0x21), (0x11, 0x20), (0x30, 0x21), (0x04, 0x21), (0x01, 0x21),
                            (0x11, 0xA0), (0x38, 0xA1), (0x02, 0xA1), (0x01, 0xA1)):
            self.outb(value, port)
        self.unmask(2)

    def start_tick(self) -> None:
        self.outb(0x34, 0x43)
        self.outb(LATCH & 0xFF, 0x40)
        self.outb(LATCH >> 8, 0x40)
        self.unmask(0)

    def serial_startup(self) -> None:
        base = 0x3F8
        self.outb(0x07, base + 2)
        self.outb(0x00, base + 2)
        for reg in (5, 0, 2, 6):
            self.inb(base + reg)
        self.outb(0x03, base + 3)
        self.outb(0x0B, base + 4)                          # DTR | RTS | OUT2
        self.outb(0x81, base + 2)
        self.unmask(4)
        self.outb(0x05, base + 1)                          # RLSI | RDI

    def tty_write(self, data: bytes) -> None:
        self.tx_queue += data
        self.outb(0x07, 0x3F9)                             # start_tx: THRI on

    def serial_irq(self) -> bool:
        iir = self.inb(0x3FA)
        if iir & 0x01:
            return False
        lsr = self.inb(0x3FD)
        while lsr & 0x01:                                  # serial8250_rx_chars
            self.received.append(self.inb(0x3F8))
            lsr = self.inb(0x3FD)
        if lsr & 0x20 and self.inb(0x3F9) & 0x02:
            chunk, self.tx_queue[:] = self.tx_queue[:16], self.tx_queue[16:]
            for byte in chunk:
                self.outb(byte, 0x3F8)
            if not self.tx_queue:
                self.outb(0x05, 0x3F9)                     # __stop_tx
        return True

    def take_interrupts(self) -> None:
        """The CPU with IF set: every pending request, Linux's handle_level_irq each."""
        while self.pic.has_interrupt():
            irq = self.pic.acknowledge() - 0x30
            self.cached_irq_mask |= 1 << irq               # mask_and_ack_8259A
            self.inb(0x21)
            self.outb(self.cached_irq_mask & 0xFF, 0x21)
            self.outb(0x60 + irq, 0x20)
            if irq == 0:
                self.jiffies += 1
                self.handled[0] += 1
            elif irq == 4:
                if self.serial_irq():
                    self.handled[4] += 1
                else:
                    self.unhandled += 1
            self.unmask(irq)

    def run_for(self, ns: int) -> None:
        """Virtual time passes; timers fire; the CPU takes what is pending."""
        end = self.clock.now_ns() + ns
        while True:
            deadline = self.clock.next_deadline()
            if deadline is None or deadline > end:
                break
            self.clock.skip_to(deadline)
            self.clock.fire_due()
            self.take_interrupts()
        self.clock.skip_to(end)
        self.clock.fire_due()
        self.take_interrupts()


def test_boot_like_sequence_on_the_wired_devices():
    m = Machine()
    m.init_irq()
    m.start_tick()
    m.run_for(ticks_to_ns(10 * LATCH) + 1000)
    assert m.jiffies >= 1                                 # fewer than 10 if the host lagged:
                                                          # missed ticks are merged
    m.serial_startup()
    m.tty_write(b"Hello from the enclave side!\n" * 3)
    m.take_interrupts()
    m.run_for(ticks_to_ns(3 * LATCH))
    m.uart.flush()
    assert b"".join(m.console) == b"Hello from the enclave side!\n" * 3
    assert m.handled[4] == 6 and m.unhandled == 0          # 87 bytes: 16 x 5 + 7
    assert m.cached_irq_mask & 0x11 == 0                  # nothing left masked

    m.outb(0x0A, 0x70)
    m.inb(0x71)
    m.outb(0x0D, 0x70)
    assert m.inb(0x71) == 0x80

    while m.inb(0x64) & 0x02:                             # kb_wait
        pass
    m.outb(0xFE, 0x64)
    assert m.resets == ["keyboard controller"]


def test_console_input_reaches_the_guest_between_ticks():
    m = Machine()
    m.init_irq()
    m.start_tick()
    m.serial_startup()
    m.uart.feed(b"uname -a\n" * 10)
    m.run_for(ticks_to_ns(5 * LATCH))
    assert m.received == b"uname -a\n" * 10 and m.uart.input_waiting == 0
    assert m.handled[4] == 1 and m.unhandled == 0         # the FIFO refilled as it was read
