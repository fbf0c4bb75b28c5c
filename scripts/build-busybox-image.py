#!/usr/bin/env python3
"""Build a one-layer busybox image from the host's static /bin/busybox (Debian busybox-static).

Writes OUT/busybox-docker.tar (docker-archive, plain layer) and OUT/busybox-oci.tar (OCI archive,
gzip layer). The output is deterministic: every entry has uid/gid 0, a fixed mtime
(SOURCE_DATE_EPOCH if set, else 2024-01-01) and sorted names, so two runs give the same digests.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kakoi.image import archive as archives  # noqa: E402
from kakoi.image import digest as digests  # noqa: E402
from kakoi.image import reference  # noqa: E402

BUSYBOX = Path("/bin/busybox")
DEFAULT_EPOCH = 1704067200  # 2024-01-01T00:00:00Z
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
app:x:1000:
nogroup:x:65534:
"""
DIRECTORIES = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755,
               "home/app": 0o755, "proc": 0o555, "root": 0o700, "sbin": 0o755,
               "sys": 0o555, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
               "usr/sbin": 0o755, "var": 0o755}


def source_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))


def applet_paths() -> list[str]:
    output = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True,
                            text=True).stdout
    return sorted({line.strip().lstrip("/") for line in output.splitlines() if line.strip()})


def _entry(name: str, mtime: int, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_layer(mtime: int) -> bytes:
    """Return the uncompressed layer tar."""
    files = {"bin/busybox": (BUSYBOX.read_bytes(), 0o755),
             "etc/passwd": (PASSWD.encode(), 0o644),
             "etc/group": (GROUP.encode(), 0o644)}
    directories = dict(DIRECTORIES)
    symlinks = {}
    for path in applet_paths():
        if path in files or path in directories:
            continue
        for parent in _parents(path):
            directories.setdefault(parent, 0o755)
        symlinks[path] = "/bin/busybox"

    entries = sorted(set(files) | set(directories) | set(symlinks))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as layer:
        for name in entries:
            if name in directories:
                layer.addfile(_entry(name, mtime, tarfile.DIRTYPE, directories[name]))
            elif name in files:
                data, mode = files[name]
                info = _entry(name, mtime, tarfile.REGTYPE, mode)
                info.size = len(data)
                layer.addfile(info, io.BytesIO(data))
            else:
                info = _entry(name, mtime, tarfile.SYMTYPE, 0o777)
                info.linkname = symlinks[name]
                layer.addfile(info)
    return buffer.getvalue()


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def gzip_bytes(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=6) as out:
        out.write(data)
    return buffer.getvalue()


def build_config(diff_id: str, created: str) -> bytes:
    config = {
        "created": created,
        "architecture": archives.host_architecture(),
        "os": "linux",
        "config": {"Env": [f"PATH={PATH}"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created,
                     "created_by": "scripts/build-busybox-image.py: /bin/busybox from the host "
                                   "with applet symlinks, /etc/passwd and /etc/group"}],
    }
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def build_manifest(config: bytes, layer: bytes, media_type: str) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": archives.MEDIA_OCI_MANIFEST,
        "config": {"mediaType": archives.MEDIA_OCI_CONFIG, "digest": digests.of_bytes(config),
                   "size": len(config)},
        "layers": [{"mediaType": media_type, "digest": digests.of_bytes(layer),
                    "size": len(layer)}],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def write_archive(path: Path, image: archives.ExportImage, format: str, tmp: Path) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as stream:
        if format == "oci-archive":
            archives.write_oci_archive(stream, [image])
        else:
            archives.write_docker_archive(stream, [image], tmp)
    os.rename(temp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the two archives")
    parser.add_argument("--tag", default="busybox:latest", help="image name (default: %(default)s)")
    args = parser.parse_args()

    name = str(reference.parse(args.tag))
    epoch = source_epoch()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    layer = build_layer(epoch)
    compressed = gzip_bytes(layer)
    diff_id = digests.of_bytes(layer)
    config = build_config(diff_id, created)

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        tmp_path = Path(tmp)
        plain_path = tmp_path / "layer.tar"
        plain_path.write_bytes(layer)
        gzip_path = tmp_path / "layer.tar.gz"
        gzip_path.write_bytes(compressed)
        formats = [
            ("busybox-docker.tar", "docker-archive", layer, plain_path, archives.MEDIA_OCI_LAYER),
            ("busybox-oci.tar", "oci-archive", compressed, gzip_path,
             archives.MEDIA_OCI_LAYER_GZIP),
        ]
        for file_name, format, blob, blob_path, media_type in formats:
            image = archives.ExportImage(
                names=[name], manifest=build_manifest(config, blob, media_type), config=config,
                layers=[archives.ExportLayer(digests.of_bytes(blob), media_type, diff_id,
                                             blob_path)])
            write_archive(args.out / file_name, image, format, tmp_path)

    print(f"{name} {digests.of_bytes(config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
