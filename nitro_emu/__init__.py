"""nitro-emu: a full-system emulator of an AWS Nitro Enclave on Unicorn's x86-64 core.

`Machine` is imported on first use only so that the verbs that never boot a guest
(describe-eif, build-eif, attest, ...) start without loading Unicorn and the devices.
"""
from typing import Any

__all__ = ["Machine"]


def __getattr__(name: str) -> Any:
    if name == "Machine":
        from nitro_emu.machine import Machine
        return Machine
    raise AttributeError(name)
