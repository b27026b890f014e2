"""Attestation on the host side: the local CA in the user's state directory, the factory
that builds the machine's NSM device, and the verifier for attestation documents.

Names are imported on first use, so booting a machine does not load the verifier."""
from importlib import import_module
from typing import Any

_HOMES = {
    "LocalCA": "ca", "ChainSigner": "ca",
    "AttestationError": "errors", "VerificationError": "errors",
    "create_nsm_device": "factory",
    "verify_document": "verify", "read_document": "verify", "VerifiedDocument": "verify",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"nitro_emu.attestation.{_HOMES[name]}"), name)
    raise AttributeError(name)
