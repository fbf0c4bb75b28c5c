"""Image archives exchanged with podman in both directions, on a private podman store.

podman runs with its own --root and --runroot in a fresh /tmp directory, the vfs driver, no
network, no event log, and a cgroup parent named kakoi-test-*, so it touches no other podman
state. The fixture removes the images, any mounts left under its directories and its cgroups.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from kakoi.image.store import Store

pytestmark = [pytest.mark.root, pytest.mark.peer]

CGROUP_ROOT = Path("/sys/fs/cgroup")
REPO = Path(__file__).resolve().parents[2]


def _unmount_under(path: Path) -> None:
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts]
    for target in sorted(targets, key=len, reverse=True):
        if target == str(path) or target.startswith(f"{path}/"):
            subprocess.run(["umount", "-l", target], check=False)


def _remove_cgroups(name: str) -> None:
    # podman creates the parent in every mounted hierarchy (v1 controllers and the v2 tree).
    for directory in sorted(CGROUP_ROOT.glob(f"**/{name}"), key=lambda p: len(p.parts),
                            reverse=True):
        for child in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if child.is_dir():
                child.rmdir()
        directory.rmdir()


class Podman:
    def __init__(self, base: Path, cgroup_parent: str):
        self.base = base
        self.cgroup_parent = cgroup_parent
        self.global_args = ["podman", "--root", str(base / "root"), "--runroot",
                            str(base / "runroot"), "--tmpdir", str(base / "tmp"),
                            "--storage-driver", "vfs", "--events-backend", "none",
                            "--cgroup-manager", "cgroupfs"]

    def __call__(self, *args: str) -> str:
        result = subprocess.run(self.global_args + list(args), capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"podman {' '.join(args)} failed: {result.stderr}"
        return result.stdout

    def run(self, image: str, *command: str) -> str:
        return self("run", "--rm", "--runtime", "runc", "--network", "none",
                    "--cgroup-parent", f"/{self.cgroup_parent}",
                    "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                    image, *command)


@pytest.fixture
def podman():
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: run scripts/install.sh")
    # podman rejects a runroot longer than 50 characters, so tmp_path is too deep for it.
    base = Path(tempfile.mkdtemp(prefix="kakoi-podman-", dir="/tmp"))
    (base / "tmp").mkdir()
    cgroup_parent = f"kakoi-test-podman-{uuid.uuid4().hex[:8]}"
    instance = Podman(base, cgroup_parent)
    try:
        yield instance
    finally:
        subprocess.run(instance.global_args + ["rmi", "--all", "--force"], capture_output=True,
                       timeout=300)
        _unmount_under(base)
        _remove_cgroups(cgroup_parent)
        shutil.rmtree(base, ignore_errors=True)


def podman_image(podman: Podman, name: str) -> dict:
    return json.loads(podman("image", "inspect", name))[0]


@pytest.mark.parametrize("format", ["docker-archive", "oci-archive"])
def test_podman_save_kakoi_load(podman, busybox_archives, tmp_path, format):
    podman("load", "-i", str(busybox_archives["oci-archive"]))
    expected = podman_image(podman, "docker.io/library/busybox:latest")
    archive = tmp_path / "from-podman.tar"
    podman("save", "--format", format, "-o", str(archive), "docker.io/library/busybox:latest")

    store = Store(tmp_path / "kakoi")
    store.load(archive)

    record = store.resolve("busybox")
    assert record.id == "sha256:" + expected["Id"]
    assert [layer.diff_id for layer in record.layers] == expected["RootFS"]["Layers"]
    assert os.path.isfile(os.path.join(store.layer_dirs(record)[0], "bin", "busybox"))


@pytest.mark.parametrize("format", ["docker-archive", "oci-archive"])
def test_kakoi_save_podman_load_run(podman, busybox_archives, tmp_path, format):
    store = Store(tmp_path / "kakoi")
    store.load(busybox_archives["docker-archive"])
    archive = tmp_path / "from-kakoi.tar"
    store.save(["busybox"], archive, format)

    podman("load", "-i", str(archive))

    # podman names images from a docker-archive's short RepoTags localhost/NAME, so the
    # image is looked up by its id.
    image_id = store.resolve("busybox").id
    image = podman_image(podman, image_id[len("sha256:"):])
    assert image["RepoTags"]
    assert podman.run(image["Id"], "echo", "ok") == "ok\n"


def _kakoi_command() -> list[str]:
    if importlib.util.find_spec("kakoi.cli.main") is None:
        pytest.skip("kakoi.cli.main is not written yet, so `kakoi run` cannot be called")
    installed = shutil.which("kakoi") or str(REPO / ".venv" / "bin" / "kakoi")
    if not os.access(installed, os.X_OK):
        return [sys.executable, "-m", "kakoi.cli.main"]
    return [installed]


def test_kakoi_run_podman_saved_image(podman, busybox_archives, tmp_path):
    podman("load", "-i", str(busybox_archives["oci-archive"]))
    archive = tmp_path / "from-podman.tar"
    podman("save", "-o", str(archive), "docker.io/library/busybox:latest")
    kakoi = _kakoi_command() + ["--root", str(tmp_path / "kakoi")]

    subprocess.run(kakoi + ["load", "-i", str(archive)], check=True, capture_output=True)
    result = subprocess.run(kakoi + ["run", "--rm", "busybox", "echo", "ok"],
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
