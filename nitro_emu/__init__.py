"""nitro-emu: a full-system emulator of an AWS Nitro Enclave on Unicorn's x86-64 core.

`Machine` is imported lazily so that `devices` can use the small interfaces in this
package (`nitro_emu.interfaces`, `nitro_emu.memory`, `nitro_emu.clock`) without pulling
in the CPU layer.
"""
from typing import Any

__all__ = ["Machine"]


def __getattr__(name: str) -> Any:
    if name == "Machine":
        from nitro_emu.machine import Machine
        return Machine
    raise AttributeError(name)
