"""The Dockerfile parser: text to stages of instructions, following Docker's (BuildKit's) rules.

It owns parser directives, comments, line continuation, flags, the JSON (exec) form, heredocs,
ONBUILD and the checks that Docker makes before a build starts. It expands no variables:
the executor calls expand() from kakoi.build.expand, re-exported here, with the values it
tracks. Every error is a BuildError that names the file and line.
"""

import json
import re

from kakoi.build.expand import EXPANDED_KEYWORDS, expand, expand_words, split_words
from kakoi.errors import BuildError
from kakoi.records import Record

__all__ = [
    "EXPANDED_KEYWORDS", "Dockerfile", "Heredoc", "Instruction", "KEYWORDS", "Stage", "expand",
    "expand_words", "parse", "parse_duration", "parse_key_values", "split_words",
]

KEYWORDS = (
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
)

# Flag name -> kind: "string" takes a value once, "bool" takes none or true/false, and "list"
# may repeat, so its value is always a list of strings.
_FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": "string"},
    "RUN": {"mount": "list", "network": "string", "security": "string"},
    "COPY": {"from": "string", "chown": "string", "chmod": "string", "link": "bool",
             "parents": "bool", "exclude": "list"},
    "ADD": {"chown": "string", "chmod": "string", "link": "bool", "checksum": "string",
            "keep-git-dir": "bool"},
    "HEALTHCHECK": {"interval": "string", "timeout": "string", "start-period": "string",
                    "start-interval": "string", "retries": "string"},
}

_HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})
_DIRECTIVES = frozenset({"escape", "syntax", "check"})
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*")
_HEREDOC = re.compile(r"(\d*)<<(-?)([^<]*)")
_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


class Heredoc(Record):
    """A here-document that follows a RUN, COPY or ADD line.

    content is the body with a newline after each line. For `<<-` (strip_tabs) the leading tabs
    are already removed. expand is False when the delimiter was quoted (`<<'EOF'`, `<<"EOF"`),
    which means the body is used without variable substitution.
    """

    __slots__ = ("name", "content", "strip_tabs", "expand")

    def __init__(self, name: str, content: str, strip_tabs: bool = False,
                 expand: bool = True):
        self.name = name
        self.content = content
        self.strip_tabs = strip_tabs
        self.expand = expand


class Instruction(Record):
    """One Dockerfile instruction, with its text as written and its parts.

    arguments is the raw text after the flags, with continuation lines joined and comment lines
    removed. text is that joined line with the keyword, followed by each heredoc body and its
    delimiter line. flags maps a flag name without dashes to a str, a bool or, for repeatable
    flags, a list of str. escape is the Dockerfile's escape character, which expand() needs.
    """

    __slots__ = ("keyword", "arguments", "line", "end_line", "text", "flags", "json",
                 "heredocs", "inner", "escape")

    def __init__(self, keyword: str, arguments: str, line: int, end_line: int, text: str,
                 flags: dict[str, str | bool | list[str]] | None = None,
                 json: list[str] | None = None, heredocs: list[Heredoc] | None = None,
                 inner: "Instruction | None" = None, escape: str = "\\"):
        self.keyword = keyword
        self.arguments = arguments
        self.line = line
        self.end_line = end_line
        self.text = text
        self.flags = {} if flags is None else flags
        self.json = json
        self.heredocs = [] if heredocs is None else heredocs
        self.inner = inner
        self.escape = escape


class Stage(Record):
    """A build stage: its FROM line and the instructions after it."""

    __slots__ = ("index", "name", "base", "platform", "instructions", "line")

    def __init__(self, index: int, name: str | None, base: str, platform: str | None,
                 instructions: list[Instruction], line: int):
        self.index = index
        self.name = name
        self.base = base
        self.platform = platform
        self.instructions = instructions
        self.line = line


