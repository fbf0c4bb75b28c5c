"""Image archives: reading docker-archive, OCI archive and OCI layout; writing the first two.

Reading turns an archive into `SourceImage`s, whose blobs are opened lazily, so the store
can verify each one while copying it in. Writing takes `ExportImage`s whose blobs are files.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from kakoi.errors import ImageError, InvalidArgument
from kakoi.image import digest as digests
from kakoi.image import reference

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
_MAX_JSON = 16 << 20


@dataclass
class SourceBlob:
    """A blob inside an archive; `digest` is None when the archive does not name it."""

    open: Callable[[], BinaryIO]
    digest: str | None
    media_type: str
    label: str


@dataclass
class SourceImage:
    """One image found in an archive, before verification."""

    names: list[str]
    config: SourceBlob
    layers: list[SourceBlob]
    manifest: bytes | None = None


@dataclass
class ExportLayer:
    digest: str
    media_type: str
    diff_id: str
    path: Path


@dataclass
class ExportImage:
    """One image to write into an archive: the blob files and the names to record."""

    names: list[str]
    manifest: bytes
    config: bytes
    layers: list[ExportLayer] = field(default_factory=list)

    @property
    def config_digest(self) -> str:
        return digests.of_bytes(self.config)


# Reading


class _TarSource:
    """Members of a tar archive by normalized name; links inside the archive are followed."""

    def __init__(self, path: Path, label: str):
        self.label = label
        import zlib

        try:
            self.tar = tarfile.open(path, mode="r:*")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise _tar_read_error(label, error, opening=True) from None
        try:
            self.members = {posixpath.normpath(m.name.lstrip("/")): m
                            for m in self.tar.getmembers()}
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            self.tar.close()
            raise _tar_read_error(label, error, opening=False) from None

    def exists(self, name: str) -> bool:
        return posixpath.normpath(name) in self.members

    def open(self, name: str) -> BinaryIO:
        member = self.members.get(posixpath.normpath(name))
        stream = self.tar.extractfile(member) if member is not None else None
        if stream is None:
            raise ImageError(f"{self.label}: {name} is missing or not a file; the archive is "
                             "incomplete")
        return stream

    def close(self) -> None:
        self.tar.close()


class _DirectorySource:
    """Files of an OCI layout directory."""

    def __init__(self, path: Path, label: str):
        self.path = path
        self.label = label

    def _path(self, name: str) -> Path:
        parts = posixpath.normpath(name).split("/")
        if ".." in parts or name.startswith("/"):
            raise ImageError(f"{self.label}: path {name!r} leaves the layout directory")
        return self.path / name

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except OSError as error:
            raise ImageError(f"{self.label}: cannot open {name}: {error.strerror}") from None

    def close(self) -> None:
        pass


def _tar_read_error(label: str, error: Exception, opening: bool) -> ImageError:
    """Return the one-line error for a tar that tarfile cannot open or list."""
    # tarfile reports data cut short as "unexpected end of data", and gzip as EOFError.
    if isinstance(error, EOFError) or "unexpected end of data" in str(error):
        return ImageError(f"{label} is truncated: unexpected end of data; copy or save the "
                          "archive again")
    if isinstance(error, OSError):
        return ImageError(f"cannot read {label}: {error.strerror or error}; give a readable "
                          "archive file")
    if opening:
        return ImageError(f"{label} is not an image archive: it is not a tar file "
                          "(docker-archive, OCI archive or OCI layout expected)")
    return ImageError(f"{label} is damaged: {error}; copy or save the archive again")


def _read_json(source, name: str):
    with source.open(name) as stream:
        data = stream.read(_MAX_JSON + 1)
    if len(data) > _MAX_JSON:
        raise ImageError(f"{source.label}: {name} is larger than {_MAX_JSON} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise ImageError(f"{source.label}: {name} is not valid JSON ({error})") from None


def _blob(source, digest: str, media_type: str) -> SourceBlob:
    path = "blobs/sha256/" + digests.validate(digest)
    return SourceBlob(lambda: source.open(path), digest, media_type, f"{source.label}:{path}")


def open_archive(path: Path, label: str):
    """Open an archive file or OCI layout directory; the caller closes the result."""
    if path.is_dir():
        return _DirectorySource(path, label)
    return _TarSource(path, label)


def read_images(source) -> list[SourceImage]:
    """Find the images in an opened archive, raising ImageError when it is not an image."""
    if source.exists("index.json") and source.exists("oci-layout"):
        return _read_oci(source)
    if source.exists("manifest.json"):
        return _read_docker(source)
    raise ImageError(f"{source.label} is not an image archive: it has neither manifest.json "
                     "(docker-archive) nor oci-layout and index.json (OCI archive)")


def _parse_names(source, names: list[str]) -> list[str]:
    result = []
    for name in names:
        try:
            result.append(str(reference.parse(name)))
        except InvalidArgument as error:
            raise ImageError(f"{source.label}: image name {name!r} is invalid: {error}") from None
    return result


def _read_docker(source) -> list[SourceImage]:
    entries = _read_json(source, "manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImageError(f"{source.label}: manifest.json lists no images")
    images = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise ImageError(f"{source.label}: manifest.json has an entry without Config")
        images.append(SourceImage(
            names=_parse_names(source, entry.get("RepoTags") or []),
            config=_docker_blob(source, entry["Config"], MEDIA_OCI_CONFIG),
            layers=[_docker_blob(source, path, "") for path in entry.get("Layers") or []],
        ))
    return images


def _docker_blob(source, path: str, media_type: str) -> SourceBlob:
    # docker names a config <hex>.json and newer versions store blobs as blobs/sha256/<hex>,
    # so those names also give the expected digest.
    base = posixpath.basename(path)
    hex_part = base[:-len(".json")] if base.endswith(".json") else base
    expected = None
    if len(hex_part) == 64 and all(c in "0123456789abcdef" for c in hex_part):
        if base.endswith(".json") or path.startswith("blobs/sha256/"):
            expected = "sha256:" + hex_part
    return SourceBlob(lambda: source.open(path), expected, media_type, f"{source.label}:{path}")


def _read_oci(source) -> list[SourceImage]:
    index = _read_json(source, "index.json")
    images = []
    for descriptor in index.get("manifests") or []:
        images.extend(_read_oci_descriptor(source, descriptor, _oci_names(source, descriptor)))
    if not images:
        raise ImageError(f"{source.label}: index.json lists no image manifests")
    return images


def _oci_names(source, descriptor: dict) -> list[str]:
    annotations = descriptor.get("annotations") or {}
    name = annotations.get(ANNOTATION_CONTAINERD_NAME)
    ref_name = annotations.get(ANNOTATION_REF_NAME)
    # A ref.name that is only a tag ("latest") does not name a repository, so it is skipped.
    if name is None and ref_name and ("/" in ref_name or ":" in ref_name):
        name = ref_name
    return _parse_names(source, [name]) if name else []


def _read_oci_descriptor(source, descriptor: dict, names: list[str]) -> list[SourceImage]:
    media_type = descriptor.get("mediaType", "")
    digest = descriptor.get("digest", "")
    if media_type in INDEX_TYPES:
        nested = _read_json(source, "blobs/sha256/" + digests.validate(digest))
        chosen = _choose_platform(source, nested.get("manifests") or [])
        return _read_oci_descriptor(source, chosen, names)
    if media_type not in MANIFEST_TYPES:
        raise ImageError(f"{source.label}: unsupported manifest media type {media_type!r}")

    with _blob(source, digest, media_type).open() as stream:
        manifest_bytes = stream.read(_MAX_JSON + 1)
    if digests.of_bytes(manifest_bytes) != digest:
        from kakoi.errors import DigestMismatchError

        raise DigestMismatchError(f"{source.label}: manifest {digest} does not match its "
                                  "content; the archive is damaged")
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, RecursionError) as error:
        raise ImageError(f"{source.label}: manifest {digest} is not valid JSON ({error}); the "
                         "archive is damaged") from None
    config = manifest.get("config") or {}
    return [SourceImage(
        names=names,
        config=_blob(source, config.get("digest", ""), config.get("mediaType", MEDIA_OCI_CONFIG)),
        layers=[_blob(source, layer.get("digest", ""), layer.get("mediaType", ""))
                for layer in manifest.get("layers") or []],
        manifest=manifest_bytes,
    )]


def _choose_platform(source, manifests: list[dict]) -> dict:
    want = host_architecture()
    for descriptor in manifests:
        platform = descriptor.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == want:
            return descriptor
    raise ImageError(f"{source.label}: the image index has no manifest for linux/{want}")


def host_architecture() -> str:
    """Return the host's architecture in OCI spelling (amd64, arm64, ...)."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


