"""The build cache and the layers that build steps produce.

A cache record maps a step key (the previous step's key, the expanded instruction, the build
args it used and, for COPY and ADD, a hash of the sources) to the stage state after the step:
its config, layers and history. Records live in ROOT/build-cache/<key hex>.json and are
written atomically. A record whose layer blob or layer directory was removed since (by
`kakoi rmi`) is a miss.

A layer starts as a directory in overlayfs form (a RUN's upper dir, or the directory COPY
writes into). `commit_layer` turns it into an OCI layer tar, gzip-compressed, stores the blob
and moves the directory to layers/<chain id>/diff, where the next RUN stacks it.
"""

from __future__ import annotations

import json
import os
import stat

from kakoi.image import digest as digests

TYPE_CHECKING = False
if TYPE_CHECKING:
    import tarfile

MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# The overlayfs names of kakoi.image.layer, repeated here: that module (tarfile, dataclasses,
# pathlib) is imported only when a step runs, never on a fully cached build.
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# Below this many bytes, the builtin sha256 beats hashlib, whose OpenSSL load costs about 3 ms.
_SMALL_INPUT = 1 << 20


def sha256(size: int = 0):
    """Return a sha256 hasher, from OpenSSL only when it is to hash `size` bytes or more."""
    if size < _SMALL_INPUT:
        try:
            from _sha256 import sha256 as small
        except ImportError:
            pass
        else:
            return small()
    import hashlib

    return hashlib.sha256()


def step_key(parent: str, text: str, extra: str = "") -> str:
    """Return the cache key of a step that follows the step (or base) with key `parent`."""
    data = json.dumps([parent, text, extra], separators=(",", ":"))
    hasher = sha256()
    hasher.update(data.encode())
    return hasher.hexdigest()


