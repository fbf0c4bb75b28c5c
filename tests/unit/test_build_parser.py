"""Dockerfile parsing and variable expansion, checked against the rules of Docker's reference."""

import pytest

from kakoi.build.parser import (
    expand, expand_words, parse, parse_duration, parse_key_values, split_words,
)
from kakoi.errors import BuildError


def only_instruction(body: str):
    """Parse `FROM scratch` plus body and return the one instruction of the stage."""
    dockerfile = parse("FROM scratch\n" + body)
    instructions = dockerfile.stages[0].instructions
    assert len(instructions) == 1
    return instructions[0]


# Shell form and JSON form of each instruction: body, keyword, arguments, json.
FORMS = [
    ("RUN echo hi", "RUN", "echo hi", None),
    ('RUN ["echo", "hi"]', "RUN", '["echo", "hi"]', ["echo", "hi"]),
    ("run echo lower", "RUN", "echo lower", None),
    ("   RUN   echo  indented  ", "RUN", "echo  indented", None),
    ('RUN ["c:\\windows\\x.exe"]', "RUN", '["c:\\windows\\x.exe"]', None),
    ("RUN [ not json", "RUN", "[ not json", None),
    ("CMD sleep 1", "CMD", "sleep 1", None),
    ('CMD ["sleep", "1"]', "CMD", '["sleep", "1"]', ["sleep", "1"]),
    ("CMD []", "CMD", "[]", []),
    ("ENTRYPOINT /bin/app --flag", "ENTRYPOINT", "/bin/app --flag", None),
    ('ENTRYPOINT ["/bin/app"]', "ENTRYPOINT", '["/bin/app"]', ["/bin/app"]),
    ('SHELL ["/bin/bash", "-c"]', "SHELL", '["/bin/bash", "-c"]', ["/bin/bash", "-c"]),
    ("VOLUME /data /logs", "VOLUME", "/data /logs", None),
    ('VOLUME ["/data"]', "VOLUME", '["/data"]', ["/data"]),
    ("COPY a b /dest/", "COPY", "a b /dest/", None),
    ('COPY ["a b", "/dest/"]', "COPY", '["a b", "/dest/"]', ["a b", "/dest/"]),
    ("ADD https://example.com/x /x", "ADD", "https://example.com/x /x", None),
    ('ADD ["x", "/x"]', "ADD", '["x", "/x"]', ["x", "/x"]),
    ("LABEL a=b", "LABEL", "a=b", None),
    ("MAINTAINER Jane Doe <jane@example.com>", "MAINTAINER", "Jane Doe <jane@example.com>",
     None),
    ("EXPOSE 80/tcp 53/udp", "EXPOSE", "80/tcp 53/udp", None),
    ("ENV PATH=/bin", "ENV", "PATH=/bin", None),
    ("USER 1000:1000", "USER", "1000:1000", None),
    ("WORKDIR /app", "WORKDIR", "/app", None),
    ("ARG VERSION", "ARG", "VERSION", None),
    ("STOPSIGNAL SIGINT", "STOPSIGNAL", "SIGINT", None),
    ("HEALTHCHECK NONE", "HEALTHCHECK", "NONE", None),
    ("HEALTHCHECK CMD curl -f http://localhost/", "HEALTHCHECK",
     "CMD curl -f http://localhost/", None),
    ('HEALTHCHECK CMD ["curl", "-f"]', "HEALTHCHECK", 'CMD ["curl", "-f"]', ["curl", "-f"]),
    ("ONBUILD RUN make", "ONBUILD", "RUN make", None),
]


@pytest.mark.parametrize("body,keyword,arguments,json_form", FORMS)
def test_instruction_forms(body, keyword, arguments, json_form):
    instruction = only_instruction(body)

    assert instruction.keyword == keyword
    assert instruction.arguments == arguments
    assert instruction.json == json_form
    assert instruction.line == 2
    assert instruction.end_line == 2
    assert instruction.text == body.strip()


