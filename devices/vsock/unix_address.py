"""Unix socket files: the removal of stale ones (the vsock device's --vsock-uds listener,
the enclave processes' sockets)."""
from __future__ import annotations

import os
import stat


def remove_socket(path: str | os.PathLike) -> None:
    """Remove a stale Unix socket file (never any other kind of file)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
