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
import sys
from typing import Callable, NoReturn

from eif.errors import EifError
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
    """Dispatch to the verb's module; turn user errors into one line and exit status 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("nitro-emu: error: no EIF or verb given (python -m nitro_emu --help)",
              file=sys.stderr)
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
    except (NitroCliError, NitroCliUsageError) as error:
        print(error.render(), file=sys.stderr)
        return error.exit_status
    except (NitroEmuError, EifError) as error:
        print(f"nitro-emu: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        print(f"nitro-emu: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nitro-emu: interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    """The `nitro-emu` console script."""
    exit_with(main)


def exit_with(main_function: Callable[[], int]) -> NoReturn:
    """Run a command's main() and exit with its status; a closed stdout is no error."""
    try:
        status = main_function()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error of ours, and no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)
