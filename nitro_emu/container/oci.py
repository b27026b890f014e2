"""OCI image layouts (`oci:DIR[:TAG]`, `oci-archive:PATH[:TAG]`): index.json -> (nested
index, for multi-platform images) -> manifest -> config and layers, each blob's size and
sha256 checked against the descriptor that names it."""
from __future__ import annotations

from nitro_emu.container.errors import ContainerError, ImageNotFound
from nitro_emu.container.image import (ImageSource, LayerBlob, check_layer_count,
                                       parse_config)
from nitro_emu.container.store import (MAX_JSON, Store, check_digest, digest_hex,
                                       parse_json, read_json, read_limited, require)

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
PLATFORM = {"os": "linux", "architecture": "amd64"}
MAX_NESTING = 4


def _descriptor(value: object, where: str) -> dict:
    require(isinstance(value, dict), f"{where}: descriptor is not an object")
    digest_hex(value.get("digest"), where)
    size = value.get("size")
    require(isinstance(size, int) and not isinstance(size, bool) and size >= 0,
            f"{where}: descriptor size is not a non-negative integer")
    require(isinstance(value.get("mediaType", ""), str), f"{where}: mediaType is not a string")
    return value


def blob_name(descriptor: dict, where: str) -> str:
    return "blobs/sha256/" + digest_hex(descriptor["digest"], where)


def read_blob(store: Store, descriptor: dict, where: str, limit: int = MAX_JSON) -> bytes:
    """A small blob (index, manifest, config), its size and digest checked."""
    name = blob_name(descriptor, where)
    file, size = store.open(name)
    with file:
        data = read_limited(file, size, limit, f"{store.where}: {name}")
    require(len(data) == descriptor["size"],
            f"{where}: {name} is {len(data)} bytes, the descriptor says {descriptor['size']}")
    check_digest(data, descriptor["digest"], f"{store.where}: {name}")
    return data


def _manifests(index: object, where: str) -> list[dict]:
    require(isinstance(index, dict) and isinstance(index.get("manifests"), list),
            f"{where}: no manifests list")
    return [_descriptor(d, f"{where}: manifests[{i}]") for i, d in enumerate(index["manifests"])]


def _annotation(descriptor: dict, key: str) -> str:
    annotations = descriptor.get("annotations")
    value = annotations.get(key) if isinstance(annotations, dict) else None
    return value if isinstance(value, str) else ""


def _choose(manifests: list[dict], tag: str, where: str) -> dict:
    if tag:
        found = [d for d in manifests if _annotation(d, REF_NAME) == tag]
        if not found:
            tags = sorted({_annotation(d, REF_NAME) for d in manifests} - {""})
            raise ImageNotFound(f"{where}: no image tagged {tag!r} (tags: "
                                f"{', '.join(tags) or 'none'})")
        return found[0]
    if len(manifests) != 1:
        tags = sorted({_annotation(d, REF_NAME) for d in manifests} - {""})
        raise ImageNotFound(f"{where}: {len(manifests)} images; name one with :TAG "
                            f"(tags: {', '.join(tags) or 'none'})")
    return manifests[0]


def _for_platform(manifests: list[dict], where: str) -> dict:
    for descriptor in manifests:
        platform = descriptor.get("platform")
        if isinstance(platform, dict) and all(platform.get(k) == v for k, v in PLATFORM.items()):
            return descriptor
    raise ImageNotFound(f"{where}: the image index has no linux/amd64 image")


def read_oci(store: Store, tag: str) -> ImageSource:
    """The image `tag` (or the only one) of an OCI layout held by `store`."""
    where = store.where
    require(store.exists("oci-layout"), f"{where}: not an OCI image layout (no oci-layout file)")
    layout, _ = read_json(store, "oci-layout", "file")
    require(isinstance(layout, dict) and isinstance(layout.get("imageLayoutVersion"), str),
            f"{where}: oci-layout has no imageLayoutVersion")
    index, _ = read_json(store, "index.json", "index")
    top = _choose(_manifests(index, f"{where}: index.json"), tag, where)
    descriptor = top
    for _ in range(MAX_NESTING):
        if descriptor.get("mediaType") not in INDEX_TYPES:
            break
        nested = parse_json(read_blob(store, descriptor, where), f"{where}: image index")
        descriptor = _for_platform(_manifests(nested, f"{where}: image index"), where)
    else:
        raise ContainerError(f"{where}: image indexes nested more than {MAX_NESTING} deep")
    media_type = descriptor.get("mediaType")
    require(media_type in MANIFEST_TYPES or media_type is None,
            f"{where}: unsupported manifest media type {str(media_type)[:100]!r}")
    manifest = parse_json(read_blob(store, descriptor, where), f"{where}: manifest")
    require(isinstance(manifest, dict), f"{where}: the manifest is not a JSON object")
    config_descriptor = _descriptor(manifest.get("config"), f"{where}: manifest config")
    config_bytes = read_blob(store, config_descriptor, f"{where}: config")
    config = parse_config(config_bytes, f"{where}: config")
    layer_list = manifest.get("layers")
    require(isinstance(layer_list, list), f"{where}: the manifest has no layers list")
    check_layer_count(config, len(layer_list), where)
    layers = []
    for i, value in enumerate(layer_list):
        d = _descriptor(value, f"{where}: layers[{i}]")
        name = blob_name(d, where)
        layers.append(LayerBlob(where=f"{where}: layer {i + 1} ({name})",
                                open=lambda name=name: store.open(name),
                                diff_id=config.diff_ids[i], digest=d["digest"], size=d["size"]))
    full_name = _annotation(top, IMAGE_NAME) or _annotation(top, REF_NAME)
    tags = (full_name,) if ":" in full_name.rpartition("/")[2] else ()
    return ImageSource(config=config, config_bytes=config_bytes, layers=tuple(layers),
                       repo_tags=tags, where=where)
