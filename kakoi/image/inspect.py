"""The `docker image inspect` view of an image record and its config."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kakoi.image import reference

if TYPE_CHECKING:
    from kakoi.image.store import ImageRecord


def inspect_record(record: ImageRecord, config: dict, layer_dirs: list[str]) -> dict:
    """Build the JSON object that `docker image inspect` prints for one image."""
    # What a registry served (an index's digest for a multi-platform pull) comes first;
    # other names get the image's own manifest digest.
    repo_digests = []
    for entry in record.repo_digests:
        repository, _, digest = entry.partition("@")
        repo_digests.append(f"{reference.parse(repository).familiar_name()}@{digest}")
    served = {entry.partition("@")[0] for entry in repo_digests}
    for name in record.names:
        repository = reference.parse(name).familiar_name()
        entry = f"{repository}@{record.manifest_digest}"
        if repository not in served and entry not in repo_digests:
            repo_digests.append(entry)
    rootfs = config.get("rootfs") or {}
    return {
        "Id": record.id,
        "RepoTags": [reference.parse(name).familiar() for name in record.names],
        "RepoDigests": repo_digests,
        "Parent": "",
        "Comment": config.get("comment", ""),
        "Created": config.get("created", ""),
        "Author": config.get("author", ""),
        "Config": config.get("config") or {},
        "Architecture": config.get("architecture", ""),
        "Variant": config.get("variant", ""),
        "Os": config.get("os", ""),
        "Size": record.size,
        "GraphDriver": {
            "Name": "overlay",
            "Data": {"LowerDir": ":".join(str(path) for path in reversed(layer_dirs))},
        },
        "RootFS": {"Type": rootfs.get("type", "layers"), "Layers": rootfs.get("diff_ids", [])},
        "History": config.get("history") or [],
        "Descriptor": {
            "mediaType": record.manifest_media_type,
            "digest": record.manifest_digest,
        },
        "Metadata": {
            "LastTagTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.loaded)),
        },
    }
