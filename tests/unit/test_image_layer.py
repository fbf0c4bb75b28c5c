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
from kakoi.image.layer import OPAQUE_XATTR, StreamExtractor, extract, unpack
from kakoi.kernel.tree import remove_tree


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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_file_modes_survive_any_umask(tmp_path, umask):
    modes = {"plain": 0o644, "shared": 0o666, "private": 0o600, "tool": 0o755,
             "locked": 0o000, "sticky": 0o1777}
    data = tar_bytes([file_entry(name, b"x", mode) for name, mode in modes.items()])
    previous = os.umask(umask)
    try:
        unpack_bytes(data, tmp_path / "layer")
    finally:
        os.umask(previous)

    for name, mode in modes.items():
        assert stat.S_IMODE(os.lstat(tmp_path / "layer" / name).st_mode) == mode, name


@pytest.mark.root
def test_root_owned_files_ignore_a_setgid_root(tmp_path):
    # A setgid layer dir gives new files its group. Entries owned by 0:0 must still end up
    # 0:0, although kakoi skips the chown of such entries where it can.
    layer = tmp_path / "layer"
    layer.mkdir()
    os.chown(layer, 0, 4321)
    os.chmod(layer, 0o2755)
    data = tar_bytes([entry("dir", mode=0o755), (entry("dir/file", tarfile.REGTYPE, 0o644), b"x"),
                      entry("link", tarfile.SYMTYPE, 0o777, linkname="dir/file")])

    unpack_bytes(data, layer)

    for name in ("dir", "dir/file", "link"):
        assert os.lstat(layer / name).st_gid == 0, name


def metadata_of(path):
    status = os.lstat(path)
    return stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid, status.st_mtime


@pytest.mark.root
def test_directory_replaced_by_outward_symlink_keeps_metadata_inside(layout):
    root, outside, canary = layout
    (outside / "dir").mkdir()
    before = {path: metadata_of(path) for path in (canary, outside / "dir")}
    inner = entry("a/dir", mode=0o2777, uid=1000, gid=1000)
    inner.pax_headers = {"SCHILY.xattr.user.planted": "yes"}
    data = tar_bytes([
        entry("d", mode=0o4777, uid=1000, gid=1000),
        entry("d", tarfile.SYMTYPE, 0o777, linkname=str(canary)),
        entry("a"), inner,
        entry("a", tarfile.SYMTYPE, 0o777, linkname=str(outside)),
    ])

    unpack_bytes(data, root)

    assert {path: metadata_of(path) for path in before} == before
    assert "user.planted" not in os.listxattr(outside / "dir")
    assert os.readlink(root / "d") == str(canary)


@pytest.mark.parametrize("replacement, check", [
    (file_entry("d", b"file", 0o600),
     lambda root: stat.S_IMODE(os.lstat(root / "d").st_mode) == 0o600),
    (entry("d", tarfile.SYMTYPE, 0o777, linkname="nowhere"),
     lambda root: os.readlink(root / "d") == "nowhere"),
    (entry("d", tarfile.SYMTYPE, 0o777, linkname="t"),
     lambda root: stat.S_IMODE(os.lstat(root / "t").st_mode) == 0o755),
    (file_entry(".wh.d"),
     lambda root: stat.S_IMODE(os.lstat(root / "d").st_mode) == 0),
], ids=["file", "dangling symlink", "symlink to a sibling", "whiteout"])
def test_directory_replaced_by_a_later_entry(tmp_path, replacement, check):
    data = tar_bytes([entry("d", mode=0o777), entry("t", mode=0o755), replacement])

    unpack_bytes(data, tmp_path / "layer")

    assert check(tmp_path / "layer")


def test_directory_given_twice_keeps_the_last_entry(tmp_path):
    data = tar_bytes([entry("d", mode=0o700), file_entry("d/f", b"x"), entry("d", mode=0o751)])

    unpack_bytes(data, tmp_path / "layer")

    assert stat.S_IMODE(os.lstat(tmp_path / "layer/d").st_mode) == 0o751


@pytest.mark.root
def test_overlay_xattrs_from_the_layer_are_dropped(tmp_path):
    redirected = entry("d")
    redirected.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc",
                              "SCHILY.xattr.user.kept": "yes"}

    unpack_bytes(tar_bytes([redirected]), tmp_path / "layer")

    names = os.listxattr(tmp_path / "layer/d")
    assert "trusted.overlay.redirect" not in names
    assert "user.kept" in names


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


def test_unpack_gnu_format_long_names(tmp_path):
    long_dir = "/".join(["d" * 60] * 5)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(entry(long_dir))
        info, data = file_entry(long_dir + "/file", b"deep")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        archive.addfile(entry("link", tarfile.SYMTYPE, 0o777, linkname="t" * 150))

    result = unpack_bytes(buffer.getvalue(), tmp_path / "layer")

    assert (tmp_path / "layer" / long_dir / "file").read_bytes() == b"deep"
    assert os.readlink(tmp_path / "layer/link") == "t" * 150
    assert result.size == 4


