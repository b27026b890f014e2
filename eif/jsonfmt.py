"""JSON read and written the way serde_json does, for byte equality with nitro-cli
(docs/spec/eif.md §6 and §11).

* Objects in free-form values (`serde_json::Value`) are sorted maps: keys come out in
  code-point order at every level. Struct-like objects keep their field order; they are
  passed in as `Fields` (a list of key/value pairs, duplicates allowed, as serde's
  `flatten` can produce).
* Floats are printed like ryu (`1e21`, `1.5e-7`, `100.0`), integers beyond 64 bits are
  read as floats, NaN/Infinity and lone surrogates are refused, as serde_json does.
"""
from __future__ import annotations

import json
import math
from decimal import Decimal


class Fields(list):
    """An object whose key order is given (a struct), as a list of (key, value) pairs."""


class JsonError(ValueError):
    """Text that serde_json would not accept."""


_MAX_DEPTH = 128  # serde_json's recursion limit


def loads(data: bytes) -> object:
    """Parse UTF-8 JSON as serde_json::from_slice would into a Value."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonError(f"not UTF-8 (byte {error.start})") from None

    def parse_constant(name: str) -> object:
        raise JsonError(f"{name} is not valid JSON")

    def parse_int(digits: str) -> int | float:
        value = int(digits)
        return value if -(1 << 63) <= value < (1 << 64) else float(value)

    def parse_float(digits: str) -> float:
        value = float(digits)
        if math.isinf(value):
            raise JsonError(f"number out of range: {digits[:40]}")
        return value

    try:
        value = json.loads(text, parse_constant=parse_constant, parse_int=parse_int,
                           parse_float=parse_float)
    except json.JSONDecodeError as error:
        raise JsonError(f"{error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise JsonError(f"nested deeper than {_MAX_DEPTH} levels") from None
    _check(value, 0)
    return value


def _check(value: object, depth: int) -> None:
    """Refuse what serde_json refuses but Python's json accepts."""
    if depth > _MAX_DEPTH:
        raise JsonError(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_string(value)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_string(key)
            _check(item, depth + 1)


def _check_string(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonError("string holds a lone surrogate escape") from None


def format_float(x: float) -> str:
    """A finite float as serde_json prints it (ryu's shortest round-trip digits)."""
    if not math.isfinite(x):
        raise JsonError(f"{x} cannot be written as JSON")
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(x))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len("".join(map(str, digit_tuple))) - len(digits)
    length = len(digits)
    point = length + exponent  # position of the decimal point relative to the digits
    if exponent >= 0 and point <= 16:
        body = digits + "0" * exponent + ".0"
    elif 0 < point <= 16:
        body = digits[:point] + "." + digits[point:]
    elif -5 < point <= 0:
        body = "0." + "0" * -point + digits
    elif length == 1:
        body = f"{digits}e{point - 1}"
    else:
        body = f"{digits[0]}.{digits[1:]}e{point - 1}"
    return sign + body


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _items(value: dict | Fields) -> list[tuple[str, object]]:
    items = list(value) if isinstance(value, Fields) else list(value.items())
    for key, _ in items:
        if not isinstance(key, str):
            raise TypeError(f"JSON object keys are strings, not {type(key).__name__}")
    if isinstance(value, Fields):
        return items
    return sorted(items)  # a serde_json::Value map is a BTreeMap


def dumps_compact(value: object) -> str:
    """serde_json::to_vec: no whitespace at all."""
    if isinstance(value, (dict, Fields)):
        return "{" + ",".join(f"{_scalar(k)}:{dumps_compact(v)}" for k, v in _items(value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps_compact(v) for v in value) + "]"
    return _scalar(value)


def dumps_pretty(value: object, indent: str = "") -> str:
    """serde_json::to_string_pretty: two-space indent, `"key": value`, one item a line."""
    inner = indent + "  "
    if isinstance(value, (dict, Fields)):
        items = _items(value)
        if not items:
            return "{}"
        body = ",\n".join(f"{inner}{_scalar(k)}: {dumps_pretty(v, inner)}" for k, v in items)
        return "{\n" + body + "\n" + indent + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        body = ",\n".join(inner + dumps_pretty(v, inner) for v in value)
        return "[\n" + body + "\n" + indent + "]"
    return _scalar(value)
