"""`kakoi push`: send an image from the local store to a registry.

Each blob that the stored manifest names (the layers, then the config) goes up on its own:
a HEAD finds it already there; else a cross-repository mount from a repository of the same
registry that the image was named in; else an upload session, monolithic for small blobs and
PATCH chunks for large ones, always finished by a PUT with the digest. The manifest goes last,
as its exact stored bytes with its stored media type, so the registry gives it the digest that
the store has.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from kakoi import log
from kakoi.errors import InvalidArgument
from kakoi.image import reference as references
from kakoi.registry import manifest as manifests
from kakoi.registry import progress as progresses
from kakoi.registry import workers
from kakoi.registry.client import RegistryClient, backoff_delay
from kakoi.registry.errors import RegistryError
from kakoi.registry.http import is_number

# Blobs larger than this go up in PATCH chunks of this size, each held in memory once.
CHUNK_SIZE = 8 << 20
# Blobs up to this size are offered in the POST that opens the session. A registry that
# ignores the body replies 202, and the blob follows in the PUT.
SINGLE_POST_LIMIT = 64 << 10
PARALLEL_UPLOADS = 3
MAX_MOUNT_SOURCES = 3
_OCTETS = "application/octet-stream"


class PushResult:
    """Outcome of a push: the tag, the manifest digest and size, and each blob's result."""

    def __init__(self, tag: str, digest: str, size: int, blobs: dict[str, str],
                 chunks: dict[str, int]):
        self.tag = tag
        self.digest = digest
        self.size = size
        self.blobs = blobs
        self.chunks = chunks


# Progress

class PlainProgress(progresses.Plain):
    """Lines such as Docker prints for a push when its output is not a terminal."""

    def exists(self, digest: str) -> None:
        self.line(f"{progresses.short(digest)}: Layer already exists")

    def mounted(self, digest: str, source: str) -> None:
        self.line(f"{progresses.short(digest)}: Mounted from {source}")

    def start(self, digest: str, total: int, completed: int) -> None:
        self.line(f"{progresses.short(digest)}: Pushing {total} bytes")

    def done(self, digest: str) -> None:
        self.line(f"{progresses.short(digest)}: Pushed")


class BarProgress(progresses.Bars):
    """One rich progress bar per uploaded blob."""

    def exists(self, digest: str) -> None:
        self.line(f"{progresses.short(digest)}: Layer already exists")

    def mounted(self, digest: str, source: str) -> None:
        self.line(f"{progresses.short(digest)}: Mounted from {source}")


class QuietProgress(progresses.Quiet):
    def mounted(self, digest: str, source: str) -> None:
        pass


def for_output(quiet: bool, stream=None):
    import sys

    stream = stream or sys.stdout
    if quiet:
        return QuietProgress()
    return BarProgress(stream) if stream.isatty() else PlainProgress(stream)


# Blob uploads

class _Retry(Exception):
    """An upload step failed in a way that a new attempt from the registry's offset can fix."""