def test_extract_leaves_reader_after_end_blocks(tmp_path):
    data = tar_bytes([file_entry("a", b"x" * 700)])
    stream = io.BytesIO(data)
    (tmp_path / "layer").mkdir()

    size = extract(stream, tmp_path / "layer", "test-layer")

    assert size == 700
    assert stream.tell() == 512 + 1024 + 1024  # header, padded data, two zero blocks


def test_unpack_sparse_entry_is_image_error(tmp_path):
    header = bytearray(512)
    header[0:5] = b"holes"
    header[100:108] = b"0000644\0"
    header[124:136] = b"00000000000\0"
    header[136:148] = b"00000000000\0"
    header[156:157] = b"S"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)

    with pytest.raises(ImageError, match="entry 'holes' is a sparse file"):
        unpack_bytes(bytes(header) + bytes(1024), tmp_path / "layer")


def test_stream_extractor_small_chunks(tmp_path):
    data = tar_bytes([entry("etc"), file_entry("etc/hostname", b"box\n"),
                      file_entry("etc/big", bytes(range(256)) * 5000)])
    (tmp_path / "layer").mkdir()
    extractor = StreamExtractor(tmp_path / "layer", "test-layer")

    for start in range(0, len(data), 1000):
        extractor.feed(data[start:start + 1000])
    size = extractor.close()

    assert size == 4 + 256 * 5000
    assert (tmp_path / "layer/etc/hostname").read_bytes() == b"box\n"
    assert (tmp_path / "layer/etc/big").read_bytes() == bytes(range(256)) * 5000


def test_stream_extractor_reports_damaged_tar(tmp_path):
    data = bytearray(tar_bytes([file_entry("a", b"x")]))
    data[0] ^= 0xFF
    (tmp_path / "layer").mkdir()
    extractor = StreamExtractor(tmp_path / "layer", "test-layer")

    for start in range(0, len(data), 100):
        extractor.feed(bytes(data[start:start + 100]))

    with pytest.raises(ImageError, match="invalid layer tar test-layer: header at byte 0 has a "
                                         "bad checksum"):
        extractor.close()


@pytest.mark.parametrize("field", ["mode", "devmajor"])
def test_unpack_out_of_range_field_is_image_error(tmp_path, field):
    kind = tarfile.CHRTYPE if field == "devmajor" else tarfile.REGTYPE
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(entry("node", kind, 0o644))
    data = bytearray(buffer.getvalue())
    # Write 2**40 in base-256 into the field, then fix the header checksum.
    offset = {"mode": 100, "devmajor": 329}[field]
    data[offset:offset + 8] = (2**40 | 1 << 63).to_bytes(8, "big")
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])

    with pytest.raises(ImageError, match="out of range"):
        unpack_bytes(bytes(data), tmp_path / "layer")


def test_unpack_empty_layer_hashes_all_padding(tmp_path):
    data = bytes(10240)  # end-of-archive blocks, then padding to a 10240-byte record

    result = unpack_bytes(data, tmp_path / "layer")

    assert result.size == 0
    assert result.diff_id == digests.of_bytes(data)
    assert os.listdir(tmp_path / "layer") == []


def test_unpack_fractional_mtime_is_exact(tmp_path):
    info, data = file_entry("fraction", b"f")
    info.mtime = 1_600_000_000.25  # written as the pax record mtime=1600000000.25

    unpack_bytes(tar_bytes([(info, data), entry("dir", mtime=1_600_000_000.5)]),
                 tmp_path / "layer")

    assert os.lstat(tmp_path / "layer/fraction").st_mtime_ns == 1_600_000_000_250_000_000
    assert os.lstat(tmp_path / "layer/dir").st_mtime_ns == 1_600_000_000_500_000_000


@pytest.mark.parametrize("field, value", [("path", "a\0b"), ("linkpath", "tar\0get"),
                                          ("SCHILY.xattr.user.a\0b", "x")])
def test_pax_nul_byte_rejected(tmp_path, field, value):
    link = entry("link", tarfile.SYMTYPE, 0o777, linkname="target")
    link.pax_headers = {field: value}

    with pytest.raises(ImageError, match="embedded null byte .* the layer is malformed"):
        unpack_bytes(tar_bytes([link]), tmp_path / "layer")


def test_too_deep_layer_short_error(tmp_path):
    deep = "/".join(["d"] * 2100)
    data = tar_bytes([file_entry(deep + "/f", b"x")])

    try:
        with pytest.raises(ImageError, match="deeper than the system's path limit") as failure:
            unpack_bytes(data, tmp_path / "layer")
    finally:
        # pytest's own cleanup of tmp_path recurses and would stop short of this tree.
        remove_tree(str(tmp_path / "layer"))
    assert len(str(failure.value)) < 400
