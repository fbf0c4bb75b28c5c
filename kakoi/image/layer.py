"""Layer tars: decompression and safe extraction into a directory in overlayfs format.

Each layer is unpacked on its own, not on top of its parent. OCI whiteouts `.wh.NAME` become
the overlayfs whiteout (a 0/0 character device NAME) and `.wh..wh..opq` becomes the xattr
trusted.overlay.opaque=y on its directory, so the unpacked layers stack as overlay lowerdirs.

Extraction reads the tar with tarstream.TarReader and creates every file itself, because no
entry may write outside the layer root. It rejects absolute names, `..` that climbs out, writes
through a parent symlink that leads out, and hardlinks to targets outside the layer.

A layer can also be unpacked while it downloads: StreamExtractor takes the uncompressed tar in
chunks from the downloading thread and extracts it in a thread of its own.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import threading

from kakoi.errors import ImageError, LayerEscapeError
from kakoi.image.digest import HashingReader
from kakoi.image.tarstream import (
    BLOCK_DEVICE,
    CHARACTER_DEVICE,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR_TYPES,
    SYMLINK,
    TarEntry,
    TarReader,
)
from kakoi.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import BinaryIO

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_OVERLAY_XATTR_PREFIX = "trusted.overlay."

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


class UnpackResult(Record):
    """The uncompressed digest of an unpacked layer and the sum of its regular file sizes."""

    __slots__ = ("diff_id", "size")

    def __init__(self, diff_id: str, size: int):
        self.diff_id = diff_id
        self.size = size


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
            raise ImageError(f"zstd-compressed {_layer(what)} needs the zstandard package; "
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
    This thread reads, decompresses and hashes while another creates the files: the first
    work releases the GIL, so the two overlap (about a fifth less time for small files).
    """
    reader = HashingReader(open_uncompressed(stream, what))
    extractor = StreamExtractor(root, what)
    try:
        while not extractor.failed and (chunk := reader.read(_CHUNK)):
            extractor.feed(chunk)
    except BaseException:
        extractor.abort()
        raise
    size = extractor.close()
    return UnpackResult(reader.digest, size)


def extract(reader: BinaryIO, root: Path | str, what: str) -> int:
    """Extract the uncompressed tar read from `reader` into `root`; return the regular file bytes.

    The reader is left just after the tar's end-of-archive blocks.
    """
    archive = TarReader(reader, what)
    extractor = _Extractor(root, what, archive)
    try:
        for entry in archive:
            extractor.add(entry)
        extractor.finish()
    except OSError as error:
        if isinstance(error, ImageError):
            raise
        raise ImageError(f"unpacking {_layer(what)} failed: {_describe(error)}") from None
    except OverflowError as error:
        # Base-256 header fields can hold values wider than the C types of chmod and mknod.
        raise ImageError(f"unpacking {_layer(what)} failed: a mode, uid, gid or device number is "
                         f"out of range ({error}); the layer is malformed") from None
    except ValueError as error:
        # A pax path, link target or xattr name with a NUL byte, which no system call takes.
        raise ImageError(f"unpacking {_layer(what)} failed: {error} in an entry's name, link "
                         "target or xattr; the layer is malformed") from None
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

    @property
    def failed(self) -> bool:
        """True once the extraction has failed; close() raises its error."""
        return self._error is not None

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


def _describe(error: OSError) -> str:
    """Return an OSError's reason and file, with a path over 200 characters shortened."""
    path = error.filename if isinstance(error.filename, str) else ""
    if len(path) > 200:
        path = f"{path[:80]}...{path[-80:]} ({len(path)} characters)"
    text = f"{error.strerror or error}" + (f": {path}" if path else "")
    if error.errno == errno.ENAMETOOLONG:
        text += "; the layer nests its files deeper than the system's path limit"
    return text


def _layer(what: str) -> str:
    """Return "layer X" for error messages, whether or not the caller's label has "layer"."""
    return "layer " + what.removeprefix("layer ")


