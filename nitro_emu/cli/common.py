"""Helpers shared by the verbs: an argument parser whose errors are one line,
nitro-cli's JSON output, and a way to tell the user something on stderr that never fails."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from eif import jsonfmt
from eif.pcr import Measurements
from nitro_emu.errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad option raises UsageError (one line, exit 1) instead of
    printing the whole usage text and exiting 2 from deep inside."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def print_json(value: object) -> None:
    """nitro-cli's pretty JSON (4 spaces, serde's escaping) on stdout."""
    sys.stdout.write(jsonfmt.dumps_pretty(value) + "\n")
    sys.stdout.flush()


def print_measurements(measurements: Measurements) -> None:
    """`{"Measurements": {...}}` as nitro-cli prints it after building or signing an EIF."""
    fields = jsonfmt.Fields(measurements.to_json_dict().items())
    print_json(jsonfmt.Fields([("Measurements", fields)]))


def say(line: str) -> None:
    """One line on stderr; silently dropped when stderr is gone (a closed pipe, a terminal
    that hung up): there is nobody left to tell, and no traceback either."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
