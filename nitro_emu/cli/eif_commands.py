"""`describe-eif`, `build-eif` and `pcr`: nitro-cli's EIF verbs, printing the same JSON.

Dispatched by verb name: `main(["describe-eif", "--eif-path", "x.eif"])`.
"""
from __future__ import annotations

import sys

from eif.builder import build_eif
from eif.describe import describe
from eif.errors import EifError
from eif.files import SIGNING_CERTIFICATE, read_input
from eif.metadata import load_custom_metadata_file
from eif.pcr import DEFAULT_HASH_ALGORITHM, pcr_of_file
from eif.signature import pcr8_from_certificate
from eif.reader import read_eif
from nitro_emu.cli.common import ArgumentParser, print_json, print_measurements
from nitro_emu.errors import UsageError


def describe_eif(argv: list[str]) -> int:
    """Print what nitro-cli describe-eif prints for an EIF."""
    parser = ArgumentParser(prog="nitro-emu describe-eif",
                            description="Show an EIF's version, measurements, CRC check, "
                                        "signature and metadata as nitro-cli does.")
    parser.add_argument("--eif-path", required=True, help="the EIF file")
    args = parser.parse_args(argv)
    print_json(describe(read_eif(args.eif_path), DEFAULT_HASH_ALGORITHM))
    return 0


def build(argv: list[str]) -> int:
    """Build an EIF from a kernel, a command line and ramdisks; print its measurements."""
    parser = ArgumentParser(prog="nitro-emu build-eif",
                            description="Build an EIF and print its measurements as "
                                        "nitro-cli build-enclave does.")
    parser.add_argument("--kernel", required=True, help="kernel image (bzImage / Image)")
    parser.add_argument("--cmdline", required=True, help="kernel command line")
    parser.add_argument("--ramdisk", action="append", required=True,
                        help="ramdisk (cpio archive); repeat for more, in order")
    parser.add_argument("--output", required=True, help="EIF file to write")
    parser.add_argument("--name", help="image name (default: the kernel file's name)")
    parser.add_argument("--version", help="image version (default: 1.0)")
    parser.add_argument("--metadata", help="JSON file of custom metadata (<= 4096 bytes)")
    parser.add_argument("--build-time", help="RFC 3339 build time (default: now); pin it "
                                             "for reproducible images")
    parser.add_argument("--arch", choices=("x86_64", "aarch64"), default="x86_64")
    parser.add_argument("--signing-certificate", help="PEM certificate to sign with")
    parser.add_argument("--private-key", help="PEM EC private key matching the certificate")
    args = parser.parse_args(argv)
    if (args.signing_certificate is None) != (args.private_key is None):
        raise UsageError("nitro-emu build-eif: --signing-certificate and --private-key "
                         "go together")
    custom = load_custom_metadata_file(args.metadata) if args.metadata else None
    measurements = build_eif(
        args.output, kernel=args.kernel, cmdline=args.cmdline, ramdisks=args.ramdisk,
        name=args.name, version=args.version, metadata=custom, build_time=args.build_time,
        arch=args.arch, signing_certificate=args.signing_certificate,
        private_key=args.private_key)
    print("Enclave Image successfully created.", file=sys.stderr)
    print_measurements(measurements)
    return 0


def pcr(argv: list[str]) -> int:
    """`nitro-cli pcr`: the PCR of a file, or PCR8 of a signing certificate."""
    parser = ArgumentParser(prog="nitro-emu pcr",
                            description="Compute the PCR of a file (--input) or PCR8 of a "
                                        "signing certificate (--signing-certificate).")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--input", help="file whose bytes are measured")
    group.add_argument("--signing-certificate", help="PEM certificate")
    args = parser.parse_args(argv)
    if args.input is not None:
        print_json({"PCR": pcr_of_file(args.input).hex()})
    else:
        pem = read_input(args.signing_certificate, SIGNING_CERTIFICATE)
        try:
            value = pcr8_from_certificate(pem)
        except EifError as error:
            raise EifError(f"{args.signing_certificate}: {error}") from None
        print_json({"PCR8": value.hex()})
    return 0


_VERBS = {"describe-eif": describe_eif, "build-eif": build, "pcr": pcr}


def main(argv: list[str]) -> int:
    """Run the verb named by argv[0] with the remaining arguments."""
    if not argv or argv[0] not in _VERBS:
        raise UsageError(f"unknown EIF verb {argv[0] if argv else ''!r}")
    return _VERBS[argv[0]](argv[1:])
