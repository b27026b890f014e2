"""The 8259A interrupt controller pair of a PC: master at 0x20/0x21, slave at 0xA0/0xA1 on
the master's IR2, and the edge/level control registers (ELCR) at 0x4D0/0x4D1.

What Linux does with it (arch/x86/kernel/i8259.c): probe by writing 0xFB to the master's
mask and reading it back; ICW1-4 with vector bases 0x30 and 0x38, slave on IR2, normal EOI;
then per interrupt `mask_and_ack`: mask in the IMR, specific EOI (OCW2 0x60+n) to the slave
and to master IR2, with OCW3 0x0B/0x0A to read the ISR when the IRQ looked spurious.

Behaviour follows the datasheet: in edge mode a rising edge sets the IRR bit and the input
must stay high until the INTA (a request whose input falls first is withdrawn, so a
UART or virtio line dropped by the guest's own register read leaves no stale interrupt);
in level mode (ELCR bit or ICW1 LTIM) the IRR follows the input. `pulse()` is an edge
whose input stays high until acknowledged, like the 8254's OUT. Priority rotation, special
mask mode, special fully nested mode, automatic EOI and poll mode are implemented. An
INTA cycle with no request left to give yields IR7 of that chip (vector base+7) without
setting an ISR bit: the spurious IRQ7/IRQ15 of real hardware (it can only happen here if
the guest masks a request between INTR and INTA).
"""
from __future__ import annotations

from typing import Callable

from devices.legacy._ports import ByteRegisterPorts


def _priority_table() -> list[int]:
    """_PRIO[rotation * 256 + mask]: priority (0 = highest) of the best bit of `mask` when
    IR `rotation` has the highest priority; 8 when `mask` is empty."""
    table = []
    for rotation in range(8):
        for mask in range(256):
            best = 8
            for priority in range(8):
                if mask & (1 << ((priority + rotation) & 7)):
                    best = priority
                    break
            table.append(best)
    return table


_PRIO = _priority_table()


