"""Bundles, runtime wrappers and clean-up for the side-by-side tests of kakoi-runtime and runc."""

import copy
import glob
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conftest import CGROUP_PARENT, REPO

KAKOI_RUNTIME = REPO / ".venv" / "bin" / "kakoi-runtime"


class Runtime:
    """One OCI runtime command (runc or kakoi-runtime) with a private --root state directory."""

    def __init__(self, name: str, command: str, root: Path):
        self.name = name
        self.command = command
        self.root = root

    def argv(self, *args: str, global_args: tuple[str, ...] = ()) -> list[str]:
        return [self.command, "--root", str(self.root), *global_args, *args]

    def __call__(self, *args: str, input: str | None = None, timeout: float = 30,
                 cwd: Path | None = None, global_args: tuple[str, ...] = (),
                 check: bool = False) -> subprocess.CompletedProcess:
        # Files, not pipes: a container made by create or run -d inherits the runtime's
        # stdout and stderr, and a pipe would stay open until the container exits.
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            completed = subprocess.run(self.argv(*args, global_args=global_args),
                                       input=input.encode() if input is not None else None,
                                       stdin=None if input is not None else subprocess.DEVNULL,
                                       stdout=stdout, stderr=stderr, timeout=timeout, cwd=cwd)
            stdout.seek(0)
            stderr.seek(0)
            result = subprocess.CompletedProcess(completed.args, completed.returncode,
                                                 stdout.read().decode(errors="replace"),
                                                 stderr.read().decode(errors="replace"))
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} failed with "
                                 f"{result.returncode}: {result.stderr}")
        return result

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), text=True, **kwargs)

    def state(self, container_id: str) -> dict:
        return json.loads(self("state", container_id, check=True).stdout)

    def status(self, container_id: str) -> str:
        return self.state(container_id)["status"]

    def wait_status(self, container_id: str, expected: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.status(container_id)
            if status == expected:
                break
            time.sleep(0.05)
        return status

    def container_ids(self) -> list[str]:
        """Return the ids that have a state directory, whatever `list` makes of them."""
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())

    def remove_all(self) -> None:
        for container_id in self.container_ids():
            self("delete", "--force", container_id, timeout=30)


def extract_rootfs(archive: Path, destination: Path) -> None:
    """Unpack the layers of a docker-archive; the busybox image has one layer and no whiteouts."""
    destination.mkdir(parents=True)
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        for layer in manifest[0]["Layers"]:
            # tar keeps owners, modes and device nodes as a runtime's rootfs needs them.
            subprocess.run(["tar", "-x", "-C", str(destination)],
                           input=outer.extractfile(layer).read(), check=True)


def default_spec(directory: Path) -> dict:
    """Return the config.json that `runc spec` writes."""
    subprocess.run(["runc", "spec"], cwd=directory, check=True)
    return json.loads((directory / "config.json").read_text())


class Bundles:
    """Makes one bundle per container: a copy of the busybox rootfs and an edited runc spec.

    Every bundle's cgroupsPath is below the tests' cgroup parent, so that the clean-up finds
    what either runtime made.
    """

    def __init__(self, directory: Path, rootfs: Path, spec: dict, prefix: str):
        self.directory = directory
        self.rootfs = rootfs
        self.spec = spec
        self.prefix = prefix
        self.ids: list[str] = []

    def new_id(self, name: str) -> str:
        container_id = f"{self.prefix}-{name}-{len(self.ids)}"
        self.ids.append(container_id)
        return container_id

    def make(self, container_id: str, args: list[str],
             edit: Callable[[dict, Path], None] | None = None) -> Path:
        """Write a bundle for container_id that runs args; edit(config, bundle) may change it."""
        bundle = self.directory / container_id
        bundle.mkdir(parents=True)
        shutil.copytree(self.rootfs, bundle / "rootfs", symlinks=True)
        config = copy.deepcopy(self.spec)
        config["process"]["terminal"] = False
        config["process"]["args"] = args
        config["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/{container_id}"
        if edit is not None:
            edit(config, bundle)
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        return bundle


def container_cgroups(container_id: str) -> list[str]:
    """Return the cgroup directories of container_id below the tests' parent, in any hierarchy."""
    return sorted(glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT}/{container_id}") +
                  glob.glob(f"/sys/fs/cgroup/{CGROUP_PARENT}/{container_id}"))


def remove_cgroups(container_id: str) -> None:
    """Remove what the runtimes left of container_id's cgroups, children first."""
    for top in container_cgroups(container_id):
        for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(directory)
            except OSError:
                pass


def remove_cgroup_parent() -> None:
    for parent in glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT}") + \
            glob.glob(f"/sys/fs/cgroup/{CGROUP_PARENT}"):
        for directory, _, _ in sorted(os.walk(parent), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(directory)
            except OSError:
                pass


def mounts_below(directory: Path) -> list[str]:
    """Return the host's mount points at or below directory."""
    prefix = str(directory)
    with open("/proc/self/mountinfo") as file:
        points = [line.split()[4] for line in file]
    return [point for point in points if point == prefix or point.startswith(prefix + "/")]


def unmount_below(directory: Path) -> None:
    for point in sorted(mounts_below(directory), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def normalise_mountinfo(text: str, propagation: bool = False) -> list[str]:
    """Reduce mountinfo lines to mount point, fs type and the flags that a spec sets.

    Mount ids, devices and sources differ between any two containers, so they are left out.
    With propagation, the kinds of optional fields (shared, master) stay, without their ids.
    """
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        flags = [flag for flag in fields[5].split(",")
                 if flag in ("ro", "rw", "nosuid", "nodev", "noexec")]
        row = f"{fields[4]} {fields[separator + 1]} {','.join(flags)}"
        if propagation:
            kinds = sorted(field.split(":")[0] for field in fields[6:separator])
            row += " " + (",".join(kinds) or "private")
        rows.append(row)
    return rows
