"""Helpers shared by the verbs: an argument parser whose errors are one line."""
from __future__ import annotations

import argparse
from typing import NoReturn

from nitro_emu.errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad option raises UsageError (one line, exit 1) instead of
    printing the whole usage text and exiting 2 from deep inside."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")