class _Chip:
    """One 8259A: its registers and initialisation state."""

    __slots__ = ("irr", "imr", "isr", "level", "trigger", "elcr", "elcr_mask", "rotation",
                 "base", "read_isr", "poll", "special_mask", "init_state", "init4",
                 "single", "ltim", "auto_eoi", "rotate_aeoi", "sfnm", "icw3", "is_master")

    def __init__(self, is_master: bool, elcr_mask: int) -> None:
        self.is_master = is_master
        self.elcr_mask = elcr_mask
        self.elcr = 0
        self.level = 0          # current input levels
        self.irr = 0
        self.trigger = 0        # level-triggered inputs: ELCR | (0xFF if LTIM)
        self.base = 0x08 if is_master else 0x70   # PC BIOS defaults
        self.init_state = 0     # 0 operational, 1..3 waiting for ICW2..ICW4
        self.init4 = False
        self.single = False
        self.ltim = False
        self.icw3 = 4 if is_master else 2
        self._clear_modes()

    def _clear_modes(self) -> None:
        """IMR, ISR, rotation and every OCW/ICW4 mode back to their reset values."""
        self.imr = 0
        self.isr = 0
        self.rotation = 0       # the IR with the highest priority
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.auto_eoi = False
        self.rotate_aeoi = False
        self.sfnm = False

    def output(self) -> int:
        """The IR this chip would present on INT, or -1 when INT is low."""
        mask = self.irr & ~self.imr
        if not mask:
            return -1
        rotation = self.rotation * 256
        priority = _PRIO[rotation + mask]
        isr = self.isr
        if self.special_mask:
            isr &= ~self.imr
        if self.sfnm and self.is_master:
            isr &= ~4
        if priority < _PRIO[rotation + isr]:
            return (priority + self.rotation) & 7
        return -1

    def ack(self, irq: int) -> None:
        """The INTA cycle for `irq`: ISR set (or automatic EOI), edge request consumed."""
        bit = 1 << irq
        if self.auto_eoi:
            if self.rotate_aeoi:
                self.rotation = (irq + 1) & 7
        else:
            self.isr |= bit
        if not self.trigger & bit:
            self.irr &= ~bit

    def icw1(self, value: int) -> None:
        """Start initialisation: clears IMR, ISR, edge requests and the modes."""
        self.init_state = 1
        self.init4 = bool(value & 1)
        self.single = bool(value & 2)
        self.ltim = bool(value & 8)
        self.trigger = self.elcr | (0xFF if self.ltim else 0)
        self.irr &= self.trigger & self.level
        self._clear_modes()

    def ocw2(self, value: int) -> None:
        """EOI and rotation commands."""
        command = value >> 5
        if command == 1 or command == 5:            # non-specific EOI (and rotate)
            priority = _PRIO[self.rotation * 256 + self.isr]
            if priority < 8:
                irq = (priority + self.rotation) & 7
                self.isr &= ~(1 << irq)
                if command == 5:
                    self.rotation = (irq + 1) & 7
        elif command == 3:                          # specific EOI
            self.isr &= ~(1 << (value & 7))
        elif command == 7:                          # rotate on specific EOI
            self.isr &= ~(1 << (value & 7))
            self.rotation = ((value & 7) + 1) & 7
        elif command == 6:                          # set priority
            self.rotation = ((value & 7) + 1) & 7
        elif command == 4:
            self.rotate_aeoi = True
        elif command == 0:
            self.rotate_aeoi = False

    def ocw3(self, value: int) -> None:
        """Register select, poll and special mask mode."""
        if value & 0x04:
            self.poll = True
        if value & 0x02:
            self.read_isr = bool(value & 1)
        if value & 0x40:
            self.special_mask = bool(value & 0x20)

    def write_data(self, value: int) -> None:
        """OCW1 (the mask) or the next ICW of an initialisation sequence."""
        state = self.init_state
        if state == 0:
            self.imr = value
        elif state == 1:
            self.base = value & 0xF8
            self.init_state = 2 if not self.single else (3 if self.init4 else 0)
        elif state == 2:
            self.icw3 = value
            self.init_state = 3 if self.init4 else 0
        else:
            self.auto_eoi = bool(value & 2)
            self.sfnm = bool(value & 0x10)
            self.init_state = 0

    def write_elcr(self, value: int) -> None:
        """Select level (1) or edge (0) triggering per input; reserved bits stay 0."""
        old = self.trigger
        self.elcr = value & self.elcr_mask
        self.trigger = self.elcr | (0xFF if self.ltim else 0)
        now_level = self.trigger & ~old
        self.irr = (self.irr & ~now_level) | (self.level & now_level)


class PicLine:
    """Interrupt input `irq` (0-15) of a `Pic8259Pair`, the `IrqLine` devices hold."""

    __slots__ = ("_set", "_pulse", "irq")

    def __init__(self, set_irq: Callable[[int, bool], None], pulse_irq: Callable[[int], None],
                 irq: int) -> None:
        self._set = set_irq
        self._pulse = pulse_irq
        self.irq = irq

    def set_level(self, high: bool) -> None:
        """Drive the input: a rising edge requests, a fall before the INTA withdraws."""
        self._set(self.irq, high)

    def pulse(self) -> None:
        """An edge request held until acknowledged (a level-triggered input ignores it)."""
        self._pulse(self.irq)


