"""A 16550A UART (COM1 at 0x3F8 by default): the enclave's console.

Registers as the datasheet gives them: RBR/THR and DLL (DLAB), IER (4 bits) and DLM, IIR
(FIFO bits 0xC0) / FCR, LCR, MCR (5 bits, loopback), LSR, MSR, SCR; 16-byte FIFOs with the
receive trigger level from FCR. Transmission takes no time: a byte written to THR goes out
at once, so LSR always shows THRE|TEMT, and each write re-raises the THRE interrupt (the
line drops and rises again, a fresh edge for the 8259). The Linux tty layer sends user
output from that interrupt; printk polls LSR and never needs it.

Interrupt rules (Linux's autoconfig and startup tests rely on them): enabling THRI in IER
while THR is empty raises THRE (every time it goes from 0 to 1); reading IIR while it
reports THRE clears it; reading LSR clears line errors; reading MSR clears the deltas.
Received data below the FIFO trigger level is reported at once as a character timeout
(IIR 0x0C) instead of after four character times, since there is no baud clock.

The IRQ output reaches the PIC only while MCR.OUT2 is set and loopback is off, as on a PC
board (Linux sets OUT2 for ports with an IRQ). In loopback, THR bytes land in the receive
FIFO (overrun sets LSR.OE) and MSR mirrors MCR; outside loopback CTS, DSR and DCD are up.

Input: `feed()` appends to a host-side buffer (capped at `INPUT_LIMIT` bytes, the excess
counted in `dropped_input`); bytes move into the receive FIFO as it has room, so nothing
typed is lost to overruns. Output: bytes collect until a newline, `OUTPUT_CHUNK` bytes, or
`flush()`, then go to `output()` in one call.
"""
from __future__ import annotations

from typing import Callable

from devices.legacy._ports import ByteRegisterPorts
from board.interfaces import IrqLine

INPUT_LIMIT = 1 << 20
OUTPUT_CHUNK = 4096
FIFO_SIZE = 16

# IER bits
IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08
# LSR bits
LSR_DR, LSR_OE, LSR_PE, LSR_FE, LSR_BI, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI
# MCR bits
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
# MSR bits
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
# IIR values
IIR_NONE, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_TIMEOUT = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C

_TRIGGER = (1, 4, 8, 14)
_MSR_CONNECTED = MSR_CTS | MSR_DSR | MSR_DCD


