"""The errors build-enclave reports as one line: a bad image reference, an image that
cannot be found or read, a daemon that cannot be reached, an unsafe or malformed layer."""
from nitro_emu.errors import NitroEmuError


class ContainerError(NitroEmuError):
    """A container image cannot be read, checked or flattened; the message says where.
    It is always one line: line breaks that a library's message or an image's name
    brings in are folded."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(line.strip() for line in str(message).splitlines()))


class ImageNotFound(ContainerError):
    """The named image is not in the archive, layout or daemon."""


class DaemonUnavailable(ContainerError):
    """No Docker-API daemon answers on the socket (none running, or no permission)."""
