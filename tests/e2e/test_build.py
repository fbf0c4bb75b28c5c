"""`kakoi build` end to end: real RUN containers on the busybox fixture image."""

import json
import os
import socket
import subprocess

import pytest

pytestmark = pytest.mark.root


@pytest.fixture
def context(tmp_path):
    directory = tmp_path / "context"
    (directory / "dir" / "sub").mkdir(parents=True)
    (directory / "hello.txt").write_text("hello\n")
    (directory / "dir" / "a").write_text("a\n")
    (directory / "dir" / "sub" / "b").write_text("b\n")
    (directory / "secret.txt").write_text("secret\n")
    (directory / "link").symlink_to("hello.txt")
    (directory / ".dockerignore").write_text("# comment\nsecret.txt\n**/*.log\n")
    (directory / "dir" / "debug.log").write_text("log\n")
    return directory


def build(kakoi, context, dockerfile, *args, env=None):
    (context / "Dockerfile").write_text(dockerfile)
    command = [kakoi.command, "build", *args, str(context)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=dict(kakoi.env, **(env or {})))


def image_config(kakoi, name):
    return json.loads(kakoi("inspect", name, check=True).stdout)[0]


def run_in(kakoi, image, script):
    result = kakoi("run", "--rm", "--entrypoint", "", image, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    return result.stdout


MAIN = """\
FROM busybox AS builder
RUN echo built > /built.txt
FROM busybox
ARG GREETING=hi
ENV APP=/app MODE=test
WORKDIR $APP
COPY hello.txt link ./
COPY dir /app/dir/
COPY --from=builder /built.txt /app/
COPY --chown=nobody:nogroup --chmod=600 hello.txt /owned
RUN echo "$GREETING $MODE" > greeting && rm /etc/passwd- 2>/dev/null; mkdir -p /tmp/x
LABEL version=1.0
EXPOSE 8080
VOLUME /data
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --retries=2 CMD true
USER 0:0
CMD ["cat", "/app/greeting"]
"""


def test_build_each_instruction(kakoi, clean_host, context):
    result = build(kakoi, context, MAIN, "-t", "built:main", "--label", "extra=yes")
    assert result.returncode == 0, result.stderr
    assert "STEP 1/18: FROM busybox AS builder" in result.stdout

    assert kakoi("run", "--rm", "built:main").stdout == "hi test\n"
    listing = run_in(kakoi, "built:main",
                     "cat hello.txt dir/a dir/sub/b built.txt; cat link; "
                     "test -L link || echo followed; pwd; "
                     "ls dir; stat -c '%a %U %G' /owned; ls /secret.txt 2>&1; ls -d /tmp/x")
    # A symlink that COPY names as a source is followed, as in Docker (BuildKit copies
    # with FollowSymlinks) and buildah: the image gets the file it points to.
    assert "hello\na\nb\nbuilt\nhello\nfollowed\n/app\n" in listing
    assert "debug.log" not in listing
    assert "600 nobody nogroup" in listing
    assert "No such file" in listing

    info = image_config(kakoi, "built:main")
    config = info["Config"]
    assert config["WorkingDir"] == "/app"
    assert "APP=/app" in config["Env"]
    assert config["Labels"] == {"version": "1.0", "extra": "yes"}
    assert config["ExposedPorts"] == {"8080/tcp": {}}
    assert config["Volumes"] == {"/data": {}}
    assert config["StopSignal"] == "SIGTERM"
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000,
                                     "Retries": 2}
    assert config["Cmd"] == ["cat", "/app/greeting"]


def test_build_target_skips_later_stages(kakoi, clean_host, context):
    dockerfile = ("FROM busybox AS first\nRUN echo one > /one\n"
                  "FROM busybox AS broken\nRUN exit 1\n"
                  "FROM first\nRUN cat /one\n")
    result = build(kakoi, context, dockerfile, "-t", "built:first", "--target", "first")
    assert result.returncode == 0, result.stderr
    assert "exit 1" not in result.stdout
    assert run_in(kakoi, "built:first", "cat /one") == "one\n"


def test_build_cache_hits_and_invalidation(kakoi, clean_host, context):
    dockerfile = "FROM busybox\nRUN date +%s%N > /stamp\nCOPY hello.txt /\nRUN date +%s%N > /late\n"
    first = build(kakoi, context, dockerfile, "-q")
    assert first.returncode == 0, first.stderr
    second = build(kakoi, context, dockerfile)
    assert second.stdout.count("Using cache") == 3
    assert second.stdout.strip().endswith(first.stdout.strip())

    (context / "hello.txt").write_text("changed\n")
    third = build(kakoi, context, dockerfile, "-t", "built:cache")
    assert third.stdout.count("Using cache") == 1
    stamp = run_in(kakoi, "built:cache", "cat /stamp /hello.txt")
    assert stamp.endswith("changed\n")

    fourth = build(kakoi, context, dockerfile, "--no-cache")
    assert "Using cache" not in fourth.stdout


