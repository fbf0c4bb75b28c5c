"""Layer extraction: overlayfs whiteouts, preserved metadata, and rejected escapes."""

import gzip
import io
import os
import stat
import tarfile

import pytest

from image_helpers import file_entry, tar_bytes
from kakoi.errors import ImageError, LayerEscapeError
from kakoi.image import digest as digests
from kakoi.image.layer import OPAQUE_XATTR, unpack


def entry(name: str, kind: bytes = tarfile.DIRTYPE, mode: int = 0o755, **fields):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1_600_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def unpack_bytes(data: bytes, root):
    root.mkdir(exist_ok=True)
    return unpack(io.BytesIO(data), root, "test-layer")


@pytest.fixture
def layout(tmp_path):
    """A layer root next to a canary file that no extraction may touch."""
    root = tmp_path / "layer"
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary"
    canary.write_bytes(b"canary")
    return root, outside, canary


def assert_canary_untouched(outside, canary):
    assert canary.read_bytes() == b"canary"
    assert sorted(os.listdir(outside)) == ["canary"]


def test_unpack_returns_diff_id(tmp_path):
    data = tar_bytes([entry("etc"), file_entry("etc/hostname", b"box\n")])

    result = unpack_bytes(data, tmp_path / "layer")

    assert result.diff_id == digests.of_bytes(data)
    assert result.size == 4
    assert (tmp_path / "layer/etc/hostname").read_bytes() == b"box\n"


def test_unpack_gzip_diff_id_is_uncompressed(tmp_path):
    data = tar_bytes([file_entry("a", b"1")])

    result = unpack_bytes(gzip.compress(data), tmp_path / "layer")

    assert result.diff_id == digests.of_bytes(data)


def test_unpack_zstd_layer(tmp_path):
    import hashlib

    import zstandard

    data = tar_bytes([entry("etc"), file_entry("etc/motd", b"zstd layer\n")])
    result = unpack_bytes(zstandard.ZstdCompressor().compress(data), tmp_path / "layer")

    assert (tmp_path / "layer/etc/motd").read_bytes() == b"zstd layer\n"
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()


def test_unpack_damaged_zstd_is_rejected(tmp_path):
    with pytest.raises(ImageError):
        unpack_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 600, tmp_path / "layer")


@pytest.mark.root
def test_whiteout_becomes_char_device(tmp_path):
    data = tar_bytes([entry("etc"), file_entry("etc/.wh.motd")])

    unpack_bytes(data, tmp_path / "layer")

    whiteout = os.lstat(tmp_path / "layer/etc/motd")
    assert stat.S_ISCHR(whiteout.st_mode)
    assert os.major(whiteout.st_rdev) == 0
    assert os.minor(whiteout.st_rdev) == 0
    assert not os.path.lexists(tmp_path / "layer/etc/.wh.motd")


@pytest.mark.root
def test_opaque_whiteout_sets_xattr(tmp_path):
    data = tar_bytes([entry("var"), entry("var/cache"), file_entry("var/cache/.wh..wh..opq"),
                      file_entry("var/cache/new", b"n")])

    unpack_bytes(data, tmp_path / "layer")

    cache = tmp_path / "layer/var/cache"
    assert os.getxattr(cache, OPAQUE_XATTR) == b"y"
    assert sorted(os.listdir(cache)) == ["new"]
    assert OPAQUE_XATTR not in os.listxattr(tmp_path / "layer/var")