class Dockerfile(Record):
    """A parsed Dockerfile: parser directives, ARGs before the first FROM, and the stages."""

    __slots__ = ("directives", "global_args", "stages", "filename")

    def __init__(self, directives: dict[str, str], global_args: list[Instruction],
                 stages: list[Stage], filename: str = "Dockerfile"):
        self.directives = directives
        self.global_args = global_args
        self.stages = stages
        self.filename = filename

    def find_stage(self, reference: str) -> Stage | None:
        """Return the stage named reference (any case), or at that index, else None."""
        lowered = reference.lower()
        for stage in self.stages:
            if stage.name == lowered:
                return stage
        if reference.isdigit() and int(reference) < len(self.stages):
            return self.stages[int(reference)]
        return None


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile text into stages; raise BuildError with the file and line on errors."""
    lines = _split_lines(text)
    directives, first = _parse_directives(lines, filename)
    reader = _Reader(lines, first, directives["escape"], filename)
    instructions = reader.read_all()
    return _group_stages(instructions, directives, filename)


def parse_key_values(instruction: Instruction,
                     env: dict[str, str | None] | None = None) -> list[tuple[str, str | None]]:
    """Return the (name, value) pairs of an ENV, LABEL or ARG instruction.

    Values stay raw (quotes and escapes kept, nothing substituted) unless env is given, in
    which case ENV and LABEL names and all values are expanded with it, as Docker does with
    the values from before the instruction. An ARG without a default has the value None.
    ENV and LABEL accept both `NAME value...` and `NAME=value NAME2="value 2"`.
    """
    return _key_values(instruction, env, "Dockerfile")


def parse_duration(text: str) -> float:
    """Convert a Go duration such as `1m30s` or `500ms` (HEALTHCHECK flags) to seconds."""
    if text == "0":
        return 0.0
    total = 0.0
    position = 0
    while position < len(text):
        match = _DURATION.match(text, position)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not text:
        raise ValueError("invalid duration ''")
    return total


def _fail(filename: str, line: int, what: str, fix: str) -> BuildError:
    return BuildError(f"{what}: {fix}", line, filename)


def _split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if lines:
        lines[0] = lines[0].removeprefix("\ufeff")
    return [line.removesuffix("\r") for line in lines]


def _parse_directives(lines: list[str], filename: str) -> tuple[dict[str, str], int]:
    """Read the parser directives at the top; return them and the index of the first other line.

    As in Docker, the first line that is not a known directive (a plain comment, an unknown
    directive, a blank line or an instruction) ends the directives.
    """
    directives = {"escape": "\\"}
    seen: set[str] = set()

    for index, line in enumerate(lines):
        match = _DIRECTIVE.fullmatch(line.lstrip())
        name = match.group(1).lower() if match else ""
        if name not in _DIRECTIVES:
            return directives, index
        if name in seen:
            raise _fail(filename, index + 1, f"duplicate parser directive {name!r}",
                        "keep one line per directive")
        seen.add(name)
        value = match.group(2)
        if name == "escape" and value not in ("\\", "`"):
            raise _fail(filename, index + 1, f"invalid escape character {value!r}",
                        "use # escape=\\ or # escape=`")
        directives[name] = value
    return directives, len(lines)


class _Reader:
    """Cuts the lines after the directives into instructions, one logical line at a time."""

    def __init__(self, lines: list[str], first: int, escape: str, filename: str) -> None:
        self.lines = lines
        self.position = first
        self.escape = escape
        self.filename = filename
        self.continuation = re.compile(re.escape(escape) + r"[ \t]*$")

    def read_all(self) -> list[Instruction]:
        instructions = []
        while (logical := self.next_logical_line()) is not None:
            text, start, end = logical
            instruction = _build_instruction(text, start, end, self.escape, self.filename)
            self.read_heredocs(instruction)
            instructions.append(instruction)
        return instructions

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        match = self.continuation.search(line)
        if match is None:
            return line, False
        return line[:match.start()], True

    def next_logical_line(self) -> tuple[str, int, int] | None:
        """Return the next instruction's joined text with its first and last line numbers."""
        while self.position < len(self.lines):
            raw = self.lines[self.position].lstrip()
            self.position += 1
            start = self.position
            if raw.startswith("#"):
                continue
            text, continued = self.trim_continuation(raw)
            if not continued and not text.strip():
                continue

            # Docker drops comment lines and blank lines inside a continued instruction.
            while continued and self.position < len(self.lines):
                raw = self.lines[self.position]
                self.position += 1
                stripped = raw.lstrip()
                if stripped.startswith("#") or not stripped:
                    continue
                part, continued = self.trim_continuation(raw)
                text += part
            return text.strip(), start, self.position
        return None

    def read_heredocs(self, instruction: Instruction) -> None:
        target = instruction.inner or instruction
        if target.keyword not in _HEREDOC_KEYWORDS or target.json is not None:
            return
        if "<<" not in target.arguments:
            return

        for name, strip_tabs, expands in _heredoc_markers(target.arguments):
            heredoc, raw = self.read_heredoc_body(instruction, name, strip_tabs, expands)
            target.heredocs.append(heredoc)
            target.text += "\n" + raw + name
            if target is not instruction:
                instruction.text += "\n" + raw + name
        target.end_line = instruction.end_line = self.position
        instruction.heredocs = target.heredocs

    def read_heredoc_body(self, instruction: Instruction, name: str, strip_tabs: bool,
                          expands: bool) -> tuple[Heredoc, str]:
        raw: list[str] = []
        body: list[str] = []

        while self.position < len(self.lines):
            line = self.lines[self.position]
            self.position += 1
            stripped = line.lstrip("\t") if strip_tabs else line
            if stripped == name:
                content = "".join(part + "\n" for part in body)
                text = "".join(part + "\n" for part in raw)
                return Heredoc(name, content, strip_tabs, expands), text
            raw.append(line)
            body.append(stripped)

        raise _fail(self.filename, instruction.line, f"unterminated heredoc {name!r} in "
                    f"{instruction.keyword}", f"end it with a line that contains only {name}")


