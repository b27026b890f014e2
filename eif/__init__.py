"""The Enclave Image Format: read, validate, build, measure (PCRs) and sign EIF files.

Depends on nothing else in nitro-emu.
"""
from eif.errors import EifError

__all__ = ["EifError"]
