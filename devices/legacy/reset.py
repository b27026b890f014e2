"""The two ways a PC guest resets itself: the keyboard controller's reset line (ports
0x60/0x64) and the reset control register at port 0xCF9. There is no keyboard controller.

What ports 0x60/0x64 answer, and why. Linux 6.12 touches them in two places:
- `i8042_init` (drivers/input/serio/i8042.c, i8042-acpipnpio.h). With `i8042.nopnp` (on the
  AWS command line), or when PNP finds no controller, it probes the ports directly: two
  controller commands (0xD1 + 0xDF to keep A20 on, and 0xFF), each waiting up to
  10000 x 50 us for status bit 1 (IBF, input buffer full) to clear; then `i8042_flush`
  reads port 0x60 while status bit 0 (OBF, output buffer full) is set, and after 16 bytes
  gives up: "i8042: No controller found", -ENODEV.
- `reboot=k` (arch/x86/kernel/reboot.c): `kb_wait` polls status bit 1 up to 0x10000 x 2 us
  before each 0xFE written to port 0x64.
So the status port reads 0x01: IBF is never set, so every wait ends at the first read and
the reset is instant; OBF is always set, so the flush gives up after 16 reads of 0xFF from
port 0x60 (about 1 ms of the guest's udelay) and the driver is gone for good. An unclaimed
port (0xFF) would cost two 0.5 s timeouts at boot and 131 ms per reboot attempt; a status
of 0x00 would make Linux believe in a controller and wait 0.5 s for its self-test answer.

Resets: controller commands 0xF0-0xFF pulse the output-port bits whose command bit is 0,
and bit 0 is the CPU reset line, so an even command (0xFE is the usual one) resets;
command 0xD1 followed by a data byte with bit 0 clear writes the output port with the
reset line low, and resets too. Port 0xCF9 keeps bits 1-3 and resets on a byte write with
bit 2 (RST_CPU) set, the second step of Linux's `reboot=pci`. It decodes byte accesses only,
so a 32-bit access at 0xCF8 (PCI configuration address) never reaches it.
"""
from __future__ import annotations

from typing import Callable

from devices.legacy._ports import read_wide, write_wide

KBC_DATA, KBC_STATUS, RESET_CONTROL = 0x60, 0x64, 0xCF9
STATUS_OBF = 0x01


class ResetPorts:
    """Ports 0x60, 0x64 and 0xCF9; `on_reset(source)` is called when the guest resets."""

    ports: tuple[int, ...] = (KBC_DATA, KBC_STATUS, RESET_CONTROL)

    def __init__(self, on_reset: Callable[[str], None]) -> None:
        self._on_reset = on_reset
        self._output_port_next = False
        self._cf9 = 0

    def port_read(self, port: int, size: int) -> int:
        if size == 1:
            return self._read_byte(port)
        if port == RESET_CONTROL:
            return (1 << (8 * size)) - 1
        return read_wide(self._read_byte, port, size)

    def port_write(self, port: int, size: int, value: int) -> None:
        if size == 1:
            self._write_byte(port, value & 0xFF)
        elif port != RESET_CONTROL:
            write_wide(self._write_byte, port, size, value)

    def _read_byte(self, port: int) -> int:
        if port == KBC_STATUS:
            return STATUS_OBF
        if port == RESET_CONTROL:
            return self._cf9
        return 0xFF                          # data port, and anything not decoded here

    def _write_byte(self, port: int, value: int) -> None:
        if port == KBC_STATUS:
            self._output_port_next = value == 0xD1
            if value >= 0xF0 and not value & 1:
                self._on_reset("keyboard controller")
        elif port == KBC_DATA:
            if self._output_port_next:
                self._output_port_next = False
                if not value & 1:
                    self._on_reset("keyboard controller")
        elif port == RESET_CONTROL:
            self._cf9 = value & 0x0E
            if value & 0x04:
                self._on_reset("port 0xcf9")
