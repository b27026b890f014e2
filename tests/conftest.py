"""Shared fixtures: a private state directory, booting guest images to their end, and the
`guest` marker's bookkeeping (tests/support/images.py)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import pytest

from support import images


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture of the test is set up (module-scoped image builds included).
    images.current_test_is_marked_guest = item.get_closest_marker("guest") is not None


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

    def run(name: str | Path, timeout: float = 300, **options) -> BootedGuest:
        options.setdefault("guest_cid", 16)
        path = name if Path(name).is_absolute() else images.guest_image(str(name))
        machine = Machine(path, console=io.BytesIO(), state_dir=state_dir, **options)
        machines.append(machine)
        result = machine.run(timeout=timeout)
        return BootedGuest(machine, result)

    yield run
    for machine in machines:
        machine.close()
