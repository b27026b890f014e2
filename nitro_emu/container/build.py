"""build-enclave: a container image -> nitro-cli's two ramdisks -> an EIF.

The image comes from an archive or layout, or from a Docker-API daemon (exported as a
docker-archive); its layers are checked and flattened in memory; the customer ramdisk
holds the tree under rootfs/ with cmd (Entrypoint + Cmd) and env (Env); the bootstrap
ramdisk the blobs' init (and nsm.ko). The result depends only on the image and the blobs:
file data, modes, owners and times come from the image, everything added has time 0, and
the metadata's BuildTime is $SOURCE_DATE_EPOCH or else the image's creation time.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator

from eif import cpio, ramdisks
from eif.builder import DEFAULT_BUILD_TOOL, DEFAULT_BUILD_TOOL_VERSION, build_eif
from eif.errors import EifError, FileError
from eif.files import MIB, InputKind, read_input
from eif.metadata import format_rfc3339
from eif.pcr import Measurements
from nitro_emu.container import docker_info
from nitro_emu.container.daemon import DockerClient
from nitro_emu.container.docker_archive import read_docker_archive
from nitro_emu.container.enclave_blobs import EnclaveBlobs
from nitro_emu.container.errors import ContainerError, ImageNotFound
from nitro_emu.container.flatten import RootFs
from nitro_emu.container.image import ImageSource
from nitro_emu.container.layers import Budget, unpack_layer
from nitro_emu.container.oci import read_oci
from nitro_emu.container.reference import DAEMON, ImageReference
from nitro_emu.container.store import DirectoryStore, TarStore

DEFAULT_MAX_IMAGE = 8 << 30          # uncompressed layers, all together
SUPPORTED_ARCH = "amd64"
BLOB = InputKind("enclave blob", 64 * MIB)     # init and nsm.ko (nitro-cli's are < 1 MiB)
_CREATED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


@dataclass(frozen=True)
class LoadedImage:
    source: ImageSource
    docker_info: dict
    image_id: str


@contextlib.contextmanager
def load_image(ref: ImageReference, scratch: str, docker_dir: str | None = None,
               log: Callable[[str], None] = lambda _: None) -> Iterator[LoadedImage]:
    """Open the image `ref` names (building it first from `docker_dir` with a daemon)."""
    if docker_dir is not None and ref.transport != DAEMON:
        raise ContainerError("--docker-dir builds with a Docker or Podman daemon; give an "
                             f"image name to tag the build with, not {ref.transport}:")
    if ref.transport == "oci":
        source = read_oci(DirectoryStore(ref.path), ref.name)
        yield LoadedImage(source, docker_info.from_image(source), source.image_id)
        return
    if ref.transport == DAEMON:
        client = DockerClient.connect()
        if docker_dir is not None:
            client.build(docker_dir, ref.name, log)
        inspect = client.inspect(ref.name)
        if inspect is None:
            log(f"image {ref.name} is not in the daemon: pulling it")
            client.pull(ref.name, log)
            inspect = client.inspect(ref.name)
            if inspect is None:
                raise ImageNotFound(f"image {ref.name} not found in the daemon")
        path = os.path.join(scratch, "exported.tar")
        with open(path, "wb") as out:
            client.export(ref.name, out)
        store = TarStore(path)
        reader, name = read_docker_archive, ""
    else:
        store = TarStore(ref.path)
        reader = read_oci if ref.transport == "oci-archive" else read_docker_archive
        name, inspect = ref.name, None
    try:
        source = reader(store, name)
        info = docker_info.from_daemon(inspect) if inspect else docker_info.from_image(source)
        image_id = inspect["Id"] if inspect and isinstance(inspect.get("Id"), str) \
            else source.image_id
        yield LoadedImage(source, info, image_id)
    finally:
        store.close()


def flatten(source: ImageSource, scratch: str, max_size: int = DEFAULT_MAX_IMAGE) -> RootFs:
    """Check and apply every layer; the layers' uncompressed tars stay in `scratch` (the
    tree's file contents are read from them when the ramdisk is written)."""
    rootfs = RootFs()
    budget = Budget(max_size)
    for index, layer in enumerate(source.layers):
        path = os.path.join(scratch, f"layer-{index}.tar")
        with open(path, "wb") as out:
            unpack_layer(layer, out, budget)
        rootfs.apply_layer(path, layer.where)
    return rootfs


def check_platform(source: ImageSource) -> None:
    config = source.config
    if config.os not in ("linux", ""):
        raise ContainerError(f"{source.where}: the image is for {config.os}, not linux")
    if config.architecture != SUPPORTED_ARCH:
        raise ContainerError(f"{source.where}: the image is for "
                             f"{config.architecture or 'an unnamed architecture'}; "
                             "nitro-emu runs x86_64 (amd64) enclaves")


