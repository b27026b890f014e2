"""`build-enclave`: nitro-cli's verb, from a container image to an EIF, with or without a
Docker daemon. Prints the measurements as nitro-cli does; `describe-eif` then shows the
same PCRs and nitro-cli's metadata (image name and version, build info, DockerInfo).
"""
from __future__ import annotations

import sys

from eif.metadata import load_custom_metadata_file
from nitro_emu.cli.common import ArgumentParser, print_measurements
from nitro_emu.container.build import build_enclave
from nitro_emu.container.enclave_blobs import find_blobs
from nitro_emu.container.reference import parse_reference
from nitro_emu.errors import UsageError

DESCRIPTION = """Build an EIF from a container image, as nitro-cli build-enclave does.
--docker-uri is an image of a Docker or Podman daemon (NAME[:TAG], exported through the
daemon's API; with --docker-dir it is built there first), or, without any daemon, an
archive: docker-archive:PATH[:NAME:TAG] (docker save / podman save), oci:DIR[:TAG] (an OCI
image layout) or oci-archive:PATH[:TAG]. The kernel, init and command line come from a
nitro-cli blobs directory: --blobs, $NITRO_CLI_BLOBS, or the project's guest build."""


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="nitro-emu build-enclave", description=DESCRIPTION)
    parser.add_argument("--docker-uri", required=True, help="the image (see above)")
    parser.add_argument("--output-file", required=True, help="the EIF to write")
    parser.add_argument("--docker-dir", help="directory with a Dockerfile to build the image "
                                             "from first (needs a daemon)")
    parser.add_argument("--signing-certificate", help="PEM certificate to sign the EIF with")
    parser.add_argument("--private-key", help="PEM EC private key matching the certificate")
    parser.add_argument("--name", help="image name (default: the URI up to its first ':')")
    parser.add_argument("--version", help="image version (default: the image Id)")
    parser.add_argument("--metadata", help="JSON file of custom metadata (<= 4096 bytes)")
    parser.add_argument("--blobs", help="nitro-cli blobs directory (bzImage, init, cmdline, "
                                        "nsm.ko)")
    args = parser.parse_args(argv[1:])     # argv[0] is the verb (both dispatchers pass it)
    if (args.signing_certificate is None) != (args.private_key is None):
        raise UsageError("nitro-emu build-enclave: --signing-certificate and --private-key "
                         "go together")
    reference = parse_reference(args.docker_uri)
    blobs = find_blobs(args.blobs)
    custom = load_custom_metadata_file(args.metadata) if args.metadata else None
    print("Start building the Enclave Image...", file=sys.stderr)
    result = build_enclave(
        reference, args.output_file, blobs, name=args.name, version=args.version,
        custom_metadata=custom, signing_certificate=args.signing_certificate,
        private_key=args.private_key, docker_dir=args.docker_dir,
        log=lambda line: print(line, file=sys.stderr))
    for note in result.notes:
        print(f"nitro-emu: note: {note}", file=sys.stderr)
    print("Enclave Image successfully created.", file=sys.stderr)
    print_measurements(result.measurements)
    return 0