class Pic8259Pair(ByteRegisterPorts):
    """Master and slave 8259A wired as in a PC/AT.

    `on_request()` is called when INTR (the master's INT output) goes from low to high;
    the machine then asks `has_interrupt()` and runs `acknowledge()` when the CPU can take
    it. `line(2)` is IRQ 9, as the ISA bus routes its IRQ2 pin to the slave's IR1."""

    ports: tuple[int, ...] = (0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1)

    def __init__(self, on_request: Callable[[], None]) -> None:
        self._on_request = on_request
        self.master = _Chip(True, 0xF8)      # IRQ 0, 1, 2 are always edge-triggered
        self.slave = _Chip(False, 0xDE)      # IRQ 8 and 13 too
        self._intr = False
        self._lines = [PicLine(self._set_irq, self._pulse_irq, 9 if irq == 2 else irq)
                       for irq in range(16)]
        master, slave = self.master, self.slave
        self._readers: dict[int, Callable[[], int]] = {
            0x20: lambda: self._read_command(master),
            0x21: lambda: self._read_data(master),
            0xA0: lambda: self._read_command(slave),
            0xA1: lambda: self._read_data(slave),
            0x4D0: lambda: master.elcr,
            0x4D1: lambda: slave.elcr,
        }
        self._writers: dict[int, Callable[[int], None]] = {
            0x20: lambda v: self._write_command(master, v),
            0x21: lambda v: self._write_data(master, v),
            0xA0: lambda v: self._write_command(slave, v),
            0xA1: lambda v: self._write_data(slave, v),
            0x4D0: lambda v: self._write_elcr(master, v),
            0x4D1: lambda v: self._write_elcr(slave, v),
        }

    # -- the machine's side -------------------------------------------------------------

    def line(self, irq: int) -> PicLine:
        """The input for ISA IRQ `irq` (0-15)."""
        if not isinstance(irq, int) or not 0 <= irq <= 15:
            raise ValueError(f"8259 pair: no interrupt line {irq!r} (valid: 0-15)")
        return self._lines[irq]

    def has_interrupt(self) -> bool:
        """INTR: an unmasked request outranks everything in service."""
        return self._intr

    def acknowledge(self) -> int:
        """The INTA cycle: the vector to deliver, with IRR/ISR updated as the chips do."""
        master = self.master
        irq = master.output()
        if irq < 0:
            vector = master.base | 7                 # spurious IRQ 7: no ISR bit
        else:
            master.ack(irq)
            if irq == 2 and not master.single:
                slave = self.slave
                irq = slave.output()
                if irq < 0:
                    vector = slave.base | 7          # spurious IRQ 15: master IR2 in service
                else:
                    slave.ack(irq)
                    vector = slave.base + irq
            else:
                vector = master.base + irq
        self._update()
        return vector

    # -- internals ----------------------------------------------------------------------

    def _set_irq(self, irq: int, high: bool) -> None:
        chip = self.slave if irq & 8 else self.master
        bit = 1 << (irq & 7)
        if high:
            if chip.level & bit:
                return
            chip.level |= bit
            chip.irr |= bit
        else:
            if not chip.level & bit:
                return
            chip.level &= ~bit
            if not chip.irr & bit:
                return
            chip.irr &= ~bit                         # withdrawn before the INTA
        self._update()

    def _pulse_irq(self, irq: int) -> None:
        chip = self.slave if irq & 8 else self.master
        bit = 1 << (irq & 7)
        if (chip.level | chip.trigger | chip.irr) & bit:
            return                                   # no edge, level input, or already requested
        chip.irr |= bit
        self._update()

    def _update(self) -> None:
        """Propagate the slave's INT to master IR2, then the master's INT to INTR."""
        master = self.master
        if self.slave.output() >= 0:
            if not master.level & 4:
                master.level |= 4
                master.irr |= 4
        elif master.level & 4:
            master.level &= ~4
            if master.trigger & 4:
                master.irr &= ~4
        intr = master.output() >= 0
        if intr != self._intr:
            self._intr = intr
            if intr:
                self._on_request()

    def _read_command(self, chip: _Chip) -> int:
        if chip.poll:
            return self._poll(chip)
        return chip.isr if chip.read_isr else chip.irr

    def _read_data(self, chip: _Chip) -> int:
        if chip.poll:
            return self._poll(chip)
        return chip.imr

    def _poll(self, chip: _Chip) -> int:
        """Poll mode read: acknowledges the best request of this chip like an INTA."""
        chip.poll = False
        irq = chip.output()
        if irq < 0:
            return 0
        chip.ack(irq)
        self._update()
        return 0x80 | irq

    def _write_command(self, chip: _Chip, value: int) -> None:
        if value & 0x10:
            chip.icw1(value)
        elif value & 0x08:
            chip.ocw3(value)
        else:
            chip.ocw2(value)
        self._update()

    def _write_data(self, chip: _Chip, value: int) -> None:
        chip.write_data(value)
        self._update()

    def _write_elcr(self, chip: _Chip, value: int) -> None:
        chip.write_elcr(value)
        self._update()