def test_onbuild_inner_instruction():
    instruction = only_instruction("ONBUILD COPY --from=build /a /b")

    assert instruction.inner is not None
    assert instruction.inner.keyword == "COPY"
    assert instruction.inner.flags == {"from": "build"}
    assert instruction.inner.arguments == "/a /b"
    assert instruction.inner.line == 2
    assert instruction.flags == {}


def test_continuation_joins_lines():
    instruction = only_instruction("RUN apt-get update && \\\n    apt-get install -y curl\n")

    assert instruction.arguments == "apt-get update &&     apt-get install -y curl"
    assert instruction.line == 2
    assert instruction.end_line == 3


def test_continuation_skips_comments_and_blanks():
    text = "FROM scratch\nRUN echo hello \\\n# a comment\n   # indented comment\n\nworld\nUSER x\n"
    stage = parse(text).stages[0]

    assert [i.keyword for i in stage.instructions] == ["RUN", "USER"]
    assert stage.instructions[0].arguments == "echo hello world"
    assert stage.instructions[0].end_line == 6
    assert stage.instructions[1].line == 7


def test_continuation_with_trailing_spaces():
    instruction = only_instruction("RUN echo a \\  \n b")

    assert instruction.arguments == "echo a  b"


def test_continuation_at_end_of_file():
    instruction = only_instruction("RUN echo a \\")

    assert instruction.arguments == "echo a"


def test_hash_inside_arguments_is_kept():
    instruction = only_instruction("RUN echo 'we run # of things'")

    assert instruction.arguments == "echo 'we run # of things'"


def test_crlf_and_byte_order_mark():
    stage = parse("\ufeffFROM scratch\r\nRUN a \\\r\n b\r\n").stages[0]

    assert stage.base == "scratch"
    assert stage.instructions[0].arguments == "a  b"


def test_backtick_escape_directive():
    text = "# escape=`\n\nFROM scratch\nCOPY testfile.txt c:\\\nRUN dir c:\\ `\n  /w\n"
    dockerfile = parse(text)
    copy, run = dockerfile.stages[0].instructions

    assert dockerfile.directives["escape"] == "`"
    assert copy.arguments == "testfile.txt c:\\"
    assert copy.escape == "`"
    assert run.arguments == "dir c:\\   /w"
    assert run.line == 5
    assert run.end_line == 6


def test_backslash_without_directive_continues():
    dockerfile = parse("FROM scratch\nCOPY testfile.txt c:\\\nRUN dir c:\\\n")

    assert dockerfile.stages[0].instructions[0].arguments == "testfile.txt c:RUN dir c:"


DIRECTIVES = [
    ("# syntax=docker/dockerfile:1\nFROM scratch\n", {"escape": "\\",
                                                       "syntax": "docker/dockerfile:1"}),
    ("#\t  ESCAPE = `\nFROM scratch\n", {"escape": "`"}),
    ("# check=skip=all\n# escape=`\nFROM scratch\n", {"escape": "`", "check": "skip=all"}),
    ("# a comment\n# escape=`\nFROM scratch\n", {"escape": "\\"}),
    ("# unknown=1\n# escape=`\nFROM scratch\n", {"escape": "\\"}),
    ("\n# escape=`\nFROM scratch\n", {"escape": "\\"}),
    ("FROM scratch\n# escape=`\n", {"escape": "\\"}),
]


@pytest.mark.parametrize("text,expected", DIRECTIVES)
def test_parser_directives(text, expected):
    assert parse(text).directives == expected


def test_heredoc_plain():
    instruction = only_instruction("RUN <<EOF\napt-get update\n  echo $HOME\nEOF\n")

    assert instruction.arguments == "<<EOF"
    assert len(instruction.heredocs) == 1
    heredoc = instruction.heredocs[0]
    assert heredoc.name == "EOF"
    assert heredoc.content == "apt-get update\n  echo $HOME\n"
    assert heredoc.strip_tabs is False
    assert heredoc.expand is True
    assert instruction.end_line == 5
    assert instruction.text == "RUN <<EOF\napt-get update\n  echo $HOME\nEOF"


