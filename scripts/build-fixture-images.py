#!/usr/bin/env python3
"""Build the OCI archives that the registry tests push, pull and compare.

Writes into OUT:
  busybox-oci.tar          one layer, from scripts/build-busybox-image.py (also busybox-docker.tar)
  layered-oci.tar          the busybox layer plus three layers of our own: files, a hard link and
                           a symlink; then a whiteout of a file, of a directory and an opaque
                           directory; then 5,000 small files in one layer
  debian-bookworm-oci.tar  a debootstrap --variant=minbase Debian bookworm root in one large
                           layer (needs root and the Debian mirror that apt uses; takes minutes)

An archive that already exists is kept unless --force is given, so callers can cache OUT.
The archives are written here with the standard library, not with kakoi's own writer, so that a
bug in kakoi's image code cannot hide in its test data. Every tar entry has sorted names, a
clamped mtime (SOURCE_DATE_EPOCH, default 2024-01-01) and no user or group names, so the
busybox and layered archives are byte-for-byte reproducible. The Debian one is not, because the
mirror's package versions change.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EPOCH = 1704067200  # 2024-01-01T00:00:00Z
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
IMAGES = ("busybox", "layered", "debian")
ARCHIVE_NAMES = {"busybox": "busybox-oci.tar", "layered": "layered-oci.tar",
                 "debian": "debian-bookworm-oci.tar"}
MANY_FILES = 5000
MANY_DIRECTORIES = 50
# Paths left out of the Debian layer: device nodes that debootstrap makes (a runtime supplies
# /dev), and apt's caches and logs, which only make the layer larger.
DEBIAN_EMPTIED = ("dev", "proc", "sys", "run", "tmp", "var/cache/apt/archives",
                  "var/lib/apt/lists", "var/log", "var/cache/debconf")


@dataclass
class Layer:
    """A gzip layer blob on disk with its digests."""

    path: Path
    digest: str
    size: int
    diff_id: str
    created_by: str


def source_epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))


def created_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(source_epoch()))


def architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it to `target`."""

    def __init__(self, target):
        self.target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)


def write_layer(path: Path, fill, created_by: str) -> Layer:
    """Write a gzip layer to path; fill(tar) adds the entries. Return its digests."""
    with open(path, "wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0,
                           compresslevel=6) as gz:
            plain = _HashingWriter(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                fill(tar)
    return Layer(path, "sha256:" + compressed.hash.hexdigest(), compressed.size,
                 "sha256:" + plain.hash.hexdigest(), created_by)


def _canonical(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(layers: list[Layer], cmd: list[str]) -> bytes:
    created = created_time()
    return _canonical({
        "created": created,
        "architecture": architecture(),
        "os": "linux",
        "config": {"Env": [f"PATH={PATH}"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": layer.created_by} for layer in layers],
    })


def write_oci_archive(path: Path, layers: list[Layer], config: bytes, ref_name: str) -> None:
    """Write an OCI image layout as a tar (oci-layout, index.json, blobs/sha256/*)."""
    manifest = _canonical({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
                   for layer in layers],
    })
    index = _canonical({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": _digest(manifest),
                       "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": ref_name}}],
    })
    temp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_directory(tar, "blobs")
        _add_directory(tar, "blobs/sha256")
        blobs = {_digest(config): config, _digest(manifest): manifest}
        for layer in layers:
            blobs[layer.digest] = layer.path
        for digest in sorted(blobs):
            _add_blob(tar, "blobs/sha256/" + digest.removeprefix("sha256:"), blobs[digest])
        _add_blob(tar, "index.json", index)
        _add_blob(tar, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
    os.rename(temp, path)


def _entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = source_epoch()
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_directory(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    tar.addfile(_entry(name, tarfile.DIRTYPE, mode))


def _add_blob(tar: tarfile.TarFile, name: str, content: bytes | Path) -> None:
    if isinstance(content, Path):
        info = _entry(name)
        info.size = content.stat().st_size
        with open(content, "rb") as stream:
            tar.addfile(info, stream)
        return
    _add_bytes(tar, name, content)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = _entry(name, mode=mode)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = _entry(name, kind, 0o777 if kind == tarfile.SYMTYPE else 0o644)
    info.linkname = target
    tar.addfile(info)


# --- busybox ---------------------------------------------------------------------------------

def build_busybox(out: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / "build-busybox-image.py"),
                    "--out", str(out)], check=True)