class BlobUpload:
    """One blob of the store to make present in `repository`, with `run` returning how."""

    def __init__(self, client: RegistryClient, repository: str, digest: str, size: int,
                 path: str, mount_from: list[str], progress, chunk_size: int = CHUNK_SIZE):
        self.client = client
        self.repository = repository
        self.digest = digest
        self.size = size
        self.path = path
        self.mount_from = mount_from
        self.progress = progress
        self.chunk_size = chunk_size
        self.scope = f"repository:{repository}:pull,push"
        self.chunks = 0
        self.failures = 0
        self.label = f"blob {digest} of {repository}"

    def run(self) -> str:
        """Return "exists", "mounted" or "pushed"."""
        if self._exists():
            self.progress.exists(self.digest)
            return "exists"
        location = None
        for source in self.mount_from[:MAX_MOUNT_SOURCES]:
            if location is not None:
                self._cancel(location)
            mounted, location = self._mount(source)
            if mounted:
                self.progress.mounted(self.digest, source)
                return "mounted"
        self._upload(location)
        self.progress.done(self.digest)
        return "pushed"

    def _exists(self) -> bool:
        response = self.client.send("HEAD", f"/v2/{self.repository}/blobs/{self.digest}",
                                    self.scope)
        if response.status_code == 404:
            return False
        self.client.check_status(response, self.label)
        return response.status_code == 200

    def _mount(self, source: str) -> tuple[bool, str | None]:
        """POST a mount from `source`; 202 means the registry opened an upload session instead."""
        query = f"?mount={quote(self.digest)}&from={quote(source, safe='/')}"
        scope = (self.scope, f"repository:{source}:pull")
        response = self.client.request("POST", f"/v2/{self.repository}/blobs/uploads/{query}",
                                       scope, {"Content-Length": "0"})
        if response.status_code == 201:
            return True, None
        self.client.check_status(response, self.label)
        log.debug("%s: not mounted from %s (HTTP %d)", self.label, source,
                  response.status_code)
        return False, self._location(response) if response.status_code == 202 else None

    def _cancel(self, location: str) -> None:
        # An abandoned session only costs the registry storage until it purges uploads.
        try:
            self.client.request("DELETE", location, self.scope, attempts=1)
        except RegistryError as error:
            log.debug("%s: cannot cancel upload %s: %s", self.label, location, error)

    def _upload(self, location: str | None) -> None:
        attempts = self.client.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                if location is None:
                    location = self._start()
                    if location is None:
                        return
                self.progress.start(self.digest, self.size, 0)
                if self.size > self.chunk_size:
                    location = self._send_chunks(location)
                    self._finish(location, b"")
                else:
                    self._finish(location, self._read(0, self.size))
                return
            except _Retry as error:
                if attempt == attempts:
                    raise RegistryError(f"upload of {self.label} to {self.client.host} failed "
                                        f"{attempts} times, last: {error}; push again") \
                        from None
                delay = backoff_delay(attempt)
                log.debug("%s: %s; starting again in %.1fs", self.label, error, delay)
                self.client._sleep(delay)
                location = None
                self.failures = 0

    def _start(self) -> str | None:
        """Open an upload session; return its location, or None when the POST stored the blob."""
        path = f"/v2/{self.repository}/blobs/uploads/"
        if self.size <= SINGLE_POST_LIMIT:
            body = self._read(0, self.size)
            response = self.client.request("POST", f"{path}?digest={quote(self.digest)}",
                                           self.scope, {"Content-Type": _OCTETS}, body)
            if response.status_code == 201:
                self.progress.start(self.digest, self.size, 0)
                return None
        else:
            response = self.client.request("POST", path, self.scope, {"Content-Length": "0"})
        self.client.check_status(response, self.label)
        if response.status_code != 202:
            raise RegistryError(f"registry {self.client.host} returned HTTP "
                                f"{response.status_code} to the upload of {self.label}; "
                                "expected 202")
        self._apply_min_chunk(response)
        return self._location(response)

    def _apply_min_chunk(self, response) -> None:
        minimum = response.headers.get("OCI-Chunk-Min-Length", "")
        if is_number(minimum) and int(minimum) > self.chunk_size:
            self.chunk_size = int(minimum)

    def _send_chunks(self, location: str) -> str:
        """PATCH the blob in chunks from the offset that the registry reports."""
        offset = 0
        while offset < self.size:
            data = self._read(offset, min(self.chunk_size, self.size - offset))
            headers = {"Content-Type": _OCTETS,
                       "Content-Range": f"{offset}-{offset + len(data) - 1}"}
            try:
                response = self.client.request("PATCH", location, self.scope, headers, data,
                                               attempts=1)
            except RegistryError as error:
                if getattr(error, "certificate", False):
                    raise
                offset, location = self._status(location, str(error))
                continue
            if response.status_code == 416 or response.status_code >= 500:
                offset, location = self._status(location, f"HTTP {response.status_code}")
                continue
            self.client.check_status(response, self.label)
            self.chunks += 1
            location = self._location(response, location)
            reported = _range_end(response.headers.get("Range"))
            previous = offset
            offset = reported + 1 if reported is not None else offset + len(data)
            self.progress.advance(self.digest, max(0, offset - previous))
        return location

    def _status(self, location: str, why: str) -> tuple[int, str]:
        """Return the offset and location that the session reports after a chunk failed."""
        self.failures += 1
        if self.failures >= self.client.max_attempts:
            raise _Retry(f"{self.failures} chunks failed, last: {why}")
        try:
            response = self.client.request("GET", location, self.scope)
        except RegistryError as error:
            raise _Retry(f"chunk failed ({why}), status failed ({error})") from None
        if response.status_code != 204:
            raise _Retry(f"chunk failed ({why}), status HTTP {response.status_code}")
        reported = _range_end(response.headers.get("Range"))
        offset = 0 if reported is None else reported + 1
        log.debug("%s: chunk failed (%s); the registry contains %d bytes", self.label, why, offset)
        self.progress.start(self.digest, self.size, offset)
        return offset, self._location(response, location)

    def _finish(self, location: str, data: bytes) -> None:
        separator = "&" if "?" in location else "?"
        headers = {"Content-Type": _OCTETS} if data else {"Content-Length": "0"}
        try:
            response = self.client.request("PUT", f"{location}{separator}digest="
                                           f"{quote(self.digest)}", self.scope, headers, data,
                                           attempts=1)
        except RegistryError as error:
            if getattr(error, "certificate", False) or not getattr(error, "transport", False):
                raise
            raise _Retry(str(error)) from None
        if response.status_code >= 500:
            raise _Retry(f"HTTP {response.status_code} on the final PUT")
        self.client.check_status(response, self.label)
        if data:
            self.progress.advance(self.digest, len(data))
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != self.digest:
            raise RegistryError(f"registry {self.client.host} stored {self.label} as {stored}; "
                                "check the registry")

    def _location(self, response, current: str | None = None) -> str:
        location = response.headers.get("Location")
        if location:
            return self.client.join(str(response.request.url), location)
        if current is not None:
            return current
        raise RegistryError(f"registry {self.client.host} opened an upload for {self.label} "
                            "without a Location header; check the registry")

    def _read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as stream:
            stream.seek(offset)
            data = stream.read(length)
        if len(data) != length:
            raise RegistryError(f"{self.label}: the store's blob {self.path} is shorter than "
                                f"{offset + length} bytes; pull or load the image again")
        return data