def test_build_reproducible_with_epoch(kakoi, clean_host, context):
    dockerfile = "FROM busybox\nRUN echo same > /same && touch /same\nCOPY dir /dir/\n"
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    first = build(kakoi, context, dockerfile, "-q", "--no-cache", env=env)
    second = build(kakoi, context, dockerfile, "-q", "--no-cache", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    info = image_config(kakoi, first.stdout.strip())
    assert info["Created"].startswith("2023-11-14T22:13:20")


def test_build_iidfile_and_stdin(kakoi, clean_host, tmp_path):
    iidfile = tmp_path / "iid"
    result = subprocess.run([kakoi.command, "build", "-q", "--iidfile", str(iidfile), "-"],
                            input="FROM busybox\nCMD [\"true\"]\n", capture_output=True,
                            text=True, env=kakoi.env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert iidfile.read_text() == result.stdout.strip()


def test_build_add_extracts_tar(kakoi, clean_host, context):
    subprocess.run(["tar", "-czf", str(context / "files.tar.gz"), "-C", str(context), "dir"],
                   check=True)
    result = build(kakoi, context, "FROM busybox\nADD files.tar.gz /unpacked/\n",
                   "-t", "built:add")
    assert result.returncode == 0, result.stderr
    assert run_in(kakoi, "built:add", "cat /unpacked/dir/a") == "a\n"


def test_build_onbuild_triggers(kakoi, clean_host, context):
    base = build(kakoi, context, "FROM busybox\nONBUILD RUN echo triggered > /trigger\n",
                 "-t", "built:onbuild")
    assert base.returncode == 0, base.stderr
    child = build(kakoi, context, "FROM built:onbuild\n", "-t", "built:child")
    assert child.returncode == 0, child.stderr
    assert run_in(kakoi, "built:child", "cat /trigger") == "triggered\n"


def test_build_run_heredocs(kakoi, clean_host, context):
    dockerfile = ("FROM busybox\n"
                  "RUN <<EOF\necho one > /one\nEOF\n"
                  "RUN cat <<EOF > /two\ntwo $HOME\nEOF\n"
                  "RUN cat <<'EOF' > /three\nthree $HOME\nEOF\n")
    result = build(kakoi, context, dockerfile, "-t", "built:heredocs")
    assert result.returncode == 0, result.stderr
    # A lone heredoc is the script; otherwise the shell reads the body, and a quoted
    # delimiter stops expansion, as in Docker.
    output = kakoi("run", "--rm", "built:heredocs", "cat", "/one", "/two", "/three").stdout
    assert output == "one\ntwo /root\nthree $HOME\n"


def test_build_copy_heredoc(kakoi, clean_host, context):
    dockerfile = ("FROM busybox\nENV NAME=world\n"
                  "COPY <<EOF /greeting\nhello $NAME \"quoted\"\nEOF\n"
                  "COPY <<'EOF' /literal\nkeep $NAME\nEOF\n"
                  "COPY <<EOF /dir/\nin a directory\nEOF\n")
    result = build(kakoi, context, dockerfile, "-t", "built:copy-heredoc")
    assert result.returncode == 0, result.stderr
    output = kakoi("run", "--rm", "built:copy-heredoc", "cat", "/greeting", "/literal",
                   "/dir/EOF").stdout
    assert output == 'hello world "quoted"\nkeep $NAME\nin a directory\n'


def test_build_copy_from_follows_named_symlink(kakoi, clean_host, context):
    dockerfile = ("FROM busybox AS source\n"
                  "RUN echo target > /real && ln -s /real /absolute && ln -s real /relative\n"
                  "FROM busybox\nCOPY --from=source /absolute /got-absolute\n"
                  "COPY --from=source /relative /got-relative\n")
    result = build(kakoi, context, dockerfile, "-t", "built:from-link")
    assert result.returncode == 0, result.stderr
    output = kakoi("run", "--rm", "built:from-link", "sh", "-c",
                   "cat /got-absolute /got-relative; test -L /got-absolute || echo file").stdout
    assert output == "target\ntarget\nfile\n"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BAD_INPUT = [
    ("FROM busybox\nFROBNICATE x\n", ":2:"),
    ("FROM --platform=linux/s390x busybox\n", ":1:"),
    ("FROM busybox\nCOPY --exclude=*.txt . /app/\n", ":2:"),
    ("FROM busybox\nCOPY missing.txt /\n", ":2:"),
    ("FROM busybox\nCOPY ../outside /\n", ":2:"),
    # An unknown --from name is tried as an image, so it names a closed loopback port.
    ("FROM busybox\nCOPY --from=127.0.0.1:{port}/nostage /x /\n", ":2:"),
    ("FROM busybox\nRUN echo before-failure; exit 3\n", ":2:"),
    ("FROM busybox\nADD http://127.0.0.1:{port}/file /\n", ":2:"),
]


@pytest.mark.parametrize("dockerfile, where", BAD_INPUT)
def test_build_bad_input(kakoi, clean_host, context, dockerfile, where):
    dockerfile = dockerfile.replace("{port}", str(closed_port()))
    before = kakoi("images", "-q").stdout
    result = build(kakoi, context, dockerfile, "-t", "built:bad")
    assert result.returncode == 125
    lines = [line for line in result.stderr.splitlines() if line.startswith("kakoi:")]
    assert len(lines) == 1, result.stderr
    assert where in lines[0]
    assert kakoi("images", "-q").stdout == before
    if "exit 3" in dockerfile:
        assert "exit code 3" in lines[0]
        assert "before-failure" in lines[0]
    assert not [name for name in os.listdir(kakoi.root / "tmp") if name.startswith("build-")]