def _clean_name(name: str, what: str, link_of: str | None = None) -> list[str]:
    """Split an entry name into components, resolving `.` and `..` without leaving the root.

    With `link_of`, `name` is the hardlink target of that entry, and errors name both.
    """
    parts = name.split("/")
    # Most names have no empty, `.` or `..` component, and are returned as split.
    if "" not in parts and "." not in parts and ".." not in parts:
        return parts

    subject = f"entry {name!r}" if link_of is None else (
        f"entry {link_of!r} with hardlink target {name!r}")
    if name.startswith("/"):
        raise LayerEscapeError(f"{_layer(what)}: {subject} is an absolute path; "
                               "the layer is unsafe and was rejected")
    clean: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not clean:
                raise LayerEscapeError(f"{_layer(what)}: {subject} climbs above the layer root; "
                                       "the layer is unsafe and was rejected")
            clean.pop()
            continue
        clean.append(part)
    return clean


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Extractor:
    """Creates the entries of one layer under root; directory metadata is applied last."""

    def __init__(self, root: Path | str, what: str, archive: TarReader):
        self.root = os.path.normpath(os.fspath(root))
        self.real_root = os.path.realpath(root)
        self.what = what
        self.archive = archive
        self.size = 0
        self.is_root = os.geteuid() == 0
        # New files and directories belong to root:root already, unless a setgid directory
        # passes its group on. No directory created here has setgid before finish(), so only
        # the root's own bit matters. Then a chown to 0:0 can be skipped.
        self._created_as_root = (self.is_root and os.getegid() == 0
                                 and not os.stat(self.root).st_mode & stat.S_ISGID)
        # Permission bits that open() gives a new file unchanged.
        self._exact_bits = 0o777 & ~_process_umask()
        # Directory entries by path, with the device and inode of the directory made for each.
        # finish() gives metadata only to that same directory, never to what a later entry
        # put at its path, such as a symlink that leads out of the layer. A path given twice
        # keeps its last entry, as tar does.
        self._directories: dict[str, tuple[TarEntry, int, int]] = {}
        # Paths that this extraction created or saw as real directories, reached through real
        # directories only, so entries below them skip the per-component checks. Removing or
        # replacing one drops it and everything below it; a path through a symlink never enters.
        self._known_dirs: set[str] = {self.root}

    def add(self, entry: TarEntry) -> None:
        name = entry.name
        parts = _clean_name(name, self.what)
        if not parts:
            self._record_directory(self.root, entry)
            return

        parent = self._parent_dir(parts, name)
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._add_whiteout(parent, base, entry)
            return
        path = parent + "/" + base
        kind = entry.type
        if kind == DIRECTORY:
            self._make_directory(entry, path, trusted=parent in self._known_dirs)
            return
        create = self._write_file if kind in REGULAR_TYPES else self._create
        try:
            create(entry, path)
        except FileExistsError:
            # A later entry replaces an earlier one; checked only then, as most paths are new.
            self._remove_existing(path, keep_directory=False)
            create(entry, path)

    def finish(self) -> None:
        # Directories get their mode and mtime after their children exist, deepest first,
        # so that creating a child does not change the parent's mtime afterwards.
        for path, (entry, device, inode) in reversed(self._directories.items()):
            self._apply_directory_metadata(path, entry, device, inode)

    def _record_directory(self, path: str, entry: TarEntry) -> None:
        status = os.lstat(path)
        self._directories.pop(path, None)
        self._directories[path] = (entry, status.st_dev, status.st_ino)

    def _apply_directory_metadata(self, path: str, entry: TarEntry, device: int,
                                  inode: int) -> None:
        """Set a directory's metadata through an fd, if the path still leads to it."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return  # a later entry replaced it
            raise
        try:
            status = os.fstat(fd)
            if (status.st_dev, status.st_ino) != (device, inode):
                return  # another directory, reached through a replaced parent
            if self.is_root and (entry.uid or entry.gid or not self._created_as_root):
                os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode)
            if entry.pax_headers:
                self._apply_xattrs(fd, entry)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def _escape(self, name: str, why: str) -> LayerEscapeError:
        return LayerEscapeError(f"{_layer(self.what)}: entry {name!r} {why}; "
                                "the layer is unsafe and was rejected")

    def _parent_dir(self, parts: list[str], name: str, create: bool = True) -> str:
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
                raise ImageError(f"{_layer(self.what)}: entry {name!r} has a parent that is not "
                                 "a directory; the layer is malformed")
            elif trusted:
                self._known_dirs.add(current)
        return current

    def _check_inside(self, path: str, name: str) -> None:
        real = os.path.realpath(path)
        if real != self.real_root and not real.startswith(self.real_root + os.sep):
            raise self._escape(name, "is written through a symlink that leads outside the layer")
        if not os.path.isdir(real):
            raise ImageError(f"{_layer(self.what)}: entry {name!r} has a parent symlink that is "
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
            from kakoi.kernel.tree import remove_tree

            remove_tree(path)
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

    def _add_whiteout(self, parent: str, base: str, entry: TarEntry) -> None:
        if base == OPAQUE_WHITEOUT:
            os.setxattr(parent, OPAQUE_XATTR, b"y", follow_symlinks=False)
            return
        hidden = base[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", ".."):
            raise self._escape(entry.name, "is a whiteout without a valid file name")
        path = parent + "/" + hidden
        self._remove_existing(path, keep_directory=False)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        self._apply_metadata(path, entry, mode=0o000)

    def _make_directory(self, entry: TarEntry, path: str, trusted: bool) -> None:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                self._remove_existing(path, keep_directory=False)
                os.mkdir(path, 0o700)
        if trusted:
            self._known_dirs.add(path)
        self._record_directory(path, entry)

    def _create(self, entry: TarEntry, path: str) -> None:
        """Create an entry that is not a directory or regular file.

        Raises FileExistsError when something is already at path.
        """
        kind = entry.type
        if kind == HARDLINK:
            self._hardlink(entry, path)
            return
        if kind == SYMLINK:
            os.symlink(entry.linkname, path)
        elif kind == FIFO:
            os.mkfifo(path, 0o600)
        elif kind == CHARACTER_DEVICE or kind == BLOCK_DEVICE:
            file_type = stat.S_IFCHR if kind == CHARACTER_DEVICE else stat.S_IFBLK
            os.mknod(path, file_type | 0o600, os.makedev(entry.devmajor, entry.devminor))
        else:
            raise ImageError(f"{_layer(self.what)}: entry {entry.name!r} has unsupported tar "
                             f"type {kind!r}")
        self._apply_metadata(path, entry)

    def _hardlink(self, entry: TarEntry, path: str) -> None:
        parts = _clean_name(entry.linkname, self.what, link_of=entry.name)
        if not parts:
            raise self._escape(entry.name, "is a hardlink to the layer root")
        parent = self._parent_dir(parts, entry.name, create=False)
        target = os.path.join(parent, parts[-1])
        if not os.path.lexists(target):
            raise self._escape(entry.name, f"is a hardlink to {entry.linkname!r}, which is not "
                               "in this layer")
        if stat.S_ISDIR(os.lstat(target).st_mode):
            raise self._escape(entry.name, f"is a hardlink to directory {entry.linkname!r}")
        os.link(target, path, follow_symlinks=False)

    def _write_file(self, entry: TarEntry, path: str) -> None:
        mode = entry.mode
        # A mode that the umask leaves intact, without setuid, setgid or sticky (which chown
        # would clear), is given at creation: one fchmod less per file than tar makes.
        exact = mode & ~self._exact_bits == 0
        fd = os.open(path, _CREATE_FLAGS, mode if exact else 0o600)
        try:
            if entry.size:
                self._copy_data(fd)
            # Metadata through the open file: no second path lookup for each call.
            if self.is_root and (entry.uid or entry.gid or not self._created_as_root):
                os.fchown(fd, entry.uid, entry.gid)
            if not exact:
                os.fchmod(fd, mode)
            if entry.pax_headers:
                self._apply_xattrs(fd, entry)
            mtime_ns = entry.mtime_ns
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        self.size += entry.size

    def _copy_data(self, fd: int) -> None:
        # A small file's data comes as one chunk, read from the stream with the next header.
        read_chunk = self.archive.read_chunk
        while chunk := read_chunk():
            written = os.write(fd, chunk)
            if written < len(chunk):
                _write_all(fd, chunk[written:])

    def _apply_metadata(self, path: str, entry: TarEntry, mode: int | None = None) -> None:
        # chown before chmod, because chown clears the setuid and setgid bits.
        if self.is_root and (entry.uid or entry.gid or not self._created_as_root):
            os.lchown(path, entry.uid, entry.gid)
        if entry.type != SYMLINK:
            os.chmod(path, entry.mode if mode is None else mode)
        if entry.pax_headers:
            self._apply_xattrs(path, entry)
        mtime_ns = entry.mtime_ns
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def _apply_xattrs(self, target: str | int, entry: TarEntry) -> None:
        for key, value in entry.pax_headers.items():
            if not key.startswith(_XATTR_PAX_PREFIX):
                continue
            name = key[len(_XATTR_PAX_PREFIX):]
            if name.startswith(_OVERLAY_XATTR_PREFIX):
                # overlayfs reads these (redirect, origin, metacopy) from its layers; only
                # the opaque marker that whiteout conversion writes may reach it.
                continue
            data = value.encode("utf-8", "surrogateescape")
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, data)
                else:
                    os.setxattr(target, name, data, follow_symlinks=False)
            except OSError as error:
                if error.errno in (errno.ENOTSUP, errno.EPERM) and entry.type == SYMLINK:
                    continue
                raise ImageError(f"{_layer(self.what)}: setting xattr {name} on {entry.name!r} "
                                 f"failed: {error.strerror}; this file system cannot store "
                                 "that xattr, unpack on one that can") from None


def _process_umask() -> int:
    """Return the umask without changing it, which os.umask cannot do without a race."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Before Linux 4.7 the status has no Umask line: assume the strictest, so that every
    # file gets its mode from fchmod.
    return 0o777


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
