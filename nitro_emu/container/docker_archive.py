"""docker-archive tarballs (`docker save`, `podman save`, and what a daemon's
GET /images/{name}/get returns): manifest.json names each image's config and layer files.
The config is checked against its file name when that is its digest (`<hex>.json`,
`blobs/sha256/<hex>`), a layer against `blobs/sha256/<hex>` names, and every layer's
uncompressed bytes against the config's diff_ids."""
from __future__ import annotations

import re

from nitro_emu.container.errors import ImageNotFound
from nitro_emu.container.image import (ImageSource, LayerBlob, check_layer_count,
                                       parse_config)
from nitro_emu.container.reference import normalize_name
from nitro_emu.container.store import (MAX_JSON, Store, check_digest, read_json,
                                       read_limited, require)

_DIGEST_NAME = re.compile(r"(?:^|/)(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?$")
_BLOB_NAME = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_DEFAULT_PREFIXES = ("docker.io/library/", "docker.io/", "localhost/")


def familiar(name: str) -> str:
    """A repository tag as `docker images` shows it (podman's localhost/ and docker.io's
    library/ prefixes dropped), so app:latest finds localhost/app:latest."""
    for prefix in _DEFAULT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _strings(value: object, where: str) -> list[str]:
    if value is None:
        return []
    require(isinstance(value, list) and all(isinstance(s, str) for s in value),
            f"{where} is not a list of strings")
    return value


def _choose(entries: list, name: str, where: str) -> dict:
    if name.startswith("@"):
        require(name[1:].isdigit() and int(name[1:]) < len(entries),
                f"{where}: no image {name} (the archive holds {len(entries)})")
        return entries[int(name[1:])]
    if name:
        wanted = familiar(normalize_name(name))
        for entry in entries:
            if wanted in (familiar(t) for t in entry["RepoTags"]):
                return entry
        tags = sorted(t for e in entries for t in e["RepoTags"])
        raise ImageNotFound(f"{where}: no image tagged {name} (tags: {', '.join(tags) or 'none'})")
    if len(entries) != 1:
        raise ImageNotFound(f"{where}: {len(entries)} images; choose one with :NAME:TAG or :@N")
    return entries[0]


def read_docker_archive(store: Store, name: str) -> ImageSource:
    """The image `name` (a tag, `@N` for the Nth, or "" for the only one) of the archive."""
    where = store.where
    require(store.exists("manifest.json"),
            f"{where}: not a docker-archive (no manifest.json; an OCI archive is oci-archive:)")
    manifest, _ = read_json(store, "manifest.json", "manifest")
    require(isinstance(manifest, list) and manifest, f"{where}: manifest.json is not a "
                                                     "non-empty list")
    entries = []
    for i, entry in enumerate(manifest):
        at = f"{where}: manifest.json[{i}]"
        require(isinstance(entry, dict) and isinstance(entry.get("Config"), str),
                f"{at}: no Config file name")
        entry = dict(entry, RepoTags=_strings(entry.get("RepoTags"), f"{at}: RepoTags"),
                     Layers=_strings(entry.get("Layers"), f"{at}: Layers"))
        entries.append(entry)
    chosen = _choose(entries, name, where)
    file, size = store.open(chosen["Config"])
    with file:
        config_bytes = read_limited(file, size, MAX_JSON, f"{where}: {chosen['Config']}")
    if m := _DIGEST_NAME.search(chosen["Config"]):
        check_digest(config_bytes, "sha256:" + m.group(1), f"{where}: {chosen['Config']}")
    config = parse_config(config_bytes, f"{where}: {chosen['Config']}")
    check_layer_count(config, len(chosen["Layers"]), where)
    layers = []
    for i, layer_name in enumerate(chosen["Layers"]):
        m = _BLOB_NAME.match(layer_name)
        layers.append(LayerBlob(where=f"{where}: layer {i + 1} ({layer_name})",
                                open=lambda n=layer_name: store.open(n),
                                diff_id=config.diff_ids[i],
                                digest="sha256:" + m.group(1) if m else None))
    return ImageSource(config=config, config_bytes=config_bytes, layers=tuple(layers),
                       repo_tags=tuple(chosen["RepoTags"]), where=where)
