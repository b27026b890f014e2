"""The run verb's vsock options (--forward, --publish, --vsock-uds, --no-heartbeat): the
argparse side of `devices.vsock.config`, which parses their values."""
from __future__ import annotations

import argparse
from typing import Callable

from devices.vsock.config import Publish, VsockConfig, config_from_options
from devices.vsock.host_port import format_host_port


def add_arguments(parser: argparse.ArgumentParser, no_heartbeat: bool = True) -> None:
    """Add the vsock options to `parser` (--forward and --publish are repeatable);
    --no-heartbeat only with `no_heartbeat` (a verb that waits for the heartbeat has none)."""
    parser.add_argument("--forward", action="append", default=[],
                        metavar="PORT=tcp:HOST:PORT|unix:PATH|vsock:CID:PORT",
                        help="guest connections to parent port PORT (CID 3) go to this host "
                             "address; unforwarded ports are refused")
    parser.add_argument("--publish", action="append", default=[],
                        metavar="[ADDR:]HOSTPORT:GUESTPORT",
                        help="listen on host TCP ADDR:HOSTPORT (default 127.0.0.1; port 0 "
                             "picks a free one) and connect each client to the guest's vsock "
                             "GUESTPORT")
    parser.add_argument("--vsock-uds", metavar="PATH",
                        help="Firecracker hybrid vsock: host clients connect to PATH and "
                             "write 'CONNECT <port>'; guest connections to parent port P "
                             "go to the Unix socket PATH_P")
    if not no_heartbeat:
        return
    parser.add_argument("--no-heartbeat", dest="heartbeat", action="store_false",
                        help="do not answer the boot heartbeat on parent port 9000 and tell "
                             "the guest's init to skip it (needed to --forward port 9000)")


def config_from_args(args: argparse.Namespace,
                     on_heartbeat: Callable[[bool], None] | None = None) -> VsockConfig:
    """The VsockConfig for arguments added by `add_arguments` (ValueError, one line, if a
    value is bad or the options conflict)."""
    return config_from_options(args.forward, args.publish, args.vsock_uds, args.heartbeat,
                               on_heartbeat)


def published_lines(published: list[tuple[Publish, tuple]]) -> list[str]:
    """What the run verb prints for each --publish listener, with the port it is bound to
    (the one the host picked for HOSTPORT 0)."""
    lines = []
    for publish, address in published:
        where = format_host_port(*address[:2])
        lines.append(f"nitro-emu: published {where} -> guest port {publish.guest_port}")
    return lines
