"""What debugging a machine should have: `Machine(..., debug=DebugConfig(...))`. Any verb
that runs a machine gets the tools the same way (nitro_emu.cli.debug_options builds the
config from the command line)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from devices.vsock.host_port import parse_host_port
from nitro_emu.errors import NitroEmuError


DEFAULT_GDB_HOST = "127.0.0.1"


class DebugError(NitroEmuError):
    """Debugging tools that cannot be set up as asked (a busy port, an unwritable file)."""


class DebugOptionsError(ValueError):
    """A debugging option given without the one it needs: `option` needs `required`, whose
    value is a `metavar` (names as on the command line, without dashes; each verb words
    the error its own way)."""

    def __init__(self, option: str, required: str, metavar: str) -> None:
        super().__init__(f"{option} needs {required} {metavar}")
        self.option, self.required, self.metavar = option, required, metavar


def parse_gdb_address(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[IPv6]:PORT` as (host, port) (devices.vsock.host_port, the
    grammar of --forward and --publish too); the host defaults to 127.0.0.1 (the debugger
    controls the enclave: listen more widely only when asked), `:PORT` is every
    interface, port 0 picks a free one. ValueError otherwise."""
    try:
        return parse_host_port(text, default_host=DEFAULT_GDB_HOST, any_host=True)
    except ValueError as error:
        raise ValueError(f"{text!r} is not [HOST:]PORT: {error}") from None


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class DebugConfig:
    """gdb: where the GDB stub listens ((host, port); port 0 picks a free one).
    gdb_wait: hold the CPU before its first instruction until a debugger attaches.
    trace: the events to trace (nitro_emu.debug.trace.EVENTS), to `trace_file` (a path,
    or None for stderr). announce: where the stub's messages go (default stderr)."""

    gdb: tuple[str, int] | None = None
    gdb_wait: bool = False
    trace: frozenset[str] = frozenset()
    trace_file: str | os.PathLike | None = None
    announce: Callable[[str], None] = field(default=_to_stderr)

    def __post_init__(self) -> None:
        """DebugOptionsError if an option lacks the one it needs (the one place this is
        checked: the verbs build a DebugConfig to check their options)."""
        if self.gdb_wait and self.gdb is None:
            raise DebugOptionsError("gdb-wait", "gdb", "[HOST:]PORT")
        if self.trace_file is not None and not self.trace:
            raise DebugOptionsError("trace-file", "trace", "EVENTS")

    @property
    def wanted(self) -> bool:
        """Whether it asks for any tool (a machine without one gets `debug=None`)."""
        return self.gdb is not None or bool(self.trace)