def _range_end(header: str | None) -> int | None:
    """Return the last byte offset of a `Range: 0-N` header (`bytes=0-N` also), or None."""
    if not header:
        return None
    text = header.strip().removeprefix("bytes=")
    start, _, end = text.partition("-")
    return int(end) if is_number(start) and is_number(end) else None


# The push

def _target(record, source: str, destination: str | None) -> references.Reference:
    if destination is None:
        try:
            target = references.parse(source)
        except InvalidArgument:
            target = None
        if target is None or str(target) not in record.names:
            raise InvalidArgument(f"cannot push {source!r} without a destination: it is not a "
                                  "name of the image; give DEST as REGISTRY/NAME[:TAG]")
    else:
        target = references.parse(destination)
    if target.digest is not None:
        raise InvalidArgument(f"invalid push destination {destination or source!r}: it has a "
                              "digest; give REGISTRY/NAME[:TAG]")
    return target


def mount_sources(record, target: references.Reference) -> list[str]:
    """Return the repositories of the target's registry that the image is named in."""
    found = []
    for name in record.names:
        ref = references.parse(name)
        if ref.domain == target.domain and ref.path != target.path and ref.path not in found:
            found.append(ref.path)
    return found


def _blobs(store, record) -> tuple[bytes, list[manifests.Descriptor]]:
    body = store.read_blob(record.manifest_digest)
    image = manifests.parse_manifest(body, record.manifest_media_type)
    unique = {}
    for descriptor in [*image.layers, image.config]:
        unique.setdefault(descriptor.digest, descriptor)
    return body, list(unique.values())


def upload_blobs(store, client: RegistryClient, repository: str,
                 blobs: list[manifests.Descriptor], mount_from: list[str], progress,
                 chunk_size: int | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """Make every blob present in `repository`; return each outcome and PATCH count."""
    jobs = [BlobUpload(client, repository, blob.digest, blob.size,
                       str(store.blob_path(blob.digest)), mount_from, progress,
                       chunk_size or CHUNK_SIZE) for blob in blobs]
    for job in jobs:
        if not os.path.exists(job.path):
            raise RegistryError(f"{job.label}: the store has no blob {job.digest}; pull or "
                                "load the image again")
    results = workers.run_all([job.run for job in jobs], PARALLEL_UPLOADS, "kakoi-push",
                              on_interrupt=client.abort)
    outcomes = {job.digest: result for job, result in zip(jobs, results)}
    return outcomes, {job.digest: job.chunks for job in jobs}


def put_manifest(client: RegistryClient, target: references.Reference, body: bytes,
                 media_type: str) -> str:
    from kakoi.image import digest as digests

    digest = digests.of_bytes(body)
    response = client.request("PUT", f"/v2/{target.path}/manifests/{target.tag}",
                              f"repository:{target.path}:pull,push",
                              {"Content-Type": media_type}, body)
    client.check_status(response, f"manifest {target.path}:{target.tag}")
    stored = response.headers.get("Docker-Content-Digest")
    if stored and stored != digest:
        raise RegistryError(f"registry {client.host} stored the manifest of {target} as "
                            f"{stored}, not {digest}; it rewrote the manifest")
    return digest


def push(store, source: str, destination: str | None = None, progress=None, transport=None,
         chunk_size: int | None = None, **options) -> PushResult:
    """Push the image that `source` names in `store` to `destination` (default: `source`)."""
    from kakoi.registry.pull import make_client

    progress = progress or QuietProgress()
    record = store.resolve(source)
    target = _target(record, source, destination)
    body, blobs = _blobs(store, record)
    client = make_client(target.domain, transport=transport, **options)
    try:
        progress.line(f"The push refers to repository [{target.name}]")
        outcomes, chunks = upload_blobs(store, client, target.path, blobs,
                                        mount_sources(record, target), progress, chunk_size)
        digest = put_manifest(client, target, body, record.manifest_media_type)
    finally:
        client.close()
    return PushResult(target.tag, digest, len(body), outcomes, chunks)


__all__ = ["push", "PushResult", "BlobUpload", "CHUNK_SIZE", "for_output", "mount_sources"]
