"""kakoi.jsontext against the json module: the same values in, the same values out."""

import json
import math

import pytest

from kakoi import jsontext

DOCUMENTS = [
    '{"a": [1, 2.5, -3e10, true, false, null], "b": {}, "c": []}',
    '  {"nested": {"deeper": [[], [{}], [1, [2, [3]]]]}}\n',
    '"caf\\u00e9 \\ud83d\\ude00 \\n\\t\\"quoted\\" back\\\\slash"',
    '"raw non-ASCII: café 囲い"',
    "0", "-0", "12345678901234567890123", "1.5e-7", "[NaN, Infinity, -Infinity]",
    '{"same": 1, "same": 2}',
]

MALFORMED = ["", "   ", "{", "[1,]", '{"a" 1}', "1 2", '"\x01"', "nul", "[1, 2", "{'a': 1}",
             '{"a": 1,}', "01x"]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_loads_matches_json(text):
    expected = json.loads(text)
    value = jsontext.loads(text)
    assert _comparable(value) == _comparable(expected)
    assert _comparable(jsontext.loads(text.encode())) == _comparable(expected)


@pytest.mark.parametrize("text", MALFORMED)
def test_loads_rejects_what_json_rejects(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsontext.loads(text)


def test_loads_bom_and_bad_utf8():
    assert jsontext.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError, match="not UTF-8"):
        jsontext.loads(b'{"a": "\xff"}')


VALUES = [
    {"ociVersion": "1.0.2", "id": "x", "pid": 42, "status": "running", "annotations": {}},
    {"empty": [], "nested": {"list": [1, -2, 3.25, None, True, False, "s"]}},
    ["control \x00\x1f\x7f", 'quote " and \\ and /', "line\nbreak\r\ttab\b\f"],
    ["unicode é 囲い \u2028 \U0001f600", "lone surrogate \ud800"],
    [10**30, -(10**30), 1e300, 5e-324, 0.1],
    (1, (2, 3)),
]


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("indent", [None, 2])
def test_dumps_round_trips_through_json(value, indent):
    text = jsontext.dumps(value, indent=indent)
    expected = json.loads(json.dumps(value))
    assert json.loads(text) == expected
    assert jsontext.loads(text) == expected


def test_dumps_formats_as_json_does_for_ascii():
    value = {"b": [1, {"z": None, "a": [True, 2.5]}], "a": "text", "c": {}}
    for indent in (None, 2, 4):
        assert jsontext.dumps(value, indent=indent) == json.dumps(value, indent=indent)
    assert jsontext.dumps(value, sort_keys=True) == json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("value", [{1: "x"}, {"a": {1, 2}}, [b"bytes"], [float("nan")],
                                   [float("inf")]])
def test_dumps_refuses_what_json_cannot_hold(value):
    with pytest.raises((TypeError, ValueError)):
        jsontext.dumps(value)


def test_round_trip_of_the_documents_kakoi_writes():
    from kakoi.kernel.seccomp import default_profile
    from kakoi.runtime.features import default_spec, features

    for document in (default_profile(), default_spec(rootless=False),
                     default_spec(rootless=True), features()):
        text = json.dumps(document, indent=2)
        assert jsontext.loads(text) == document
        assert json.loads(jsontext.dumps(document, indent=2)) == document


def _comparable(value):
    """Replace NaN, which is unequal to itself, by a marker, so values compare."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    return value
