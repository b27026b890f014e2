"""Choosing what identifies a new enclave: its CID, its name and its ID.

Called under the store's creation lock with the enclaves that are alive, so concurrent
`run-enclave`s never pick the same CID or name.
"""
from __future__ import annotations

import secrets

from devices.vsock.packet import MAX_GUEST_CID
from nitro_emu.attestation.module_id import enclave_hex, is_instance_id, module_id
from nitro_emu.enclaves.errors import NitroCliError
from nitro_emu.enclaves.store import is_slot

FIRST_AUTO_CID = 16          # Nitro hands out enclave CIDs from 16 up
ASSET_TAG = "/sys/devices/virtual/dmi/id/board_asset_tag"
NO_INSTANCE = "i-0000000000000000"


def choose_cid(requested: int | None, in_use: dict[int, str]) -> int:
    """`requested` if free, else E29 (on Nitro the start ioctl refuses it); without a
    request the lowest free CID from 16. `in_use` maps CIDs to the enclaves holding them."""
    if requested is not None:
        if requested in in_use:
            raise NitroCliError(29, f"CID {requested} is already in use by enclave "
                                    f"{in_use[requested]}.")
        return requested
    cid = FIRST_AUTO_CID
    while cid in in_use:
        cid += 1
    if cid > MAX_GUEST_CID:
        raise NitroCliError(29, "No free enclave CID is left.")
    return cid


def unique_name(base: str, in_use: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... : the first that no running enclave has (what
    nitro-cli does)."""
    name, index = base, 0
    while name in in_use:
        index += 1
        name = f"{base}_{index}"
    return name


def new_slot(taken: set[str]) -> str:
    """A random 64-bit slot number in hex, unused in the store."""
    while True:
        slot = f"{secrets.randbits(64) | 1:x}"
        if slot not in taken:
            return slot


def instance_id() -> str:
    """The EC2 instance ID when this host is one (as nitro-cli reads it), else zeros."""
    try:
        with open(ASSET_TAG) as file:
            tag = file.read(64).strip()
    except OSError:
        return NO_INSTANCE
    return tag if is_instance_id(tag) else NO_INSTANCE


def enclave_id(slot: str, instance: str | None = None) -> str:
    """nitro-cli's ID form: `<instance>-enc<slot in hex>`."""
    return module_id(instance or instance_id(), slot)


def slot_of(enclave_id_text: str) -> str | None:
    """The slot an enclave ID names (the hex after its last `-enc`, as nitro-cli finds the
    enclave's socket), or None if it cannot name one."""
    tail = enclave_hex(enclave_id_text)
    return tail if is_slot(tail) else None
