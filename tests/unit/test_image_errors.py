"""Errors of the image commands: one line on stderr, exit 125, nothing left behind.

The commands run through kakoi.cli.main.main, or as a subprocess where file descriptors 0 or
1 must be closed or be a terminal.
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kakoi.cli.main import main

KAKOI = str(Path(sys.executable).parent / "kakoi")
HEADER = "REPOSITORY   TAG   IMAGE ID   CREATED   SIZE\n"


@pytest.fixture
def root(tmp_path, busybox_archives):
    """A store root with busybox loaded."""
    root = tmp_path / "store"
    assert main(["--root", str(root), "load", "-q", "-i",
                 str(busybox_archives["docker-archive"])]) == 0
    return root


def assert_one_line_error(err: str, *parts: str) -> None:
    assert err.startswith("kakoi: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in err


def kakoi(root: Path, *argv: str, close: int | None = None, **kwargs):
    """Run the kakoi executable, closing file descriptor `close` in the child first."""
    env = dict(os.environ, KAKOI_ROOT=str(root))
    preexec = (lambda: os.close(close)) if close is not None else None
    return subprocess.run([KAKOI, *argv], env=env, preexec_fn=preexec, timeout=60, **kwargs)


def entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.root
def test_save_into_missing_directory(root, tmp_path, capsys):
    out = tmp_path / "missing-dir" / "a.tar"

    assert main(["--root", str(root), "save", "-o", str(out), "busybox"]) == 125

    err = capsys.readouterr().err
    assert err == (f"kakoi: cannot write {out}: No such file or directory: create the "
                   "directory first\n")
    assert not out.parent.exists()
    assert entries(root / "tmp") == []


@pytest.mark.root
def test_save_into_proc(root, capsys):
    assert main(["--root", str(root), "save", "-o", "/proc/kakoi-test.tar", "busybox"]) == 125

    assert_one_line_error(capsys.readouterr().err, "cannot write /proc/kakoi-test.tar",
                          "choose a path")
    assert not Path("/proc/kakoi-test.tar").exists()


@pytest.mark.root
@pytest.mark.parametrize("suffix", ["", "/"])
def test_save_to_directory(root, tmp_path, capsys, suffix):
    target = tmp_path / "out"
    target.mkdir()

    assert main(["--root", str(root), "save", "-o", str(target) + suffix, "busybox"]) == 125

    assert_one_line_error(capsys.readouterr().err, f"cannot write {target}",
                          "it is a directory: give a file path")
    assert target.is_dir()
    assert entries(target) == []
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_save_slash_names_missing_directory(tmp_path, capsys):
    target = tmp_path / "new"

    assert main(["--root", str(tmp_path / "store"), "save", "-o", f"{target}/", "x"]) == 125

    assert_one_line_error(capsys.readouterr().err, "it is a directory: give a file path")
    assert not target.exists()


@pytest.mark.root
def test_save_to_fifo_writes_in_place(root, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # This write end keeps the reader's open from blocking, and closing it ends the read
    # even when the save never opens the FIFO.
    keeper = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()

    try:
        status = main(["--root", str(root), "save", "-o", str(fifo), "busybox"])
    finally:
        os.close(keeper)
        reader.join(timeout=60)

    assert status == 0
    assert fifo.is_fifo()
    assert len(received[0]) > 1_000_000


def test_save_on_missing_root_creates_nothing(tmp_path, capsys):
    root = tmp_path / "store"

    assert main(["--root", str(root), "save", "-o", str(tmp_path / "a.tar"), "busybox"]) == 125

    assert_one_line_error(capsys.readouterr().err, "no such image: busybox")
    assert entries(tmp_path) == []


def test_load_with_stdin_closed(tmp_path):
    result = kakoi(tmp_path, "load", close=0, capture_output=False, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True)

    assert result.returncode == 125
    assert_one_line_error(result.stderr, "stdin is closed", "use -i FILE")
    assert result.stdout == ""


def test_save_with_stdout_closed(tmp_path):
    result = kakoi(tmp_path, "save", "busybox", close=1, stderr=subprocess.PIPE, text=True)

    assert result.returncode == 125
    assert_one_line_error(result.stderr, "stdout is closed", "use -o FILE")


def test_save_to_terminal_rejected(tmp_path):
    leader, terminal = os.openpty()
    try:
        result = kakoi(tmp_path, "save", "busybox", stdout=terminal, stderr=subprocess.PIPE,
                       text=True)
    finally:
        os.close(terminal)
        os.close(leader)

    assert result.returncode == 125
    assert_one_line_error(result.stderr, "cowardly refusing to save to a terminal",
                          "use -o FILE or redirect stdout")
    assert not tmp_path.joinpath("blobs").exists()


@pytest.mark.root
def test_save_to_full_stdout(root):
    with open("/dev/full", "wb") as full:
        result = kakoi(root, "save", "busybox", stdout=full, stderr=subprocess.PIPE, text=True)

    assert result.returncode == 125
    assert_one_line_error(result.stderr, "cannot write stdout: No space left on device")
    assert entries(root / "tmp") == []


@pytest.mark.parametrize("content", [b"", b"this is not a tar archive\n" * 40],
                         ids=["empty", "text"])
def test_load_file_that_is_not_tar(tmp_path, capsys, content):
    path = tmp_path / "junk"
    path.write_bytes(content)
    root = tmp_path / "store"

    assert main(["--root", str(root), "load", "-i", str(path)]) == 125

    assert capsys.readouterr().err == (
        f"kakoi: {path} is not an image archive: it is not a tar file (docker-archive, "
        "OCI archive or OCI layout expected)\n")
    assert entries(root / "tmp") == []


def test_load_stdin_that_is_not_tar(tmp_path):
    result = kakoi(tmp_path, "load", input=b"junk\n" * 10, capture_output=True)

    assert result.returncode == 125
    assert result.stderr.decode() == (
        "kakoi: stdin is not an image archive: it is not a tar file (docker-archive, "
        "OCI archive or OCI layout expected)\n")
    assert entries(tmp_path / "tmp") == []


@pytest.mark.parametrize("size", [1000, 300_000])
def test_load_truncated_archive(tmp_path, busybox_archives, capsys, size):
    path = tmp_path / "cut.tar"
    path.write_bytes(busybox_archives["docker-archive"].read_bytes()[:size])
    root = tmp_path / "store"

    assert main(["--root", str(root), "load", "-i", str(path)]) == 125

    assert_one_line_error(capsys.readouterr().err, f"{path} is truncated: unexpected end of data")
    assert entries(root / "tmp") == []


def test_images_on_missing_root_prints_header(tmp_path, capsys):
    assert main(["--root", str(tmp_path / "missing"), "images"]) == 0

    assert capsys.readouterr().out == HEADER
    assert not (tmp_path / "missing").exists()


def test_images_on_empty_directory_prints_header(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "images"]) == 0

    assert capsys.readouterr().out == HEADER


def test_images_on_containers_only_root(tmp_path, capsys):
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / ".lock").touch()

    assert main(["--root", str(tmp_path), "images"]) == 0

    assert capsys.readouterr().out == HEADER


def test_root_that_is_a_file(tmp_path, capsys):
    root = tmp_path / "file"
    root.write_text("data")

    assert main(["--root", str(root), "images"]) == 125

    assert_one_line_error(capsys.readouterr().err, f"store root {root} is not a directory")


@pytest.mark.parametrize("command", [["images"], ["load", "-i", "/dev/null"], ["rmi", "x"]])
def test_root_that_is_not_a_store(tmp_path, capsys, command):
    (tmp_path / "notes.txt").write_text("other data")

    assert main(["--root", str(tmp_path), *command]) == 125

    assert_one_line_error(capsys.readouterr().err, f"store root {tmp_path} is not a kakoi store")
    assert entries(tmp_path) == ["notes.txt"]
