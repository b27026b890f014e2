"""Writes container images without a container tool, reproducibly: layer tars from a list
of members, an OCI image layout (`oci:DIR`), and a docker-archive (`docker save`'s
format). The guest build makes its CPython image this way and hands it to build-enclave;
the tests make their images with it too.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from guest.env import SOURCE_DATE_EPOCH

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_TYPES = {None: "application/vnd.oci.image.layer.v1.tar",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}
MTIME = SOURCE_DATE_EPOCH
CREATED = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(SOURCE_DATE_EPOCH))


@dataclass(frozen=True)
class Member:
    """One tar member: kind is file, dir, symlink, hardlink, chr, blk or fifo; `target`
    is a link's target; `rdev` a device's numbers."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    target: str = ""
    rdev: tuple[int, int] = (0, 0)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def layer_tar(members: list[Member]) -> bytes:
    """An uncompressed layer tar (PAX format) with the members in the given order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = _TYPES[m.kind]
            info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.gid, m.mtime
            info.uname = info.gname = ""
            info.linkname = m.target
            info.devmajor, info.devminor = m.rdev
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return out.getvalue()


def compress(data: bytes, how: str | None) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(data)
    return data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class ImageSpec:
    """An image: layer tars (uncompressed) with the compression each is stored with, and
    the config's command, environment and the rest."""

    layers: list[tuple[bytes, str | None]]
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:"
                                                    "/usr/sbin:/usr/bin:/sbin:/bin"])
    architecture: str = "amd64"
    extra_config: dict = field(default_factory=dict)

    def config(self) -> bytes:
        settings = {"Env": self.env, **self.extra_config}
        if self.cmd is not None:
            settings["Cmd"] = self.cmd
        if self.entrypoint is not None:
            settings["Entrypoint"] = self.entrypoint
        return json.dumps({
            "architecture": self.architecture, "os": "linux", "created": CREATED,
            "config": settings,
            "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t, _ in self.layers]},
            "history": [{"created": CREATED, "created_by": "nitro-emu guest build"}
                        for _ in self.layers],
        }, sort_keys=True, separators=(",", ":")).encode()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (MTIME, MTIME))


def _descriptor(media_type: str, data: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def write_oci_layout(directory: Path, image: ImageSpec, tag: str = "latest") -> str:
    """Write `image` as an OCI image layout tagged `tag`; returns the manifest digest."""
    blobs = directory / "blobs" / "sha256"
    config = image.config()
    _write(blobs / sha256(config)[7:], config)
    layers = []
    for tar, how in image.layers:
        stored = compress(tar, how)
        _write(blobs / sha256(stored)[7:], stored)
        layers.append(_descriptor(LAYER_TYPES[how], stored))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": _descriptor(OCI_CONFIG, config), "layers": layers},
                          separators=(",", ":")).encode()
    _write(blobs / sha256(manifest)[7:], manifest)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        _descriptor(OCI_MANIFEST, manifest,
                    annotations={"org.opencontainers.image.ref.name": tag})]}
    _write(directory / "index.json", json.dumps(index, separators=(",", ":")).encode())
    _write(directory / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    return sha256(manifest)


def write_docker_archive(path: Path, image: ImageSpec, repo_tags: list[str]) -> None:
    """Write `image` as `docker save` does (legacy layout: <id>.json, <id>/layer.tar)."""
    config = image.config()
    files: dict[str, bytes] = {f"{sha256(config)[7:]}.json": config}
    names = []
    for tar, how in image.layers:
        name = f"{sha256(tar)[7:]}/layer.tar"
        files[name] = compress(tar, how)
        names.append(name)
    files["manifest.json"] = json.dumps([{"Config": f"{sha256(config)[7:]}.json",
                                          "RepoTags": repo_tags, "Layers": names}]).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, stat.S_IMODE(0o644)
            tar.addfile(info, io.BytesIO(data))
