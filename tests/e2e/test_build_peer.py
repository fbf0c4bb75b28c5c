"""`kakoi build` against `buildah build` on a corpus of Dockerfiles.

Each Dockerfile under tests/fixtures/dockerfiles/ is built by both tools from the same context
copy. Both images are exported as OCI archives and unpacked in memory by `apply_layer` below,
not by kakoi's own layer code, so that a bug there cannot hide a difference. The root
filesystems and the image configs are then compared without timestamps.

buildah runs with its own --root and --runroot in a fresh /tmp directory. A private
registries.conf has no search registries and disables short names, and builds use
`--pull-never` and `--network none`, so nothing is fetched from a registry. Its busybox comes
from the fixture's OCI archive. Its RUN steps use runc with cgroupfs below a kakoi-test-* parent. The fixture
removes its images, containers, mounts, cgroups and directories, also when a test fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.peer]

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "dockerfiles"
CGROUP_ROOT = Path("/sys/fs/cgroup")
EPOCH = "1700000000"

# Mount points that buildah 1.28 leaves in the layer of a RUN step when the image lacked them,
# while kakoi removes the empty mount points that its RUN containers needed. Each is left out
# only in that empty form, so a file or directory with content there is still compared.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
EMPTY_MOUNT_POINTS = {"/etc/hostname": "file", "/run": "dir"}
# Labels that only name the tool that built the image.
TOOL_LABELS = {"io.buildah.version"}
CONFIG_KEYS = ["Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Labels",
               "Volumes", "StopSignal"]


def _unmount_under(path: Path) -> None:
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts]
    for target in sorted(targets, key=len, reverse=True):
        if target == str(path) or target.startswith(f"{path}/"):
            subprocess.run(["umount", "-l", target], check=False)


def _remove_cgroups(name: str) -> None:
    # runc creates the parent in every mounted hierarchy (v1 controllers and the v2 tree).
    for directory in sorted(CGROUP_ROOT.glob(f"**/{name}"), key=lambda p: len(p.parts),
                            reverse=True):
        for child in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if child.is_dir():
                child.rmdir()
        directory.rmdir()


class Buildah:
    """Runs `buildah` on a private store with a private containers.conf and registries.conf."""

    def __init__(self, base: Path, cgroup_parent: str):
        self.base = base
        self.cgroup_parent = cgroup_parent
        (base / "registries.conf").write_text(
            'unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
        (base / "containers.conf").write_text(
            '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\n'
            'runtime = "runc"\n')
        self.env = {"CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf"),
                    "CONTAINERS_CONF": str(base / "containers.conf"),
                    "SOURCE_DATE_EPOCH": EPOCH, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                    "TMPDIR": str(base / "tmp")}
        (base / "tmp").mkdir()
        self.global_args = ["buildah", "--root", str(base / "root"), "--runroot",
                            str(base / "run"), "--storage-driver", "vfs"]

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.global_args + list(args), capture_output=True, text=True,
                              env=self.env, timeout=300)

    def build(self, context: Path, tag: str, *args: str) -> subprocess.CompletedProcess:
        return self("build", "--layers", "--isolation", "oci", "--runtime", "runc",
                    "--network", "none", "--pull-never", "--cgroup-parent",
                    f"/{self.cgroup_parent}", "-t", tag, *args, str(context))


@pytest.fixture(scope="module")
def buildah(busybox_archives):
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed: run scripts/install.sh")
    # A short path: containers/storage rejects a runroot whose socket paths get too long.
    base = Path(tempfile.mkdtemp(prefix="kkb", dir="/tmp"))
    cgroup_parent = f"kakoi-test-buildah-{uuid.uuid4().hex[:8]}"
    tool = Buildah(base, cgroup_parent)
    try:
        pulled = tool("pull", "-q", f"oci-archive:{busybox_archives['oci-archive']}")
        assert pulled.returncode == 0, pulled.stderr
        yield tool
    finally:
        tool("rm", "--all")
        tool("rmi", "--all", "--force")
        _unmount_under(base)
        _remove_cgroups(cgroup_parent)
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Entry:
    """One path of a root filesystem, without its timestamps."""

    kind: str
    mode: int
    uid: int
    gid: int
    # The sha256 of a regular file, the target of a symlink, or major:minor of a device.
    data: str = ""


@dataclass
class Image:
    config: dict
    tree: dict[str, Entry] = field(default_factory=dict)


def _normalize(name: str) -> str:
    path = posixpath.normpath("/" + name)
    return "/" if path == "//" else path


def _remove_tree(tree: dict[str, Entry], path: str, keep: set[str] = frozenset()) -> None:
    prefix = path.rstrip("/") + "/"
    for key in [key for key in tree if key == path or key.startswith(prefix)]:
        if key not in keep:
            del tree[key]


def _entry(layer: tarfile.TarFile, member: tarfile.TarInfo, tree: dict[str, Entry]) -> Entry:
    mode = member.mode & 0o7777
    if member.isdir():
        return Entry("dir", mode, member.uid, member.gid)
    if member.issym():
        return Entry("symlink", 0, member.uid, member.gid, member.linkname)
    if member.islnk():
        # A hard link gets the content of its target, which an earlier member of this layer
        # or a lower layer holds.
        target = tree[_normalize(member.linkname)]
        return Entry("file", mode, member.uid, member.gid, target.data)
    if member.isreg():
        digest = hashlib.sha256(layer.extractfile(member).read()).hexdigest()
        return Entry("file", mode, member.uid, member.gid, digest)
    if member.ischr() or member.isblk():
        kind = "char" if member.ischr() else "block"
        return Entry(kind, mode, member.uid, member.gid, f"{member.devmajor}:{member.devminor}")
    return Entry("fifo", mode, member.uid, member.gid)


def apply_layer(tree: dict[str, Entry], layer: tarfile.TarFile) -> None:
    """Apply one layer tar to tree with the OCI whiteout rules."""
    added: set[str] = set()
    for member in layer:
        path = _normalize(member.name)
        parent, base = posixpath.split(path)
        if base == ".wh..wh..opq":
            # An opaque directory hides the lower layers' children, not this layer's.
            _remove_tree(tree, parent, keep=added | {parent})
            continue
        if base.startswith(".wh."):
            _remove_tree(tree, posixpath.join(parent, base[len(".wh."):]))
            continue
        entry = _entry(layer, member, tree)
        old = tree.get(path)
        if old is not None and old.kind == "dir" and entry.kind != "dir":
            _remove_tree(tree, path)
        tree[path] = entry
        added.add(path)


def read_oci_archive(path: Path) -> Image:
    """Return the config and the root filesystem of the first image in an OCI archive."""
    with tarfile.open(path) as archive:
        def blob(digest: str) -> bytes:
            return archive.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}").read()

        index = json.loads(archive.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        image = Image(json.loads(blob(manifest["config"]["digest"])))
        for descriptor in manifest["layers"]:
            with tempfile.TemporaryFile() as layer_file:
                layer_file.write(blob(descriptor["digest"]))
                layer_file.seek(0)
                with tarfile.open(fileobj=layer_file) as layer:
                    apply_layer(image.tree, layer)
    return image


def comparable_tree(tree: dict[str, Entry]) -> dict[str, Entry]:
    result = dict(tree)
    for path, kind in EMPTY_MOUNT_POINTS.items():
        entry = result.get(path)
        if entry is None or entry.kind != kind:
            continue
        if kind == "file" and entry.data != EMPTY_SHA256:
            continue
        if kind == "dir" and any(key.startswith(path + "/") for key in result):
            continue
        del result[path]
    return result


def comparable_config(image: Image) -> dict:
    config = image.config.get("config", {})
    result = {key: config.get(key) or None for key in CONFIG_KEYS}
    labels = {key: value for key, value in (config.get("Labels") or {}).items()
              if key not in TOOL_LABELS}
    result["Labels"] = labels or None
    # buildah 1.28 moves a variable that ENV sets again to the end of Env, where Docker keeps
    # it in place (BuildKit's addEnv replaces the entry at its index), so the order is not
    # compared.
    result["Env"] = dict(item.split("=", 1) for item in result["Env"] or [])
    return result


def describe_differences(kakoi_tree: dict[str, Entry], buildah_tree: dict[str, Entry]) -> str:
    lines = []
    for path in sorted(set(kakoi_tree) | set(buildah_tree)):
        ours, theirs = kakoi_tree.get(path), buildah_tree.get(path)
        if ours != theirs:
            lines.append(f"{path}: kakoi {ours} buildah {theirs}")
    return "\n".join(lines)


def _write_payload(context: Path) -> None:
    """Write payload.tar.gz with a directory, files of other owners and modes, and links."""
    with tarfile.open(context / "payload.tar.gz", "w:gz") as archive:
        def add(name: str, kind: bytes, mode: int, uid: int = 0, data: bytes = b"",
                link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, uid, 1
            info.size, info.linkname = len(data), link
            archive.addfile(info, io.BytesIO(data) if data else None)

        add("pkg", tarfile.DIRTYPE, 0o750, uid=1000)
        add("pkg/bin", tarfile.DIRTYPE, 0o755)
        add("pkg/bin/tool", tarfile.REGTYPE, 0o755, data=b"#!/bin/sh\necho tool\n")
        add("pkg/data.txt", tarfile.REGTYPE, 0o640, uid=1000, data=b"data\n")
        add("pkg/link", tarfile.SYMTYPE, 0o777, link="data.txt")
        add("pkg/hard", tarfile.LNKTYPE, 0o640, uid=1000, link="pkg/data.txt")
        add("top.txt", tarfile.REGTYPE, 0o600, uid=42, data=b"top\n")


@dataclass(frozen=True)
class Case:
    """One Dockerfile of the corpus, with the places where buildah 1.28 departs from Docker."""

    name: str
    args: tuple[str, ...] = ()
    prepare: object = None
    # A Dockerfile in the case's directory that buildah builds instead, with the same meaning
    # in Docker, for syntax that buildah cannot parse.
    buildah_dockerfile: str | None = None
    # Config values that Docker's documentation gives and buildah does not: kakoi is checked
    # against these, and buildah's are left out.
    docker_config: tuple[tuple[str, object], ...] = ()
    # Directories that Docker creates and buildah does not: kakoi must have them, owned by
    # root with mode 755.
    docker_dirs: tuple[str, ...] = ()
    buildah_args: tuple[str, ...] = ()


CASES = [
    # Docker creates a missing WORKDIR "even if it's not used in any subsequent Dockerfile
    # instruction" (Dockerfile reference), but buildah 1.28 creates it only for a later RUN.
    Case("config", ("--build-arg", "VERSION=2.5"),
         docker_dirs=("/srv", "/srv/app", "/srv/app/sub")),
    Case("whiteouts"),
    Case("opaque"),
    Case("copy"),
    Case("add-tar", prepare=_write_payload),
    Case("multistage", ("--target", "final", "--build-arg", "FLAVOR=fancy")),
    Case("dockerignore"),
    # buildah 1.28 reads each heredoc line as an instruction ("Unknown instruction: MKDIR").
    Case("heredoc", buildah_dockerfile="Dockerfile.equivalent"),
    # buildah 1.28 ignores SHELL when it builds an OCI image, as the OCI config has no field
    # for it, so it builds this one in Docker's format. Even then it keeps /bin/sh -c for the
    # shell forms of CMD and ENTRYPOINT, which SHELL also sets in Docker (Dockerfile reference).
    Case("shell", buildah_args=("--format", "docker"), docker_config=(
        ("Cmd", ["/bin/busybox", "ash", "-c", "echo shell-form cmd"]),
        ("Entrypoint", ["/bin/busybox", "ash", "-c", "echo shell-form entrypoint"]))),
    Case("build-args", ("--build-arg", "NUMBER=42", "--build-arg", "USERNAME=daemon")),
]


def build_both(kakoi, buildah, case: Case, tmp_path: Path) -> tuple[Image, Image]:
    context = tmp_path / "context"
    shutil.copytree(CORPUS / case.name, context, symlinks=True)
    if case.prepare is not None:
        case.prepare(context)
    tag = f"peer-{case.name}:latest"

    built = subprocess.run([kakoi.command, "build", "-q", "-t", tag, *case.args, str(context)],
                           capture_output=True, text=True, timeout=300,
                           env=dict(kakoi.env, SOURCE_DATE_EPOCH=EPOCH))
    assert built.returncode == 0, f"kakoi build failed: {built.stderr}"
    kakoi("save", "--format", "oci-archive", "-o", str(tmp_path / "kakoi.tar"), tag, check=True)

    extra = ("-f", str(context / case.buildah_dockerfile)) if case.buildah_dockerfile else ()
    result = buildah.build(context, tag, *extra, *case.buildah_args, *case.args)
    assert result.returncode == 0, f"buildah build failed: {result.stderr}"
    pushed = buildah("push", tag, f"oci-archive:{tmp_path / 'buildah.tar'}")
    assert pushed.returncode == 0, pushed.stderr

    return read_oci_archive(tmp_path / "kakoi.tar"), read_oci_archive(tmp_path / "buildah.tar")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_build_matches_buildah(kakoi, clean_host, buildah, case, tmp_path):
    ours, theirs = build_both(kakoi, buildah, case, tmp_path)

    kakoi_config, buildah_config = comparable_config(ours), comparable_config(theirs)
    for key, value in case.docker_config:
        assert kakoi_config.pop(key) == value
        buildah_config.pop(key)
    assert kakoi_config == buildah_config

    kakoi_tree, buildah_tree = comparable_tree(ours.tree), comparable_tree(theirs.tree)
    for path in case.docker_dirs:
        assert kakoi_tree.pop(path) == Entry("dir", 0o755, 0, 0)
    differences = describe_differences(kakoi_tree, buildah_tree)
    assert differences == "", f"root filesystems differ:\n{differences}"
