"""`--docker-uri` values: a daemon image name (`app`, `app:1.0`, `registry:5000/team/app@sha256:...`)
or a path in one of skopeo's transports: `docker-archive:PATH[:NAME:TAG]`,
`oci:DIR[:TAG]`, `oci-archive:PATH[:TAG]` (and `docker-daemon:NAME` for the daemon).
As in skopeo, the path ends at the first `:` after the transport.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from nitro_emu.container.errors import ContainerError

DAEMON = "docker-daemon"
ARCHIVE_TRANSPORTS = ("docker-archive", "oci", "oci-archive")

# Docker's reference grammar (distribution/reference), without the domain's case rules.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
_NAME = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
                   r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
MAX_NAME = 255


@dataclass(frozen=True)
class ImageReference:
    """Where an image comes from. `transport` is DAEMON or one of ARCHIVE_TRANSPORTS;
    `path` the archive or layout (empty for the daemon); `name` the daemon's image name
    (with `:latest` added when it has no tag or digest), or the tag chosen inside an
    archive ("" when the archive holds one image)."""

    transport: str
    path: str
    name: str
    uri: str

    @property
    def default_image_name(self) -> str:
        """ImageName when --name is not given: nitro-cli's rule for a daemon image (the
        URI up to its first ':'), else the name part of a docker-archive's chosen
        reference, else the path's base name (an OCI tag names no image)."""
        if self.transport == DAEMON:
            return self.uri.removeprefix(DAEMON + ":").split(":")[0]
        if self.transport == "docker-archive" and self.name and not self.name.startswith("@"):
            return split_tag(self.name)[0]
        base = self.path.rstrip("/").rsplit("/", 1)[-1]
        for suffix in (".tar.gz", ".tgz", ".tar"):
            base = base.removesuffix(suffix)
        return base or self.path


def split_tag(name: str) -> tuple[str, str]:
    """("registry:5000/app", "1.0") from "registry:5000/app:1.0"; a tag only after the
    last '/', and a digest is left on the name."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if "@" not in name and colon > slash:
        return name[:colon], name[colon + 1:]
    return name, ""


def normalize_name(name: str) -> str:
    """A daemon image name with `:latest` added when it has neither tag nor digest."""
    if len(name) > MAX_NAME or not _NAME.match(name):
        raise ContainerError(f"{name!r} is not a valid image name (name[:tag][@sha256:...], "
                             "lower case) nor a transport:path (docker-archive:, oci:, "
                             "oci-archive:)")
    if "@" in name or split_tag(name)[1]:
        return name
    return name + ":latest"


def parse_reference(uri: str) -> ImageReference:
    """Parse a --docker-uri value; ContainerError (one line) when it is malformed."""
    if not uri or "\0" in uri or "\n" in uri:
        raise ContainerError("--docker-uri is empty or holds a NUL or newline")
    transport, sep, rest = uri.partition(":")
    if sep and transport in ARCHIVE_TRANSPORTS:
        path, _, tag = rest.partition(":")
        if not path:
            raise ContainerError(f"{uri}: no path after {transport}:")
        return ImageReference(transport, path, tag, uri)
    if sep and transport == DAEMON:
        return ImageReference(DAEMON, "", normalize_name(rest), uri)
    return ImageReference(DAEMON, "", normalize_name(uri), uri)
