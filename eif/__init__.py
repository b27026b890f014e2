"""The Enclave Image Format: read, validate, build, measure (PCRs) and sign EIF files.

Depends on nothing else in nitro-emu. Entry points:
* `read_eif(path) -> EifImage`: validate an EIF and measure it in one pass;
* `build_eif(output, kernel=..., cmdline=..., ramdisks=[...]) -> Measurements`;
* `eif.pcr`: `pcr_of_string` (PCR3/PCR4), `extend_digest`; `eif.signature`:
  `pcr8_from_certificate`.
"""
from typing import Any

from eif.errors import EifError
from eif.pcr import Measurements, pcr_of_string
from eif.reader import EifImage, Section, read_eif

__all__ = ["EifError", "EifImage", "Measurements", "Section", "build_eif", "read_eif",
           "pcr8_from_certificate", "pcr_of_string"]


def __getattr__(name: str) -> Any:
    # The builder and the signing code (cryptography) are imported on first use: booting
    # only reads.
    if name == "build_eif":
        from eif.builder import build_eif
        return build_eif
    if name == "pcr8_from_certificate":
        from eif.signature import pcr8_from_certificate
        return pcr8_from_certificate
    raise AttributeError(name)