class Uart16550(ByteRegisterPorts):
    """COM port at `base` (8 ports) raising `irq`, writing the console to `output`."""

    def __init__(self, irq: IrqLine, output: Callable[[bytes], None], base: int = 0x3F8) -> None:
        if not isinstance(base, int) or not 0 <= base <= 0xFFF8:
            raise ValueError(f"UART base port {base!r} is not an I/O port (0-0xFFF8)")
        self.base = base
        self.ports = tuple(range(base, base + 8))
        self._irq = irq
        self._output = output
        self._line_high = False
        self.dropped_input = 0
        self._pending_in = bytearray()     # host side, not yet "received"
        self._rx = bytearray()             # the receive FIFO (or the 16450 RBR)
        self._tx = bytearray()             # transmitted, not yet handed to output()
        self._rbr = 0
        self._ier = 0
        self._lcr = 0
        self._mcr = 0
        self._lsr_errors = 0
        self._msr = _MSR_CONNECTED
        self._scr = 0
        self._dll = 0x0C                   # 9600 baud, as a BIOS leaves it
        self._dlm = 0
        self._fifo_on = False
        self._fcr = 0
        self._rx_capacity = 1
        self._trigger = 1
        self._thr_pending = False
        b = base
        self._readers: dict[int, Callable[[], int]] = {
            b: self._read_rbr, b + 1: self._read_ier, b + 2: self._read_iir,
            b + 3: lambda: self._lcr, b + 4: lambda: self._mcr, b + 5: self._read_lsr,
            b + 6: self._read_msr, b + 7: lambda: self._scr,
        }
        self._writers: dict[int, Callable[[int], None]] = {
            b: self._write_thr, b + 1: self._write_ier, b + 2: self._write_fcr,
            b + 3: self._write_lcr, b + 4: self._write_mcr, b + 5: lambda v: None,
            b + 6: lambda v: None, b + 7: self._write_scr,
        }

    # -- the machine's side -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Console input from the host: received by the UART as the guest makes room."""
        room = INPUT_LIMIT - len(self._pending_in)
        if len(data) > room:
            self.dropped_input += len(data) - max(room, 0)
            data = data[:max(room, 0)]
        self._pending_in += data
        if self._receive_pending():
            self._update()

    def flush(self) -> None:
        """Hand everything transmitted so far to `output()`."""
        if self._tx:
            data = bytes(self._tx)
            self._tx.clear()
            self._output(data)

    @property
    def input_waiting(self) -> int:
        """Bytes fed by the host that the receive FIFO has not taken yet."""
        return len(self._pending_in)

    # -- registers ----------------------------------------------------------------------

    def _read_rbr(self) -> int:
        if self._lcr & 0x80:
            return self._dll
        rx = self._rx
        if rx:
            self._rbr = rx[0]
            del rx[0]
            if self._pending_in:
                self._receive_pending()
            self._update()
        return self._rbr

    def _write_thr(self, value: int) -> None:
        if self._lcr & 0x80:
            self._dll = value
            return
        self._thr_pending = False          # THR is full for a moment: THRE drops ...
        if self._line_high:
            self._update()
        if self._mcr & MCR_LOOP:
            if len(self._rx) < self._rx_capacity:
                self._rx.append(value)
            else:
                self._lsr_errors |= LSR_OE
        else:
            tx = self._tx
            tx.append(value)
            if value == 0x0A or len(tx) >= OUTPUT_CHUNK:
                self.flush()
        self._thr_pending = True           # ... and rises again once the byte is sent
        if self._ier & IER_THRI:
            self._update()

    def _read_ier(self) -> int:
        return self._dlm if self._lcr & 0x80 else self._ier

    def _write_ier(self, value: int) -> None:
        if self._lcr & 0x80:
            self._dlm = value
            return
        old = self._ier
        self._ier = value & 0x0F
        if self._ier & IER_THRI and not old & IER_THRI:
            self._thr_pending = True       # THR is always empty here
        self._update()

    def _read_iir(self) -> int:
        iir = self._iir()
        if iir == IIR_THRI:
            self._thr_pending = False
            self._update()
        return iir | (0xC0 if self._fifo_on else 0)

    def _iir(self) -> int:
        ier = self._ier
        if ier & IER_RLSI and self._lsr_errors:
            return IIR_RLSI
        if ier & IER_RDI and self._rx:
            return IIR_RDI if len(self._rx) >= self._trigger else IIR_TIMEOUT
        if ier & IER_THRI and self._thr_pending:
            return IIR_THRI
        if ier & IER_MSI and self._msr & 0x0F:
            return IIR_MSI
        return IIR_NONE

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & 1)
        if enable != self._fifo_on:        # switching FIFO mode empties both FIFOs
            self._fifo_on = enable
            self._rx.clear()
            self._rx_capacity = FIFO_SIZE if enable else 1
        if enable:
            if value & 0x02:
                self._rx.clear()
            self._trigger = _TRIGGER[value >> 6]
            self._fcr = value & 0xC9
        else:
            self._trigger = 1
            self._fcr = 0
        self._receive_pending()
        self._update()

    def _write_lcr(self, value: int) -> None:
        self._lcr = value

    def _write_mcr(self, value: int) -> None:
        was_loop = self._mcr & MCR_LOOP
        self._mcr = value & 0x1F
        self._set_msr_status(self._modem_status())
        if was_loop and not self._mcr & MCR_LOOP:
            self._receive_pending()
        self._update()

    def _read_lsr(self) -> int:
        lsr = LSR_THRE | LSR_TEMT | self._lsr_errors | (LSR_DR if self._rx else 0)
        if self._lsr_errors:
            self._lsr_errors = 0
            self._update()
        return lsr

    def _read_msr(self) -> int:
        msr = self._msr
        if msr & 0x0F:
            self._msr = msr & 0xF0
            self._update()
        return msr

    def _write_scr(self, value: int) -> None:
        self._scr = value

    # -- internals ----------------------------------------------------------------------

    def _modem_status(self) -> int:
        mcr = self._mcr
        if not mcr & MCR_LOOP:
            return _MSR_CONNECTED
        return ((MSR_CTS if mcr & MCR_RTS else 0) | (MSR_DSR if mcr & MCR_DTR else 0)
                | (MSR_RI if mcr & MCR_OUT1 else 0) | (MSR_DCD if mcr & MCR_OUT2 else 0))

    def _set_msr_status(self, status: int) -> None:
        old = self._msr
        changed = (old ^ status) & 0xF0
        delta = old & 0x0F
        if changed & MSR_CTS:
            delta |= MSR_DCTS
        if changed & MSR_DSR:
            delta |= MSR_DDSR
        if changed & MSR_RI and not status & MSR_RI:
            delta |= MSR_TERI
        if changed & MSR_DCD:
            delta |= MSR_DDCD
        self._msr = status | delta

    def _receive_pending(self) -> bool:
        """Move host input into the receive FIFO while it has room (not in loopback)."""
        pending = self._pending_in
        if not pending or self._mcr & MCR_LOOP:
            return False
        room = self._rx_capacity - len(self._rx)
        if room <= 0:
            return False
        self._rx += pending[:room]
        del pending[:room]
        return True

    def _update(self) -> None:
        mcr = self._mcr
        high = (mcr & (MCR_OUT2 | MCR_LOOP)) == MCR_OUT2 and self._iir() != IIR_NONE
        if high != self._line_high:
            self._line_high = high
            self._irq.set_level(high)
