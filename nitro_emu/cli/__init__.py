"""Command line: `python -m nitro_emu EIF --guest-cid N` runs an enclave in the foreground;
the other verbs (describe-eif, build-eif, build-enclave, pcr, ca, attest, and the enclave
lifecycle: run-enclave, describe-enclaves, console, terminate-enclave, sign-eif, explain,
vsock-connect) speak nitro-cli's language. `nitro-cli` (nitro_emu.cli.nitro_cli) is the
same verbs behind nitro-cli's own command line.

Each verb lives in its own module with `main(argv) -> int`. Every user error ends as one
line on stderr and a non-zero exit status, never a traceback.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Callable, NoReturn

from eif.errors import EifError
from nitro_emu.cli.common import say
from nitro_emu.enclaves.errors import NitroCliError, NitroCliUsageError
from nitro_emu.errors import NitroEmuError

# verb -> module that implements it
VERBS = {
    "describe-eif": "nitro_emu.cli.eif_commands",
    "build-eif": "nitro_emu.cli.eif_commands",
    "build-enclave": "nitro_emu.cli.build_enclave",
    "pcr": "nitro_emu.cli.eif_commands",
    "ca": "nitro_emu.cli.attest_commands",
    "attest": "nitro_emu.cli.attest_commands",
    "run-enclave": "nitro_emu.cli.enclave_commands",
    "describe-enclaves": "nitro_emu.cli.enclave_commands",
    "console": "nitro_emu.cli.enclave_commands",
    "terminate-enclave": "nitro_emu.cli.enclave_commands",
    "sign-eif": "nitro_emu.cli.sign_command",
    "explain": "nitro_emu.cli.explain_command",
    "vsock-connect": "nitro_emu.cli.vsock_connect_command",
}
RUN_MODULE = "nitro_emu.cli.run_command"
BROKEN_PIPE_STATUS = 128 + signal.SIGPIPE

USAGE = """usage: python -m nitro_emu EIF --guest-cid N [--memory MiB] [--debug-mode] [...]
       python -m nitro_emu describe-eif --eif-path EIF
       python -m nitro_emu build-eif --kernel K --cmdline CMD --ramdisk R ... --output EIF
       python -m nitro_emu build-enclave --docker-uri IMAGE --output-file EIF [...]
       python -m nitro_emu pcr (--input FILE | --signing-certificate PEM)
       python -m nitro_emu ca export
       python -m nitro_emu attest verify DOC [--root PEM] [--pcr N=HEX ...] [--nonce HEX]
       python -m nitro_emu run-enclave --eif-path EIF --cpu-count N --memory MiB [...]
       python -m nitro_emu describe-enclaves [--metadata]
       python -m nitro_emu console (--enclave-id ID | --enclave-name NAME)
       python -m nitro_emu terminate-enclave (--enclave-id ID | --enclave-name NAME | --all)
       python -m nitro_emu vsock-connect CID PORT
       python -m nitro_emu sign-eif --eif-path EIF --signing-certificate PEM --private-key KEY
       python -m nitro_emu explain --error-code Exx
Run any verb with --help for its options."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the verb's module; turn user errors into one line and exit status 1.
    A closed pipe on stdout is not an error: BrokenPipeError reaches `entry_point`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        say("nitro-emu: error: no EIF or verb given (python -m nitro_emu --help)")
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in VERBS:
        module, args = VERBS[argv[0]], argv
    else:
        module, args = RUN_MODULE, argv
    try:
        return importlib.import_module(module).main(args)
    except BrokenPipeError:
        raise
    except (NitroCliError, NitroCliUsageError) as error:
        say(error.render())
        return error.exit_status
    except (NitroEmuError, EifError) as error:
        say(f"nitro-emu: error: {error}")
        return 1
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        say(f"nitro-emu: error: {error.strerror or error}{where}")
        return 1
    except KeyboardInterrupt:
        say("nitro-emu: interrupted")
        return 128 + signal.SIGINT


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def entry_point() -> None:
    """The `nitro-emu` console script."""
    exit_with(main)


def exit_with(main_function: Callable[[], int]) -> NoReturn:
    """Run a command's main() and exit with its status.

    When the reader of stdout goes away (`... | head`), the rest of the output is dropped
    without a word and the status is 141, 128 + SIGPIPE: what the shell reports for `cat`,
    `grep` or any C filter, which die of SIGPIPE there, so `set -o pipefail` scripts see
    nitro-emu as they see every other tool, and a cut-short output is never called a
    success."""
    try:
        status = main_function()
    except BrokenPipeError:
        status = BROKEN_PIPE_STATUS
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        status = status or BROKEN_PIPE_STATUS
    except (OSError, ValueError):  # stdout is gone otherwise (a terminal hung up)
        status = status or 1
    else:
        sys.exit(status)
    _silence_stdout()
    sys.exit(status)
