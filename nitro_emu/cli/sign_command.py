"""`sign-eif --eif-path F --signing-certificate C --private-key K`: sign an EIF in place,
as nitro-cli does; its measurements (now with PCR8) are printed as build-enclave prints
them, and `describe-eif` shows the signature."""
from __future__ import annotations

import sys

from eif.errors import EifError
from nitro_emu.cli.common import print_measurements
from nitro_emu.cli.enclave_commands import NitroCliParser
from nitro_emu.enclaves.errors import NitroCliError


def main(argv: list[str]) -> int:
    from eif.sign import SigningError, sign_eif

    parser = NitroCliParser("sign-eif", "Sign an EIF with a certificate and its EC key "
                                        "(replacing any signature it has).")
    parser.add_argument("--eif-path", help="the EIF to sign (rewritten in place)")
    parser.add_argument("--signing-certificate", help="PEM X.509 certificate")
    parser.add_argument("--private-key", help="PEM EC private key of the certificate")
    args = parser.parse_args(argv[1:])
    if args.eif_path is None:
        raise NitroCliError(1, "User did not provide the `eif-path` argument.")
    if args.signing_certificate is None or args.private_key is None:
        raise NitroCliError(60, "Both --signing-certificate and --private-key are needed.")
    if args.private_key.startswith("arn:"):
        raise NitroCliError(60, "KMS keys cannot sign here: give a local PEM key file.")
    try:
        measurements = sign_eif(args.eif_path, args.signing_certificate, args.private_key)
    except SigningError as error:
        raise NitroCliError(60, f"{error}.") from None
    except EifError as error:
        raise NitroCliError(35, f"{error}.") from None
    print("Enclave Image successfully signed.", file=sys.stderr)
    print_measurements(measurements)
    return 0
