"""Layer tars: decompression and safe extraction into a directory in overlayfs format.

Each layer is unpacked on its own, not on top of its parent. OCI whiteouts `.wh.NAME` become
the overlayfs whiteout (a 0/0 character device NAME) and `.wh..wh..opq` becomes the xattr
trusted.overlay.opaque=y on its directory, so the unpacked layers stack as overlay lowerdirs.

Extraction parses the tar with tarfile but creates every file itself, because no entry may
write outside the layer root. It rejects absolute names, `..` that climbs out, writes through
a parent symlink that leads out, and hardlinks to targets outside the layer.

A layer can also be unpacked while it downloads: StreamExtractor takes the uncompressed tar in
chunks from the downloading thread and extracts it in a thread of its own.
"""

from __future__ import annotations

import errno
import os
import queue
import shutil
import stat
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kakoi.errors import ImageError, LayerEscapeError
from kakoi.image.digest import HashingReader

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX_PREFIX = "SCHILY.xattr."

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


@dataclass
class UnpackResult:
    """The uncompressed digest of an unpacked layer and the sum of its regular file sizes."""

    diff_id: str
    size: int


def compression_of(stream: BinaryIO) -> str:
    """Return "gzip", "zstd" or "none" from the first bytes of a seekable stream."""
    position = stream.tell()
    head = stream.read(4)
    stream.seek(position)
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


def open_uncompressed(stream: BinaryIO, what: str) -> BinaryIO:
    """Wrap a seekable stream so that reads return the uncompressed tar.

    A read of damaged compressed data raises ImageError, whichever library decompresses.
    """
    kind = compression_of(stream)
    if kind == "gzip":
        try:
            # isal's gzip is several times faster than zlib's, and reads the same format.
            from isal import igzip as gzip
        except ImportError:
            import gzip

        return _DecompressedReader(gzip.GzipFile(fileobj=stream, mode="rb"), kind, what)
    if kind == "zstd":
        try:
            import zstandard
        except ImportError:
            raise ImageError(f"zstd-compressed layer {what} needs the zstandard package; "
                             "install kakoi's dependencies") from None
        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
        return _DecompressedReader(reader, kind, what)
    return stream


class _DecompressedReader:
    """A decompressing stream whose errors become ImageError naming the layer.

    Each library raises its own kinds (isal's IsalError, gzip's BadGzipFile, EOFError for a
    cut stream, zstandard's ZstdError), so any exception of a read counts as damage.
    """

    def __init__(self, stream: BinaryIO, kind: str, label: str):
        self._stream = stream
        self._kind = kind
        self._label = label

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except Exception as error:
            raise ImageError(f"{self._label} is damaged: invalid {self._kind} data "
                             f"({error or type(error).__name__}); remove the image and pull "
                             "or load it again") from None


def unpack(stream: BinaryIO, root: Path, what: str) -> UnpackResult:
    """Extract the layer in `stream` (gzip or plain tar) into the existing directory `root`.

    Returns the sha256 of the uncompressed tar, to compare with the config's diff_id.
    """
    reader = HashingReader(open_uncompressed(stream, what))
    size = extract(reader, root, what)
    reader.drain()
    return UnpackResult(reader.digest, size)


def extract(reader: BinaryIO, root: Path | str, what: str) -> int:
    """Extract the uncompressed tar read from `reader` into `root`; return the regular file bytes.

    The reader is left just after the tar's end-of-archive blocks.
    """
    extractor = _Extractor(root, what)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            for member in archive:
                extractor.add(archive, member)
    except (tarfile.TarError, EOFError) as error:
        raise ImageError(f"invalid layer tar {what}: {error}; the archive may be damaged") from None
    except OSError as error:
        if isinstance(error, ImageError):
            raise
        raise ImageError(f"unpacking layer {what} failed: {error}") from None
    extractor.finish()
    return extractor.size


class _Aborted(Exception):
    """The producer of a streamed layer gave up; the extraction stops."""


_END = None
_ABORT = object()
# Chunks waiting for the extracting thread; each is at most blob._MAX_OUTPUT bytes.
_QUEUE_CHUNKS = 4


class _QueueReader:
    """A read-only stream over the chunks that another thread puts into a queue."""

    def __init__(self, chunks: queue.Queue):
        self._chunks = chunks
        self._buffer = b""
        self._position = 0
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        if self._position >= len(self._buffer):
            if self.ended:
                return b""
            chunk = self._chunks.get()
            if chunk is _ABORT:
                raise _Aborted()
            if chunk is _END:
                self.ended = True
                return b""
            self._buffer, self._position = chunk, 0
        end = len(self._buffer) if size is None or size < 0 else self._position + size
        data = self._buffer[self._position:end]
        self._position += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


