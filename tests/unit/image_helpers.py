"""Helpers for image tests: small layer tars, synthetic image archives, store listings.

A module of its own rather than part of conftest.py, because tests/e2e has a conftest too
and `from conftest import ...` would find whichever directory pytest inserted first.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path


def tar_bytes(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """Return a plain tar of the given entries; a tuple adds file content."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            if isinstance(entry, tuple):
                info, data = entry
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(entry)
    return buffer.getvalue()


def file_entry(name: str, data: bytes = b"", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = 1_700_000_000
    return info, data


def write_image(path: Path, layers: list[bytes], name: str | None = "test/image:latest",
                format: str = "docker-archive", diff_ids: list[str] | None = None) -> str:
    """Write an image archive with the given uncompressed layer tars; return its config digest."""
    from kakoi.image import archive as archives
    from kakoi.image import digest as digests
    from kakoi.image import reference

    layer_dir = path.parent / (path.name + ".layers")
    layer_dir.mkdir(exist_ok=True)
    exports = []
    for index, layer in enumerate(layers):
        layer_path = layer_dir / f"{index}.tar"
        layer_path.write_bytes(layer)
        exports.append(archives.ExportLayer(digests.of_bytes(layer), archives.MEDIA_OCI_LAYER,
                                            digests.of_bytes(layer), layer_path))
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers",
                   "diff_ids": diff_ids or [layer.diff_id for layer in exports]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": archives.MEDIA_OCI_MANIFEST,
        "config": {"mediaType": archives.MEDIA_OCI_CONFIG, "digest": digests.of_bytes(config),
                   "size": len(config)},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest,
                    "size": layer.path.stat().st_size} for layer in exports],
    }).encode()
    names = [str(reference.parse(name))] if name else []
    image = archives.ExportImage(names, manifest, config, exports)
    with open(path, "wb") as stream:
        if format == "oci-archive":
            archives.write_oci_archive(stream, [image])
        else:
            archives.write_docker_archive(stream, [image], path.parent)
    return digests.of_bytes(config)


def store_listing(root: Path) -> list[tuple[str, int]]:
    """Return every path under root with its size, to compare a store before and after."""
    result = []
    for path in sorted(root.rglob("*")):
        size = path.stat().st_size if path.is_file() and not path.is_symlink() else 0
        if path.name == "images.json":
            size = hash(path.read_bytes())
        result.append((str(path.relative_to(root)), size))
    return result
