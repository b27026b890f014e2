"""nitro-cli's enclave verbs against emulated enclaves: run-enclave, describe-enclaves,
console and terminate-enclave, with nitro-cli's flags, JSON and error codes.

Dispatched by verb name: `main(["run-enclave", "--eif-path", "x.eif", ...])`. Errors are
`NitroCliError`s (`[ Exx ] ...`, exit status xx) or `NitroCliUsageError`s (exit 2).
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from devices.vsock.config import config_from_options
from nitro_emu.cli import debug_options, vsock_options
from nitro_emu.cli.common import print_json
from nitro_emu.debug.config import DebugOptionsError
from nitro_emu.enclaves.errors import NitroCliError, NitroCliUsageError
from nitro_emu.enclaves.spec import (RunSpec, parse_cid, parse_memory, parse_unsigned,
                                     read_config, U32_MAX)

# run-enclave's options that may come with --config; it replaces every other one.
WITH_CONFIG = ("config", "attach_console")


class NitroCliParser(argparse.ArgumentParser):
    """argparse with clap's manners: no abbreviated options, and a bad command line is a
    NitroCliUsageError (exit 2) instead of a usage dump."""

    def __init__(self, verb: str, description: str) -> None:
        super().__init__(prog=f"nitro-cli {verb}", description=description,
                         allow_abbrev=False)

    def error(self, message: str) -> NoReturn:
        raise NitroCliUsageError(message)


def _store():
    from nitro_emu.enclaves.store import EnclaveStore
    return EnclaveStore()


def _exactly_one(args: argparse.Namespace, *names: str) -> None:
    given = [n for n in names if getattr(args, n.replace("-", "_")) not in (None, False)]
    if len(given) > 1:
        raise NitroCliUsageError(f"the argument '--{given[0]}' cannot be used with "
                                 f"'--{given[1]}'")
    if not given:
        raise NitroCliUsageError("one of these arguments is required: "
                                 + ", ".join(f"--{n}" for n in names))


# -- run-enclave ----------------------------------------------------------------------------

def _run_parser() -> NitroCliParser:
    parser = NitroCliParser("run-enclave", "Start an enclave in the background and print "
                                           "its description once it has booted.")
    parser.add_argument("--eif-path", help="the enclave image file")
    parser.add_argument("--cpu-count", help="number of vCPUs asked for (the emulated "
                                            "enclave has one)")
    parser.add_argument("--cpu-ids", nargs="+", help="CPU ids asked for (the emulated "
                                                     "enclave has one vCPU)")
    parser.add_argument("--memory", help="guest memory in MiB (or with M, G, T)")
    parser.add_argument("--enclave-cid", help="the enclave's CID (default: the lowest "
                                              "free one from 16)")
    parser.add_argument("--debug-mode", action="store_true",
                        help="keep the console (see `console`); PCR0-2 read as zeros")
    parser.add_argument("--attach-console", action="store_true",
                        help="stay attached to the console (implies --debug-mode)")
    parser.add_argument("--enclave-name", help="a name for the enclave (default: the EIF's "
                                               "file name)")
    parser.add_argument("--config", metavar="JSON", help="read the settings from a JSON "
                                                         "file instead of the flags")
    vsock_options.add_arguments(parser, no_heartbeat=False)   # it waits for the heartbeat
    parser.add_argument("--parent-role", metavar="ARN",
                        help="IAM role ARN of the parent (measured into PCR3)")
    parser.add_argument("--parent-id", metavar="ID",
                        help="instance id of the parent (measured into PCR4)")
    debug_options.add_arguments(parser, default_output="a file in the enclave's directory")
    return parser


def _run_spec(parser: NitroCliParser, args: argparse.Namespace) -> RunSpec:
    if args.config is not None:
        defaults = vars(parser.parse_args([]))
        given = [dest for dest, default in defaults.items()
                 if dest not in WITH_CONFIG and getattr(args, dest) != default]
        if given:
            raise NitroCliUsageError(f"the argument '--config <json-config>' cannot be used "
                                     f"with '--{given[0].replace('_', '-')}'")
        spec = read_config(args.config)
        spec.attach_console = spec.attach_console or args.attach_console
        spec.debug_mode = spec.debug_mode or spec.attach_console
        return spec
    missing = [f"--{f}" for f in ("eif-path", "memory")
               if getattr(args, f.replace("-", "_")) is None]
    if args.cpu_count is None and args.cpu_ids is None:
        missing.append("<--cpu-ids <cpu-ids>...|--cpu-count <cpu-count>>")
    if missing:
        raise NitroCliUsageError("the following required arguments were not provided: "
                                 + " ".join(missing))
    if args.cpu_count is not None and args.cpu_ids is not None:
        raise NitroCliUsageError("the argument '--cpu-count <cpu-count>' cannot be used "
                                 "with '--cpu-ids <cpu-ids>...'")
    if args.enclave_cid is not None and parse_unsigned(args.enclave_cid, "enclave-cid") == 0:
        print("The enclave CID will be auto-generated as the provided CID is 0",
              file=sys.stderr)
    try:
        return _spec_from_flags(args)
    except DebugOptionsError as error:
        raise NitroCliUsageError(f"the argument '--{error.option}' requires "
                                 f"'--{error.required} <{error.metavar}>'") from None


def _spec_from_flags(args: argparse.Namespace) -> RunSpec:
    return RunSpec(
        eif_path=args.eif_path, memory_mib=parse_memory(args.memory),
        cpu_count=None if args.cpu_count is None else
        parse_unsigned(args.cpu_count, "cpu-count", U32_MAX),
        cpu_ids=None if args.cpu_ids is None else
        [parse_unsigned(i, "cpu-id", U32_MAX) for i in args.cpu_ids],
        enclave_cid=None if args.enclave_cid is None else parse_cid(args.enclave_cid),
        debug_mode=args.debug_mode, attach_console=args.attach_console,
        enclave_name=args.enclave_name, forward=args.forward, publish=args.publish,
        vsock_uds=args.vsock_uds, parent_role=args.parent_role, parent_id=args.parent_id,
        gdb=args.gdb, gdb_wait=args.gdb_wait, trace=args.trace or frozenset(),
        trace_file=args.trace_file, system_map=args.system_map, post_mortem=args.post_mortem)


def _check_image(spec: RunSpec) -> None:
    """The checks nitro-cli makes before it starts an enclave: the EIF opens (E19) and
    is valid (E35), memory is at least 4x its size (E26) and what the machine can give.
    The EIF is checked without being measured: the enclave process reads and measures
    it once, to boot it."""
    import os

    from eif.errors import EifError, FileError
    from eif.reader import check_eif
    from nitro_emu.limits import MemorySizeError, check_memory_mib

    try:
        size = os.stat(spec.eif_path).st_size
    except OSError as error:
        raise NitroCliError(19, f"File: '{spec.eif_path}', failing operation: 'Open' "
                                f"({error.strerror or error}).") from None
    if spec.system_map is not None:
        try:
            debug_options.check_system_map(spec.system_map)
        except FileError as error:
            raise NitroCliError(19, f"File: '{spec.system_map}', failing operation: 'Open' "
                                    f"({error}).") from None
    try:
        image = check_eif(spec.eif_path)
    except EifError as error:
        raise NitroCliError(35, f"{error}.") from None
    needed = -(-size // (1 << 20)) * 4          # nitro-cli: 4 x the EIF's size in MB
    if spec.memory_mib < needed:
        raise NitroCliError(26, f"User provided `memory` is {spec.memory_mib} MB, but based "
                                f"on the EIF file size, the minimum memory should be "
                                f"{needed} MB.")
    try:
        check_memory_mib(spec.memory_mib)
    except MemorySizeError as error:
        if error.too_large:
            raise NitroCliError(27, f"User provided `memory` is {spec.memory_mib} MB, which "
                                    f"is more than nitro-emu gives an enclave ({error.limit} "
                                    "MB).") from None
        raise NitroCliError(26, f"User provided `memory` is {spec.memory_mib} MB, but "
                                f"nitro-emu gives an enclave at least {error.limit} MB.") from None
    if image.arch != "x86_64":
        raise NitroCliError(35, f"{spec.eif_path} is an {image.arch} EIF; the emulated "
                                "enclave is x86_64.")
    try:
        config_from_options(spec.forward, spec.publish, spec.vsock_uds)
    except ValueError as error:
        raise NitroCliError(3, f"{error}.") from None


def run_enclave(argv: list[str]) -> int:
    from nitro_emu.enclaves import json_output
    from nitro_emu.enclaves.launch import launch

    parser = _run_parser()
    spec = _run_spec(parser, parser.parse_args(argv))
    _check_image(spec)
    print("Start allocating memory...", file=sys.stderr)

    def started(record) -> None:
        print(f"Started enclave with enclave-cid: {record.cid}, memory: "
              f"{record.memory_mib} MiB, cpu-ids: {json_output.GUEST_CPU_IDS}",
              file=sys.stderr)

    launched = launch(_store(), spec, on_started=started,
                      on_announce=lambda line: print(line, file=sys.stderr, flush=True))
    for line in vsock_options.published_lines(launched.published):
        print(line, file=sys.stderr)
    if spec.trace and spec.trace_file is None:
        print(f"nitro-emu: tracing {','.join(sorted(spec.trace))} to "
              f"{launched.record.trace_file}", file=sys.stderr)
    print_json(json_output.run_info(launched.record, launched.pid))
    if spec.attach_console:
        return _attach(launched.record, None)
    return 0


# -- describe-enclaves ------------------------------------------------------------------------

def describe_enclaves(argv: list[str]) -> int:
    from nitro_emu.enclaves.manager import describe_all, new_post_mortems

    parser = NitroCliParser("describe-enclaves", "Describe the running enclaves.")
    parser.add_argument("--metadata", action="store_true",
                        help="add the EIF's name, version and metadata")
    args = parser.parse_args(argv)
    store = _store()
    entries, failed = describe_all(store, args.metadata)
    print_json(entries)
    for record in new_post_mortems(store):     # gone from the list: say why, once
        print(f"nitro-emu: enclave {record.enclave_id} ({record.name}) ended: "
              f"{record.end_reason}: {(record.end_message or '').rstrip('.')}"
              f"{_report_note(record)}",
              file=sys.stderr)
    if failed:
        print(f"Failed connections: {failed}", file=sys.stderr)
        raise NitroCliError(39, f"{failed} enclave process(es) did not answer.")
    return 0


# -- console --------------------------------------------------------------------------------

def console(argv: list[str]) -> int:
    from nitro_emu.enclaves.manager import find_with_log
    from nitro_emu.enclaves.store import EXITED

    parser = NitroCliParser("console", "Show the serial console of a debug-mode enclave, "
                                       "from its boot on.")
    parser.add_argument("--enclave-id")
    parser.add_argument("--enclave-name")
    parser.add_argument("--disconnect-timeout", metavar="SECONDS",
                        help="stop following the console after this many seconds")
    args = parser.parse_args(argv)
    _exactly_one(args, "enclave-id", "enclave-name")
    timeout = None if args.disconnect_timeout is None else \
        parse_unsigned(args.disconnect_timeout, "disconnect-timeout")
    store = _store()
    record = find_with_log(store, args.enclave_id, args.enclave_name)
    ended = f"has exited ({record.end_reason}){_report_note(record)}" \
        if record.state == EXITED else ""
    if ended and record.debug_mode:
        print(f"nitro-emu: enclave {record.enclave_id} {ended}; its console log follows",
              file=sys.stderr)
    if not record.debug_mode:
        raise NitroCliError(44, f"Enclave {record.enclave_id} was not started in debug mode: "
                                "add --debug-mode to run-enclave to see its console."
                                + (f" It {ended}." if ended else ""))
    return _attach(record, timeout)


def _report_note(record) -> str:
    """'; post-mortem report in PATH' for an enclave that died, else ''."""
    path = record.post_mortem_report
    return f"; post-mortem report in {path}" if path else ""


def _attach(record, timeout: float | None) -> int:
    """Print the console of `record` from boot on until it exits or `timeout` passes."""
    from nitro_emu.enclaves.console_log import follow

    store = _store()
    print(f"Connecting to the console for enclave {record.cid}...")
    print("Successfully connected to the console.", flush=True)
    try:
        follow(store.paths(record.slot).console, sys.stdout.buffer,
               lambda: store.is_alive(record.slot), timeout)
    except FileNotFoundError:
        raise NitroCliError(44, f"Enclave {record.enclave_id} has no console log.") from None
    except KeyboardInterrupt:
        return 130
    return 0


# -- terminate-enclave ----------------------------------------------------------------------

def terminate_enclave(argv: list[str]) -> int:
    from nitro_emu.enclaves.manager import find_running, terminate

    parser = NitroCliParser("terminate-enclave", "Stop an enclave (or all of them).")
    parser.add_argument("--enclave-id")
    parser.add_argument("--enclave-name")
    parser.add_argument("--all", action="store_true", help="every running enclave")
    args = parser.parse_args(argv)
    _exactly_one(args, "enclave-id", "enclave-name", "all")
    store = _store()
    if args.all:
        results = []
        for record in store.live():
            results.append(terminate(store, record))
            print(f"Successfully terminated enclave {record.enclave_id}.", file=sys.stderr)
        print_json(results)
        return 0
    record = find_running(store, args.enclave_id, args.enclave_name)
    result = terminate(store, record)
    print(f"Successfully terminated enclave {record.enclave_id}.", file=sys.stderr)
    print_json(result)
    return 0


VERBS = {"run-enclave": run_enclave, "describe-enclaves": describe_enclaves,
         "console": console, "terminate-enclave": terminate_enclave}


def main(argv: list[str]) -> int:
    """Run the verb named by argv[0] with the remaining arguments."""
    if not argv or argv[0] not in VERBS:
        raise NitroCliUsageError(f"unknown enclave verb {argv[0] if argv else ''!r}")
    return VERBS[argv[0]](argv[1:])