def test_heredoc_strip_tabs():
    instruction = only_instruction("RUN <<-EOT bash\n\t\techo hi\n\tEOT\n")

    heredoc = instruction.heredocs[0]
    assert heredoc.content == "echo hi\n"
    assert heredoc.strip_tabs is True
    assert instruction.arguments == "<<-EOT bash"


def test_heredoc_without_dash_keeps_tabs():
    instruction = only_instruction("RUN <<EOT\n\techo hi\n\tEOT\nEOT\n")

    assert instruction.heredocs[0].content == "\techo hi\n\tEOT\n"


@pytest.mark.parametrize("marker", ["<<'EOF'", '<<"EOF"', '<<E"O"F', "<<-'EOF'"])
def test_heredoc_quoted_delimiter(marker):
    instruction = only_instruction(f"COPY {marker} /x\n$A\nEOF\n")

    assert instruction.heredocs[0].name == "EOF"
    assert instruction.heredocs[0].expand is False


def test_two_heredocs_on_one_line():
    body = "RUN <<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nsecond\nFILE2\nUSER x"
    dockerfile = parse("FROM alpine\n" + body)
    run, user = dockerfile.stages[0].instructions

    assert [h.name for h in run.heredocs] == ["FILE1", "FILE2"]
    assert run.heredocs[0].content == "I am\nfirst\n"
    assert run.heredocs[1].content == "second\n"
    assert run.end_line == 7
    assert user.line == 8


def test_copy_heredoc_destination():
    instruction = only_instruction("COPY --chmod=755 <<EOF /usr/local/bin/hello\n#!/bin/sh\nEOF\n")

    assert instruction.flags == {"chmod": "755"}
    assert instruction.arguments == "<<EOF /usr/local/bin/hello"
    assert instruction.heredocs[0].content == "#!/bin/sh\n"


def test_heredoc_body_keeps_comments_and_blanks():
    instruction = only_instruction("RUN <<EOF\n# not a comment\n\nline \\\nEOF\n")

    assert instruction.heredocs[0].content == "# not a comment\n\nline \\\n"


def test_heredoc_after_continuation():
    instruction = only_instruction("RUN --network=none \\\n  <<EOF sh\necho a\nEOF\n")

    assert instruction.flags == {"network": "none"}
    assert instruction.heredocs[0].content == "echo a\n"
    assert instruction.end_line == 5


def test_heredoc_in_onbuild():
    instruction = only_instruction("ONBUILD RUN <<EOF\necho a\nEOF\n")

    assert instruction.inner.heredocs[0].content == "echo a\n"
    assert instruction.heredocs == instruction.inner.heredocs
    assert instruction.end_line == 4
    assert instruction.inner.text == "RUN <<EOF\necho a\nEOF"


@pytest.mark.parametrize("body", [
    "RUN echo '<<EOF'",
    "RUN cat <<<EOF",
    'RUN ["cat", "<<EOF"]',
    "ENV A=<<EOF",
    "RUN echo a<<EOF",
])
def test_not_a_heredoc(body):
    instruction = only_instruction(body)

    assert instruction.heredocs == []


def test_flags_all_kinds():
    instruction = only_instruction(
        "COPY --from=build --chown=1:1 --link --parents=false --exclude=*.md --exclude=*.txt a /b")

    assert instruction.flags == {"from": "build", "chown": "1:1", "link": True, "parents": False,
                                 "exclude": ["*.md", "*.txt"]}
    assert instruction.arguments == "a /b"


