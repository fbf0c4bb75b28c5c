"""The local image store: verified blobs, unpacked layers, and the index of named images.

Layout under the store root (default /var/lib/kakoi):

    blobs/sha256/<hex>        manifests, configs and layer blobs, each verified by its digest
    layers/<chain id hex>/    diff/ (the layer in overlayfs format) and meta.json
    images.json               image records and the names that point at them
    images.lock               flock guarding every change to the three entries above
    tmp/                      where every file and layer is built before its rename into place

Names are written last, after every blob and layer of an image has been verified, so a failed
load leaves the store as it was.

`kakoi run` imports this module and calls only resolve, config and layer_dirs. Those use str
paths and read the index once, with no hashing. pathlib, tempfile, shutil, hashlib and the
archive and layer code are imported by the methods that load, save and remove images.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from kakoi.errors import (
    DigestMismatchError,
    KakoiError,
    ImageError,
    ImageInUse,
    ImageNotFound,
    InvalidArgument,
)
from kakoi.image import digest as digests
from kakoi.image import reference
from kakoi.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import BinaryIO, Iterator

    from kakoi.image import archive as archives

DEFAULT_ROOT = "/var/lib/kakoi"
FORMATS = ("docker-archive", "oci-archive")
_MIN_ID_PREFIX = 4
_CHUNK = 1 << 20
_NEW_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Entries of a store root that an image command has used.
_STORE_ENTRIES = {"blobs", "layers", "tmp", "images.json", "images.lock"}
# The engine's lock file, present in a root that only container commands used so far.
_CONTAINERS_LOCK = os.path.join("containers", ".lock")


class LayerRecord(Record):
    """One layer blob of an image.

    `chain_id` is stored at load time so that `kakoi run` finds the layer directories
    without hashing; it is None in records written before the field existed.
    """

    __slots__ = ("digest", "media_type", "size", "diff_id", "chain_id")

    def __init__(self, digest: str, media_type: str, size: int, diff_id: str,
                 chain_id: str | None = None):
        self.digest = digest
        self.media_type = media_type
        self.size = size
        self.diff_id = diff_id
        self.chain_id = chain_id

    def to_json(self) -> dict:
        data = {"digest": self.digest, "media_type": self.media_type, "size": self.size,
                "diff_id": self.diff_id}
        if self.chain_id is not None:
            data["chain_id"] = self.chain_id
        return data


class ImageRecord(Record):
    """One image in the store; `id` is the config digest, as in Docker."""

    __slots__ = ("id", "names", "manifest_digest", "manifest_media_type", "config_media_type",
                 "layers", "size", "created", "loaded", "repo_digests")

    def __init__(self, id: str, names: list[str], manifest_digest: str,
                 manifest_media_type: str, config_media_type: str, layers: list[LayerRecord],
                 size: int, created: str | None = None, loaded: float = 0.0,
                 repo_digests: list[str] | None = None):
        # NAME@DIGEST of what a registry served for this image: for a pull through an
        # index, the index's digest, which differs from manifest_digest.
        self.repo_digests = list(repo_digests or [])
        self.id = id
        self.names = names
        self.manifest_digest = manifest_digest
        self.manifest_media_type = manifest_media_type
        self.config_media_type = config_media_type
        self.layers = layers
        self.size = size
        self.created = created
        self.loaded = loaded

    @property
    def config_digest(self) -> str:
        return self.id

    @property
    def chain_ids(self) -> list[str]:
        """Return each layer's chain id, bottom layer first, hashing only for old records."""
        stored = [layer.chain_id for layer in self.layers]
        if None not in stored:
            return stored
        return digests.chain_ids([layer.diff_id for layer in self.layers])

    def to_json(self) -> dict:
        return {"id": self.id, "names": list(self.names),
                "manifest_digest": self.manifest_digest,
                "manifest_media_type": self.manifest_media_type,
                "config_media_type": self.config_media_type,
                "layers": [layer.to_json() for layer in self.layers],
                "size": self.size, "created": self.created, "loaded": self.loaded,
                "repo_digests": list(self.repo_digests)}

    @classmethod
    def from_json(cls, data: dict) -> ImageRecord:
        layers = [LayerRecord(**layer) for layer in data.pop("layers")]
        return cls(layers=layers, **data)


class LoadedImage(Record):
    """An image that one load stored, with the names that the archive gave it."""

    __slots__ = ("id", "names")

    def __init__(self, id: str, names: list[str]):
        self.id = id
        self.names = names


class UnpackedLayer:
    """A layer unpacked into a new_layer_work dir, with its verified diff_id and file bytes."""

    def __init__(self, path: Path, diff_id: str, size: int):
        self.path = path
        self.diff_id = diff_id
        self.size = size


