"""Blob downloads that verify while they stream and resume after an interruption.

Each layer is streamed once. The compressed bytes are hashed and appended to a partial file in
the store's tmp dir. They are also decompressed (gzip with isal, zstd with zstandard) to hash
the uncompressed tar, whose digest is the layer's diff_id. The partial file is renamed into
blobs/ only when the compressed digest matches, so no partial blob is ever visible there.

A download can also hand the decompressed tar to a sink (the layer's extractor), so the layer
is unpacked while it downloads and decompressed only once. Only a download that starts at the
first byte and completes in one attempt feeds the sink. A resumed or retried one aborts it, so
the layer is unpacked from the stored blob afterwards.

A pull that leaves unpacking for later (`kakoi pull --unpack false`) does not decompress at
all: it checks the compressed digest only, and the store checks the diff_id when it unpacks
the layer at first use.

The partial file is named after the digest (tmp/pull-<hex>.partial) and kept when a download
fails or the process is killed, so the next pull asks for the rest with a Range request.
An exclusive flock on it keeps two concurrent pulls of the same blob apart.
"""

from __future__ import annotations

from contextlib import closing

import fcntl
import hashlib
import os

from kakoi import log
from kakoi.errors import DigestMismatchError
from kakoi.image import digest as digests
from kakoi.registry.client import RegistryClient, backoff_delay
from kakoi.registry.errors import RegistryError
from kakoi.registry.http import Response, TransportError

_CHUNK = 1 << 20
# Decompressed output per call, so a small compressed chunk cannot expand into gigabytes.
_MAX_OUTPUT = 8 << 20


class LayerDecoder:
    """The sha256 of the compressed stream and, unless decompress is false, of its content."""

    def __init__(self, compression: str, label: str = "layer", output=None,
                 decompress: bool = True):
        self.compression = compression
        self.decompress = decompress
        self.label = label
        # Called with each decompressed chunk, after it is hashed.
        self.output = output
        self.compressed = hashlib.sha256()
        self.uncompressed = hashlib.sha256()
        self.size = 0
        self._decompressor = None
        self._finished_member = False

    def _new_decompressor(self):
        if self.compression == "gzip":
            from isal import isal_zlib

            return isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> None:
        self.compressed.update(data)
        self.size += len(data)
        if not self.decompress:
            return
        if self.compression == "none":
            self._emit(data)
            return
        self._decompress(data)

    def _emit(self, data: bytes) -> None:
        self.uncompressed.update(data)
        if self.output is not None:
            self.output(data)

    def _decompress(self, data: bytes) -> None:
        # Both formats allow several members or frames back to back; each gets a new object.
        while data:
            if self._decompressor is None:
                self._decompressor = self._new_decompressor()
            decompressor = self._decompressor
            try:
                if self.compression == "gzip":
                    output = decompressor.decompress(data, _MAX_OUTPUT)
                    self._emit(output)
                    while decompressor.unconsumed_tail:
                        output = decompressor.decompress(decompressor.unconsumed_tail,
                                                         _MAX_OUTPUT)
                        self._emit(output)
                else:
                    self._emit(decompressor.decompress(data))
            except Exception as error:
                raise DigestMismatchError(f"{self.label}: invalid {self.compression} data "
                                          f"({error}); the registry served damaged content") \
                    from None
            if not decompressor.eof:
                return
            data = decompressor.unused_data
            self._decompressor = None
            self._finished_member = True

    def finish(self, label: str) -> str | None:
        """Check that the compressed stream ended cleanly; return the diff_id, if computed."""
        if not self.decompress:
            return None
        if self.compression != "none" and (self._decompressor is not None
                                           or not self._finished_member):
            raise DigestMismatchError(f"{label}: the {self.compression} stream ends early; the "
                                      "registry served a truncated layer")
        return f"sha256:{self.uncompressed.hexdigest()}"

    @property
    def digest(self) -> str:
        return f"sha256:{self.compressed.hexdigest()}"


def partial_path(tmp_dir: str, digest: str) -> str:
    return os.path.join(tmp_dir, f"pull-{digests.validate(digest)}.partial")


