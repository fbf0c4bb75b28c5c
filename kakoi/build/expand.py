"""Docker's word splitting and variable substitution for Dockerfile arguments.

split_words() is the parser-level split that keeps quotes and escapes in each word (ENV and
LABEL pairs, ARG, VOLUME and COPY words, heredoc markers). expand() and expand_words() are
BuildKit's shell lexer: they substitute $VAR and ${VAR...}, remove quotes and process the escape
character, the way Docker treats ADD, ARG, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER,
VOLUME and WORKDIR. RUN, CMD and ENTRYPOINT are left to the shell in the container.
"""

import re

from kakoi.errors import BuildError

# Instructions whose arguments the builder expands itself (ONBUILD defers to its inner one).
EXPANDED_KEYWORDS = frozenset({
    "ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME",
    "WORKDIR",
})

# One-character shell parameters that BuildKit reads as a name after `$`.
_SPECIAL_PARAMETERS = frozenset("@*#?-$!0")


def split_words(text: str, escape: str = "\\") -> list[str]:
    """Split text at unquoted whitespace and keep quotes and escape characters in each word.

    An escape character at the very end is dropped. Inside single quotes the escape character
    is literal. Values stay raw, so pass each word through expand() for the final value.
    """
    words: list[str] = []
    word: list[str] = []
    quoted = False  # keeps an empty quoted word such as ""
    quote = ""
    i = 0

    while i < len(text):
        char = text[i]
        if not quote and char.isspace():
            if word or quoted:
                words.append("".join(word))
            word, quoted = [], False
        elif char == escape and quote != "'":
            if i + 1 == len(text):
                break
            word.append(char + text[i + 1])
            i += 1
        elif not quote and char in "'\"":
            quote, quoted = char, True
            word.append(char)
        elif char == quote:
            quote = ""
            word.append(char)
        else:
            word.append(char)
        i += 1

    if word or quoted:
        words.append("".join(word))
    return words


def expand(text: str, env: dict[str, str | None], escape: str = "\\") -> str:
    """Substitute variables in text, remove quotes and process escapes, as one word.

    Unset variables (and names whose value is None) expand to the empty string. Raises
    BuildError without a line number on a syntax error or a ${VAR?message} check, so that the
    caller can add the instruction's line.
    """
    return _Lexer(text, env, escape).process()[0]


def expand_words(text: str, env: dict[str, str | None], escape: str = "\\") -> list[str]:
    """Expand text like expand() and split the result into words at unquoted whitespace.

    Whitespace that a variable's value contains splits words too, as in BuildKit.
    """
    return _Lexer(text, env, escape).process()[1]


def glob_to_regex(pattern: str) -> str:
    """Translate a ${VAR#pattern} glob (`*`, `?`, backslash escapes) into a regex."""
    parts = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            i += 1
            parts.append(re.escape(pattern[i]))
        elif char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
        i += 1
    return "".join(parts)