def command_notes(source: ImageSource) -> list[str]:
    """Where the enclave will differ from `docker run` or from nitro-cli's EIF."""
    config, notes = source.config, []
    if config.entrypoint and config.cmd:
        notes.append("the enclave runs Entrypoint + Cmd as docker run does; nitro-cli's "
                     "build-enclave would run Cmd alone")
    settings = config.settings()
    if settings.get("WorkingDir") not in (None, "", "/"):
        notes.append(f"WorkingDir {settings['WorkingDir']} is not applied: the enclave's "
                     "init starts the command in /")
    if settings.get("User") not in (None, "", "0", "root", "0:0"):
        notes.append(f"User {settings['User']} is not applied: the command runs as root")
    return notes


def build_time(source: ImageSource, environ=os.environ) -> str:
    """RFC 3339 build time: $SOURCE_DATE_EPOCH, else the image's `created`, else 1970."""
    epoch = environ.get("SOURCE_DATE_EPOCH", "")
    if epoch:
        if not epoch.isdigit():
            raise ContainerError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds")
        return format_rfc3339(dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc))
    created = source.config.raw.get("created")
    m = _CREATED.match(created) if isinstance(created, str) else None
    if m is None:
        return format_rfc3339(dt.datetime.fromtimestamp(0, dt.timezone.utc))
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    moment = dt.datetime.fromisoformat(m.group(1) + zone).astimezone(dt.timezone.utc)
    base = format_rfc3339(moment).removesuffix("+00:00")
    fraction = (m.group(2) or "").ljust(9, "0")
    digits = next((n for n in (0, 3, 6, 9) if fraction[n:] == "0" * (9 - n)), 9)
    return base + ("." + fraction[:digits] if digits else "") + "+00:00"


def write_ramdisks(rootfs: RootFs, source: ImageSource, blobs: EnclaveBlobs,
                   scratch: str) -> list[str]:
    """The bootstrap and customer ramdisks as files in `scratch`."""
    def read(path: str) -> bytes:
        try:
            return read_input(path, BLOB)
        except FileError as error:
            raise ContainerError(str(error)) from None

    bootstrap = ramdisks.bootstrap_entries(read(blobs.init),
                                           read(blobs.nsm_ko) if blobs.nsm_ko else None)
    if not source.config.argv:
        raise ContainerError(f"{source.where}: the image has neither Entrypoint nor Cmd: "
                             "nothing for the enclave to run")
    customer = ramdisks.customer_entries(rootfs.cpio_entries(ramdisks.ROOTFS),
                                         source.config.argv, source.config.env)
    paths = []
    for name, entries in (("bootstrap-initrd.img", bootstrap),
                          ("customer-initrd.img", customer)):
        path = os.path.join(scratch, name)
        with open(path, "wb") as out:
            cpio.write_newc(out, entries, mtime=0)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class BuildResult:
    measurements: Measurements
    image_name: str
    image_version: str
    notes: tuple[str, ...]


def build_enclave(ref: ImageReference, output: str, blobs: EnclaveBlobs, *,
                  name: str | None = None, version: str | None = None,
                  custom_metadata: object = None, signing_certificate: str | None = None,
                  private_key: str | None = None, docker_dir: str | None = None,
                  max_size: int = DEFAULT_MAX_IMAGE, scratch_dir: str | None = None,
                  log: Callable[[str], None] = lambda _: None) -> BuildResult:
    """Build the EIF `output` from the image `ref`; returns its measurements."""
    with tempfile.TemporaryDirectory(prefix="nitro-emu-build-", dir=scratch_dir) as scratch:
        with load_image(ref, scratch, docker_dir, log) as image:
            source = image.source
            check_platform(source)
            rootfs = flatten(source, scratch, max_size)
            ramdisk_paths = write_ramdisks(rootfs, source, blobs, scratch)
        image_name = name if name is not None else ref.default_image_name
        image_version = version if version is not None else image.image_id.removeprefix("sha256:")
        operating_system, kernel_version = blobs.os_and_kernel_version()
        try:
            measurements = build_eif(
                output, kernel=blobs.kernel, cmdline=blobs.cmdline, ramdisks=ramdisk_paths,
                name=image_name, version=image_version, metadata=custom_metadata,
                build_time=build_time(source), build_tool=DEFAULT_BUILD_TOOL,
                build_tool_version=DEFAULT_BUILD_TOOL_VERSION,
                operating_system=operating_system, kernel_version=kernel_version,
                signing_certificate=signing_certificate, private_key=private_key,
                docker_info=image.docker_info)
        except EifError as error:
            raise ContainerError(str(error)) from None
    return BuildResult(measurements, image_name, image_version, tuple(command_notes(source)))
