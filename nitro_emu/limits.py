"""The machine's size limits a user can hit, checked in one place (the machine, the run verb
and the enclave verbs all use `check_memory_mib`)."""
from __future__ import annotations

MIN_MEMORY_MIB, MAX_MEMORY_MIB = 64, 3072


def check_memory_mib(value: int) -> int:
    """`value` if it is a usable guest memory size in MiB; ValueError (one line) if not."""
    if not isinstance(value, int) or isinstance(value, bool) \
            or not MIN_MEMORY_MIB <= value <= MAX_MEMORY_MIB:
        raise ValueError(f"memory {value} MiB is outside {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB")
    return value
