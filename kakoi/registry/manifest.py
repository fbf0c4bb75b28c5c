"""Manifests and indexes as the OCI image spec and Docker schema 2 write them.

This module parses what a registry returns for a manifest request and selects the manifest
for one platform from an index. It does no I/O.
"""

from __future__ import annotations

import json
import os

from kakoi.registry.errors import ManifestError

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
CONFIG_TYPES = (MEDIA_OCI_CONFIG, MEDIA_DOCKER_CONFIG)

# Layer media types and the compression of their blobs.
LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}

# The Accept header of a manifest request: every type this client can use, most preferred first.
ACCEPT = ", ".join([MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST])

# Registries such as Docker Hub limit manifests to 4 MiB; a larger one is refused unread.
MAX_MANIFEST_SIZE = 4 << 20


class Platform:
    """An os/architecture[/variant] triple, as in `--platform linux/arm64/v8`."""

    __slots__ = ("os", "architecture", "variant")

    def __init__(self, os: str, architecture: str, variant: str | None = None):
        self.os = os
        self.architecture = architecture
        self.variant = variant or None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Platform):
            return NotImplemented
        return (self.os, self.architecture, self.variant) == \
            (other.os, other.architecture, other.variant)

    def __hash__(self) -> int:
        return hash((self.os, self.architecture, self.variant))

    def __repr__(self) -> str:
        return f"Platform({str(self)!r})"


def parse_platform(text: str) -> Platform:
    """Parse `os/arch[/variant]`; raise InvalidArgument when it has another shape."""
    from kakoi.errors import InvalidArgument

    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], "
                              "such as linux/amd64 or linux/arm64/v8")
    return Platform(parts[0].lower(), _normalize_architecture(parts[1].lower()),
                    parts[2].lower() if len(parts) == 3 else None)


def host_platform() -> Platform:
    """Return the platform of this host, such as linux/amd64 or linux/arm64/v8."""
    machine = os.uname().machine
    architecture = _normalize_architecture(machine)
    variant = {"aarch64": "v8", "armv7l": "v7", "armv6l": "v6"}.get(machine)
    return Platform("linux", architecture, variant)


def _normalize_architecture(name: str) -> str:
    return {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
            "armel": "arm", "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386"
            }.get(name, name)


def _default_variant(platform: Platform) -> str | None:
    # An arm64 entry without a variant is v8, so a request for linux/arm64/v8 matches it.
    return "v8" if platform.architecture == "arm64" else None


def media_type_of(body: bytes, content_type: str | None) -> str:
    """Return the media type of a manifest response, from its body or else its Content-Type.

    Raises ManifestError for schema 1 manifests and for types that are neither manifests
    nor indexes.
    """
    document = parse_json(body, "manifest")
    media_type = document.get("mediaType") if isinstance(document, dict) else None
    if not media_type:
        media_type = (content_type or "").split(";")[0].strip()
    if not media_type and isinstance(document, dict):
        # An OCI manifest may leave out mediaType; its fields tell which kind it is.
        if "manifests" in document:
            media_type = MEDIA_OCI_INDEX
        elif "config" in document:
            media_type = MEDIA_OCI_MANIFEST
    check_media_type(media_type, document)
    return media_type


def check_media_type(media_type: str, document: object = None) -> None:
    if media_type in MEDIA_DOCKER_SCHEMA1 or (isinstance(document, dict)
                                              and document.get("schemaVersion") == 1):
        raise ManifestError("the registry returned a Docker schema 1 manifest, which kakoi "
                            "does not support; push the image again with a current client "
                            "to convert it to schema 2 or OCI")
    if media_type not in INDEX_TYPES + MANIFEST_TYPES:
        raise ManifestError(f"unsupported manifest media type {media_type!r}: expected an OCI "
                            "or Docker schema 2 manifest or index")


def parse_json(body: bytes, label: str) -> dict:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise ManifestError(f"the {label} is not valid JSON ({error}); the registry served "
                            "damaged content") from None
    if not isinstance(document, dict):
        raise ManifestError(f"the {label} is not a JSON object; the registry served damaged "
                            "content")
    return document


