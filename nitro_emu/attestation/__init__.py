"""Attestation on the host side: the local CA in the user's state directory, the factory
that builds the machine's NSM device, and the verifier for attestation documents."""
from nitro_emu.attestation.ca import ChainSigner, LocalCA
from nitro_emu.attestation.errors import AttestationError, VerificationError
from nitro_emu.attestation.factory import create_nsm_device
from nitro_emu.attestation.verify import VerifiedDocument, read_document, verify_document

__all__ = ["LocalCA", "ChainSigner", "AttestationError", "VerificationError",
           "create_nsm_device", "verify_document", "read_document", "VerifiedDocument"]