def busybox_base_layer(archive: Path, work: Path) -> Layer:
    """Return the one layer of busybox-oci.tar, copied to work, with its diff_id."""
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        manifest_digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest = json.load(tar.extractfile(f"blobs/sha256/{manifest_digest}"))
        config_digest = manifest["config"]["digest"].removeprefix("sha256:")
        config = json.load(tar.extractfile(f"blobs/sha256/{config_digest}"))
        descriptor = manifest["layers"][0]
        path = work / "busybox.tar.gz"
        with tar.extractfile("blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")) \
                as source, open(path, "wb") as target:
            shutil.copyfileobj(source, target)
    return Layer(path, descriptor["digest"], descriptor["size"], config["rootfs"]["diff_ids"][0],
                 config["history"][0]["created_by"])


# --- layered ---------------------------------------------------------------------------------

def _fill_files(tar: tarfile.TarFile) -> None:
    for directory in ("data", "olddir", "olddir/nested", "opaque", "opaque/sub"):
        _add_directory(tar, directory)
    _add_bytes(tar, "data/keep.txt", b"kept in every layer\n")
    _add_bytes(tar, "data/gone.txt", b"removed by a whiteout in the next layer\n")
    _add_bytes(tar, "data/script.sh", b"#!/bin/sh\necho layered\n", mode=0o755)
    _add_link(tar, "data/keep-hardlink.txt", "data/keep.txt", tarfile.LNKTYPE)
    _add_link(tar, "data/keep-symlink.txt", "keep.txt", tarfile.SYMTYPE)
    _add_bytes(tar, "olddir/nested/file.txt", b"removed with its directory\n")
    _add_bytes(tar, "opaque/a.txt", b"hidden by the opaque whiteout\n")
    _add_bytes(tar, "opaque/sub/b.txt", b"hidden by the opaque whiteout\n")


def _fill_whiteouts(tar: tarfile.TarFile) -> None:
    _add_directory(tar, "data")
    _add_bytes(tar, "data/.wh.gone.txt", b"")
    _add_bytes(tar, ".wh.olddir", b"")
    _add_directory(tar, "opaque")
    _add_bytes(tar, "opaque/.wh..wh..opq", b"")
    _add_bytes(tar, "opaque/new.txt", b"the only file left in /opaque\n")


def _fill_many(tar: tarfile.TarFile) -> None:
    _add_directory(tar, "many")
    per_directory = MANY_FILES // MANY_DIRECTORIES
    for directory in range(MANY_DIRECTORIES):
        _add_directory(tar, f"many/{directory:02d}")
        for number in range(per_directory):
            index = directory * per_directory + number
            _add_bytes(tar, f"many/{directory:02d}/file-{index:04d}.txt", f"{index}\n".encode())


# What the root of the layered image contains after all layers are applied, and what its
# whiteouts remove. The registry tests compare an unpacked pull against these paths.
LAYERED_PRESENT = ("data/keep.txt", "data/keep-hardlink.txt", "data/keep-symlink.txt",
                   "data/script.sh", "opaque/new.txt", "many/00/file-0000.txt",
                   "many/49/file-4999.txt", "bin/busybox")
LAYERED_ABSENT = ("data/gone.txt", "data/.wh.gone.txt", "olddir", ".wh.olddir", "opaque/a.txt",
                  "opaque/sub", "opaque/.wh..wh..opq")


