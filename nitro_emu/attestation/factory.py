"""Builds the machine's NSM: boot PCRs as on Nitro, a signer under the local CA."""
from __future__ import annotations

import logging
import os
import secrets

from devices.nsm import NsmDevice, NsmHandler, PcrBank
from devices.nsm.document import SigningIdentity
from devices.nsm.handler import FIELD_LIMIT, NsmRequestError
from devices.nsm.pcr import BOOT_LOCKED, PCR_SIZE
from eif.pcr import pcr_of_string
from nitro_emu.attestation.errors import AttestationError
from nitro_emu.attestation.module_id import is_instance_id, module_id

log = logging.getLogger("nitro_emu.attestation")


def make_module_id(parent_id: str | None = None) -> str:
    """A module id shaped like Nitro's `i-<instance>-enc<16 hex>`; the instance part is
    `parent_id` when that looks like an EC2 instance id, else random."""
    instance = parent_id if parent_id and is_instance_id(parent_id) else \
        "i-" + secrets.token_hex(9)[:17]
    return module_id(instance, secrets.token_hex(8))


def boot_pcrs(*, pcr0: bytes, pcr1: bytes, pcr2: bytes, pcr8: bytes | None,
              parent_role: str | None, parent_id: str | None, debug_mode: bool) -> PcrBank:
    """The PCR bank as the guest finds it: 0/1/2/8 = the EIF measurements (zeros for
    0-2 in debug mode, as on real Nitro), 3 = extend(role ARN), 4 = extend(instance
    id), 0-15 locked."""
    bank = PcrBank()
    for index, value in ((0, pcr0), (1, pcr1), (2, pcr2), (8, pcr8)):
        if value is None:
            continue
        if not isinstance(value, (bytes, bytearray)) or len(value) != PCR_SIZE:
            raise AttestationError(f"PCR{index} must be {PCR_SIZE} bytes (a SHA-384 "
                                   f"measurement), got {value!r:.60}")
        if debug_mode and index <= 2:
            continue
        bank.set_initial(index, bytes(value))
    if parent_role:
        bank.set_initial(3, pcr_of_string(parent_role))
    if parent_id:
        bank.set_initial(4, pcr_of_string(parent_id))
    bank.lock_range(BOOT_LOCKED)
    return bank


class LocalCASigner:
    """The run's document signer (a `ChainSigner` under the local CA in `state_dir`),
    made on the guest's first Attestation request: loading the CA, and with it the
    cryptography package, stays off the boot of an enclave that never attests. A CA that
    cannot be loaded is one log line and an InternalError answer to the guest."""

    def __init__(self, state_dir: str | os.PathLike[str] | None, module_id: str) -> None:
        self._state_dir = state_dir
        self._module_id = module_id
        self._signer = None

    def identity(self, now_ms: int) -> SigningIdentity:
        if self._signer is None:
            from nitro_emu.attestation.ca import LocalCA
            try:
                self._signer = LocalCA.load_or_create(self._state_dir).signer(self._module_id)
            except AttestationError as error:
                log.error("nitro-emu: the NSM cannot sign attestation documents: %s", error)
                raise NsmRequestError("InternalError", str(error)) from None
        return self._signer.identity(now_ms)


def create_nsm_device(*, pcr0: bytes, pcr1: bytes, pcr2: bytes, pcr8: bytes | None,
                      parent_role: str | None, parent_id: str | None, debug_mode: bool,
                      state_dir: str | os.PathLike[str] | None = None,
                      module_id: str | None = None,
                      field_limit: int | None = FIELD_LIMIT) -> NsmDevice:
    """The NSM device for one machine run (see `boot_pcrs`); documents are signed by a
    fresh leaf chained to the local root CA in `state_dir` (created on first use; see
    `LocalCASigner`)."""
    bank = boot_pcrs(pcr0=pcr0, pcr1=pcr1, pcr2=pcr2, pcr8=pcr8, parent_role=parent_role,
                     parent_id=parent_id, debug_mode=debug_mode)
    module_id = module_id or make_module_id(parent_id)
    return NsmDevice(NsmHandler(bank, LocalCASigner(state_dir, module_id), module_id,
                                field_limit=field_limit))