@pytest.mark.root
def test_unpack_preserves_metadata(tmp_path):
    xattr = entry("xattr-file", tarfile.REGTYPE, 0o644)
    xattr.pax_headers = {"SCHILY.xattr.user.comment": "hello"}
    data = tar_bytes([
        entry("bin", mode=0o751, uid=3, gid=4),
        (entry("bin/su", tarfile.REGTYPE, 0o4755, uid=0, gid=0), b"su"),
        (entry("bin/owned", tarfile.REGTYPE, 0o2640, uid=1000, gid=1001), b"o"),
        entry("bin/link", tarfile.SYMTYPE, 0o777, linkname="su", uid=5, gid=6),
        entry("bin/hard", tarfile.LNKTYPE, 0o4755, linkname="bin/su"),
        entry("fifo", tarfile.FIFOTYPE, 0o600),
        entry("null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3),
        (xattr, b"x"),
    ])

    unpack_bytes(data, tmp_path / "layer")

    root = tmp_path / "layer"
    su = os.lstat(root / "bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755
    assert su.st_mtime == 1_600_000_000
    owned = os.lstat(root / "bin/owned")
    assert (owned.st_uid, owned.st_gid) == (1000, 1001)
    assert stat.S_IMODE(owned.st_mode) == 0o2640
    bin_dir = os.lstat(root / "bin")
    assert stat.S_IMODE(bin_dir.st_mode) == 0o751
    assert (bin_dir.st_uid, bin_dir.st_gid) == (3, 4)
    assert bin_dir.st_mtime == 1_600_000_000
    link = os.lstat(root / "bin/link")
    assert os.readlink(root / "bin/link") == "su"
    assert (link.st_uid, link.st_gid) == (5, 6)
    assert os.lstat(root / "bin/hard").st_ino == su.st_ino
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    null = os.lstat(root / "null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert os.getxattr(root / "xattr-file", "user.comment") == b"hello"


def test_later_entry_replaces_earlier(tmp_path):
    data = tar_bytes([file_entry("a", b"old"), entry("a", tarfile.SYMTYPE, 0o777, linkname="x"),
                      file_entry("a", b"new")])

    unpack_bytes(data, tmp_path / "layer")

    assert (tmp_path / "layer/a").read_bytes() == b"new"


ESCAPES = {
    "absolute name": lambda outside: [file_entry(f"{outside}/canary", b"pwned")],
    "dot-dot name": lambda outside: [file_entry("../outside/canary", b"pwned")],
    "nested dot-dot": lambda outside: [entry("a"), file_entry("a/../../outside/canary", b"x")],
    "symlink parent absolute": lambda outside: [
        entry("evil", tarfile.SYMTYPE, 0o777, linkname=str(outside)),
        file_entry("evil/canary", b"pwned")],
    "symlink parent relative": lambda outside: [
        entry("evil", tarfile.SYMTYPE, 0o777, linkname="../outside"),
        file_entry("evil/new-file", b"pwned")],
    "symlink chain": lambda outside: [
        entry("up", tarfile.SYMTYPE, 0o777, linkname=".."),
        entry("evil", tarfile.SYMTYPE, 0o777, linkname="up/outside"),
        file_entry("evil/canary", b"pwned")],
    "whiteout through symlink": lambda outside: [
        entry("evil", tarfile.SYMTYPE, 0o777, linkname=str(outside)),
        file_entry("evil/.wh.canary")],
    "opaque through symlink": lambda outside: [
        entry("evil", tarfile.SYMTYPE, 0o777, linkname=str(outside)),
        file_entry("evil/.wh..wh..opq")],
    "hardlink absolute": lambda outside: [
        entry("h", tarfile.LNKTYPE, 0o644, linkname=f"{outside}/canary")],
    "hardlink climbing": lambda outside: [
        entry("h", tarfile.LNKTYPE, 0o644, linkname="../outside/canary")],
    "hardlink missing target": lambda outside: [
        entry("h", tarfile.LNKTYPE, 0o644, linkname="not-here")],
    "hardlink through symlink": lambda outside: [
        entry("evil", tarfile.SYMTYPE, 0o777, linkname=str(outside)),
        entry("h", tarfile.LNKTYPE, 0o644, linkname="evil/canary")],
    "whiteout of dot-dot": lambda outside: [entry("a"), file_entry("a/.wh..."),],
}


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_escape_rejected(layout, kind):
    root, outside, canary = layout
    data = tar_bytes(ESCAPES[kind](outside))

    with pytest.raises(LayerEscapeError, match="layer test-layer: entry"):
        unpack_bytes(data, root)

    assert_canary_untouched(outside, canary)


def test_symlink_parent_inside_allowed(tmp_path):
    data = tar_bytes([entry("real"), entry("alias", tarfile.SYMTYPE, 0o777, linkname="real"),
                      file_entry("alias/file", b"ok")])

    unpack_bytes(data, tmp_path / "layer")

    assert (tmp_path / "layer/real/file").read_bytes() == b"ok"


def test_symlink_entry_pointing_out_is_kept_as_link(layout):
    root, outside, canary = layout
    data = tar_bytes([entry("link", tarfile.SYMTYPE, 0o777, linkname=str(canary))])

    unpack_bytes(data, root)

    assert os.readlink(root / "link") == str(canary)
    assert_canary_untouched(outside, canary)


def test_file_replacing_outward_symlink_does_not_follow(layout):
    root, outside, canary = layout
    data = tar_bytes([entry("link", tarfile.SYMTYPE, 0o777, linkname=str(canary)),
                      file_entry("link", b"pwned")])

    unpack_bytes(data, root)

    assert (root / "link").read_bytes() == b"pwned"
    assert not (root / "link").is_symlink()
    assert_canary_untouched(outside, canary)


def test_unpack_truncated_tar_is_image_error(tmp_path):
    data = tar_bytes([file_entry("a", b"x" * 5000)])[:1000]

    with pytest.raises(ImageError, match="invalid layer tar"):
        unpack_bytes(data, tmp_path / "layer")


def test_directory_cache_not_fooled_by_symlink_swap(tmp_path):
    """A directory seen earlier and later replaced by a symlink must not let writes escape."""
    outside = tmp_path / "outside"
    outside.mkdir()
    link = tarfile.TarInfo("d")
    link.type = tarfile.SYMTYPE
    link.linkname = str(outside)
    data = tar_bytes([entry("d"), file_entry("d/a"), link, file_entry("d/evil")])

    with pytest.raises(LayerEscapeError):
        unpack_bytes(data, tmp_path / "layer")
    assert not (outside / "evil").exists()