def _heredoc_markers(arguments: str) -> list[tuple[str, bool, bool]]:
    """Find the `<<NAME` words in arguments; return (name, strip_tabs, expand) for each.

    Like BuildKit, the words are split with the backslash escape whatever the escape directive
    says, and a quoted word such as `"<<EOF"` is not a marker.
    """
    markers = []
    for word in split_words(arguments):
        match = _HEREDOC.fullmatch(word)
        if match is None or not match.group(3):
            continue
        name, quoted = _unquote(match.group(3))
        if name:
            markers.append((name, match.group(2) == "-", not quoted))
    return markers


def _unquote(word: str) -> tuple[str, bool]:
    """Remove shell quotes and backslash escapes from word; report whether it had quotes."""
    result: list[str] = []
    quoted = False
    quote = ""
    i = 0
    while i < len(word):
        char = word[i]
        if char == "\\" and quote != "'" and i + 1 < len(word):
            i += 1
            result.append(word[i])
        elif char in "'\"" and not quote:
            quote, quoted = char, True
        elif char == quote:
            quote = ""
        else:
            result.append(char)
        i += 1
    return "".join(result), quoted


def _build_instruction(text: str, start: int, end: int, escape: str,
                       filename: str) -> Instruction:
    parts = re.split(r"\s+", text.strip(), maxsplit=1)
    word = parts[0]
    keyword = word.upper()
    if keyword not in KEYWORDS:
        raise _fail(filename, start, f"unknown instruction {word!r}", _suggest_keyword(keyword))

    flag_words, arguments = _extract_flags(parts[1] if len(parts) > 1 else "")
    instruction = Instruction(keyword=keyword, arguments=arguments.strip(), line=start,
                              end_line=end, text=text.strip(), escape=escape)
    instruction.flags = _parse_flags(instruction, flag_words, filename)
    _CHECKS.get(keyword, _check_not_empty)(instruction, filename)
    return instruction


