"""The machine's size limits a user can hit, checked in one place (the machine, the run verb
and the enclave verbs all use `check_memory_mib`)."""
from __future__ import annotations

MIN_MEMORY_MIB, MAX_MEMORY_MIB = 64, 3072


class MemorySizeError(ValueError):
    """A guest memory size outside the limits; `limit` is the one it passed, and
    `too_large` says which (nitro-cli reports the two with different codes)."""

    def __init__(self, value: object, limit: int, too_large: bool) -> None:
        super().__init__(f"memory {value} MiB is outside {MIN_MEMORY_MIB} to "
                         f"{MAX_MEMORY_MIB} MiB")
        self.limit = limit
        self.too_large = too_large


def check_memory_mib(value: int) -> int:
    """`value` if it is a usable guest memory size in MiB; MemorySizeError (a ValueError,
    one line) if not."""
    if not isinstance(value, int) or isinstance(value, bool) or value < MIN_MEMORY_MIB:
        raise MemorySizeError(value, MIN_MEMORY_MIB, too_large=False)
    if value > MAX_MEMORY_MIB:
        raise MemorySizeError(value, MAX_MEMORY_MIB, too_large=True)
    return value