# Writing


def _tar_info(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    return info


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    archive.addfile(_tar_info(name, len(data)), io.BytesIO(data))


def _add_file(archive: tarfile.TarFile, name: str, path: Path) -> None:
    with open(path, "rb") as stream:
        archive.addfile(_tar_info(name, os.fstat(stream.fileno()).st_size), stream)


def write_oci_archive(out: BinaryIO, images: list[ExportImage]) -> None:
    """Write an OCI archive: oci-layout, index.json with names, and blobs/sha256."""
    written: set[str] = set()
    descriptors = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        _add_bytes(archive, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        archive.addfile(_tar_info("blobs", 0, directory=True))
        archive.addfile(_tar_info("blobs/sha256", 0, directory=True))
        for image in images:
            manifest_digest = digests.of_bytes(image.manifest)
            blobs = [(manifest_digest, image.manifest), (image.config_digest, image.config)]
            for blob_digest, data in blobs:
                if blob_digest not in written:
                    _add_bytes(archive, "blobs/sha256/" + digests.validate(blob_digest), data)
                    written.add(blob_digest)
            for layer in image.layers:
                if layer.digest not in written:
                    _add_file(archive, "blobs/sha256/" + digests.validate(layer.digest),
                              layer.path)
                    written.add(layer.digest)
            descriptors.extend(_index_descriptors(image, manifest_digest))
        index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": descriptors}
        _add_bytes(archive, "index.json", json.dumps(index, separators=(",", ":")).encode())


def _index_descriptors(image: ExportImage, manifest_digest: str) -> list[dict]:
    base = {"mediaType": json.loads(image.manifest).get("mediaType", MEDIA_OCI_MANIFEST),
            "digest": manifest_digest, "size": len(image.manifest)}
    if not image.names:
        return [base]
    return [dict(base, annotations={ANNOTATION_CONTAINERD_NAME: name, ANNOTATION_REF_NAME: name})
            for name in image.names]


def write_docker_archive(out: BinaryIO, images: list[ExportImage], tmp_dir: Path) -> None:
    """Write the classic docker-archive: manifest.json, <hex>.json, <diff_id hex>/layer.tar.

    Compressed layers are decompressed into `tmp_dir` first, because a tar entry needs its size
    before its content.
    """
    entries = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for image in images:
            config_name = digests.validate(image.config_digest) + ".json"
            if config_name not in written:
                _add_bytes(archive, config_name, image.config)
                written.add(config_name)
            layer_names = []
            for layer in image.layers:
                layer_dir = digests.validate(layer.diff_id)
                if layer_dir not in written:
                    _add_docker_layer(archive, layer_dir, layer, tmp_dir)
                    written.add(layer_dir)
                layer_names.append(layer_dir + "/layer.tar")
            tags = [reference.parse(name).familiar() for name in image.names]
            entries.append({"Config": config_name, "RepoTags": tags or None,
                            "Layers": layer_names})
            _add_repositories(repositories, image, layer_names)
        _add_bytes(archive, "manifest.json", json.dumps(entries, separators=(",", ":")).encode())
        _add_bytes(archive, "repositories", json.dumps(repositories).encode())


def _add_docker_layer(archive, layer_dir: str, layer: ExportLayer, tmp_dir: Path) -> None:
    import shutil
    import tempfile

    from kakoi.image.layer import compression_of, open_uncompressed

    archive.addfile(_tar_info(layer_dir, 0, directory=True))
    _add_bytes(archive, layer_dir + "/VERSION", b"1.0")
    with open(layer.path, "rb") as stream:
        if compression_of(stream) == "none":
            _add_file(archive, layer_dir + "/layer.tar", layer.path)
            return
        with tempfile.TemporaryFile(dir=tmp_dir) as spool:
            shutil.copyfileobj(open_uncompressed(stream, f"layer {layer.digest}"), spool, 1 << 20)
            size = spool.tell()
            spool.seek(0)
            archive.addfile(_tar_info(layer_dir + "/layer.tar", size), spool)


def _add_repositories(repositories: dict, image: ExportImage, layer_names: list[str]) -> None:
    if not layer_names:
        return
    top = layer_names[-1].split("/")[0]
    for name in image.names:
        parsed = reference.parse(name)
        if parsed.tag:
            repositories.setdefault(parsed.familiar_name(), {})[parsed.tag] = top