class _Words:
    """The word list that expand_words() returns, built one character at a time."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.word = ""
        self.in_word = False

    def add_char(self, char: str) -> None:
        if not char.isspace():
            self.add_raw(char)
        elif self.in_word and self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False

    def add_text(self, text: str) -> None:
        for char in text:
            self.add_char(char)

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def finish(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
        return self.words


class _Lexer:
    """A cursor over one text, with the variables and escape character it expands with."""

    def __init__(self, text: str, env: dict[str, str | None], escape: str) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        self.pos += 1 if char else 0
        return char

    def fail(self, what: str, fix: str) -> BuildError:
        return BuildError(f"{what} in {self.text!r}: {fix}")

    def process(self) -> tuple[str, list[str]]:
        result, words, _ = self.process_until("", keep_escapes=False)
        return result, words

    def process_until(self, stops: str, keep_escapes: bool) -> tuple[str, list[str], str]:
        """Expand up to the first unquoted character of stops (consumed and returned)."""
        result: list[str] = []
        words = _Words()

        while self.peek():
            char = self.peek()
            if char in stops:
                self.take()
                return "".join(result), words.finish(), char

            if char == "'":
                piece = self.single_quoted()
                words.add_raw(piece)
            elif char == '"':
                piece = self.double_quoted()
                words.add_raw(piece)
            elif char == "$":
                piece = self.dollar()
                words.add_text(piece)
            else:
                piece = self.plain_char(keep_escapes)
                if char == self.escape:
                    words.add_raw(piece)
                else:
                    words.add_char(piece)
            result.append(piece)

        if stops:
            raise self.fail(f"missing {stops[-1]!r}", "close the variable reference")
        return "".join(result), words.finish(), ""

    def plain_char(self, keep_escapes: bool) -> str:
        char = self.take()
        if char != self.escape:
            return char

        # The escape character makes the next one literal; at the end it is dropped.
        escaped = self.take()
        return char + escaped if keep_escapes else escaped

    def single_quoted(self) -> str:
        self.take()
        end = self.text.find("'", self.pos)
        if end < 0:
            raise self.fail("unterminated single quote", "add the closing '")
        piece = self.text[self.pos:end]
        self.pos = end + 1
        return piece

    def double_quoted(self) -> str:
        self.take()
        result: list[str] = []

        while True:
            char = self.peek()
            if not char:
                raise self.fail("unterminated double quote", 'add the closing "')
            if char == '"':
                self.take()
                return "".join(result)
            if char == "$":
                result.append(self.dollar())
                continue

            self.take()
            # Inside double quotes only ", $ and the escape character itself can be escaped.
            if char == self.escape and self.peek() in ('"', "$", self.escape):
                char = self.take()
            elif char == self.escape and not self.peek():
                continue
            result.append(char)

    def name(self) -> str:
        start = self.pos
        if self.peek().isdigit():
            while self.peek().isdigit():
                self.take()
            return self.text[start:self.pos]
        if self.peek() and self.peek() in _SPECIAL_PARAMETERS:
            return self.take()
        while self.peek() and (self.peek().isalnum() or self.peek() == "_"):
            self.take()
        return self.text[start:self.pos]

    def lookup(self, name: str) -> tuple[str, bool]:
        if name not in self.env:
            return "", False
        value = self.env[name]
        return ("" if value is None else value), True

    def dollar(self) -> str:
        self.take()
        if self.peek() != "{":
            name = self.name()
            return self.lookup(name)[0] if name else "$"

        self.take()
        if not self.peek():
            raise self.fail("missing '}'", "close the variable reference")
        if self.peek() in "{}:":
            raise self.fail("bad substitution", "write ${NAME} with a variable name")
        name = self.name()
        return self.braced(name, self.take())

    def braced(self, name: str, operator: str) -> str:
        value, found = self.lookup(name)
        if operator == "}":
            return value
        if operator == ":":
            modifier = self.take()
            if modifier not in ("-", "+", "?"):
                raise self.fail(f"unsupported modifier ':{modifier}'",
                                "use ${NAME:-default}, ${NAME:+alternative} or ${NAME:?message}")
            word = self.process_until("}", keep_escapes=False)[0]
            return self.apply(name, modifier, word, value, found and value != "")
        if operator in ("-", "+", "?"):
            word = self.process_until("}", keep_escapes=False)[0]
            return self.apply(name, operator, word, value, found)
        if operator in ("#", "%"):
            return self.trim(operator, value)
        if operator == "/":
            return self.replace(value)
        if not operator:
            raise self.fail("missing '}'", "close the variable reference")
        raise self.fail(f"unsupported modifier {operator!r} after ${{{name}",
                        "use one of :- - :+ + :? ? # ## % %% / //")

    def apply(self, name: str, modifier: str, word: str, value: str, present: bool) -> str:
        if modifier == "-":
            return value if present else word
        if modifier == "+":
            return word if present else ""
        if present:
            return value
        raise BuildError(f"variable {name} is unset or empty: {word or 'set it with ARG or ENV'}")

    def trim(self, operator: str, value: str) -> str:
        longest = self.peek() == operator
        if longest:
            self.take()
        pattern = self.process_until("}", keep_escapes=True)[0]
        regex = re.compile(glob_to_regex(pattern), re.DOTALL)
        cuts = range(len(value) + 1)

        if operator == "#":
            for cut in (reversed(cuts) if longest else cuts):
                if regex.fullmatch(value, 0, cut):
                    return value[cut:]
            return value

        for cut in (cuts if longest else reversed(cuts)):
            if regex.fullmatch(value, cut):
                return value[:cut]
        return value

    def replace(self, value: str) -> str:
        every = self.peek() == "/"
        if every:
            self.take()
        pattern, _, stop = self.process_until("/}", keep_escapes=True)
        replacement = self.process_until("}", keep_escapes=False)[0] if stop == "/" else ""
        regex = re.compile(glob_to_regex(pattern), re.DOTALL)
        return regex.sub(lambda match: replacement, value, count=0 if every else 1)
