"""Where nitro-emu keeps per-user state (the local CA, and the background enclaves in
`enclaves/`): $NITRO_EMU_STATE_DIR, else $XDG_STATE_HOME/nitro-emu, else
~/.local/state/nitro-emu."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The state directory (not created here)."""
    env = os.environ if environ is None else environ
    if env.get("NITRO_EMU_STATE_DIR"):
        return Path(env["NITRO_EMU_STATE_DIR"])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "nitro-emu"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "nitro-emu"