def test_flags_quoted_value_and_double_dash():
    instruction = only_instruction('RUN --mount="type=secret,id=a b" -- --not-a-flag')

    assert instruction.flags == {"mount": ["type=secret,id=a b"]}
    assert instruction.arguments == "--not-a-flag"


def test_flags_of_add_and_healthcheck():
    add = only_instruction("ADD --checksum=sha256:abc --keep-git-dir=true x /x")
    check = only_instruction("HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s "
                             "--start-interval=500ms --retries=3 CMD true")

    assert add.flags == {"checksum": "sha256:abc", "keep-git-dir": True}
    assert check.flags == {"interval": "5m", "timeout": "3s", "start-period": "1m30s",
                           "start-interval": "500ms", "retries": "3"}


def test_from_stage_fields():
    dockerfile = parse("ARG V=1\nFROM --platform=$BUILDPLATFORM golang:${V} As Builder\n"
                       "FROM builder\n")
    first, second = dockerfile.stages

    assert first.index == 0
    assert first.name == "builder"
    assert first.base == "golang:${V}"
    assert first.platform == "$BUILDPLATFORM"
    assert first.line == 2
    assert second.index == 1
    assert second.name is None
    assert second.platform is None
    assert dockerfile.find_stage("BUILDER") is first
    assert dockerfile.find_stage("1") is second
    assert dockerfile.find_stage("missing") is None


# Every parse error: Dockerfile text, line, words expected in the message.
ERRORS = [
    ("", 1, "no instructions"),
    ("# only a comment\n\n", 1, "no instructions"),
    ("ARG A\nARG B\n", 2, "no FROM"),
    ("RUN echo\nFROM scratch\n", 1, "before the first FROM"),
    ("FROM scratch\nFOO bar\n", 2, "unknown instruction 'FOO'"),
    ("FROM scratch\nCOPPY a b\n", 2, "did you mean COPY"),
    ("# escape=x\nFROM scratch\n", 1, "invalid escape character"),
    ("# escape=`\n# escape=\\\nFROM scratch\n", 2, "duplicate parser directive"),
    ("FROM scratch\n\nRUN --foo=1 true\n", 3, "unknown flag --foo for RUN"),
    ("FROM scratch\nENV --x=1 A=b\n", 2, "ENV takes no flags"),
    ("FROM scratch\nCOPY --from a b\n", 2, "missing value for --from"),
    ("FROM scratch\nCOPY --from=a --from=b a b\n", 2, "duplicate flag --from"),
    ("FROM scratch\nCOPY --link=maybe a b\n", 2, "use true or false"),
    ("FROM --platform a b c d\n", 1, "missing value for --platform"),
    ("FROM\n", 1, "FROM takes an image"),
    ("FROM a b\n", 1, "FROM takes an image"),
    ("FROM a AS 1st\n", 1, "invalid build stage name"),
    ("FROM a AS x\nFROM b AS X\n", 2, "duplicate build stage name 'x'"),
    ("FROM scratch\nRUN\n", 2, "RUN requires an argument"),
    ("FROM scratch\nCMD\n", 2, "CMD requires an argument"),
    ("FROM scratch\nUSER\n", 2, "USER requires an argument"),
    ("FROM scratch\nWORKDIR  \n", 2, "WORKDIR requires an argument"),
    ("FROM scratch\nEXPOSE\n", 2, "EXPOSE requires an argument"),
    ("FROM scratch\nSTOPSIGNAL\n", 2, "STOPSIGNAL requires an argument"),
    ("FROM scratch\nMAINTAINER\n", 2, "MAINTAINER requires an argument"),
    ('FROM scratch\nCMD ["a", 1]\n', 2, "not a string"),
    ("FROM scratch\nSHELL /bin/sh -c\n", 2, "SHELL requires a non-empty JSON array"),
    ("FROM scratch\nSHELL []\n", 2, "SHELL requires a non-empty JSON array"),
    ("FROM scratch\nCOPY onlyone\n", 2, "at least one source and a destination"),
    ('FROM scratch\nADD ["x"]\n', 2, "at least one source and a destination"),
    ('FROM scratch\nVOLUME [""]\n', 2, "VOLUME has an empty path"),
    ("FROM scratch\nENV\n", 2, "ENV requires at least one name"),
    ("FROM scratch\nENV ONLYNAME\n", 2, "has no value"),
    ("FROM scratch\nENV A=1 B\n", 2, "'B' has no '='"),
    ("FROM scratch\nLABEL =x\n", 2, "empty name"),
    ("FROM scratch\nARG =x\n", 2, "empty name"),
    ("FROM scratch\nONBUILD\n", 2, "ONBUILD requires an argument"),
    ("FROM scratch\nONBUILD ONBUILD RUN x\n", 2, "ONBUILD cannot trigger ONBUILD"),
    ("FROM scratch\nONBUILD FROM x\n", 2, "ONBUILD cannot trigger FROM"),
    ("FROM scratch\nONBUILD MAINTAINER me\n", 2, "ONBUILD cannot trigger MAINTAINER"),
    ("FROM scratch\nONBUILD BOGUS x\n", 2, "unknown instruction 'BOGUS'"),
    ("FROM scratch\nHEALTHCHECK\n", 2, "HEALTHCHECK requires NONE or CMD"),
    ("FROM scratch\nHEALTHCHECK curl x\n", 2, "HEALTHCHECK requires NONE or CMD"),
    ("FROM scratch\nHEALTHCHECK CMD\n", 2, "missing its command"),
    ("FROM scratch\nHEALTHCHECK NONE x\n", 2, "NONE takes no arguments"),
    ("FROM scratch\nHEALTHCHECK --retries=3 NONE\n", 2, "NONE takes no arguments"),
    ("FROM scratch\nHEALTHCHECK --interval=5 CMD true\n", 2, "invalid --interval duration"),
    ("FROM scratch\nHEALTHCHECK --timeout=10ns CMD true\n", 2, "shorter than 1ms"),
    ("FROM scratch\nHEALTHCHECK --retries=-1 CMD true\n", 2, "invalid --retries"),
    ("FROM scratch\nRUN <<EOF\necho\n", 2, "unterminated heredoc 'EOF'"),
    ("FROM scratch\nRUN a\nCOPY <<A <<B /x\na\nA\n", 3, "unterminated heredoc 'B'"),
]