def check_size(size: int | None, label: str) -> None:
    if size is not None and size > MAX_MANIFEST_SIZE:
        raise ManifestError(f"the {label} is {size} bytes, more than the limit of "
                            f"{MAX_MANIFEST_SIZE} bytes (4 MiB); refusing to read it")


class Descriptor:
    """A content descriptor: media type, digest and size of one blob."""

    __slots__ = ("media_type", "digest", "size", "platform")

    def __init__(self, media_type: str, digest: str, size: int,
                 platform: Platform | None = None):
        self.media_type = media_type
        self.digest = digest
        self.size = size
        self.platform = platform

    @classmethod
    def from_json(cls, data: object, label: str) -> Descriptor:
        from kakoi.image import digest as digests

        if not isinstance(data, dict):
            raise ManifestError(f"{label} is not a descriptor object")
        digest, size = data.get("digest"), data.get("size")
        try:
            digests.validate(digest)
        except Exception:
            raise ManifestError(f"{label} has an invalid or unsupported digest {digest!r}: "
                                "kakoi verifies sha256 digests only") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{label} has an invalid size {size!r}")
        platform = None
        if isinstance(data.get("platform"), dict):
            entry = data["platform"]
            platform = Platform(str(entry.get("os", "")), str(entry.get("architecture", "")),
                                entry.get("variant"))
        return cls(str(data.get("mediaType", "")), digest, size, platform)


class ImageManifest:
    """The parts of an image manifest that a pull needs: its config and layer descriptors."""

    def __init__(self, config: Descriptor, layers: list[Descriptor]):
        self.config = config
        self.layers = layers


def parse_manifest(body: bytes, media_type: str) -> ImageManifest:
    document = parse_json(body, "manifest")
    config = Descriptor.from_json(document.get("config"), "the manifest's config")
    if config.media_type and config.media_type not in CONFIG_TYPES:
        raise ManifestError(f"unsupported config media type {config.media_type!r}: the "
                            "manifest does not describe a container image")
    entries = document.get("layers")
    if not isinstance(entries, list):
        raise ManifestError("the manifest has no layers list; the registry served an invalid "
                            "manifest")
    layers = []
    for number, entry in enumerate(entries, 1):
        layer = Descriptor.from_json(entry, f"layer {number} of the manifest")
        if layer.media_type not in LAYER_COMPRESSION:
            raise ManifestError(f"unsupported layer media type {layer.media_type!r} in layer "
                                f"{number}: expected an OCI or Docker tar layer")
        layers.append(layer)
    return ImageManifest(config, layers)


def select_platform(body: bytes, requested: Platform, name: str) -> Descriptor:
    """Return the descriptor of the index entry for `requested`; raise ManifestError if none.

    Without a requested variant, an entry with no variant (or the default one) is preferred
    over other variants of the same architecture.
    """
    document = parse_json(body, "index")
    entries = document.get("manifests")
    if not isinstance(entries, list):
        raise ManifestError(f"the index of {name} has no manifests list")
    candidates = [Descriptor.from_json(entry, f"entry {number} of the index")
                  for number, entry in enumerate(entries, 1)]
    matches = [d for d in candidates if d.platform is not None
               and d.platform.os == requested.os
               and _normalize_architecture(d.platform.architecture) == requested.architecture
               and d.media_type in MANIFEST_TYPES + ("",)]
    if requested.variant is not None:
        matches = [d for d in matches
                   if (d.platform.variant or _default_variant(d.platform)) == requested.variant]
    else:
        default = _default_variant(requested)
        matches.sort(key=lambda d: d.platform.variant not in (None, default))
    if not matches:
        available = ", ".join(sorted({str(d.platform) for d in candidates
                                      if d.platform is not None and d.platform.os != "unknown"}))
        raise ManifestError(f"no manifest for platform {requested} in {name}: the index has "
                            f"{available or 'no platforms'}; choose one with --platform")
    return matches[0]
