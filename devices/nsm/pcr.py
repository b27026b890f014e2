"""The NSM's bank of platform configuration registers (PCRs).

32 registers of 48 bytes (SHA-384). A register only changes by extension,
`new = SHA-384(old || data)` (the one extension of `eif.pcr`), and once locked it never changes again (there is no
unlock). At boot the machine extends the measurements in and locks 0-15.
"""
from __future__ import annotations

from eif.pcr import PCR_SIZE, ZERO_PCR, extend_digest

PCR_COUNT = 32
BOOT_LOCKED = 16          # PCRs 0..15 are locked once the boot measurements are in


class PcrError(Exception):
    """A PCR operation that the NSM refuses; `code` is the wire error name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PcrBank:
    """32 SHA-384 registers with lock bits."""

    __slots__ = ("_values", "_locked")

    def __init__(self) -> None:
        self._values = [ZERO_PCR] * PCR_COUNT
        self._locked = [False] * PCR_COUNT

    def _check_index(self, index: int) -> None:
        if not 0 <= index < PCR_COUNT:
            raise PcrError("InvalidIndex", f"PCR index {index} is not in 0..{PCR_COUNT - 1}")

    def value(self, index: int) -> bytes:
        self._check_index(index)
        return self._values[index]

    def is_locked(self, index: int) -> bool:
        self._check_index(index)
        return self._locked[index]

    def set_initial(self, index: int, value: bytes) -> None:
        """Load a boot measurement (the final register value) into an unlocked PCR."""
        self._check_index(index)
        if len(value) != PCR_SIZE:
            raise ValueError(f"PCR{index} value must be {PCR_SIZE} bytes, not {len(value)}")
        if self._locked[index]:
            raise PcrError("ReadOnlyIndex", f"PCR{index} is locked")
        self._values[index] = bytes(value)

    def extend(self, index: int, data: bytes) -> bytes:
        """PCR[index] = SHA-384(PCR[index] || data); returns the new value."""
        self._check_index(index)
        if self._locked[index]:
            raise PcrError("ReadOnlyIndex", f"PCR{index} is locked and cannot be extended")
        value = extend_digest(self._values[index], data)
        self._values[index] = value
        return value

    def lock(self, index: int) -> None:
        """Lock one PCR; locking an already locked one is an error (as the NSM does)."""
        self._check_index(index)
        if self._locked[index]:
            raise PcrError("ReadOnlyIndex", f"PCR{index} is already locked")
        self._locked[index] = True

    def lock_range(self, count: int) -> None:
        """Lock PCRs 0..count-1 (idempotent); count above 32 is an error."""
        if not 0 <= count <= PCR_COUNT:
            raise PcrError("InvalidIndex", f"LockPCRs range {count} exceeds {PCR_COUNT} PCRs")
        for index in range(count):
            self._locked[index] = True

    def locked_indices(self) -> list[int]:
        return [i for i, locked in enumerate(self._locked) if locked]

    def locked_values(self) -> dict[int, bytes]:
        """The locked PCRs and their values, ascending: what an attestation reports."""
        return {i: self._values[i] for i in range(PCR_COUNT) if self._locked[i]}