def _suggest_keyword(keyword: str) -> str:
    import difflib

    close = difflib.get_close_matches(keyword, KEYWORDS, n=1)
    if close:
        return f"did you mean {close[0]}?"
    return "use one of " + ", ".join(KEYWORDS)


def _extract_flags(text: str) -> tuple[list[str], str]:
    """Split the leading `--name[=value]` words off text, as BuildKit does for every keyword.

    Quotes in a flag word are removed and a backslash makes the next character literal. A lone
    `--` ends the flags.
    """
    flags: list[str] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if not text.startswith("--", position):
            return flags, text[position:]
        word, position = _read_flag_word(text, position)
        if word == "--":
            return flags, text[position:]
        flags.append(word)


def _read_flag_word(text: str, position: int) -> tuple[str, int]:
    word: list[str] = []
    quote = ""
    while position < len(text):
        char = text[position]
        position += 1
        if not quote and char.isspace():
            break
        if char == "\\" and position < len(text):
            word.append(text[position])
            position += 1
        elif not quote and char in "'\"":
            quote = char
        elif char == quote:
            quote = ""
        elif char != "\\":
            word.append(char)
    return "".join(word), position


def _parse_flags(instruction: Instruction, words: list[str],
                 filename: str) -> dict[str, str | bool | list[str]]:
    known = _FLAGS.get(instruction.keyword, {})
    flags: dict[str, str | bool | list[str]] = {}

    for word in words:
        name, has_value, value = word[2:].partition("=")
        kind = known.get(name)
        if kind is None:
            fix = ("use one of " + ", ".join("--" + flag for flag in known) if known
                   else f"{instruction.keyword} takes no flags")
            raise _fail(filename, instruction.line,
                        f"unknown flag --{name} for {instruction.keyword}", fix)
        if kind != "list" and name in flags:
            raise _fail(filename, instruction.line, f"duplicate flag --{name}",
                        "give it once")
        flags[name] = _flag_value(instruction, name, kind, value if has_value else None,
                                  flags, filename)
    return flags


def _flag_value(instruction: Instruction, name: str, kind: str, value: str | None,
                flags: dict, filename: str) -> str | bool | list[str]:
    if kind == "bool":
        if value is None:
            return True
        if value.lower() not in ("true", "false"):
            raise _fail(filename, instruction.line, f"invalid value {value!r} for --{name}",
                        "use true or false")
        return value.lower() == "true"

    if value is None:
        raise _fail(filename, instruction.line, f"missing value for --{name}",
                    f"write --{name}=VALUE")
    if kind == "list":
        return [*flags.get(name, []), value]
    return value


def _parse_json_form(instruction: Instruction, filename: str, text: str | None = None
                     ) -> list[str] | None:
    """Return text as a list when it is a JSON array of strings, None for the shell form.

    Text that starts with `[` but is not valid JSON is shell form, as in Docker, but a valid
    array that contains anything other than strings is an error.
    """
    text = instruction.arguments if text is None else text
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(filename, instruction.line,
                    f"{instruction.keyword} JSON array contains a value that is not a string",
                    'quote every element, e.g. ["executable", "argument"]')
    return value


def _check_not_empty(instruction: Instruction, filename: str) -> None:
    if not instruction.arguments:
        raise _fail(filename, instruction.line, f"{instruction.keyword} requires an argument",
                    f"write {instruction.keyword} followed by its value")


def _check_from(instruction: Instruction, filename: str) -> None:
    words = instruction.arguments.split()
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not _STAGE_NAME.fullmatch(name):
            raise _fail(filename, instruction.line, f"invalid build stage name {words[2]!r}",
                        "start it with a letter and use only letters, digits, -, _ and .")
    elif len(words) != 1:
        raise _fail(filename, instruction.line,
                    f"FROM takes an image and an optional AS name, not {instruction.arguments!r}",
                    "write FROM IMAGE [AS NAME]")


def _check_command(instruction: Instruction, filename: str) -> None:
    _check_not_empty(instruction, filename)
    instruction.json = _parse_json_form(instruction, filename)


