"""`nitro-cli`: nitro-emu behind nitro-cli 1.5's command line, so that scripts written for a
Nitro host run unchanged with this first on PATH:

    PATH=$PWD/.venv/bin:$PATH ./their-script.sh

Every error is reported as nitro-cli reports it: `[ Exx ] ...` and exit status xx, or
exit status 2 for a command line the parser refuses.
"""
from __future__ import annotations

import importlib
import sys

from eif.errors import EifError
from nitro_emu.cli import exit_with
from nitro_emu.cli.common import say
from nitro_emu.enclaves.errors import NitroCliError, NitroCliUsageError
from nitro_emu.errors import NitroEmuError, UsageError

VERSION = "1.5.0"
# verb -> (module with main(argv), nitro-cli's code for an EIF or file error in it)
VERBS = {
    "run-enclave": ("nitro_emu.cli.enclave_commands", 35),
    "describe-enclaves": ("nitro_emu.cli.enclave_commands", 35),
    "console": ("nitro_emu.cli.enclave_commands", 44),
    "terminate-enclave": ("nitro_emu.cli.enclave_commands", 11),
    "describe-eif": ("nitro_emu.cli.eif_commands", 35),
    "build-enclave": ("nitro_emu.cli.build_enclave", 48),
    "pcr": ("nitro_emu.cli.eif_commands", 57),
    "sign-eif": ("nitro_emu.cli.sign_command", 60),
    "explain": ("nitro_emu.cli.explain_command", 3),
    "vsock-connect": ("nitro_emu.cli.vsock_connect_command", 11),   # nitro-emu's own
}
USAGE = f"""Nitro CLI {VERSION} (nitro-emu: enclaves emulated on this machine)
CLI for enclave lifetime management

Usage: nitro-cli <COMMAND>

Commands:
  run-enclave        Starts a new enclave
  build-enclave      Builds an enclave image and saves it to a file
  terminate-enclave  Terminates an enclave
  describe-eif       Returns information about the EIF found at a given path.
  describe-enclaves  Returns a list of the running enclaves
  console            Connect to the console of an enclave
  pcr                Return the PCR hash value of the given input
  explain            Display detailed information about an error returned by a misbehaving
                     Nitro CLI command
  sign-eif           Sign EIF with the given key
  vsock-connect      Connect stdin/stdout to a guest vsock port (nitro-emu's own)

Options:
  -h, --help     Print help
  -V, --version  Print version"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"Nitro CLI {VERSION}")
        return 0
    if argv[0] not in VERBS:
        return _report(NitroCliUsageError(f"unrecognized subcommand '{argv[0]}'"))
    module, file_error_code = VERBS[argv[0]]
    try:
        return importlib.import_module(module).main(argv)
    except BrokenPipeError:
        raise  # a closed stdout: exit_with ends quietly (status 141)
    except (NitroCliError, NitroCliUsageError) as error:
        return _report(error)
    except UsageError as error:
        return _report(NitroCliUsageError(str(error)))
    except (EifError, NitroEmuError) as error:
        return _report(NitroCliError(file_error_code, f"{error}."))
    except OSError as error:
        where = f"'{error.filename}'" if error.filename else "a file"
        return _report(NitroCliError(19, f"File: {where}: {error.strerror or error}."))
    except KeyboardInterrupt:
        return 130


def _report(error: NitroCliError | NitroCliUsageError) -> int:
    say(error.render())
    return error.exit_status


def entry_point() -> None:
    """The `nitro-cli` console script."""
    exit_with(main)


if __name__ == "__main__":
    entry_point()
