"""Unit tests of the layer tar that a build step's directory becomes."""

import io
import os
import stat
import tarfile

import pytest

from kakoi.build.cache import step_key, write_tar


def members(directory, epoch=None):
    out = io.BytesIO()
    write_tar(str(directory), out, epoch)
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        return {member.name: member for member in archive.getmembers()}


def test_write_tar_sorted_and_clamped(tmp_path):
    (tmp_path / "b").write_text("b")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "c").write_text("c")
    out = io.BytesIO()
    write_tar(str(tmp_path), out, 100)
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        names = archive.getnames()
        assert names == ["a", "a/c", "b"]
        assert all(member.mtime <= 100 for member in archive.getmembers())


def test_write_tar_same_bytes_twice(tmp_path):
    (tmp_path / "f").write_text("f")
    first, second = io.BytesIO(), io.BytesIO()
    write_tar(str(tmp_path), first, 100)
    write_tar(str(tmp_path), second, 100)
    assert first.getvalue() == second.getvalue()


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteout devices and trusted xattrs need root")
def test_write_tar_whiteouts(tmp_path):
    os.mknod(tmp_path / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (tmp_path / "opaque").mkdir()
    os.setxattr(tmp_path / "opaque", "trusted.overlay.opaque", b"y")
    found = members(tmp_path)
    assert ".wh.gone" in found
    assert "gone" not in found
    assert "opaque/.wh..wh..opq" in found


def test_step_key_depends_on_parent_and_text():
    assert step_key("a", "RUN x") != step_key("b", "RUN x")
    assert step_key("a", "RUN x") != step_key("a", "RUN y")
    assert step_key("a", "RUN x") == step_key("a", "RUN x")