def _check_shell(instruction: Instruction, filename: str) -> None:
    instruction.json = _parse_json_form(instruction, filename)
    if not instruction.json:
        raise _fail(filename, instruction.line, "SHELL requires a non-empty JSON array",
                    'write SHELL ["executable", "parameter"]')


def _check_copy(instruction: Instruction, filename: str) -> None:
    instruction.json = _parse_json_form(instruction, filename)
    words = instruction.json if instruction.json is not None else split_words(
        instruction.arguments, instruction.escape)
    if len(words) < 2:
        raise _fail(filename, instruction.line,
                    f"{instruction.keyword} requires at least one source and a destination",
                    f"write {instruction.keyword} SOURCE... DEST")


def _check_volume(instruction: Instruction, filename: str) -> None:
    instruction.json = _parse_json_form(instruction, filename)
    if instruction.json is None:
        _check_not_empty(instruction, filename)
    elif not instruction.json or not all(path.strip() for path in instruction.json):
        raise _fail(filename, instruction.line, "VOLUME has an empty path",
                    'write VOLUME ["/path"] or VOLUME /path')


def _check_key_values(instruction: Instruction, filename: str) -> None:
    _key_values(instruction, None, filename)


def _check_onbuild(instruction: Instruction, filename: str) -> None:
    _check_not_empty(instruction, filename)
    inner = _build_instruction(instruction.arguments, instruction.line, instruction.end_line,
                               instruction.escape, filename)
    if inner.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
        raise _fail(filename, instruction.line, f"ONBUILD cannot trigger {inner.keyword}",
                    "use another instruction after ONBUILD")
    instruction.inner = inner


def _check_healthcheck(instruction: Instruction, filename: str) -> None:
    words = instruction.arguments.split(None, 1)
    kind = words[0].upper() if words else ""
    if kind == "NONE":
        if len(words) > 1 or instruction.flags:
            raise _fail(filename, instruction.line, "HEALTHCHECK NONE takes no arguments",
                        "remove the flags and text after NONE")
        return
    if kind != "CMD":
        raise _fail(filename, instruction.line,
                    f"HEALTHCHECK requires NONE or CMD, not {instruction.arguments!r}",
                    "write HEALTHCHECK [OPTIONS] CMD COMMAND or HEALTHCHECK NONE")
    if len(words) < 2:
        raise _fail(filename, instruction.line, "HEALTHCHECK CMD is missing its command",
                    "write the command after CMD")

    instruction.json = _parse_json_form(instruction, filename, words[1].strip())
    _check_healthcheck_flags(instruction, filename)


def _check_healthcheck_flags(instruction: Instruction, filename: str) -> None:
    for name, value in instruction.flags.items():
        if name == "retries":
            if not re.fullmatch(r"\d+", str(value)):
                raise _fail(filename, instruction.line, f"invalid --retries value {value!r}",
                            "use a whole number of 0 or more")
            continue
        try:
            seconds = parse_duration(str(value))
        except ValueError:
            raise _fail(filename, instruction.line, f"invalid --{name} duration {value!r}",
                        "use a duration such as 30s, 1m30s or 500ms") from None
        if 0 < seconds < 0.001:
            raise _fail(filename, instruction.line, f"--{name} {value!r} is shorter than 1ms",
                        "use 0 for the default or at least 1ms")


_CHECKS = {
    "FROM": _check_from,
    "RUN": _check_command,
    "CMD": _check_command,
    "ENTRYPOINT": _check_command,
    "SHELL": _check_shell,
    "ADD": _check_copy,
    "COPY": _check_copy,
    "VOLUME": _check_volume,
    "ENV": _check_key_values,
    "LABEL": _check_key_values,
    "ARG": _check_key_values,
    "ONBUILD": _check_onbuild,
    "HEALTHCHECK": _check_healthcheck,
}


