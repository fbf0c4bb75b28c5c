"""Fixtures that drive the installed `kakoi` command against a private store."""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def kakoi_command() -> str:
    found = shutil.which("kakoi", path=str(REPO / ".venv" / "bin")) or shutil.which("kakoi")
    if found is None:
        pytest.skip("the kakoi command is not installed: run scripts/install.sh")
    return found


# The tests' containers get their cgroups below a parent of their own, so that the checks
# for leftovers see only what these tests made.
CGROUP_PARENT = f"kakoi-test-{os.getpid()}"


def kakoi_cgroups() -> set[str]:
    """Return the container cgroups below the tests' parent in every hierarchy."""
    return (set(glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT}/*/"))
            | set(glob.glob(f"/sys/fs/cgroup/{CGROUP_PARENT}/*/")))


def mount_table(root) -> list[str]:
    """Return the host's mounts that name a path in the store at root.

    Every mount that kakoi makes for a container does: the overlay's layer, upper and
    work dirs, and the bind mounts of the container's /etc files. Mount ids are left
    out, and so are other mounts, which other programs on the host may change meanwhile.
    """
    with open("/proc/self/mountinfo") as file:
        return sorted(" ".join(line.split()[3:]) for line in file if str(root) in line)


class Kakoi:
    """Runs `kakoi` with KAKOI_ROOT set to a private store."""

    def __init__(self, root: Path):
        self.root = root
        self.command = kakoi_command()
        self.env = dict(os.environ, KAKOI_ROOT=str(root), KAKOI_CGROUP_PARENT=CGROUP_PARENT)

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60,
                 check: bool = False) -> subprocess.CompletedProcess:
        result = subprocess.run([self.command, *args], input=input, capture_output=True,
                                text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kakoi {' '.join(args)} failed with {result.returncode}: "
                                 f"{result.stderr}")
        return result

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([self.command, *args], env=self.env, text=True, **kwargs)


@pytest.fixture(scope="session")
def kakoi(tmp_path_factory, busybox_archives) -> Kakoi:
    """A store with the busybox image loaded; its containers are removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    tool = Kakoi(tmp_path_factory.mktemp("kakoi-root"))
    tool("load", "-i", str(busybox_archives["docker-archive"]), check=True)
    yield tool
    for container_id in tool("ps", "-a", "-q", "--no-trunc").stdout.split():
        tool("rm", "-f", container_id)


@pytest.fixture(scope="session", autouse=True)
def remove_cgroup_parent():
    """Remove the tests' cgroup parent at the end of the session, whichever tests ran.

    Every Kakoi, the pull tests' included, runs containers below it. Removing it here, after
    every other session fixture, keeps a run of a few selected tests from leaving it behind.
    A parent that still has a child cgroup fails the removal, which reports that leak.
    """
    yield
    for parent in glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT}") + \
            glob.glob(f"/sys/fs/cgroup/{CGROUP_PARENT}"):
        os.rmdir(parent)


@pytest.fixture
def clean_host(kakoi):
    """Fail the test if it leaves a kakoi cgroup or a new mount behind."""
    cgroups_before = kakoi_cgroups()
    mounts_before = mount_table(kakoi.root)
    yield
    assert kakoi_cgroups() - cgroups_before == set()
    assert mount_table(kakoi.root) == mounts_before


def container_pid(container_id: str) -> int | None:
    """Return the pid of a container's init, from its memory (or v2) cgroup."""
    for path in glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT}/{container_id}/cgroup.procs") + \
            glob.glob(f"/sys/fs/cgroup/{CGROUP_PARENT}/{container_id}/cgroup.procs"):
        with open(path) as file:
            pids = [int(line) for line in file if line.strip()]
        if pids:
            return min(pids)
    return None


sys.path.insert(0, str(Path(__file__).parent))
