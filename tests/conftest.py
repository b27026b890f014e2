"""Shared fixtures: the guest images built by `make guest`, and booting them."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUEST_DIR = Path(os.environ.get("NITRO_EMU_GUEST_DIR", ROOT / "build" / "guest"))


def guest_image(name: str) -> Path:
    """Path of a test image; a missing image is an error (run `make guest`), not a skip."""
    path = GUEST_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build the guest images with `make guest`")
    return path


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private nitro-emu state directory (local CA) for the test."""
    directory = tmp_path / "state"
    monkeypatch.setenv("NITRO_EMU_STATE_DIR", str(directory))
    return directory


class BootedGuest:
    """A finished run: its result and the console transcript as text."""

    def __init__(self, machine, result) -> None:
        self.machine = machine
        self.result = result
        self.console = machine.console_output.decode("utf-8", "replace")


@pytest.fixture
def boot(state_dir: Path) -> Callable[..., BootedGuest]:
    """`boot("hello.eif", timeout=..., **machine_options)` runs an image to its end."""
    from nitro_emu import Machine

    machines = []

    def run(name: str, timeout: float = 300, **options) -> BootedGuest:
        options.setdefault("guest_cid", 16)
        machine = Machine(guest_image(name), console=io.BytesIO(), state_dir=state_dir,
                          **options)
        machines.append(machine)
        result = machine.run(timeout=timeout)
        return BootedGuest(machine, result)

    yield run
    for machine in machines:
        machine.close()
