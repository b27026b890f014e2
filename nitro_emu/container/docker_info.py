"""The `DockerInfo` of the EIF's metadata: what `docker inspect` says of the image, in the
shape nitro-cli writes it (bollard 0.19's ImageInspect serialised: its fields only, null
ones left out). Fields that describe one machine's image store rather than the image
(GraphDriver paths, LastTagTime) are dropped, so the same image gives the same EIF bytes
on any machine; from an archive, the same fields are derived from the image config."""
from __future__ import annotations

from nitro_emu.container.image import ImageSource

# bollard-stubs 1.49 ImageInspect and ImageConfig fields, in declaration order.
INSPECT_KEYS = ("Id", "Descriptor", "Manifests", "RepoTags", "RepoDigests", "Parent",
                "Comment", "Created", "DockerVersion", "Author", "Config", "Architecture",
                "Variant", "Os", "OsVersion", "Size", "VirtualSize", "RootFS")
MACHINE_LOCAL = ("GraphDriver", "Metadata")
CONFIG_KEYS = ("Hostname", "Domainname", "User", "AttachStdin", "AttachStdout",
               "AttachStderr", "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd",
               "Healthcheck", "ArgsEscaped", "Image", "Volumes", "WorkingDir", "Entrypoint",
               "NetworkDisabled", "MacAddress", "OnBuild", "Labels", "StopSignal",
               "StopTimeout", "Shell")


def _config(value: object) -> dict | None:
    if not isinstance(value, dict):
        return None
    return {k: value[k] for k in CONFIG_KEYS if value.get(k) is not None}


def from_daemon(inspect: dict) -> dict:
    """A daemon's image inspect reply, reduced to nitro-cli's fields."""
    info = {k: inspect[k] for k in INSPECT_KEYS if inspect.get(k) is not None}
    if "Config" in info:
        info["Config"] = _config(info["Config"])
    root_fs = info.get("RootFS")
    if isinstance(root_fs, dict):
        info["RootFS"] = {k: root_fs[k] for k in ("Type", "Layers") if root_fs.get(k) is not None}
    return info


def from_image(source: ImageSource) -> dict:
    """The inspect fields an image carries itself (config, Id, tags), for archives."""
    raw = source.config.raw
    info = {
        "Id": source.image_id,
        "RepoTags": list(source.repo_tags),
        "RepoDigests": list(source.repo_digests),
        "Parent": "",
        "Comment": raw.get("comment", ""),
        "Created": raw.get("created"),
        "DockerVersion": raw.get("docker_version", ""),
        "Author": raw.get("author", ""),
        "Config": _config(raw.get("config") or {}),
        "Architecture": raw.get("architecture"),
        "Variant": raw.get("variant"),
        "Os": raw.get("os"),
        "OsVersion": raw.get("os.version"),
        "RootFS": {"Type": "layers", "Layers": list(source.config.diff_ids)},
    }
    return {k: v for k, v in info.items() if v is not None}
