"""The errors build-enclave reports as one line: a bad image reference, an image that
cannot be found or read, a daemon that cannot be reached, an unsafe or malformed layer."""
from nitro_emu.errors import NitroEmuError


class ContainerError(NitroEmuError):
    """A container image cannot be read, checked or flattened; the message says where."""


class ImageNotFound(ContainerError):
    """The named image is not in the archive, layout or daemon."""


class DaemonUnavailable(ContainerError):
    """No Docker-API daemon answers on the socket (none running, or no permission)."""
