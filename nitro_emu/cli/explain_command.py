"""`explain --error-code Exx`: what an error code means (on stderr, as nitro-cli)."""
from __future__ import annotations

import sys

from nitro_emu.cli.enclave_commands import NitroCliParser
from nitro_emu.enclaves.errors import CODES, NitroCliError, code_name, parse_code


def main(argv: list[str]) -> int:
    parser = NitroCliParser("explain", "Explain an error code of nitro-cli's enclave verbs.")
    parser.add_argument("--error-code", required=True, help="the code, e.g. E26")
    args = parser.parse_args(argv[1:])
    code = parse_code(args.error_code)
    if code is None:
        raise NitroCliError(3, f"No such error code {args.error_code!r} "
                               f"({code_name(min(CODES))} to {code_name(max(CODES))}).")
    title, text = CODES[code]
    print(f"{code_name(code)}: {title} {text}", file=sys.stderr)
    return 0
