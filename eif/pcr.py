"""PCR measurements as nitro-cli and the Nitro hypervisor compute them (docs/spec/eif.md §8-§9).

Every offline PCR is `extend(stream) = SHA384(48 zero bytes || SHA384(stream))`, a single
TPM-style extend of a zeroed register. PCR3/PCR4 (run time only) extend the raw bytes of
a string instead of its digest.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from eif.errors import EifError
from eif.files import MEASURED_FILE, open_input

PCR_SIZE = 48  # SHA-384
ZERO_PCR = bytes(PCR_SIZE)
CHUNK_SIZE = 1 << 20

# Rust's Debug rendering of the hasher, printed by nitro-cli as "HashAlgorithm".
HASH_ALGORITHM_NITRO_CLI_1_4 = "Sha384 { ... }"    # nitro-cli <= 1.4.x (sha2 0.9)
HASH_ALGORITHM_NITRO_CLI_1_5 = "Sha512_48 { .. }"  # nitro-cli 1.5.0 (sha2 0.10), inferred
DEFAULT_HASH_ALGORITHM = HASH_ALGORITHM_NITRO_CLI_1_4


def extend_digest(register: bytes, data: bytes) -> bytes:
    """One NSM/TPM extend: SHA384(register || data), `data` of any length."""
    if len(register) != PCR_SIZE:
        raise EifError(f"a PCR is {PCR_SIZE} bytes, got {len(register)}")
    return hashlib.sha384(bytes(register) + bytes(data)).digest()


def pcr_from_digest(digest: bytes) -> bytes:
    """The PCR of a measured stream whose SHA-384 is `digest` (extend of a zero register)."""
    return extend_digest(ZERO_PCR, digest)


def pcr_of_bytes(data: bytes) -> bytes:
    """`extend(data)`: the PCR value nitro-cli prints for a byte stream."""
    return pcr_from_digest(hashlib.sha384(data).digest())


def pcr_of_string(s: str) -> bytes:
    """PCR3 (parent IAM role ARN) or PCR4 (parent instance id): SHA384(zeros || UTF-8 of s),
    the raw string bytes extended into a zeroed register, as QEMU and AWS's docs do."""
    return extend_digest(ZERO_PCR, s.encode("utf-8"))


def pcr_of_file(path: str | os.PathLike) -> bytes:
    """`nitro-cli pcr --input F`: extend(file bytes), hashed in chunks (a regular file
    only, read as large as it was when opened; see `eif.files.open_input`)."""
    hasher = hashlib.sha384()
    view = memoryview(bytearray(CHUNK_SIZE))
    with open_input(path, MEASURED_FILE) as file:
        while n := file.readinto(view):
            hasher.update(view[:n])
    return pcr_from_digest(hasher.digest())


@dataclass(frozen=True)
class Measurements:
    """PCR0 (image), PCR1 (kernel+cmdline+first ramdisk), PCR2 (other ramdisks) and PCR8
    (signing certificate, None when unsigned), each 48 raw bytes."""

    pcr0: bytes
    pcr1: bytes
    pcr2: bytes
    pcr8: bytes | None = None

    def to_json_dict(self, hash_algorithm: str = DEFAULT_HASH_ALGORITHM) -> dict[str, str]:
        """The "Measurements" object nitro-cli prints (a sorted map: HashAlgorithm first)."""
        result = {"HashAlgorithm": hash_algorithm, "PCR0": self.pcr0.hex(),
                  "PCR1": self.pcr1.hex(), "PCR2": self.pcr2.hex()}
        if self.pcr8 is not None:
            result["PCR8"] = self.pcr8.hex()
        return result
