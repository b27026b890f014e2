"""`python -m nitro_emu EIF --guest-cid N ...`: run an enclave in the foreground with its
console on the terminal, like `nitro-cli run-enclave --attach-console`."""
from __future__ import annotations

import os
import signal
import sys

from devices.vsock.packet import check_guest_cid
from nitro_emu.cli import debug_options, vsock_options
from nitro_emu.cli.common import ArgumentParser
from nitro_emu.errors import UsageError
from nitro_emu.limits import check_memory_mib


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
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop the enclave after this many seconds")
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
        print("nitro-emu: console attached; Ctrl-] stops the enclave", file=sys.stderr)
    return terminal


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from nitro_emu.machine import Machine

    try:
        vsock = vsock_options.config_from_args(args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    machine = Machine(args.eif, guest_cid=args.guest_cid, memory_mib=args.memory,
                      debug_mode=args.debug_mode, parent_role=args.parent_role,
                      parent_id=args.parent_id, vsock=vsock,
                      debug=debug_options.config_from_args(args))
    for line in vsock_options.published_lines(machine.vsock.muxer.published):
        print(line, file=sys.stderr)
    previous = signal.signal(signal.SIGINT, lambda *_: machine.stop())
    terminal = _attach_terminal(machine)
    try:
        result = machine.run(timeout=args.timeout)
        note, report = debug_options.post_mortem(machine, result, args)
    finally:
        if terminal is not None:
            terminal.close()
        signal.signal(signal.SIGINT, previous)
        machine.close()
    if result.ok:
        return 0
    print(f"nitro-emu: enclave ended: {result.reason}: {result.message}{note}", file=sys.stderr)
    for line in report:
        print(line, file=sys.stderr)
    return 130 if result.reason == "stopped" else 1