class StreamExtractor:
    """Extracts a tar that arrives in chunks into `root`, in a thread of its own.

    The downloading thread calls feed for each uncompressed chunk, then close (which waits for
    the extraction and returns the regular file bytes, or raises its error) or abort.
    """

    def __init__(self, root: Path | str, what: str):
        self.what = what
        self._chunks: queue.Queue = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._reader = _QueueReader(self._chunks)
        self._root = root
        self._size = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kakoi-unpack", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._size = extract(self._reader, self._root, self.what)
            self._reader.drain()
        except _Aborted:
            return
        except BaseException as error:
            self._error = error
            # Keep consuming chunks: a producer already waiting on the full queue is
            # released, and feed() queues nothing more once _error is set.
            try:
                self._reader.drain()
            except _Aborted:
                pass

    def feed(self, data: bytes) -> None:
        # After a failure the chunks are only drained; skip the queue to save the copies.
        if data and self._error is None:
            self._chunks.put(data)

    def close(self) -> int:
        self._chunks.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._size

    def abort(self) -> None:
        self._chunks.put(_ABORT)
        self._thread.join()


def _clean_name(name: str, what: str, link_of: str | None = None) -> tuple[str, ...]:
    """Split a member name into components, resolving `.` and `..` without leaving the root.

    With `link_of`, `name` is the hardlink target of that entry, and errors name both.
    """
    subject = f"entry {name!r}" if link_of is None else (
        f"entry {link_of!r} with hardlink target {name!r}")
    if name.startswith("/"):
        raise LayerEscapeError(f"layer {what}: {subject} is an absolute path; "
                               "the layer is unsafe and was rejected")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise LayerEscapeError(f"layer {what}: {subject} climbs above the layer root; "
                                       "the layer is unsafe and was rejected")
            parts.pop()
            continue
        parts.append(part)
    return tuple(parts)