def _key_values(instruction: Instruction, env: dict[str, str | None] | None,
                filename: str) -> list[tuple[str, str | None]]:
    keyword = instruction.keyword
    if keyword not in ("ENV", "LABEL", "ARG"):
        raise ValueError(f"parse_key_values takes ENV, LABEL or ARG, not {keyword}")
    words = split_words(instruction.arguments, instruction.escape)
    if not words:
        raise _fail(filename, instruction.line, f"{keyword} requires at least one name",
                    f"write {keyword} NAME=VALUE")

    if keyword == "ARG":
        pairs = _arg_pairs(instruction, words, filename)
    elif "=" not in words[0]:
        pairs = _legacy_pair(instruction, filename)
    else:
        pairs = _assignment_pairs(instruction, words, filename)

    if env is None:
        return pairs
    return [(name if keyword == "ARG" else expand(name, env, instruction.escape),
             None if value is None else expand(value, env, instruction.escape))
            for name, value in pairs]


def _arg_pairs(instruction: Instruction, words: list[str],
               filename: str) -> list[tuple[str, str | None]]:
    pairs: list[tuple[str, str | None]] = []
    for word in words:
        name, has_value, value = word.partition("=")
        if not name:
            raise _fail(filename, instruction.line, f"ARG has an empty name in {word!r}",
                        "write ARG NAME[=DEFAULT]")
        pairs.append((name, value if has_value else None))
    return pairs


def _legacy_pair(instruction: Instruction, filename: str) -> list[tuple[str, str | None]]:
    # The old form `ENV NAME value with spaces` takes everything after the name as the value.
    parts = re.split(r"\s+", instruction.arguments, maxsplit=1)
    if len(parts) < 2:
        raise _fail(filename, instruction.line,
                    f"{instruction.keyword} {parts[0]} has no value",
                    f"write {instruction.keyword} {parts[0]}=VALUE")
    return [(parts[0], parts[1])]


def _assignment_pairs(instruction: Instruction, words: list[str],
                      filename: str) -> list[tuple[str, str | None]]:
    pairs: list[tuple[str, str | None]] = []
    for word in words:
        name, has_value, value = word.partition("=")
        if not has_value:
            raise _fail(filename, instruction.line,
                        f"{instruction.keyword} word {word!r} has no '='",
                        "write every pair as NAME=VALUE")
        if not name:
            raise _fail(filename, instruction.line,
                        f"{instruction.keyword} has an empty name in {word!r}",
                        "write every pair as NAME=VALUE")
        pairs.append((name, value))
    return pairs


def _group_stages(instructions: list[Instruction], directives: dict[str, str],
                  filename: str) -> Dockerfile:
    if not instructions:
        raise _fail(filename, 1, "the Dockerfile has no instructions",
                    "start it with FROM IMAGE")
    global_args: list[Instruction] = []
    stages: list[Stage] = []

    for instruction in instructions:
        if instruction.keyword == "FROM":
            stages.append(_new_stage(instruction, stages, filename))
        elif stages:
            stages[-1].instructions.append(instruction)
        elif instruction.keyword == "ARG":
            global_args.append(instruction)
        else:
            raise _fail(filename, instruction.line,
                        f"{instruction.keyword} comes before the first FROM",
                        "only ARG may precede FROM, so move it after a FROM line")

    if not stages:
        raise _fail(filename, instructions[-1].end_line, "the Dockerfile has no FROM instruction",
                    "add FROM IMAGE after the ARG lines")
    return Dockerfile(directives, global_args, stages, filename)


def _new_stage(instruction: Instruction, stages: list[Stage], filename: str) -> Stage:
    words = instruction.arguments.split()
    name = words[2].lower() if len(words) == 3 else None
    if name is not None and any(stage.name == name for stage in stages):
        raise _fail(filename, instruction.line, f"duplicate build stage name {name!r}",
                    "give each stage its own name")
    platform = instruction.flags.get("platform")
    return Stage(index=len(stages), name=name, base=words[0],
                 platform=platform if isinstance(platform, str) else None,
                 instructions=[], line=instruction.line)
