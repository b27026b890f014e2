"""What build-enclave needs of an image, whatever its transport: the config (checked),
the image Id, and the layers in order with the digests that vouch for them."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from nitro_emu.container.errors import ContainerError
from nitro_emu.container.store import digest_hex, parse_json, require

MAX_LAYERS = 500


@dataclass(frozen=True)
class LayerBlob:
    """One layer as stored: `open()` gives its (maybe compressed) bytes. `digest` is the
    sha256 the manifest names for those bytes (None when the transport names none, as
    for docker-archive's `<id>/layer.tar`); `diff_id` the config's sha256 of the
    uncompressed tar. Both are checked while the layer is read."""

    where: str
    open: Callable[[], tuple[BinaryIO, int]]
    diff_id: str
    digest: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config (OCI / Docker) that build-enclave uses."""

    raw: dict
    architecture: str
    os: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]
    diff_ids: tuple[str, ...]

    @property
    def argv(self) -> tuple[str, ...]:
        """What a container runtime runs: Entrypoint followed by Cmd."""
        return self.entrypoint + self.cmd

    def settings(self) -> dict:
        return self.raw.get("config") or {}


@dataclass(frozen=True)
class ImageSource:
    """An image ready to flatten: its config, its Id (sha256 of the config), its layers
    and the names it carries."""

    config: ImageConfig
    config_bytes: bytes
    layers: tuple[LayerBlob, ...]
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    where: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    require(isinstance(value, list) and all(isinstance(s, str) for s in value),
            f"{where} is not a list of strings")
    return tuple(value)


def parse_config(data: bytes, where: str) -> ImageConfig:
    """Check and read an image config's JSON."""
    raw = parse_json(data, where)
    require(isinstance(raw, dict), f"{where}: the image config is not a JSON object")
    settings = raw.get("config") or {}
    require(isinstance(settings, dict), f"{where}: config.config is not an object")
    rootfs = raw.get("rootfs")
    require(isinstance(rootfs, dict) and rootfs.get("type") == "layers",
            f"{where}: rootfs is missing or not of type \"layers\"")
    diff_ids = _strings(rootfs.get("diff_ids"), f"{where}: rootfs.diff_ids")
    require(len(diff_ids) <= MAX_LAYERS, f"{where}: more than {MAX_LAYERS} layers")
    for index, diff_id in enumerate(diff_ids):
        digest_hex(diff_id, f"{where}: rootfs.diff_ids[{index}]")
    for key in ("architecture", "os"):
        require(isinstance(raw.get(key, ""), str), f"{where}: {key} is not a string")
    return ImageConfig(
        raw=raw, architecture=raw.get("architecture", ""), os=raw.get("os", ""),
        entrypoint=_strings(settings.get("Entrypoint"), f"{where}: Entrypoint"),
        cmd=_strings(settings.get("Cmd"), f"{where}: Cmd"),
        env=_strings(settings.get("Env"), f"{where}: Env"),
        diff_ids=diff_ids)


def check_layer_count(config: ImageConfig, count: int, where: str) -> None:
    if count != len(config.diff_ids):
        raise ContainerError(f"{where}: the manifest lists {count} layers but the config's "
                             f"rootfs.diff_ids has {len(config.diff_ids)}")