class _NewContent:
    """Blobs and layer dirs created by one load, removed again when the load fails."""

    def __init__(self):
        self.blobs: list[Path] = []
        self.layers: list[Path] = []

    def rollback(self, store: Store) -> None:
        for path in self.layers:
            store._discard_layer_dir(path)
        for path in self.blobs:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def new_temp_file(directory: str, prefix: str) -> tuple[int, str]:
    """Create a file only this process can open, with a random name; return its fd and path.

    The work of tempfile.mkstemp, without importing tempfile, which loads shutil, random and
    the compression modules (about 4 ms) on every pull.
    """
    for _ in range(100):
        path = os.path.join(directory, prefix + os.urandom(6).hex())
        try:
            return os.open(path, _NEW_FILE_FLAGS, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def new_temp_dir(directory: str, prefix: str) -> str:
    """Create a directory with mode 0700 and a random name, as tempfile.mkdtemp does."""
    for _ in range(100):
        path = os.path.join(directory, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Images under one root directory; every method may be called from concurrent processes."""

    def __init__(self, root: Path | str = DEFAULT_ROOT):
        # str paths, so that the run path never imports pathlib. The Path-valued
        # attributes below build on them for the load, save and remove code and for tests.
        self._root = os.fspath(root)
        self._blobs = os.path.join(self._root, "blobs", "sha256")
        self._layers = os.path.join(self._root, "layers")
        self._tmp = os.path.join(self._root, "tmp")
        self._index = os.path.join(self._root, "images.json")
        self._work_locks: dict[str, int] = {}

    @property
    def root(self) -> Path:
        return _path(self._root)

    @property
    def blobs_dir(self) -> Path:
        return _path(self._blobs)

    @property
    def layers_dir(self) -> Path:
        return _path(self._layers)

    @property
    def tmp_dir(self) -> Path:
        return _path(self._tmp)

    @property
    def index_path(self) -> Path:
        return _path(self._index)

    @property
    def lock_path(self) -> Path:
        return _path(os.path.join(self._root, "images.lock"))

    # Layout, locking and the index

    def ensure_layout(self) -> None:
        for path in (self._blobs, self._layers, self._tmp):
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as error:
                raise ImageError(f"cannot create store directory {path}: {error.strerror}; "
                                 "give a writable directory with --root or KAKOI_ROOT") from None

    def check_root(self) -> None:
        """Raise ImageError when the root exists but is a file or a directory of other data.

        A missing root is a store with no images yet, and so is an empty directory.
        """
        try:
            entries = set(os.listdir(self._root))
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise ImageError(f"store root {self._root} is not a directory; give a directory "
                             "with --root or KAKOI_ROOT") from None
        except OSError as error:
            raise ImageError(f"cannot read store root {self._root}: {error.strerror}; give "
                             "a readable directory with --root or KAKOI_ROOT") from None
        if not entries or entries & _STORE_ENTRIES:
            return
        if not os.path.exists(os.path.join(self._root, _CONTAINERS_LOCK)):
            raise ImageError(f"store root {self._root} is not a kakoi store: it contains other "
                             "files and no images.json; give an empty or kakoi directory with "
                             "--root or KAKOI_ROOT")

    @contextlib.contextmanager
    def _locked(self, exclusive: bool = True) -> Iterator[None]:
        import fcntl

        self.ensure_layout()
        fd = os.open(os.path.join(self._root, "images.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _read_index(self) -> dict[str, ImageRecord]:
        try:
            with open(self._index, encoding="utf-8") as stream:
                data = json.load(stream)
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise ImageError(f"cannot read image index {self._index}: {error.strerror}; give "
                             "a kakoi store directory with --root or KAKOI_ROOT") from None
        except ValueError as error:
            raise ImageError(f"image index {self._index} is not valid JSON ({error}); "
                             "restore it from a backup or remove it and load the images again")
        return {image_id: ImageRecord.from_json(record)
                for image_id, record in data.get("images", {}).items()}

    def _write_index(self, images: dict[str, ImageRecord]) -> None:
        names = {name: {"id": record.id, "manifest_digest": record.manifest_digest}
                 for record in images.values() for name in record.names}
        data = {"version": 1, "names": names,
                "images": {image_id: record.to_json() for image_id, record in images.items()}}
        self._write_atomic(self._index, json.dumps(data, indent=1, sort_keys=True).encode())

    def _write_atomic(self, path: str, data: bytes) -> None:
        fd, temp = new_temp_file(self._tmp, "write-")
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.rename(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_dir(os.path.dirname(path))

    # Blobs

    def blob_path(self, digest: str) -> Path:
        return _path(self._blob_file(digest))

    def _blob_file(self, digest: str) -> str:
        return os.path.join(self._blobs, digests.validate(digest))

    def write_blob(self, stream: BinaryIO, expected: str | None = None,
                   label: str = "blob") -> tuple[str, int, bool]:
        """Copy `stream` into the store, verifying `expected` when given.

        Returns the digest, the size and whether the blob is new. On a mismatch nothing is kept
        and DigestMismatchError is raised.
        """
        self.ensure_layout()
        reader = digests.HashingReader(stream)
        fd, temp = new_temp_file(str(self.tmp_dir), "blob-")
        try:
            with os.fdopen(fd, "wb") as target:
                while chunk := reader.read(_CHUNK):
                    target.write(chunk)
                target.flush()
                os.fsync(target.fileno())
            if expected is not None and reader.digest != expected:
                raise DigestMismatchError(
                    f"{label}: content hashes to {reader.digest}, not {expected}; "
                    "the archive is damaged, fetch or save it again")
            final = self.blob_path(reader.digest)
            if final.exists():
                os.unlink(temp)
                return reader.digest, reader.size, False
            os.rename(temp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_dir(self.blobs_dir)
        return reader.digest, reader.size, True

    def read_blob(self, digest: str) -> bytes:
        try:
            with open(self._blob_file(digest), "rb") as stream:
                return stream.read()
        except FileNotFoundError:
            raise ImageError(f"blob {digest} is missing from {self._blobs}; "
                             "remove the image and pull or load it again") from None

    # Layers

    def layer_dir(self, chain_id: str) -> Path:
        return _path(self._layer_dir(chain_id))

    def _layer_dir(self, chain_id: str) -> str:
        return os.path.join(self._layers, digests.validate(chain_id))

    def _unpack_layer(self, blob: Path, diff_id: str, chain_id: str, label: str,
                      new: _NewContent) -> None:
        from kakoi.image.layer import unpack

        final = self.layer_dir(chain_id)
        if final.exists():
            self._check_diff_id(blob, diff_id, label)
            return
        work = self.new_layer_work()
        try:
            with open(blob, "rb") as stream:
                result = unpack(stream, work / "diff", label)
            if result.diff_id != diff_id:
                raise DigestMismatchError(
                    f"{label}: uncompressed content hashes to {result.diff_id}, but the config's "
                    f"diff_id is {diff_id}; the archive is damaged or inconsistent")
            self._install_layer(work, UnpackedLayer(work, diff_id, result.size), chain_id, new)
        except BaseException:
            self.discard_layer_work(work)
            raise

    def _unpack_stored_layer(self, layer: LayerRecord, chain_id: str, new: _NewContent) -> None:
        """Unpack a layer from its blob, after checking the blob against its digest.

        A pull with --unpack false checked the blob once. It is checked again here, because it
        may have been damaged since. A damaged blob is removed, so that the next pull of the
        image fetches it again.
        """
        label = f"layer {layer.digest}"
        if not os.path.exists(self._blob_file(layer.digest)):
            raise ImageError(f"{label} is missing from the store at {self.blobs_dir}; pull "
                             "the image again")
        actual = self.remove_damaged_blob(layer.digest)
        if actual is not None:
            raise DigestMismatchError(f"{label} in the store is damaged (its content hashes to "
                                      f"{actual}) and was removed; pull the image again")
        with self._uncompressed_layer(layer.digest, label) as uncompressed:
            self._unpack_layer(uncompressed, layer.diff_id, chain_id, label, new)

    def remove_damaged_blob(self, digest: str) -> str | None:
        """Hash a stored blob and remove it if its content no longer matches its digest.

        Returns the digest of the removed content, or None when the blob is intact or absent.
        """
        path = self._blob_file(digest)
        try:
            with open(path, "rb") as stream:
                actual, _ = digests.of_file(stream)
        except FileNotFoundError:
            return None
        if actual == digest:
            return None
        os.unlink(path)
        return actual

    def new_layer_work(self) -> Path:
        """Create an empty layer dir (with its diff/) in tmp/, to unpack into and then install.

        The dir's `.lock` file beside it stays flocked while this process works on it,
        so that sweep_stale_work can tell a dir left by a killed process from one in use.
        """
        import fcntl
        from pathlib import Path

        self.ensure_layout()
        work = Path(new_temp_dir(str(self.tmp_dir), "layer-"))
        lock_fd = os.open(f"{work}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        self._work_locks[str(work)] = lock_fd
        try:
            os.chmod(work, 0o755)
            (work / "diff").mkdir()
        except BaseException:
            self.discard_layer_work(work)
            raise
        return work

    def discard_layer_work(self, work: Path) -> None:
        """Remove a layer dir made by new_layer_work; nothing happens when it was installed."""
        self._discard_layer_dir(work)
        self._release_work_lock(work)

    def _release_work_lock(self, work: Path) -> None:
        lock_fd = self._work_locks.pop(str(work), None)
        if lock_fd is not None:
            try:
                os.unlink(f"{work}.lock")
            except FileNotFoundError:
                pass
            os.close(lock_fd)

    def sweep_stale_work(self) -> None:
        """Remove layer work dirs in tmp/ whose process is gone (killed in a pull or load)."""
        import fcntl
        from pathlib import Path

        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith("delete-"):
                # Trash of a removal that was killed or failed: nothing uses it.
                from kakoi.kernel.tree import remove_tree

                remove_tree(os.path.join(self.tmp_dir, name))
                continue
            if not name.startswith("layer-") or name.endswith(".lock"):
                continue
            lock_path = os.path.join(self.tmp_dir, name + ".lock")
            try:
                lock_fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # made by a kakoi without work locks, or being set up right now
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                continue  # another process is unpacking into it
            try:
                self._discard_layer_dir(Path(self.tmp_dir) / name)
                os.unlink(lock_path)
            finally:
                os.close(lock_fd)

    def _install_layer(self, work: Path, layer: UnpackedLayer, chain_id: str,
                       new: _NewContent) -> None:
        final = self.layer_dir(chain_id)
        meta = {"diff_id": layer.diff_id, "chain_id": chain_id, "size": layer.size}
        (work / "meta.json").write_text(json.dumps(meta))
        os.rename(work, final)
        self._release_work_lock(work)
        new.layers.append(final)

    def _check_diff_id(self, blob: Path, diff_id: str, label: str) -> None:
        from kakoi.image.layer import open_uncompressed

        with open(blob, "rb") as stream:
            actual, _ = digests.of_file(open_uncompressed(stream, label))
        if actual != diff_id:
            raise DigestMismatchError(f"{label}: uncompressed content hashes to {actual}, but "
                                      f"the config's diff_id is {diff_id}; the archive is damaged")

    def _discard_layer_dir(self, path: Path) -> None:
        # Renaming first means a crash during the removal never leaves a half layer in layers/.
        if not os.path.lexists(path):
            return
        from kakoi.kernel.tree import remove_tree

        trash = new_temp_dir(str(self.tmp_dir), "delete-")
        os.rename(path, os.path.join(trash, "layer"))
        remove_tree(trash)

    def _image_size(self, layers: list[LayerRecord], chain_ids: list[str]) -> int:
        """Return the unpacked size of the layers, counting a layer not yet unpacked by its blob.

        NOTE: until ensure_unpacked has run, an image pulled with --unpack false shows its
        compressed size, which is smaller than the size Docker shows for it.
        """
        return sum(self._layer_size(chain_id) or layer.size
                   for layer, chain_id in zip(layers, chain_ids))

    def _layer_size(self, chain_id: str) -> int:
        try:
            meta = json.loads((self.layer_dir(chain_id) / "meta.json").read_text())
        except (OSError, ValueError):
            return 0
        return int(meta.get("size", 0))

    # Lookup

    def list(self) -> list[ImageRecord]:
        """Return every image, newest first."""
        return sorted(self._read_index().values(), key=lambda r: r.created or "", reverse=True)

    def resolve(self, text: str) -> ImageRecord:
        """Find an image by name, name@digest, full id, or id prefix of at least 4 hex digits."""
        return self._resolve_in(self._read_index(), text)

    def _resolve_in(self, images: dict[str, ImageRecord], text: str) -> ImageRecord:
        if text.startswith("sha256:"):
            return self._by_id_prefix(images, text[len("sha256:"):], text)
        try:
            parsed = reference.parse(text)
        except InvalidArgument:
            if _is_hex(text):
                return self._by_id_prefix(images, text, text)
            raise
        for record in images.values():
            if parsed.digest is not None and (
                    record.manifest_digest == parsed.digest
                    or f"{parsed.name}@{parsed.digest}" in record.repo_digests):
                return record
            if parsed.digest is None and str(parsed) in record.names:
                return record
        if _is_hex(text) and len(text) >= _MIN_ID_PREFIX:
            return self._by_id_prefix(images, text, text)
        raise _not_found(text)

    def _by_id_prefix(self, images: dict[str, ImageRecord], prefix: str,
                      text: str) -> ImageRecord:
        if len(prefix) < _MIN_ID_PREFIX or not _is_hex(prefix):
            raise _not_found(text)
        matches = [r for r in images.values() if r.id[len("sha256:"):].startswith(prefix)]
        if len(matches) > 1:
            raise ImageError(f"image id prefix {text!r} is ambiguous: it matches "
                             f"{len(matches)} images; give more digits")
        if not matches:
            raise _not_found(text)
        return matches[0]

    def _record(self, image: ImageRecord | str) -> ImageRecord:
        return self.resolve(image) if isinstance(image, str) else image

    def config(self, image: ImageRecord | str) -> dict:
        """Return the image's parsed config JSON."""
        return json.loads(self.read_blob(self._record(image).id))

    def layer_dirs(self, image: ImageRecord | str) -> list[str]:
        """Return the unpacked diff directories of the image as str paths, bottom layer first.

        The directories of an image pulled with --unpack false may not exist yet: callers that
        mount them call ensure_unpacked first.
        """
        record = self._record(image)
        return [os.path.join(self._layer_dir(chain_id), "diff") for chain_id in record.chain_ids]

    def ensure_unpacked(self, image: ImageRecord | str) -> ImageRecord:
        """Unpack the layers of the image that are still only blobs; return its record.

        Each layer is checked against the config's diff_id as it is unpacked. The check that
        every layer dir exists costs one stat per layer, and the store lock is taken only
        when one is missing.
        """
        record = self._record(image)
        if all(os.path.isdir(self._layer_dir(chain_id)) for chain_id in record.chain_ids):
            return record
        self.sweep_stale_work()
        with self._locked():
            images = self._read_index()
            stored = images.get(record.id)
            if stored is None:
                raise _not_found(record.id)
            new = _NewContent()
            try:
                for layer, chain_id in zip(stored.layers, stored.chain_ids):
                    if not os.path.isdir(self._layer_dir(chain_id)):
                        self._unpack_stored_layer(layer, chain_id, new)
            except BaseException:
                new.rollback(self)
                raise
            stored.size = self._image_size(stored.layers, stored.chain_ids)
            self._write_index(images)
        return stored

    def inspect(self, image: ImageRecord | str) -> dict:
        from kakoi.image.inspect import inspect_record

        record = self._record(image)
        return inspect_record(record, self.config(record), self.layer_dirs(record))

    # Names

    def tag(self, source: str, target: str) -> None:
        """Point the name `target` at the image that `source` resolves to."""
        name = str(reference.parse(target))
        if reference.parse(target).digest is not None:
            raise InvalidArgument(f"invalid tag target {target!r}: a tag cannot contain a "
                                  "digest; use NAME[:TAG]")
        with self._locked():
            images = self._read_index()
            record = self._resolve_in(images, source)
            _move_names(images, record.id, [name])
            self._write_index(images)

    def remove(self, text: str, force: bool = False,
               in_use: dict[str, list[str]] | None = None) -> list[str]:
        """Untag or delete an image as `docker rmi` does; return the Untagged/Deleted lines."""
        in_use = in_use or {}
        with self._locked():
            images = self._read_index()
            record = self._resolve_in(images, text)
            containers = in_use.get(record.id, [])
            by_name = _names_matching(record, text)

            if by_name and len(record.names) > 1:
                return self._untag(images, record, by_name)
            if len(record.names) > 1 and not force:
                raise ImageError(
                    f"unable to delete image {_short(record.id)}: it is referenced by "
                    f"{len(record.names)} names ({', '.join(_familiar(record.names))}); "
                    "remove them by name or use --force")
            if containers and not force:
                raise ImageInUse(
                    f"unable to remove image {text}: it is used by container(s) "
                    f"{', '.join(containers)}; remove them first or use --force")
            if containers:
                # Forced removal of a used image only untags it, as Docker does, because
                # the containers' root filesystems still stack its layers.
                return self._untag(images, record, list(record.names))
            return self._delete(images, record)

    def _untag(self, images: dict[str, ImageRecord], record: ImageRecord,
               names: list[str]) -> list[str]:
        record.names = [name for name in record.names if name not in names]
        self._write_index(images)
        return [f"Untagged: {name}" for name in _familiar(names)]

    def _delete(self, images: dict[str, ImageRecord], record: ImageRecord) -> list[str]:
        lines = [f"Untagged: {name}" for name in _familiar(record.names)]
        del images[record.id]
        self._write_index(images)
        self._collect(images, record)
        return lines + [f"Deleted: {record.id}"]

    def _collect(self, images: dict[str, ImageRecord], removed: ImageRecord) -> None:
        """Remove the blobs and layer dirs of `removed` that no remaining image uses."""
        blobs_used: set[str] = set()
        chains_used: set[str] = set()
        for record in images.values():
            blobs_used.update([record.id, record.manifest_digest])
            blobs_used.update(layer.digest for layer in record.layers)
            chains_used.update(record.chain_ids)
        for chain_id in removed.chain_ids:
            if chain_id not in chains_used:
                self._discard_layer_dir(self.layer_dir(chain_id))
        candidates = [removed.id, removed.manifest_digest] + [l.digest for l in removed.layers]
        for blob in candidates:
            if blob not in blobs_used:
                with contextlib.suppress(FileNotFoundError):
                    self.blob_path(blob).unlink()

    # Load

    def load(self, source: str | Path | BinaryIO, label: str | None = None) -> list[LoadedImage]:
        """Import every image in a docker-archive, OCI archive or OCI layout directory.

        A binary stream is first spooled to the store's tmp dir. Everything is verified before
        a name is written; on any error the store keeps its previous content.
        """
        self.ensure_layout()
        with self._spooled(source) as path:
            label = label or (os.fspath(source) if isinstance(source, (str, os.PathLike))
                          else "stdin")
            with self._locked():
                return self._load_locked(path, label)

    @contextlib.contextmanager
    def _spooled(self, source: str | Path | BinaryIO) -> Iterator[Path]:
        import tempfile
        from pathlib import Path

        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.exists():
                raise ImageError(f"archive {path} not found; give an existing file or directory")
            yield path
            return
        fd, temp = tempfile.mkstemp(dir=self.tmp_dir, prefix="load-")
        try:
            with os.fdopen(fd, "wb") as spool:
                _copy_stream(source, "stdin", spool, temp,
                             "give -i FILE or pipe an archive to stdin")
            yield Path(temp)
        finally:
            os.unlink(temp)

    def _load_locked(self, path: Path, label: str) -> list[LoadedImage]:
        from kakoi.image import archive as archives

        source = archives.open_archive(path, label)
        new = _NewContent()
        try:
            found = archives.read_images(source)
            records = [self._ingest(image, new) for image in found]
            images = self._read_index()
            duplicates = []
            for record, names in records:
                existing = images.setdefault(record.id, record)
                if existing is not record:
                    duplicates.append(record)
                _move_names(images, existing.id, names)
            self._write_index(images)
        except BaseException:
            new.rollback(self)
            raise
        finally:
            source.close()

        # An image that was already stored keeps its record, so the blobs that only this
        # copy brought (another manifest, differently compressed layers) are dropped again.
        for record in duplicates:
            self._collect(images, record)
        return [LoadedImage(record.id, names) for record, names in records]

    def _store_blob(self, blob: archives.SourceBlob, new: _NewContent) -> tuple[str, int]:
        with blob.open() as stream:
            digest, size, created = self.write_blob(stream, blob.digest, blob.label)
        if created:
            new.blobs.append(self.blob_path(digest))
        return digest, size

    def _ingest(self, image: archives.SourceImage,
                new: _NewContent) -> tuple[ImageRecord, list[str]]:
        from kakoi.image import archive as archives

        config_digest, config_size = self._store_blob(image.config, new)
        config = _parse_config(self.read_blob(config_digest), image.config.label)
        diff_ids = config["rootfs"]["diff_ids"]
        if len(diff_ids) != len(image.layers):
            raise ImageError(f"{image.config.label}: the config lists {len(diff_ids)} diff_ids "
                             f"but the image has {len(image.layers)} layers; the archive is "
                             "inconsistent")

        layers = []
        chain_ids = digests.chain_ids(diff_ids)
        for blob, diff_id, chain_id in zip(image.layers, diff_ids, chain_ids):
            layer_digest, size = self._store_blob(blob, new)
            self._unpack_layer(self.blob_path(layer_digest), diff_id, chain_id, blob.label, new)
            media_type = blob.media_type or self._layer_media_type(layer_digest)
            layers.append(LayerRecord(layer_digest, media_type, size, diff_id, chain_id))

        manifest = image.manifest or _synthesize_manifest(config_digest, config_size, layers)
        manifest_digest, _, created = self.write_blob(_bytes_stream(manifest),
                                                      digests.of_bytes(manifest), "manifest")
        if created:
            new.blobs.append(self.blob_path(manifest_digest))
        record = ImageRecord(
            id=config_digest, names=[], manifest_digest=manifest_digest,
            manifest_media_type=json.loads(manifest).get("mediaType", archives.MEDIA_OCI_MANIFEST),
            config_media_type=image.config.media_type or archives.MEDIA_OCI_CONFIG,
            layers=layers, size=sum(self._layer_size(c) for c in chain_ids),
            created=config.get("created"), loaded=time.time())
        return record, image.names

    def _layer_media_type(self, digest: str) -> str:
        from kakoi.image import archive as archives
        from kakoi.image.layer import compression_of

        with open(self.blob_path(digest), "rb") as stream:
            kind = compression_of(stream)
        return {"gzip": archives.MEDIA_OCI_LAYER_GZIP,
                "zstd": archives.MEDIA_OCI_LAYER_ZSTD}.get(kind, archives.MEDIA_OCI_LAYER)

    # Save

    def save(self, refs: list[str], out: str | Path | BinaryIO,
             format: str = "docker-archive") -> None:
        """Write the images named by `refs` to a file or binary stream as one archive.

        A regular file is written under a temporary name and renamed, so a failed save leaves
        no output. A device or FIFO is written in place.
        """
        from pathlib import Path

        if format not in FORMATS:
            raise InvalidArgument(f"invalid archive format {format!r}: use one of "
                                  f"{', '.join(FORMATS)}")
        if isinstance(out, (str, os.PathLike)):
            _check_output(out)
        if not os.path.exists(self._root):
            # A missing store contains no images, so this raises ImageNotFound without
            # creating the store directories.
            self._exports(refs)

        self.ensure_layout()
        with self._locked(exclusive=False):
            exports = self._exports(refs)
            if isinstance(out, (str, os.PathLike)) and _is_regular_or_missing(Path(out)):
                self._save_to_path(Path(out), exports, format)
            else:
                self._save_to_stream(out, exports, format)

    def _exports(self, refs: list[str]) -> list[archives.ExportImage]:
        from kakoi.image import archive as archives

        images = self._read_index()
        exports: dict[str, archives.ExportImage] = {}
        for text in refs:
            record = self._resolve_in(images, text)
            export = exports.get(record.id)
            if export is None:
                export = archives.ExportImage(
                    names=[], manifest=self.read_blob(record.manifest_digest),
                    config=self.read_blob(record.id),
                    layers=[archives.ExportLayer(layer.digest, layer.media_type, layer.diff_id,
                                                 self.blob_path(layer.digest))
                            for layer in record.layers])
                exports[record.id] = export
            for name in _names_matching(record, text):
                if name not in export.names:
                    export.names.append(name)
        return list(exports.values())

    def _save_to_path(self, out: Path, exports: list[archives.ExportImage], format: str) -> None:
        import tempfile

        try:
            fd, temp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-")
        except OSError as error:
            raise _write_error(out, error) from None
        try:
            with os.fdopen(fd, "wb") as stream:
                self._write_archive(stream, exports, format)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temp, 0o644)
            os.rename(temp, out)
        except BaseException as error:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            if not isinstance(error, OSError) or isinstance(error, KakoiError):
                raise
            if error.filename not in (None, temp, os.fspath(out)):
                raise ImageError(f"cannot read {error.filename}: {error.strerror}; remove the "
                                 "image and pull or load it again") from None
            raise _write_error(out, error) from None

    def _save_to_stream(self, out: str | Path | BinaryIO, exports: list[archives.ExportImage],
                        format: str) -> None:
        import tempfile
        from pathlib import Path

        # The archive is built in a spool first, so a failed build writes nothing to `out`.
        with tempfile.TemporaryFile(dir=self.tmp_dir, prefix="save-") as spool:
            self._write_archive(spool, exports, format)
            spool.seek(0)
            if not isinstance(out, (str, os.PathLike)):
                _copy_stream(spool, "the spooled archive", out, "stdout",
                             f"free space in {self._tmp}")
                return
            # A device or FIFO is written in place, because a rename would replace it.
            try:
                stream = open(out, "wb")
            except OSError as error:
                raise _write_error(Path(out), error) from None
            with stream:
                _copy_stream(spool, "the spooled archive", stream, os.fspath(out),
                             f"free space in {self._tmp}")

    def _write_archive(self, stream: BinaryIO, exports: list[archives.ExportImage],
                       format: str) -> None:
        from kakoi.image import archive as archives

        if format == "oci-archive":
            archives.write_oci_archive(stream, exports)
        else:
            archives.write_docker_archive(stream, exports, self.tmp_dir)


    # Pull

    def commit_pull(self, names: list[str], manifest: bytes, manifest_media_type: str,
                    config: bytes, config_media_type: str,
                    layers: list[tuple[str, str, int]],
                    unpacked: dict[str, UnpackedLayer] | None = None,
                    repo_digest: str | None = None,
                    unpack: bool = True) -> tuple[ImageRecord, bool]:
        """Add a pulled image whose layer blobs the registry client already verified.

        `layers` lists (digest, media type, size) of blobs already in blobs/. `unpacked` maps
        chain ids to layer dirs that the pull already unpacked (in new_layer_work dirs) and
        checked against their diff_ids. They are moved into layers/ here, under the store lock.
        The config and manifest blobs are written, every other layer is unpacked once by chain
        id and checked against the config's diff_ids, and only then are the names written.
        Returns the record and whether the store changed (a new image or manifest, or a name
        that moved). Unpacked dirs that were not installed stay for the caller to discard.
        With unpack false, layers that are not unpacked yet are left for ensure_unpacked.
        """
        self.ensure_layout()
        with self._locked():
            new = _NewContent()
            try:
                record = self._ingest_pulled(manifest, manifest_media_type, config,
                                             config_media_type, layers, unpacked or {}, new,
                                             unpack)
                images = self._read_index()
                existing = images.setdefault(record.id, record)
                changed = existing is record or any(name not in existing.names
                                                    for name in names)
                if repo_digest is not None and repo_digest not in existing.repo_digests:
                    existing.repo_digests.append(repo_digest)
                    changed = True
                _move_names(images, existing.id, names)
                self._write_index(images)
            except BaseException:
                new.rollback(self)
                raise
            if existing is not record:
                # NOTE: a record has one manifest digest, so an image that is already stored
                # keeps its manifest, and the blobs that only this copy brought (another
                # manifest, differently compressed layers) are dropped, as load does.
                self._collect(images, record)
        return existing, changed

    def _ingest_pulled(self, manifest: bytes, manifest_media_type: str, config: bytes,
                       config_media_type: str, layers: list[tuple[str, str, int]],
                       unpacked: dict[str, UnpackedLayer], new: _NewContent,
                       unpack: bool = True) -> ImageRecord:
        config_digest, _, created = self.write_blob(_bytes_stream(config),
                                                    digests.of_bytes(config), "image config")
        if created:
            new.blobs.append(self.blob_path(config_digest))
        parsed = _parse_config(config, f"config {config_digest}")
        diff_ids = parsed["rootfs"]["diff_ids"]
        if len(diff_ids) != len(layers):
            raise ImageError(f"config {config_digest} lists {len(diff_ids)} diff_ids but the "
                             f"manifest has {len(layers)} layers; the image is inconsistent")

        records = []
        chain_ids = digests.chain_ids(diff_ids)
        for (digest, media_type, size), diff_id, chain_id in zip(layers, diff_ids, chain_ids):
            label = f"layer {digest}"
            ready = unpacked.get(chain_id)
            if ready is not None and ready.diff_id == diff_id:
                if not self.layer_dir(chain_id).exists():
                    self._install_layer(ready.path, ready, chain_id, new)
            elif not unpack:
                pass  # ensure_unpacked unpacks it at first use
            else:
                with self._uncompressed_layer(digest, label) as path:
                    self._unpack_layer(path, diff_id, chain_id, label, new)
            records.append(LayerRecord(digest, media_type, size, diff_id, chain_id))

        manifest_digest, _, created = self.write_blob(_bytes_stream(manifest),
                                                      digests.of_bytes(manifest), "manifest")
        if created:
            new.blobs.append(self.blob_path(manifest_digest))
        return ImageRecord(
            id=config_digest, names=[], manifest_digest=manifest_digest,
            manifest_media_type=manifest_media_type, config_media_type=config_media_type,
            layers=records, size=self._image_size(records, chain_ids),
            created=parsed.get("created"), loaded=time.time())

    @contextlib.contextmanager
    def _uncompressed_layer(self, digest: str, label: str) -> Iterator[Path]:
        """Yield the blob's path, or for a zstd blob a temporary tar, for _unpack_layer.

        NOTE: layer.open_uncompressed reads gzip and plain tars only, so zstd layers are
        decompressed into the tmp dir first.
        """
        import tempfile

        from kakoi.image.layer import compression_of

        path = self.blob_path(digest)
        with open(path, "rb") as stream:
            kind = compression_of(stream)
        if kind != "zstd":
            yield path
            return
        import zstandard

        fd, temp = tempfile.mkstemp(dir=self._tmp, prefix="zstd-")
        try:
            with open(path, "rb") as source, os.fdopen(fd, "wb") as target:
                zstandard.ZstdDecompressor().copy_stream(source, target)
            yield _path(temp)
        except zstandard.ZstdError as error:
            raise ImageError(f"{label}: invalid zstd data ({error}); pull the image again") \
                from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    # Build

    def commit_built(self, names: list[str], config: bytes,
                     layers: list[dict]) -> ImageRecord:
        """Add an image that `kakoi build` made; its layer blobs and layer dirs are stored.

        `layers` lists dicts with digest, media_type, size, diff_id and chain_id. The config
        and an OCI manifest are written, and the names last.
        """
        from kakoi.image import archive as archives

        self.ensure_layout()
        with self._locked():
            config_digest, config_size, _ = self.write_blob(_bytes_stream(config), None,
                                                            "image config")
            records = [LayerRecord(layer["digest"], layer["media_type"], layer["size"],
                                   layer["diff_id"], layer["chain_id"]) for layer in layers]
            manifest = _synthesize_manifest(config_digest, config_size, records)
            manifest_digest, _, _ = self.write_blob(_bytes_stream(manifest), None, "manifest")
            images = self._read_index()
            record = images.setdefault(config_digest, ImageRecord(
                id=config_digest, names=[], manifest_digest=manifest_digest,
                manifest_media_type=archives.MEDIA_OCI_MANIFEST,
                config_media_type=archives.MEDIA_OCI_CONFIG, layers=records,
                size=sum(self._layer_size(layer["chain_id"]) for layer in layers),
                created=json.loads(config).get("created"), loaded=time.time()))
            _move_names(images, record.id, names)
            self._write_index(images)
        return record

def _check_output(out: str | Path) -> None:
    from pathlib import Path

    text = os.fspath(out)
    if text.endswith("/") or Path(text).is_dir():
        raise InvalidArgument(f"cannot write {text}: it is a directory: give a file path, "
                              f"such as {os.path.join(text, 'image.tar')}")


def _is_regular_or_missing(path: Path) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


def _write_error(path: Path, error: OSError) -> ImageError:
    return ImageError(f"cannot write {path}: {error.strerror}: {_write_hint(path, error)}")


def _write_hint(path: Path, error: OSError) -> str:
    import errno

    parent = path.parent
    if error.errno == errno.ENOENT and not parent.is_dir():
        return "create the directory first"
    if error.errno == errno.ENOENT:
        return f"{parent} does not accept new files; choose a path on another file system"
    if error.errno == errno.ENOTDIR:
        return "a parent of it is a file; give a path inside a directory"
    if error.errno == errno.EISDIR:
        return "it is a directory: give a file path"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"check the permissions of {parent} or choose another path"
    if error.errno == errno.EROFS:
        return "the file system is read-only; choose another path"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space on that file system or choose another path"
    return "choose another path"


def _copy_stream(source: BinaryIO, source_label: str, target: BinaryIO, target_label: str,
                 read_hint: str) -> None:
    """Copy `source` into `target`, naming the side that failed in the ImageError.

    BrokenPipeError passes through, so that the command line exits as `cat` does when the
    reader of a pipe goes away.
    """
    while True:
        try:
            chunk = source.read(_CHUNK)
        except OSError as error:
            raise ImageError(f"cannot read {source_label}: {error.strerror}; "
                             f"{read_hint}") from None
        if not chunk:
            break
        _write_chunk(target, chunk, target_label)
    _write_chunk(target, b"", target_label)


def _write_chunk(target: BinaryIO, chunk: bytes, label: str) -> None:
    # An empty chunk only flushes.
    from pathlib import Path

    try:
        if chunk:
            target.write(chunk)
        else:
            target.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        raise _write_error(Path(label), error) from None


def _is_hex(text: str) -> bool:
    return bool(text) and len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


def _not_found(text: str) -> ImageNotFound:
    return ImageNotFound(f"no such image: {text}; list images with `kakoi images` or load one "
                         "with `kakoi load`")


def _short(image_id: str) -> str:
    return image_id[len("sha256:"):][:12]


def _familiar(names: list[str]) -> list[str]:
    return [reference.parse(name).familiar() for name in names]


def _names_matching(record: ImageRecord, text: str) -> list[str]:
    """Return the names of `record` that `text` spells, or [] when text is an id or digest."""
    try:
        name = str(reference.parse(text))
    except InvalidArgument:
        return []
    return [name] if name in record.names else []


def _move_names(images: dict[str, ImageRecord], image_id: str, names: list[str]) -> None:
    # A name belongs to one image: taking it from another image leaves that one with fewer
    # names (dangling when none is left), as Docker does.
    for record in images.values():
        if record.id != image_id:
            record.names = [name for name in record.names if name not in names]
    target = images[image_id]
    for name in names:
        if name not in target.names:
            target.names.append(name)


def _parse_config(data: bytes, label: str) -> dict:
    try:
        config = json.loads(data)
        diff_ids = config["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        raise ImageError(f"{label} is not an image config: rootfs.diff_ids is missing") from None
    if not isinstance(diff_ids, list):
        raise ImageError(f"{label}: rootfs.diff_ids is not a list")
    for diff_id in diff_ids:
        digests.validate(diff_id)
    return config


def _synthesize_manifest(config_digest: str, config_size: int, layers: list[LayerRecord]) -> bytes:
    from kakoi.image import archive as archives

    manifest = {
        "schemaVersion": 2,
        "mediaType": archives.MEDIA_OCI_MANIFEST,
        "config": {"mediaType": archives.MEDIA_OCI_CONFIG, "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                   for layer in layers],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def _bytes_stream(data: bytes) -> BinaryIO:
    import io

    return io.BytesIO(data)


def _path(path: str) -> Path:
    from pathlib import Path

    return Path(path)