class BlobDownload:
    """One layer blob to fetch into the store; `run` returns its diff_id.

    `run` returns None when the blob was already present, or when decompress is false.

    `sink`, when given, receives the decompressed stream: `feed(chunk)` for each chunk, and
    `abort()` when the download cannot give it the whole stream from the first byte. Closing
    it after `run` returns is the caller's part.
    """

    def __init__(self, client: RegistryClient, repository: str, digest: str, size: int,
                 compression: str, tmp_dir: str, blob_path: str, progress=None, sleep=None,
                 sink=None, decompress: bool = True, diff_id: str | None = None):
        self.client = client
        self.repository = repository
        self.digest = digest
        self.size = size
        self.compression = compression
        self.tmp_dir = tmp_dir
        self.blob_path = blob_path
        self.progress = progress
        self._sleep = sleep or client._sleep
        self.label = f"blob {digest} of {repository}"
        self.sink = sink
        self.decompress = decompress
        # The config's diff_id: a blob whose content does not match it stays out of blobs/.
        self.expected_diff_id = diff_id

    def _report(self, method: str, *args) -> None:
        if self.progress is not None:
            getattr(self.progress, method)(self.digest, *args)

    def run(self) -> str | None:
        if os.path.exists(self.blob_path):
            self._report("exists")
            return None
        path = partial_path(self.tmp_dir, self.digest)
        fd = _open_locked(path)
        try:
            # Another pull may have finished this blob while this one waited for the lock.
            if os.path.exists(self.blob_path):
                if os.fstat(fd).st_size == 0:
                    os.unlink(path)
                self._report("exists")
                return None
            try:
                return self._download(fd, path)
            except BaseException:
                # An empty partial file gives the next pull nothing to resume from.
                if os.fstat(fd).st_size == 0:
                    _unlink_quietly(path)
                raise
        finally:
            os.close(fd)

    def _download(self, fd: int, path: str) -> str:
        received = 0
        for attempt in range(1, self.client.max_attempts + 1):
            decoder = self._resume_state(fd)
            self._attach_sink(decoder, attempt)
            self._report("start", self.size, decoder.size)
            try:
                self._fetch(fd, decoder)
            except (TransportError, _ShortRead) as error:
                if self.client.aborted:
                    raise
                received = os.fstat(fd).st_size
                if attempt == self.client.max_attempts:
                    break
                delay = backoff_delay(attempt)
                log.debug("%s: interrupted at %d bytes (%s); resuming in %.1fs", self.label,
                          received, error, delay)
                self._sleep(delay)
                continue
            except DigestMismatchError:
                os.ftruncate(fd, 0)
                os.unlink(path)
                raise
            return self._commit(fd, path, decoder)
        raise RegistryError(f"{self.label} is truncated: received {received} of {self.size} "
                            f"bytes in {self.client.max_attempts} attempts; run the pull again "
                            "to resume it")

    def _attach_sink(self, decoder: LayerDecoder, attempt: int) -> None:
        if self.sink is None:
            return
        if attempt == 1 and decoder.size == 0:
            decoder.output = self.sink.feed
            return
        # The sink has seen part of the stream, or the stream resumes from a partial file.
        self.sink.abort()
        self.sink = None

    def _resume_state(self, fd: int) -> LayerDecoder:
        """Hash the bytes already in the partial file, so the download continues after them."""
        decoder = LayerDecoder(self.compression, self.label, decompress=self.decompress)
        if os.fstat(fd).st_size > self.size:
            os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            while chunk := os.read(fd, _CHUNK):
                decoder.feed(chunk)
        except DigestMismatchError:
            # Damaged partial data: start again from the first byte.
            os.ftruncate(fd, 0)
            decoder = LayerDecoder(self.compression, self.label, decompress=self.decompress)
        os.lseek(fd, 0, os.SEEK_END)
        return decoder

    def _fetch(self, fd: int, decoder: LayerDecoder) -> None:
        offset = decoder.size
        if offset == self.size:
            return
        response = self.client.open_blob(self.repository, self.digest, offset)
        with closing(response):
            if response.status_code == 416 or (offset and not self._range_honoured(response,
                                                                                   offset)):
                # The server ignored or refused the range: start over from the first byte.
                os.ftruncate(fd, 0)
                raise _ShortRead(f"range from {offset} not served")
            for chunk in response.iter_raw(_CHUNK):
                if decoder.size + len(chunk) > self.size:
                    raise DigestMismatchError(
                        f"{self.label} is larger than the {self.size} bytes that the manifest "
                        "gives; the registry served wrong content")
                os.write(fd, chunk)
                decoder.feed(chunk)
                self._report("advance", len(chunk))
        if decoder.size < self.size:
            raise _ShortRead(f"stream ended at {decoder.size} bytes")

    @staticmethod
    def _range_honoured(response: Response, offset: int) -> bool:
        content_range = response.headers.get("Content-Range", "")
        return response.status_code == 206 and content_range.startswith(f"bytes {offset}-")

    def _commit(self, fd: int, path: str, decoder: LayerDecoder) -> str:
        if decoder.digest != self.digest:
            os.unlink(path)
            raise DigestMismatchError(f"{self.label} hashes to {decoder.digest}; the registry "
                                      "served wrong content, check the registry and try again")
        try:
            diff_id = decoder.finish(self.label)
            if self.expected_diff_id and diff_id and diff_id != self.expected_diff_id:
                raise DigestMismatchError(
                    f"{self.label} uncompresses to {diff_id}, but the config's diff_id is "
                    f"{self.expected_diff_id}; the image is damaged, check the registry")
        except DigestMismatchError:
            os.unlink(path)
            raise
        os.fsync(fd)
        os.rename(path, self.blob_path)
        _fsync_dir(os.path.dirname(self.blob_path))
        self._report("done")
        return diff_id


class _ShortRead(Exception):
    """The response ended before the blob did; the download resumes from where it stopped."""


def _open_locked(path: str) -> int:
    """Open the partial file and lock it; return the fd once it is the file at `path`.

    The pull that held the lock may have removed the file meanwhile (an empty one): the
    lock of a removed file guards nothing, so the file is opened again.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev,
                                                                      opened.st_ino):
            return fd
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
