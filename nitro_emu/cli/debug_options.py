"""The debugging options of the verbs that run an enclave: `--gdb [HOST:]PORT`,
`--gdb-wait`, `--trace EVENTS`, `--trace-file FILE`, `--system-map FILE` and
`--post-mortem FILE`. A verb adds them with `add_arguments`, passes
`config_from_args(args)` to `Machine(debug=...)`, and after the run calls `post_mortem`."""
from __future__ import annotations

import argparse

from eif.errors import FileError
from eif.files import open_input
from nitro_emu.debug.config import (DEFAULT_GDB_HOST, DebugConfig, DebugOptionsError,
                                    parse_gdb_address)
from nitro_emu.debug.symbols import SYSTEM_MAP
from nitro_emu.errors import UsageError


def check_system_map(path: str) -> None:
    """FileError unless `path` is a regular file a System.map could be (eif.files)."""
    open_input(path, SYSTEM_MAP).close()


def gdb_address(text: str) -> tuple[str, int]:
    """--gdb's value (nitro_emu.debug.config.parse_gdb_address)."""
    try:
        return parse_gdb_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def trace_events(text: str) -> frozenset[str]:
    from nitro_emu.debug.trace import parse_events
    try:
        return parse_events(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser, default_output: str = "stderr") -> None:
    """The options, in a group of their own; `default_output` says where the trace and
    the post-mortem report go without --trace-file and --post-mortem."""
    group = parser.add_argument_group("debugging")
    group.add_argument("--gdb", type=gdb_address, metavar="[HOST:]PORT",
                       help="serve GDB's remote protocol (gdb vmlinux, then target remote "
                            f":PORT); HOST defaults to {DEFAULT_GDB_HOST}, port 0 picks one")
    group.add_argument("--gdb-wait", action="store_true",
                       help="hold the CPU before its first instruction until GDB attaches")
    group.add_argument("--trace", type=trace_events, metavar="EVENTS",
                       help="trace guest events: syscalls, exceptions, interrupts, io "
                            "(comma-separated, or all)")
    group.add_argument("--trace-file", metavar="FILE",
                       help=f"write the trace to FILE (default: {default_output})")
    group.add_argument("--system-map", metavar="FILE",
                       help="kernel symbols for post-mortem reports (default: the System.map "
                            "beside the image's kernel in the guest build)")
    group.add_argument("--post-mortem", metavar="FILE",
                       help="write the post-mortem report of an enclave that died to FILE "
                            f"(default: {default_output})")


def config_from_args(args: argparse.Namespace) -> DebugConfig | None:
    """The DebugConfig the options ask for, or None when they ask for nothing."""
    try:
        config = DebugConfig(gdb=args.gdb, gdb_wait=args.gdb_wait,
                             trace=args.trace or frozenset(), trace_file=args.trace_file)
    except DebugOptionsError as error:
        raise UsageError(f"--{error.option} needs --{error.required} {error.metavar}") from None
    if args.system_map is not None:
        try:
            check_system_map(args.system_map)
        except FileError as error:
            raise UsageError(f"--system-map: {error}") from None
    return config if config.wanted else None


def post_mortem(machine, result, args: argparse.Namespace) -> tuple[str, list[str]]:
    """After a run that died (panic, triple fault, fault, no progress): the post-mortem
    report, to be printed on stderr after the one-line reason, or written to
    --post-mortem's file. Returns what the one-line reason should add (naming the file)
    and the lines for stderr."""
    from nitro_emu.debug.postmortem import death_report, save_report
    lines = death_report(machine.vcpu, result.reason, result.message, args.eif,
                         args.system_map)
    if lines is None:
        return "", []
    if args.post_mortem is None:
        return "", lines
    try:
        save_report(lines, args.post_mortem)
    except FileError as error:
        return f" (post-mortem report not written: {error})", lines
    return f" (post-mortem report in {args.post_mortem})", []
