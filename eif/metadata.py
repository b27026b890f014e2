"""The metadata section (type 5): compact JSON of AWS's `EifIdentityInfo` (docs/spec/eif.md §6).

Writing gives the bytes serde_json::to_vec writes (struct keys in declaration order,
free values with sorted keys). Reading requires every key nitro-cli requires.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass

from eif import files, jsonfmt
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
    base = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}")  # strftime's %Y drops zeros < 1000
    micros = moment.microsecond
    if micros == 0:
        fraction = ""
    elif micros % 1000 == 0:
        fraction = f".{micros // 1000:03d}"
    else:
        fraction = f".{micros:06d}"
    return f"{base}{fraction}+00:00"


# RFC 3339 section 5.6 date-time; "T" may be "t" or a space (section 5.6's note), as
# chrono's parse_from_rfc3339 accepts. Digits are ASCII only.
_RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
                      r"(?:\.[0-9]+)?(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))")


def check_rfc3339(text: str, what: str = "time") -> str:
    """`text` if it is an RFC 3339 date-time (e.g. 2024-01-01T00:00:00+00:00; a leap
    second :60 is allowed), else EifError naming `what`."""
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    valid = match is not None
    if valid:
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        offset_hour, offset_minute = (int(g or 0) for g in match.groups()[6:])
        try:
            _dt.datetime(year, month, day, hour, minute, min(second, 59))
        except ValueError:
            valid = False
        valid = valid and second <= 60 and offset_hour <= 23 and offset_minute <= 59
    if not valid:
        raise EifError(f"{what} {text!r:.60} is not an RFC 3339 date-time such as "
                       "2024-01-01T00:00:00+00:00")
    return text


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


def load_custom_metadata_file(path: str | os.PathLike) -> object:
    """Read a `--metadata` JSON file as nitro-cli does (regular file, <= 4096 bytes)."""
    data = files.read_input(path, files.CUSTOM_METADATA)
    try:
        return jsonfmt.loads(data)
    except jsonfmt.JsonError as error:
        raise EifError(f"metadata file {os.fspath(path)}: invalid JSON: {error}") from None