class BuildCache:
    """Step records under ROOT/build-cache."""

    def __init__(self, root: str, store):
        self.directory = os.path.join(root, "build-cache")
        self.store = store

    def get(self, key: str) -> dict | None:
        try:
            with open(os.path.join(self.directory, key + ".json"), encoding="utf-8") as file:
                record = json.load(file)
        except (OSError, ValueError):
            return None
        for layer in record.get("layers", []):
            # The str paths keep pathlib out of a fully cached build.
            if not (os.path.exists(self.store._blob_file(layer["digest"]))
                    and os.path.isdir(self.store._layer_dir(layer["chain_id"]))):
                return None
        return record

    def put(self, key: str, record: dict) -> None:
        import contextlib
        import tempfile

        os.makedirs(self.directory, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".write-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(record, file, sort_keys=True)
            os.rename(temp, os.path.join(self.directory, key + ".json"))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise


def is_empty(diff: str) -> bool:
    return not os.listdir(diff)


def commit_layer(store, diff: str, parent_chain: str | None, epoch: int | None) -> dict:
    """Store the directory `diff` as a layer on top of `parent_chain`; return its record.

    The directory is moved into the store (or removed when an identical layer is there).
    """
    import contextlib
    import tempfile

    store.ensure_layout()
    tar_fd, tar_path = tempfile.mkstemp(dir=store.tmp_dir, prefix="build-tar-")
    gz_fd, gz_path = tempfile.mkstemp(dir=store.tmp_dir, prefix="build-gz-")
    try:
        with os.fdopen(tar_fd, "w+b") as tar_file:
            write_tar(diff, tar_file, epoch)
            tar_file.seek(0)
            diff_id, _ = digests.of_file(tar_file)
            tar_file.seek(0)
            with os.fdopen(gz_fd, "w+b") as gz_file:
                _compress(tar_file, gz_file)
                gz_file.seek(0)
                digest, size, _ = store.write_blob(gz_file, None, "built layer")
    finally:
        for path in (tar_path, gz_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    chain_id = diff_id if parent_chain is None else digests.of_bytes(
        f"{parent_chain} {diff_id}".encode())
    _place_layer_dir(store, diff, diff_id, chain_id)
    return {"digest": digest, "media_type": MEDIA_LAYER_GZIP, "size": size,
            "diff_id": diff_id, "chain_id": chain_id}


def _compress(source, target) -> None:
    try:
        # isal's gzip is several times faster than zlib's and writes the same format.
        from isal import igzip as gzip
    except ImportError:
        import gzip
    import shutil

    # mtime 0 and no file name keep the blob digest a function of the tar alone.
    with gzip.GzipFile(filename="", mode="wb", fileobj=target, mtime=0) as stream:
        shutil.copyfileobj(source, stream, 1 << 20)


def _place_layer_dir(store, diff: str, diff_id: str, chain_id: str) -> None:
    import shutil
    import tempfile

    final = str(store.layer_dir(chain_id))
    if os.path.isdir(final):
        shutil.rmtree(diff)
        return
    work = tempfile.mkdtemp(dir=store.tmp_dir, prefix="layer-")
    os.chmod(work, 0o755)
    os.rename(diff, os.path.join(work, "diff"))
    size = sum(os.lstat(os.path.join(current, name)).st_size
               for current, _, files in os.walk(os.path.join(work, "diff")) for name in files)
    with open(os.path.join(work, "meta.json"), "w") as file:
        json.dump({"diff_id": diff_id, "chain_id": chain_id, "size": size}, file)
    try:
        os.rename(work, final)
    except OSError:
        # Another build stored the same layer meanwhile.
        shutil.rmtree(work)


def write_tar(diff: str, out, epoch: int | None) -> None:
    """Write the overlay-form directory `diff` as an OCI layer tar, in sorted order.

    Whiteout devices (0/0 character devices) become `.wh.NAME` entries and opaque directories
    get a `.wh..wh..opq` entry. With `epoch`, later modification times are clamped to it.
    """
    import tarfile

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        links: dict[tuple[int, int], str] = {}
        for name, path in _sorted_entries(diff):
            _add_entry(archive, name, path, epoch, links)


def _sorted_entries(root: str, relative: str = ""):
    """Yield (name, path) of every entry below root, each directory followed by its contents."""
    directory = os.path.join(root, relative) if relative else root
    for name in sorted(os.listdir(directory)):
        rel = f"{relative}/{name}" if relative else name
        path = os.path.join(root, rel)
        yield rel, path
        if stat.S_ISDIR(os.lstat(path).st_mode):
            yield from _sorted_entries(root, rel)


def _add_entry(archive: tarfile.TarFile, name: str, path: str, epoch: int | None,
               links: dict) -> None:
    import tarfile

    info = os.lstat(path)
    mode = info.st_mode
    mtime = int(info.st_mtime)
    if epoch is not None:
        mtime = min(mtime, epoch)
    if stat.S_ISCHR(mode) and info.st_rdev == 0:
        parent, _, base = name.rpartition("/")
        member = _member(f"{parent}/{WHITEOUT_PREFIX}{base}" if parent
                         else WHITEOUT_PREFIX + base, info, mtime)
        member.mode = 0o644
        archive.addfile(member)
        return

    member = _member(name, info, mtime)
    if stat.S_ISDIR(mode):
        member.type = tarfile.DIRTYPE
        archive.addfile(member)
        if _is_opaque(path):
            opaque = _member(f"{name}/{OPAQUE_WHITEOUT}", info, mtime)
            opaque.mode = 0o644
            archive.addfile(opaque)
    elif stat.S_ISLNK(mode):
        member.type = tarfile.SYMTYPE
        member.linkname = os.readlink(path)
        archive.addfile(member)
    elif stat.S_ISREG(mode):
        key = (info.st_dev, info.st_ino)
        if info.st_nlink > 1 and key in links:
            member.type = tarfile.LNKTYPE
            member.linkname = links[key]
            archive.addfile(member)
            return
        links[key] = name
        member.size = info.st_size
        with open(path, "rb") as file:
            archive.addfile(member, file)
    elif stat.S_ISFIFO(mode):
        member.type = tarfile.FIFOTYPE
        archive.addfile(member)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        member.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        member.devmajor = os.major(info.st_rdev)
        member.devminor = os.minor(info.st_rdev)
        archive.addfile(member)
    # Sockets cannot be stored in a tar and are left out, as Docker does.


def _member(name: str, info: os.stat_result, mtime: int) -> tarfile.TarInfo:
    import tarfile

    member = tarfile.TarInfo(name)
    member.mode = stat.S_IMODE(info.st_mode)
    member.uid = info.st_uid
    member.gid = info.st_gid
    member.uname = ""
    member.gname = ""
    member.mtime = mtime
    return member


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False
