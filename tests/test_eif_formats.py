"""The encoders under the EIF: CRC combine, the serde_cbor-compatible CBOR subset (checked
against cbor2), serde_json-compatible JSON, metadata bytes and RFC 3339 times."""
import datetime as dt
import json
import zlib

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from eif import cbor, jsonfmt
from eif.crc import crc32_combine
from eif.errors import EifError
from eif.metadata import BuildInfo, Metadata, format_rfc3339, parse_metadata


@given(st.binary(max_size=600), st.binary(max_size=600))
@settings(deadline=None)  # never fail on time on a loaded machine
def test_crc32_combine_equals_crc_of_concatenation(a, b):
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_crc32_combine_large_length():
    a, b = b"header", bytes(3 << 20)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    with pytest.raises(ValueError):
        crc32_combine(0, 0, -1)


cbor_values = st.recursive(
    st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20)
    | st.booleans() | st.none(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.integers(-100, 100) | st.text(max_size=5), children, max_size=5),
    max_leaves=20)


@given(cbor_values)
@settings(deadline=None)  # never fail on time on a loaded machine
def test_cbor_round_trip_and_agrees_with_cbor2(value):
    encoded = cbor.encode(value)
    assert encoded == cbor2.dumps(value, canonical=False)
    assert cbor.decode(encoded) == value


@given(st.binary(max_size=300))
@settings(deadline=None)  # never fail on time on a loaded machine
def test_u8_array_is_serde_vec_u8(data):
    encoded = cbor.encode(cbor.U8Array(data))
    assert cbor2.loads(encoded) == list(data)
    assert cbor.as_u8_array(cbor.decode(encoded), "x") == data


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_cbor_decoder_raises_only_cbor_error(data):
    try:
        cbor.decode(data)
    except cbor.CborError:
        pass


@pytest.mark.parametrize("data, pattern", [
    (b"\x9f\xff", "indefinite"),
    (b"\x5a\xff\xff\xff\xff", "runs past the end"),
    (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "runs past the end"),
    (b"\xa2\x01\x02\x01\x03", "duplicate map key 1"),
    (b"\xf9\x3c\x00", "float"),
    (b"\x00\x00", "1 trailing bytes"),
    (b"\x81" * 40 + b"\x00", "nesting deeper"),
    (b"\x62\xff\xfe", "not UTF-8"),
])
def test_cbor_decoder_errors(data, pattern):
    with pytest.raises(cbor.CborError, match=pattern):
        cbor.decode(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15)


@given(json_values)
@settings(deadline=None)  # never fail on time on a loaded machine
def test_json_round_trip_and_python_agrees_on_value(value):
    compact = jsonfmt.dumps_compact(value)
    assert jsonfmt.loads(compact.encode()) == value
    assert json.loads(compact) == json.loads(json.dumps(value))
    pretty = jsonfmt.dumps_pretty(value)
    assert jsonfmt.loads(pretty.encode()) == value


@given(json_values.filter(lambda v: not _has_float(v)))
@settings(deadline=None)  # never fail on time on a loaded machine
def test_pretty_matches_python_indent_for_sorted_values(value):
    """Without floats serde_json's pretty printer and Python's indent=2 agree."""
    assert jsonfmt.dumps_pretty(value) == json.dumps(value, indent=2, ensure_ascii=False,
                                                     sort_keys=True)


def _has_float(value):
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(map(_has_float, value))
    if isinstance(value, dict):
        return any(map(_has_float, value.values()))
    return False


@pytest.mark.parametrize("value, text", [
    (1e21, "1e21"), (1.5e-7, "1.5e-7"), (100.0, "100.0"), (0.1, "0.1"), (1e16, "1e16"),
    (1e15, "1000000000000000.0"), (1e-5, "0.00001"), (1e-6, "1e-6"), (-0.0, "-0.0"),
    (0.0, "0.0"), (123456.789, "123456.789"), (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e308"), (-2.5e100, "-2.5e100"),
])
def test_floats_print_like_ryu(value, text):
    assert jsonfmt.format_float(value) == text


def test_json_reader_follows_serde_json():
    assert jsonfmt.loads(b"18446744073709551616") == float(2**64)  # beyond u64: f64
    assert jsonfmt.loads(b"-9223372036854775808") == -(2**63)
    for bad, pattern in ((b"Infinity", "not valid JSON"), (b"1e400", "out of range"),
                         (b'"\\udc00"', "lone surrogate"), (b"\xff", "not UTF-8"),
                         (b"\xef\xbb\xbfnull", "BOM"), (b"[1,]", "line 1")):
        with pytest.raises(jsonfmt.JsonError, match=pattern):
            jsonfmt.loads(bad)
    with pytest.raises(TypeError, match="keys are strings"):
        jsonfmt.dumps_compact({1: 2})
    assert jsonfmt.dumps_compact({"b": "\n\u0001/é\"", "a": []}) == \
        '{"a":[],"b":"\\n\\u0001/é\\""}'


def test_metadata_bytes_and_parse():
    meta = Metadata("img", "v1", BuildInfo("t", "tool", "1", "Linux", "6.12"),
                    docker_info={"Id": "x", "Config": {"Z": 1, "A": None}},
                    custom_metadata={"k": [1, 2.0]})
    raw = meta.to_bytes()
    assert raw == (b'{"ImageName":"img","ImageVersion":"v1","BuildMetadata":{"BuildTime":"t",'
                   b'"BuildTool":"tool","BuildToolVersion":"1","OperatingSystem":"Linux",'
                   b'"KernelVersion":"6.12"},"DockerInfo":{"Config":{"A":null,"Z":1},"Id":"x"},'
                   b'"CustomMetadata":{"k":[1,2.0]}}')
    assert parse_metadata(raw, "here") == meta
    with pytest.raises(EifError, match="here: missing key ImageName"):
        parse_metadata(b'{"ImageVersion":"x"}', "here")
    with pytest.raises(EifError, match="not an object: nitro-cli"):
        Metadata("a", "b", meta.build, custom_metadata=[1]).describe_fields()


def test_rfc3339_like_chrono():
    utc = dt.timezone.utc
    assert format_rfc3339(dt.datetime(2025, 10, 5, 13, 12, 27, tzinfo=utc)) == \
        "2025-10-05T13:12:27+00:00"
    assert format_rfc3339(dt.datetime(2025, 10, 5, 13, 12, 27, 410000, tzinfo=utc)) == \
        "2025-10-05T13:12:27.410+00:00"
    assert format_rfc3339(dt.datetime(2025, 10, 5, 13, 12, 27, 410516, tzinfo=utc)) == \
        "2025-10-05T13:12:27.410516+00:00"
    assert format_rfc3339(dt.datetime(2025, 1, 1, 2, 0, tzinfo=dt.timezone(
        dt.timedelta(hours=2)))) == "2025-01-01T00:00:00+00:00"
