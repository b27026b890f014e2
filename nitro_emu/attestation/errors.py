"""Errors of the attestation side (CA state, verification), shown as one line by the CLI."""
from nitro_emu.errors import NitroEmuError


class AttestationError(NitroEmuError):
    """The local CA cannot be loaded or created, or an NSM cannot be configured."""


class VerificationError(NitroEmuError):
    """An attestation document failed a check; the message says which and where."""
