"""`python -m nitro_emu EIF --guest-cid N ...`: run an enclave in the foreground with its
console on the terminal, like `nitro-cli run-enclave --attach-console`."""
from __future__ import annotations

import math
import os
import sys

from devices.vsock.packet import check_guest_cid
from nitro_emu.cli import debug_options, vsock_options
from nitro_emu.cli.common import ArgumentParser, say
from nitro_emu.errors import UsageError
from nitro_emu.limits import check_memory_mib
from nitro_emu.stop_signals import StopSignals

# A run's idle wait cannot be longer than a poll can wait (2**31 ms, about 24.8 days).
MAX_TIMEOUT_S = 24 * 86400


def _cid(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"--guest-cid: {text!r} is not a number") from None
    try:
        return check_guest_cid(value)
    except ValueError as error:
        raise UsageError(f"--guest-cid: {error}") from None


def _memory(text: str) -> int:
    try:
        return check_memory_mib(int(text))
    except ValueError as error:
        if not text.strip().lstrip("-").isdigit():
            raise UsageError(f"--memory: {text!r} is not a whole number of MiB") from None
        raise UsageError(f"--memory: {error}") from None


def timeout_seconds(text: str) -> float:
    """--timeout: seconds, finite, more than 0 and at most MAX_TIMEOUT_S (nan would never
    time out and spin the idle wait; inf cannot be waited for)."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--timeout: {text!r:.40} is not a number of seconds") from None
    if not math.isfinite(value):
        raise UsageError(f"--timeout: {text!r:.40} is not a finite number of seconds; leave "
                         "--timeout out for a run without a time limit")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise UsageError(f"--timeout must be more than 0 and at most {MAX_TIMEOUT_S} "
                         f"seconds ({MAX_TIMEOUT_S // 86400} days), not {value:g}")
    return value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m nitro_emu",
                            description="Boot an EIF in an emulated Nitro Enclave.")
    parser.add_argument("eif", metavar="EIF", help="the enclave image file")
    parser.add_argument("--guest-cid", type=_cid, required=True,
                        help="the enclave's vsock CID (4 to 4294967294)")
    parser.add_argument("--memory", type=_memory, default=512, metavar="MiB",
                        help="guest memory in MiB (default 512)")
    parser.add_argument("--debug-mode", action="store_true",
                        help="as on Nitro: attestation documents carry zero PCR0-2")
    parser.add_argument("--parent-role", metavar="ARN",
                        help="IAM role ARN of the parent instance (measured into PCR3)")
    parser.add_argument("--parent-id", metavar="ID",
                        help="instance id of the parent (measured into PCR4)")
    vsock_options.add_arguments(parser)
    parser.add_argument("--timeout", type=timeout_seconds, metavar="SECONDS",
                        help="stop the enclave after this many seconds (more than 0, at "
                             f"most {MAX_TIMEOUT_S}); without it the run has no limit")
    debug_options.add_arguments(parser)
    return parser


def _attach_terminal(machine):
    """Console input from stdin, when there is one (a closed stdin is no error)."""
    from nitro_emu.terminal import TerminalInput
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return None
    terminal = TerminalInput(fd, machine.reactor, machine.uart.feed, machine.stop)
    if terminal.is_terminal:
        say("nitro-emu: console attached; Ctrl-] stops the enclave")
    return terminal


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from nitro_emu.machine import Machine

    try:
        vsock = vsock_options.config_from_args(args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    debug = debug_options.config_from_args(args)
    with StopSignals() as stop:
        machine = Machine(args.eif, guest_cid=args.guest_cid, memory_mib=args.memory,
                          debug_mode=args.debug_mode, parent_role=args.parent_role,
                          parent_id=args.parent_id, vsock=vsock, debug=debug,
                          keep_transcript=False)   # the console is on the terminal
        result, terminal, note, report = None, None, "", []
        try:
            stop.connect(machine.stop)
            for line in vsock_options.published_lines(machine.vsock.muxer.published):
                say(line)
            if stop.received is None:
                terminal = _attach_terminal(machine)
                result = machine.run(timeout=args.timeout)
                note, report = debug_options.post_mortem(machine, result, args)
        except OSError:
            if stop.received is None:
                raise
            # after a stop signal the console may be gone (SIGHUP: the terminal hung up)
        finally:
            if terminal is not None:
                terminal.close()
            machine.close()
    if result is not None and result.ok:
        return 0
    if stop.received is not None and (result is None or result.reason == "stopped"):
        say(f"nitro-emu: enclave stopped by {stop.received.name}")
        return stop.exit_status
    say(f"nitro-emu: enclave ended: {result.reason}: {result.message}{note}")
    for line in report:
        say(line)
    return 130 if result.reason == "stopped" else 1
