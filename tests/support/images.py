"""The guest images `make guest` builds, for tests that boot real Linux guests.

Such tests carry the `guest` marker: `make test-unit` runs everything else, on a machine
with no kernel built. A test that reaches for an image without the marker fails at once
(it would otherwise pass only where the images happen to exist).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUEST_DIR = Path(os.environ.get("NITRO_EMU_GUEST_DIR", ROOT / "build" / "guest"))

# Set by conftest.py's pytest_runtest_setup for the test being run.
current_test_is_marked_guest = False


def require_guest_marker() -> None:
    """Fail unless the running test is marked `guest` (it needs kernels or images)."""
    if not current_test_is_marked_guest:
        pytest.fail("this test needs the guest images or kernels: mark it @pytest.mark.guest")


def guest_image(name: str) -> Path:
    """Path of a test image; a missing image is an error (run `make guest`), not a skip."""
    require_guest_marker()
    path = GUEST_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build the guest images with `make guest`")
    return path