class _Extractor:
    """Creates the entries of one layer under root; directory metadata is applied last."""

    def __init__(self, root: Path | str, what: str):
        self.root = os.path.normpath(os.fspath(root))
        self.real_root = os.path.realpath(root)
        self.what = what
        self.size = 0
        self.is_root = os.geteuid() == 0
        self._directories: list[tuple[str, tarfile.TarInfo]] = []
        # Paths that this extraction created or saw as real directories, reached through real
        # directories only, so entries below them skip the per-component checks. Removing or
        # replacing one drops it and everything below it; a path through a symlink never enters.
        self._known_dirs: set[str] = {self.root}

    def add(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _clean_name(member.name, self.what)
        if not parts:
            self._directories.append((self.root, member))
            return

        parent = self._parent_dir(parts, member.name)
        base = parts[-1]
        if base == OPAQUE_WHITEOUT:
            os.setxattr(parent, OPAQUE_XATTR, b"y", follow_symlinks=False)
            return
        if base.startswith(WHITEOUT_PREFIX):
            if base[len(WHITEOUT_PREFIX):] in ("", ".", ".."):
                raise self._escape(member.name, "is a whiteout without a valid file name")
            self._whiteout(os.path.join(parent, base[len(WHITEOUT_PREFIX):]), member)
            return
        path = os.path.join(parent, base)
        if member.isdir():
            self._make_directory(member, path, trusted=parent in self._known_dirs)
            return
        try:
            self._create(archive, member, path)
        except FileExistsError:
            # A later entry replaces an earlier one; checked only then, as most paths are new.
            self._remove_existing(path, keep_directory=False)
            self._create(archive, member, path)

    def finish(self) -> None:
        # Directories get their mode and mtime after their children exist, deepest first,
        # so that creating a child does not change the parent's mtime afterwards.
        for path, member in reversed(self._directories):
            self._apply_metadata(path, member)

    def _escape(self, name: str, why: str) -> LayerEscapeError:
        return LayerEscapeError(f"layer {self.what}: entry {name!r} {why}; "
                                "the layer is unsafe and was rejected")

    def _parent_dir(self, parts: tuple[str, ...], name: str, create: bool = True) -> str:
        """Return the parent directory of an entry, checked to be inside the layer root.

        Missing parents are created when `create` is set; otherwise the path is returned as is.
        """
        if len(parts) == 1:
            return self.root
        parent = self.root + "/" + "/".join(parts[:-1])
        if parent in self._known_dirs:
            return parent

        current = self.root
        trusted = True
        for part in parts[:-1]:
            current = current + "/" + part
            if trusted and current in self._known_dirs:
                continue
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                if not create:
                    return current
                os.mkdir(current, 0o755)
                if trusted:
                    self._known_dirs.add(current)
                continue
            if stat.S_ISLNK(mode):
                self._check_inside(current, name)
                trusted = False
            elif not stat.S_ISDIR(mode):
                raise ImageError(f"layer {self.what}: entry {name!r} has a parent that is not "
                                 "a directory; the layer is malformed")
            elif trusted:
                self._known_dirs.add(current)
        return current

    def _check_inside(self, path: str, name: str) -> None:
        real = os.path.realpath(path)
        if real != self.real_root and not real.startswith(self.real_root + os.sep):
            raise self._escape(name, "is written through a symlink that leads outside the layer")
        if not os.path.isdir(real):
            raise ImageError(f"layer {self.what}: entry {name!r} has a parent symlink that is "
                             "not a directory; the layer is malformed")

    def _remove_existing(self, path: str, keep_directory: bool) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            if keep_directory:
                return
            self._forget_directory(path)
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def _forget_directory(self, path: str) -> None:
        if os.path.dirname(path) not in self._known_dirs:
            # Reached through a symlink: the directory may be known under another spelling.
            self._known_dirs = {self.root}
            return
        below = path + "/"
        self._known_dirs = {known for known in self._known_dirs
                            if known != path and not known.startswith(below)}

    def _whiteout(self, path: str, member: tarfile.TarInfo) -> None:
        self._remove_existing(path, keep_directory=False)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        self._apply_metadata(path, member, mode=0o000)

    def _make_directory(self, member: tarfile.TarInfo, path: str, trusted: bool) -> None:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                self._remove_existing(path, keep_directory=False)
                os.mkdir(path, 0o700)
        if trusted:
            self._known_dirs.add(path)
        self._directories.append((path, member))

    def _create(self, archive: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        """Create a non-directory entry; FileExistsError when something is already at path."""
        if member.isreg():
            self._write_file(archive, member, path)
            return
        if member.islnk():
            self._hardlink(member, path)
            return
        if member.issym():
            os.symlink(member.linkname, path)
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        else:
            raise ImageError(f"layer {self.what}: entry {member.name!r} has unsupported tar "
                             f"type {member.type!r}")
        self._apply_metadata(path, member)

    def _hardlink(self, member: tarfile.TarInfo, path: str) -> None:
        parts = _clean_name(member.linkname, self.what, link_of=member.name)
        if not parts:
            raise self._escape(member.name, "is a hardlink to the layer root")
        parent = self._parent_dir(parts, member.name, create=False)
        target = os.path.join(parent, parts[-1])
        if not os.path.lexists(target):
            raise self._escape(member.name, f"is a hardlink to {member.linkname!r}, which is not "
                               "in this layer")
        if stat.S_ISDIR(os.lstat(target).st_mode):
            raise self._escape(member.name, f"is a hardlink to directory {member.linkname!r}")
        os.link(target, path, follow_symlinks=False)

    def _write_file(self, archive: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            self._copy_data(archive, member, fd)
            # Metadata through the open file: no second path lookup for each call.
            if self.is_root:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode)
            self._apply_xattrs(fd, member)
            mtime_ns = int(member.mtime * 1_000_000_000)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        self.size += member.size

    def _copy_data(self, archive: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        if member.sparse is not None:
            source = archive.extractfile(member)
            while chunk := source.read(_CHUNK):
                _write_all(fd, chunk)
            return
        # The member's data follows its header in the archive stream; reading it directly
        # skips the file object that extractfile builds for every entry.
        stream = archive.fileobj
        if stream.tell() != member.offset_data:
            stream.seek(member.offset_data)
        remaining = member.size
        while remaining:
            chunk = stream.read(min(remaining, _CHUNK))
            if not chunk:
                raise tarfile.ReadError(f"unexpected end of data in {member.name!r}")
            _write_all(fd, chunk)
            remaining -= len(chunk)

    def _apply_metadata(self, path: str, member: tarfile.TarInfo, mode: int | None = None) -> None:
        # chown before chmod, because chown clears the setuid and setgid bits.
        if self.is_root:
            os.lchown(path, member.uid, member.gid)
        if not member.issym():
            os.chmod(path, member.mode if mode is None else mode)
        self._apply_xattrs(path, member)
        mtime_ns = int(member.mtime * 1_000_000_000)
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def _apply_xattrs(self, target: str | int, member: tarfile.TarInfo) -> None:
        if not member.pax_headers:
            return
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR_PAX_PREFIX):
                continue
            name = key[len(_XATTR_PAX_PREFIX):]
            data = value.encode("utf-8", "surrogateescape")
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, data)
                else:
                    os.setxattr(target, name, data, follow_symlinks=False)
            except OSError as error:
                if error.errno in (errno.ENOTSUP, errno.EPERM) and member.issym():
                    continue
                raise ImageError(f"layer {self.what}: setting xattr {name} on {member.name!r} "
                                 f"failed: {error.strerror}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
