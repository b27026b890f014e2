"""Running `nitro-cli` (nitro_emu.cli.nitro_cli) in a subprocess against a private state
directory, and making sure no enclave process outlives a test."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class NitroCli:
    """`cli("run-enclave", ...)` runs the drop-in with NITRO_EMU_STATE_DIR=`state_dir`."""

    def __init__(self, state_dir: Path, boot_timeout: float = 600) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "NITRO_EMU_STATE_DIR": str(state_dir),
                    "NITRO_EMU_BOOT_TIMEOUT": str(boot_timeout)}

    def __call__(self, *args, timeout: float = 900, input: str | None = None
                 ) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nitro_emu.cli.nitro_cli", *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, env=self.env,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL)

    def popen(self, *args) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "nitro_emu.cli.nitro_cli", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env, stdin=subprocess.DEVNULL)

    def json(self, *args, timeout: float = 900):
        result = self(*args, timeout=timeout)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return json.loads(result.stdout)

    def enclave_pids(self) -> list[int]:
        """PIDs recorded for every enclave this state directory ever had."""
        pids = []
        for record in (self.state_dir / "enclaves").glob("*/record.json"):
            pid = json.loads(record.read_text()).get("pid")
            if pid:
                pids.append(pid)
        return pids

    def cleanup(self) -> list[int]:
        """Terminate everything; returns the PIDs that were still alive afterwards (and
        kills them, so a failing test leaves nothing behind either)."""
        self("terminate-enclave", "--all", timeout=300)
        survivors = [pid for pid in self.enclave_pids() if pid_alive(pid)]
        for pid in survivors:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return survivors


def pid_alive(pid: int, settle: float = 2.0) -> bool:
    """Whether process `pid` is running (not exited, not a zombie), allowing `settle`
    seconds for it to finish exiting."""
    from nitro_emu.enclaves.manager import process_exists
    deadline = time.monotonic() + settle
    while process_exists(pid):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.02)
    return False


def assert_nitro_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """nitro-cli's error form: `[ Exx ] ...` then the help line, exit status xx, no
    traceback, nothing on stdout."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines()
             if not line.startswith(("Start allocating memory", "Started enclave",
                                     "Failed connections"))]
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"[ E{code:02d} ] "), lines[0]
    assert lines[1] == ("For more details, please visit "
                        f"https://docs.aws.amazon.com/enclaves/latest/user/cli-errors.html#E{code:02d}")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
