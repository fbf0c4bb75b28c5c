"""The image subcommands, driven through their argparse registration."""

import argparse
import json

import pytest

from kakoi.cli import images as cli


def run(root, *argv) -> int:
    parser = argparse.ArgumentParser(prog="kakoi")
    parser.add_argument("--root")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["--root", str(root), *argv])
    return args.func(args)


@pytest.mark.root
def test_cli_load_images_inspect_rmi(tmp_path, busybox_archives, capsys):
    root = tmp_path / "store"

    assert run(root, "load", "-i", str(busybox_archives["docker-archive"])) == 0
    assert capsys.readouterr().out == "Loaded image: busybox:latest\n"

    assert run(root, "tag", "busybox", "localhost:5000/bb:v1") == 0
    assert run(root, "images") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert [line.split()[:2] for line in lines[1:]] == [["busybox", "latest"],
                                                       ["localhost:5000/bb", "v1"]]
    assert lines[1].split()[-1].endswith("MB")

    assert run(root, "inspect", "busybox") == 0
    info = json.loads(capsys.readouterr().out)
    assert info[0]["RepoTags"] == ["busybox:latest", "localhost:5000/bb:v1"]

    assert run(root, "rmi", "busybox", "localhost:5000/bb:v1") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Untagged: busybox:latest"
    assert out[-1].startswith("Deleted: sha256:")
    assert run(root, "images", "-q") == 0
    assert capsys.readouterr().out == ""


def test_cli_inspect_missing_image(tmp_path, capsys):
    assert run(tmp_path, "inspect", "missing") == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert "no such image: missing" in captured.err


@pytest.mark.parametrize("size,text", [(0, "0B"), (999, "999B"), (1240, "1.24kB"),
                                       (1_982_546, "1.98MB"), (4_260_000_000, "4.26GB")])
def test_humanize_size(size, text):
    assert cli.humanize_size(size) == text


@pytest.mark.parametrize("seconds,text", [(30, "30 seconds ago"), (3600, "About an hour ago"),
                                          (5 * 3600, "5 hours ago"), (2 * 86400, "2 days ago"),
                                          (21 * 86400, "3 weeks ago"),
                                          (3 * 365 * 86400, "3 years ago")])
def test_humanize_created(seconds, text):
    created = "2024-01-01T00:00:00Z"
    now = 1704067200 + seconds

    assert cli.humanize_created(created, now) == text


def test_cli_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, kakoi.cli.images; "
            "print(sorted(m for m in ('tarfile', 'gzip', 'hashlib', 'json') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "[]"
