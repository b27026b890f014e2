"""Where the guest build keeps its cache, and the pinned environment for reproducible builds."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path

# One fixed instant for every timestamp that ends up in an artifact (2024-01-01 00:00:00 UTC).
SOURCE_DATE_EPOCH = 1704067200
BUILD_TIME = "2024-01-01T00:00:00+00:00"

GUEST_DIR = Path(__file__).resolve().parent


def cache_root() -> Path:
    """The user's cache directory for nitro-emu ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nitro-emu"


def pinned_env() -> dict[str, str]:
    """The process environment with every clock, user, host and locale input pinned."""
    env = dict(os.environ)
    env.update(
        SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH),
        KBUILD_BUILD_TIMESTAMP="Mon Jan  1 00:00:00 UTC 2024",
        KBUILD_BUILD_USER="nitro-emu",
        KBUILD_BUILD_HOST="nitro-emu",
        KBUILD_BUILD_VERSION="1",
        LC_ALL="C",
        TZ="UTC",
    )
    return env


def hash_files(paths: list[Path], extra: bytes = b"") -> str:
    """A short hex digest of the given files' names and contents (in the given order)."""
    h = hashlib.sha256(extra)
    for p in paths:
        h.update(str(p.relative_to(GUEST_DIR) if p.is_relative_to(GUEST_DIR) else p).encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def hash_tree(root: Path, extra: bytes = b"") -> str:
    """A short hex digest of every file under root (sorted, skipping caches)."""
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
    )
    return hash_files(files, extra)


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock file while building into a shared cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def try_locked(path: Path):
    """Like `locked`, without waiting: yields True holding the lock, False if another
    process holds it (or the entry is already gone)."""
    try:
        f = open(path, "a")
    except OSError:
        yield False
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
