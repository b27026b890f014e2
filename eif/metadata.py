"""The metadata section (type 5): compact JSON of AWS's `EifIdentityInfo` (docs/spec/eif.md §6).

Writing gives the bytes serde_json::to_vec writes (struct keys in declaration order,
free values with sorted keys). Reading requires every key nitro-cli requires.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from eif import jsonfmt
from eif.errors import EifError
from eif.jsonfmt import Fields

BUILD_KEYS = ("BuildTime", "BuildTool", "BuildToolVersion", "OperatingSystem", "KernelVersion")


@dataclass(frozen=True)
class BuildInfo:
    """`BuildMetadata`: when and with what the image was built."""

    build_time: str
    build_tool: str
    build_tool_version: str
    operating_system: str
    kernel_version: str

    def fields(self) -> Fields:
        return Fields(zip(BUILD_KEYS, (self.build_time, self.build_tool,
                                       self.build_tool_version, self.operating_system,
                                       self.kernel_version)))


@dataclass(frozen=True)
class Metadata:
    """`EifIdentityInfo`: image name/version, build info and two free JSON values."""

    image_name: str
    image_version: str
    build: BuildInfo
    docker_info: object = None
    custom_metadata: object = None

    def fields(self) -> Fields:
        return Fields([("ImageName", self.image_name), ("ImageVersion", self.image_version),
                       ("BuildMetadata", self.build.fields()),
                       ("DockerInfo", self.docker_info),
                       ("CustomMetadata", self.custom_metadata)])

    def to_bytes(self) -> bytes:
        """The section bytes, byte-identical to AWS's builder."""
        try:
            return jsonfmt.dumps_compact(self.fields()).encode("utf-8")
        except UnicodeEncodeError:
            raise EifError("metadata holds a string that is not valid Unicode "
                           "(lone surrogate)") from None
        except (TypeError, jsonfmt.JsonError) as error:
            raise EifError(f"metadata cannot be written as JSON: {error}") from None

    def describe_fields(self) -> Fields:
        """nitro-cli's `Metadata` object in describe-eif: the build info, DockerInfo, then
        the custom metadata object's keys flattened in (sorted); omitted when null."""
        result = Fields(self.build.fields())
        result.append(("DockerInfo", self.docker_info))
        custom = self.custom_metadata
        if isinstance(custom, dict):
            result.extend(sorted(custom.items()))
        elif custom is not None:
            raise EifError("custom metadata is a JSON " + _json_kind(custom)
                           + ", not an object: nitro-cli's describe-eif cannot flatten it")
        return result


def _json_kind(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number",
            float: "number"}.get(type(value), type(value).__name__)


def rfc3339_now() -> str:
    """UTC now as chrono's to_rfc3339 prints it (0/3/6 fractional digits, +00:00)."""
    return format_rfc3339(_dt.datetime.now(_dt.timezone.utc))


def format_rfc3339(moment: _dt.datetime) -> str:
    """chrono `to_rfc3339` (SecondsFormat::AutoSi) of a UTC time."""
    moment = moment.astimezone(_dt.timezone.utc)
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    micros = moment.microsecond
    if micros == 0:
        fraction = ""
    elif micros % 1000 == 0:
        fraction = f".{micros // 1000:03d}"
    else:
        fraction = f".{micros:06d}"
    return f"{base}{fraction}+00:00"


def parse_metadata(data: bytes, where: str) -> Metadata | None:
    """Parse a metadata section; None for a literal `null`. EifError names `where`."""
    try:
        value = jsonfmt.loads(data)
    except jsonfmt.JsonError as error:
        raise EifError(f"{where}: invalid JSON: {error}") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise EifError(f"{where}: expected a JSON object, found a {_json_kind(value)}")

    def text(obj: dict, key: str, path: str) -> str:
        if key not in obj:
            raise EifError(f"{where}: missing key {path}{key}")
        if not isinstance(obj[key], str):
            raise EifError(f"{where}: {path}{key} is a {_json_kind(obj[key])}, not a string")
        return obj[key]

    image_name = text(value, "ImageName", "")
    image_version = text(value, "ImageVersion", "")
    build = value.get("BuildMetadata")
    if build is None and "BuildMetadata" not in value:
        raise EifError(f"{where}: missing key BuildMetadata")
    if not isinstance(build, dict):
        raise EifError(f"{where}: BuildMetadata is a {_json_kind(build)}, not an object")
    for key in ("DockerInfo", "CustomMetadata"):
        if key not in value:
            raise EifError(f"{where}: missing key {key}")
    return Metadata(
        image_name=image_name,
        image_version=image_version,
        build=BuildInfo(*(text(build, key, "BuildMetadata.") for key in BUILD_KEYS)),
        docker_info=value["DockerInfo"],
        custom_metadata=value["CustomMetadata"],
    )


MAX_CUSTOM_METADATA = 4096  # nitro-cli's limit on the --metadata file


def load_custom_metadata_file(path: str) -> object:
    """Read a `--metadata` JSON file as nitro-cli does (regular file, <= 4096 bytes)."""
    import os
    import stat

    with open(path, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise EifError(f"metadata file {path} is not a regular file")
        if info.st_size > MAX_CUSTOM_METADATA:
            raise EifError(f"metadata file {path} is {info.st_size} bytes; "
                           f"the limit is {MAX_CUSTOM_METADATA}")
        data = file.read(MAX_CUSTOM_METADATA + 1)
    try:
        return jsonfmt.loads(data)
    except jsonfmt.JsonError as error:
        raise EifError(f"metadata file {path}: invalid JSON: {error}") from None
