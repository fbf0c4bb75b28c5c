"""JSON for the start-up path of kakoi and kakoi-runtime, without importing the json module.

Engines run `state`, `start`, `kill` and `delete` several times for every container.
`import json` costs about 8 ms in a fresh interpreter (measured here: a sixth of a whole
`kakoi-runtime run`), because json compiles regular expressions when it is imported, and
so imports re and enum.

dumps writes the types that a state object, a hook's input or a cache key holds: dicts
with string keys, lists, strings, integers, floats, booleans and None. Non-ASCII text is
written as UTF-8, which JSON allows.

loads drives the C scanner that the json module itself uses (CPython's _json), which
needs no regular expression. Where _json is missing it falls back to json.loads; errors
are ValueError either way, as from json.loads.
"""

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
            "\b": "\\b", "\f": "\\f"}


_WHITESPACE = " \t\n\r"


class _ScannerSettings:
    """Settings that _json's scanner reads from json.JSONDecoder, at their defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


def loads(text: str | bytes):
    """Parse a JSON document as json.loads does, and raise ValueError if it is invalid."""
    if isinstance(text, (bytes, bytearray)):
        text = _decode(text)
    try:
        from _json import make_scanner
    except ImportError:
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = make_scanner(_ScannerSettings)(text, start)
    except StopIteration as stop:
        raise ValueError(f"invalid JSON: expecting a value at character {stop.value}") from None
    except RecursionError:
        raise ValueError("invalid JSON: nested too deeply") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"invalid JSON: extra data at character {end}")
    return value


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # json.loads skips a UTF-8 byte order mark in bytes, too
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"invalid JSON: not UTF-8 ({error.reason} at byte {error.start})") from None


def dumps(value, indent: int | None = None, sort_keys: bool = False) -> str:
    """Return value as JSON text. indent and sort_keys work as in json.dumps."""
    parts: list[str] = []
    _Writer(parts, indent, sort_keys).write(value, 0)
    return "".join(parts)


class _Writer:
    def __init__(self, parts: list[str], indent: int | None, sort_keys: bool):
        self.parts = parts
        self.indent = indent
        self.sort_keys = sort_keys

    def write(self, value, depth: int) -> None:
        parts = self.parts
        if isinstance(value, str):
            parts.append(_quote(value))
        elif value is None:
            parts.append("null")
        elif value is True or value is False:
            parts.append("true" if value else "false")
        elif isinstance(value, int):
            parts.append(int.__repr__(value))
        elif isinstance(value, float):
            parts.append(_float(value))
        elif isinstance(value, dict):
            members = [(_key(key), member) for key, member in value.items()]
            if self.sort_keys:
                members.sort(key=lambda item: item[0])
            self.write_members(members, "{", "}", depth)
        elif isinstance(value, (list, tuple)):
            self.write_members([(None, member) for member in value], "[", "]", depth)
        else:
            raise TypeError(f"cannot write {type(value).__name__} as JSON")

    def write_members(self, members: list, opening: str, closing: str, depth: int) -> None:
        parts = self.parts
        if not members:
            parts.append(opening + closing)
            return
        if self.indent is None:
            separator, lead, end = ", ", "", ""
        else:
            lead = "\n" + " " * (self.indent * (depth + 1))
            separator, end = "," + lead, "\n" + " " * (self.indent * depth)
        parts.append(opening + lead)
        for index, (key, member) in enumerate(members):
            if index:
                parts.append(separator)
            if key is not None:
                parts.append(_quote(key) + ": ")
            self.write(member, depth + 1)
        parts.append(end + closing)


def _key(key) -> str:
    if not isinstance(key, str):
        raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
    return key


def _quote(text: str) -> str:
    if text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'
    return '"' + "".join(_escape(char) for char in text) + '"'


def _escape(char: str) -> str:
    escaped = _ESCAPES.get(char)
    if escaped is not None:
        return escaped
    code = ord(char)
    if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return char


def _float(number: float) -> str:
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{number} has no JSON form")
    return float.__repr__(number)
