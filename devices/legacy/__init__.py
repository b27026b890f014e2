"""The legacy PC parts of the machine, each a `PortDevice` (board.interfaces):
8259A PIC pair, 8254 PIT with port 0x61, 16550A UART, MC146818 RTC/CMOS, reset ports."""
from devices.legacy.pic import Pic8259Pair, PicLine
from devices.legacy.pit import PIT_HZ, Pit8254
from devices.legacy.reset import ResetPorts
from devices.legacy.rtc import Rtc146818
from devices.legacy.uart import Uart16550

__all__ = ["PIT_HZ", "Pic8259Pair", "PicLine", "Pit8254", "ResetPorts", "Rtc146818", "Uart16550"]