@pytest.mark.parametrize("text,line,words", ERRORS)
def test_parse_errors(text, line, words):
    with pytest.raises(BuildError) as caught:
        parse(text, "Containerfile")

    assert caught.value.line == line
    assert caught.value.filename == "Containerfile"
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"Containerfile:{line}: ")
    assert str(caught.value).count(": ") >= 2


def test_error_message_has_fix():
    with pytest.raises(BuildError) as caught:
        parse("FROM scratch\nRUN --foo true\n")

    assert str(caught.value) == ("Dockerfile:2: unknown flag --foo for RUN: "
                                 "use one of --mount, --network, --security")


KEY_VALUES = [
    ("ENV A=1", [("A", "1")]),
    ('ENV A=1 B="two words" C=x\\ y', [("A", "1"), ("B", '"two words"'), ("C", "x\\ y")]),
    ("ENV NAME value with  spaces", [("NAME", "value with  spaces")]),
    ("ENV EMPTY=", [("EMPTY", "")]),
    ('LABEL "com.example.key"="v" other=\'single q\'',
     [('"com.example.key"', '"v"'), ("other", "'single q'")]),
    ("LABEL version 1.0", [("version", "1.0")]),
    ("ARG A", [("A", None)]),
    ("ARG A= B=2 C", [("A", ""), ("B", "2"), ("C", None)]),
]


@pytest.mark.parametrize("body,expected", KEY_VALUES)
def test_key_values_raw(body, expected):
    assert parse_key_values(only_instruction(body)) == expected