def build_layered(out: Path) -> None:
    busybox = out / ARCHIVE_NAMES["busybox"]
    if not busybox.exists():
        build_busybox(out)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        layers = [
            busybox_base_layer(busybox, work),
            write_layer(work / "files.tar.gz", _fill_files,
                        "files, a hard link and a symlink in /data, /olddir and /opaque"),
            write_layer(work / "whiteouts.tar.gz", _fill_whiteouts,
                        "whiteouts of /data/gone.txt and /olddir, /opaque made opaque"),
            write_layer(work / "many.tar.gz", _fill_many,
                        f"{MANY_FILES} small files in /many"),
        ]
        config = image_config(layers, ["sh"])
        write_oci_archive(out / ARCHIVE_NAMES["layered"], layers, config, "latest")


# --- debian ----------------------------------------------------------------------------------

def apt_mirror(suite: str = "bookworm") -> str:
    """Return the Debian mirror URI that apt's sources use for suite's main component."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = _deb822_fields(stanza)
            if (suite in fields.get("Suites", "").split()
                    and "main" in fields.get("Components", "").split()
                    and fields.get("Enabled", "yes") != "no"):
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 4 and words[0] == "deb" and words[2] == suite and "main" in words:
                return words[1]
    raise SystemExit(f"no apt source for {suite} main found in /etc/apt: add one or pass --mirror")


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, value = line.split(":", 1)
        fields[key.strip()] = value.strip()
    return fields


def _debian_filter(root: Path):
    epoch = source_epoch()

    def clamp(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = info.name
        for emptied in DEBIAN_EMPTIED:
            if name.startswith(emptied + "/"):
                return None
        info.mtime = min(int(info.mtime), epoch)
        info.uname = info.gname = ""
        return info

    return clamp


def _fill_rootfs(root: Path):
    def fill(tar: tarfile.TarFile) -> None:
        # tarfile.add walks directories in sorted order, so the layer is ordered by name.
        for child in sorted(os.listdir(root)):
            tar.add(root / child, arcname=child, filter=_debian_filter(root))
    return fill


def _unmount_below(root: Path) -> None:
    """Unmount whatever debootstrap left mounted below root (it mounts /proc and /sys)."""
    with open("/proc/self/mountinfo") as file:
        points = [line.split()[4] for line in file]
    for point in sorted(points, key=len, reverse=True):
        if point == str(root) or point.startswith(str(root) + "/"):
            subprocess.run(["umount", "-l", point], check=False)


def build_debian(out: Path, mirror: str | None) -> None:
    if os.geteuid() != 0:
        raise SystemExit("building the Debian image needs root for debootstrap: run as root")
    mirror = mirror or apt_mirror()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        root = work / "rootfs"
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(source_epoch()))
        try:
            subprocess.run(["debootstrap", "--variant=minbase", f"--arch={architecture()}",
                            "bookworm", str(root), mirror], check=True, env=env)
        finally:
            _unmount_below(root)
        layer = write_layer(work / "rootfs.tar.gz", _fill_rootfs(root),
                            f"debootstrap --variant=minbase bookworm from {mirror}")
        config = image_config([layer], ["bash"])
        write_oci_archive(out / ARCHIVE_NAMES["debian"], [layer], config, "bookworm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the archives")
    parser.add_argument("--only", default=",".join(IMAGES),
                        help="comma-separated images to build (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild archives that exist")
    parser.add_argument("--mirror", help="Debian mirror for debootstrap (default: apt's)")
    args = parser.parse_args()

    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(IMAGES))
    if unknown:
        parser.error(f"unknown image {', '.join(unknown)}: choose from {', '.join(IMAGES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in IMAGES:
        target = args.out / ARCHIVE_NAMES[name]
        if name not in wanted or (target.exists() and not args.force):
            continue
        started = time.monotonic()
        if name == "busybox":
            build_busybox(args.out)
        elif name == "layered":
            build_layered(args.out)
        else:
            build_debian(args.out, args.mirror)
        print(f"{target} {time.monotonic() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
