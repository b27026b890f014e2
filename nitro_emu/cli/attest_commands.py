"""Verbs `ca export` (print the local root CA in PEM) and `attest verify` (check an
attestation document and print its payload as JSON)."""
from __future__ import annotations

import hashlib
import json
import sys

from cryptography import x509

from eif.files import PEM_CERTIFICATE_LIMIT, InputKind, read_input
from nitro_emu.attestation.aws_root import AWS_ROOT_PEM
from nitro_emu.attestation.ca import LocalCA
from nitro_emu.attestation.verify import payload_json, read_document_file, verify_document
from nitro_emu.cli.common import ArgumentParser
from nitro_emu.errors import UsageError


ROOT_CERTIFICATE = InputKind("root certificate", PEM_CERTIFICATE_LIMIT)


def expected_hex(value: str, what: str) -> bytes:
    """An expected value given in hex: non-empty (an empty one is almost always an unset
    shell variable, and would expect an empty field) and hexadecimal."""
    if not value.strip():
        raise UsageError(f"{what}: empty value; give the expected bytes in hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise UsageError(f"{what} must be hexadecimal, not {value!r:.40}") from None


def _pcr(spec: str) -> tuple[int, bytes]:
    index, sep, value = spec.partition("=")
    if not sep or not index.strip().isdigit() or not 0 <= int(index) < 32:
        raise UsageError(f"--pcr wants N=HEX with N in 0..31, not {spec!r:.60}")
    return int(index), expected_hex(value.strip(), f"--pcr {int(index)}")


def _state_dir(text: str) -> str:
    if not text:
        raise UsageError("--state-dir: empty path (leave the option out for the default "
                         "state directory)")
    return text


def _roots(root: str | None, state_dir: str | None) -> list[x509.Certificate]:
    if root is None:
        return [LocalCA.load_or_create(state_dir).certificate]
    pem = AWS_ROOT_PEM if root == "aws" else read_input(root, ROOT_CERTIFICATE)
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise UsageError(f"--root {root}: no PEM certificate in it") from None


def ca_main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="nitro-emu ca", description="The local root CA that signs "
                            "nitro-emu's attestation documents (created on first use).")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="print the root certificate in PEM")
    export.add_argument("--state-dir", type=_state_dir,
                        help="state directory (default: $NITRO_EMU_STATE_DIR, "
                        "$XDG_STATE_HOME/nitro-emu or ~/.local/state/nitro-emu)")
    export.add_argument("--fingerprint", action="store_true",
                        help="print the SHA-256 of the certificate's DER instead")
    args = parser.parse_args(argv)
    ca = LocalCA.load_or_create(args.state_dir)
    if args.fingerprint:
        print(hashlib.sha256(ca.root_der()).hexdigest())
    else:
        sys.stdout.write(ca.root_pem().decode())
    return 0


def attest_main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="nitro-emu attest", description="Attestation documents.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify a document and print its payload as JSON")
    verify.add_argument("document", metavar="DOC_FILE",
                        help="raw CBOR, or base64 (optionally between BEGIN/END ATTESTATION "
                        "DOCUMENT lines); - reads standard input")
    verify.add_argument("--root", metavar="PEM", help="pinned root certificate file, or "
                        "'aws' for AWS's Nitro Enclaves root (default: the local CA)")
    verify.add_argument("--pcr", metavar="N=HEX", action="append", default=[], type=_pcr,
                        help="expected PCR value (repeatable)")
    verify.add_argument("--nonce", metavar="HEX", help="expected nonce")
    verify.add_argument("--user-data", metavar="HEX", help="expected user_data")
    verify.add_argument("--state-dir", type=_state_dir,
                        help="state directory holding the local CA")
    args = parser.parse_args(argv)
    nonce = None if args.nonce is None else expected_hex(args.nonce, "--nonce")
    user_data = None if args.user_data is None else expected_hex(args.user_data, "--user-data")
    roots = _roots(args.root, args.state_dir)
    document = read_document_file(args.document)
    result = verify_document(document, roots, expected_pcrs=dict(args.pcr), nonce=nonce,
                             user_data=user_data)
    pcr0 = result.payload["pcrs"].get(0)
    if pcr0 is not None and not any(pcr0):
        print("nitro-emu: warning: PCR0 is all zeros: a debug-mode enclave", file=sys.stderr)
    json.dump(payload_json(result.payload), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str]) -> int:
    """Entry point from the dispatcher: argv[0] is 'ca' or 'attest'."""
    if argv and argv[0] == "ca":
        return ca_main(argv[1:])
    if argv and argv[0] == "attest":
        return attest_main(argv[1:])
    raise UsageError(f"unknown verb {argv[0] if argv else ''!r}")