def test_key_values_expanded():
    env = {"X": "x", "K": "key"}
    env_instruction = only_instruction('ENV A=$X B="${X} y" $K=1 C=\'$X\'')
    arg_instruction = only_instruction("ARG $K=${X:-d} D")

    assert parse_key_values(env_instruction, env) == [
        ("A", "x"), ("B", "x y"), ("key", "1"), ("C", "$X")]
    assert parse_key_values(arg_instruction, env) == [("$K", "x"), ("D", None)]


def test_key_values_other_keyword():
    with pytest.raises(ValueError):
        parse_key_values(only_instruction("RUN a"))


SPLIT = [
    ("", []),
    ("  a   b  ", ["a", "b"]),
    ('a="x y" b', ['a="x y"', "b"]),
    ("a='x \\' y'", ["a='x \\'", "y'"]),
    ('"" x', ['""', "x"]),
    ("a\\ b c", ["a\\ b", "c"]),
    ('"a\\"b" c', ['"a\\"b"', "c"]),
    ("80/tcp\t443", ["80/tcp", "443"]),
    ("end\\", ["end"]),
]


@pytest.mark.parametrize("text,expected", SPLIT)
def test_split_words(text, expected):
    assert split_words(text) == expected


def test_split_words_backtick_escape():
    assert split_words("a` b c\\ d", escape="`") == ["a` b", "c\\", "d"]


ENV = {"FOO": "/bar", "EMPTY": "", "SPACED": "a b", "NONE": None}

EXPANSIONS = [
    ("$FOO", "/bar"),
    ("${FOO}", "/bar"),
    ("${FOO}_x", "/bar_x"),
    ("$FOO_x", ""),
    ("$MISSING", ""),
    ("$NONE", ""),
    ("a$", "a$"),
    ("$ x", "$ x"),
    ("\\$FOO", "$FOO"),
    ("\\${FOO}", "${FOO}"),
    ("'$FOO'", "$FOO"),
    ('"$FOO"', "/bar"),
    ('"\\$FOO"', "$FOO"),
    ('"a\\nb"', "a\\nb"),
    ('"say \\"hi\\""', 'say "hi"'),
    ("a\\ b", "a b"),
    ("a\\\\b", "a\\b"),
    ("${MISSING:-word}", "word"),
    ("${EMPTY:-word}", "word"),
    ("${FOO:-word}", "/bar"),
    ("${EMPTY-word}", ""),
    ("${MISSING-word}", "word"),
    ("${FOO:+word}", "word"),
    ("${EMPTY:+word}", ""),
    ("${EMPTY+word}", "word"),
    ("${MISSING+word}", ""),
    ("${MISSING:-${FOO:-x}/y}", "/bar/y"),
    ("${MISSING:-${OTHER:-deep}}", "deep"),
    ('${MISSING:-"a }"}', "a }"),
    ("${FOO:?must be set}", "/bar"),
    ("${SPACED}", "a b"),
    ("$1", ""),
    ("${FOO#/}", "bar"),
    ("${FOO#*a}", "r"),
    ("${FOO##*[}", "/bar"),
    ("${SPACED%% *}", "a"),
    ("${FOO%a*}", "/b"),
    ("${FOO/a/o}", "/bor"),
    ("${FOO//?/x}", "xxxx"),
    ("${FOO/b}", "/ar"),
]


@pytest.mark.parametrize("text,expected", EXPANSIONS)
def test_expand(text, expected):
    assert expand(text, ENV) == expected


def test_expand_backtick_escape():
    assert expand("`$FOO c:\\dir", ENV, escape="`") == "$FOO c:\\dir"


def test_expand_words_splits_values():
    assert expand_words('$SPACED "$SPACED" c', ENV) == ["a", "b", "a b", "c"]
    assert expand_words("  ", ENV) == []


