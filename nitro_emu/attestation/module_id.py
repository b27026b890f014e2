"""An enclave's ID, which is also its NSM's module ID: `i-<EC2 instance ID>-enc<hex>`, as
Nitro forms it (nitro-cli's EnclaveID, the attestation document's module_id)."""
from __future__ import annotations

import re

_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")


def is_instance_id(text: str) -> bool:
    """Whether `text` is shaped like an EC2 instance ID."""
    return _INSTANCE_ID.fullmatch(text) is not None


def module_id(instance: str, enclave_hex: str) -> str:
    """`<instance>-enc<enclave_hex>`."""
    return f"{instance}-enc{enclave_hex}"


def enclave_hex(module_id_text: str) -> str:
    """What follows the last `-enc` of an ID (the part `module_id` appended; not checked)."""
    return module_id_text.rsplit("-enc", 1)[-1]