@pytest.mark.parametrize("text,words", [
    ("${FOO", "missing '}'"),
    ("${", "missing '}'"),
    ("${}", "bad substitution"),
    ("${:-x}", "bad substitution"),
    ("${FOO:=x}", "unsupported modifier ':='"),
    ("${FOO x}", "unsupported modifier ' '"),
    ("'open", "unterminated single quote"),
    ('"open', "unterminated double quote"),
    ("${MISSING:?is required}", "variable MISSING is unset or empty: is required"),
    ("${EMPTY:?}", "variable EMPTY is unset or empty"),
    ("${MISSING?}", "variable MISSING is unset or empty"),
])
def test_expand_errors(text, words):
    with pytest.raises(BuildError) as caught:
        expand(text, ENV)

    assert words in str(caught.value)
    assert caught.value.line is None


def test_expand_set_but_empty_passes_plain_check():
    assert expand("${EMPTY?}", ENV) == ""


@pytest.mark.parametrize("text,seconds", [
    ("0", 0.0), ("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("1.5h", 5400.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "1x", "-1s"])
def test_parse_duration_invalid(text):
    with pytest.raises(ValueError):
        parse_duration(text)


MULTI_STAGE = """\
# syntax=docker/dockerfile:1

# Build stage
ARG GO_VERSION=1.22
ARG BASE=alpine:3.19
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \\
    # download first so that the layer is cached
    go mod download
COPY . .
ARG TARGETOS TARGETARCH
RUN --mount=type=cache,target=/root/.cache/go-build \\
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/app ./cmd/app

FROM ${BASE} AS runtime
LABEL org.opencontainers.image.title="app" \\
      org.opencontainers.image.version="${GO_VERSION}"
RUN <<EOF
addgroup -S app
adduser -S app -G app
EOF
COPY --from=build --chown=app:app /out/app /usr/local/bin/app
COPY <<-EOT /etc/app.conf
\tport=8080
\tEOT
USER app
EXPOSE 8080
HEALTHCHECK --interval=30s CMD ["/usr/local/bin/app", "health"]
ENTRYPOINT ["/usr/local/bin/app"]
CMD ["serve"]
"""


def test_realistic_multi_stage():
    dockerfile = parse(MULTI_STAGE)
    build, runtime = dockerfile.stages

    assert dockerfile.directives == {"escape": "\\", "syntax": "docker/dockerfile:1"}
    assert [i.arguments for i in dockerfile.global_args] == ["GO_VERSION=1.22",
                                                             "BASE=alpine:3.19"]
    assert build.name == "build"
    assert build.base == "golang:${GO_VERSION}"
    assert build.line == 6
    assert [i.keyword for i in build.instructions] == [
        "WORKDIR", "COPY", "RUN", "COPY", "ARG", "RUN"]
    assert build.instructions[2].arguments == "go mod download"
    assert build.instructions[2].end_line == 11
    assert parse_key_values(build.instructions[4]) == [("TARGETOS", None),
                                                       ("TARGETARCH", None)]
    assert runtime.name == "runtime"
    assert runtime.base == "${BASE}"
    assert runtime.line == 17
    assert [i.keyword for i in runtime.instructions] == [
        "LABEL", "RUN", "COPY", "COPY", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"]
    label, run, copy_binary, copy_conf = runtime.instructions[:4]
    assert parse_key_values(label, {"GO_VERSION": "1.22"}) == [
        ("org.opencontainers.image.title", "app"), ("org.opencontainers.image.version", "1.22")]
    assert run.heredocs[0].content == "addgroup -S app\nadduser -S app -G app\n"
    assert copy_binary.flags == {"from": "build", "chown": "app:app"}
    assert copy_conf.heredocs[0].content == "port=8080\n"
    assert copy_conf.line == 25
    assert copy_conf.end_line == 27
    assert runtime.instructions[-1].json == ["serve"]
    assert runtime.instructions[-1].line == 32
