"""Unit tests for kakoi.kernel.cgroups on fake cgroup trees in a temporary directory.

A fake tree is a directory of plain files standing in for cgroupfs, with a mountinfo text
that points detect() at it. Some kernel behaviour cannot exist on a plain filesystem, so
these tests emulate it, with a comment at each place: rmdir of a cgroup directory that
still lists its interface files, an rmdir that stays busy, and a write that the kernel
rejects. mount(2) calls are recorded, because mounting needs root; the kernel tests mount
for real.
"""

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kakoi.errors import CgroupError
from kakoi.kernel.cgroups import (
    Cgroup,
    Resources,
    detect,
    list_children,
    mount_container_view,
    normalize_path,
    shares_to_weight,
    swap_max,
)
from kakoi.kernel.cgroups import cgroup as cgroup_module

V1_HIERARCHIES = {
    "cpu,cpuacct": "cpu,cpuacct",
    "cpuset": "cpuset",
    "memory": "memory",
    "devices": "devices",
    "freezer": "freezer",
    "blkio": "blkio",
    "pids": "pids",
    "net_cls": "net_cls",
    "systemd": "name=systemd",
}

FULL = Resources(
    memory_limit=100 * 2**20,
    memory_swap=300 * 2**20,
    memory_reservation=50 * 2**20,
    cpu_shares=512,
    cpu_quota=50000,
    cpu_period=100000,
    cpuset_cpus="0",
    cpuset_mems="0",
    pids_limit=64,
)


def _mount_line(number: int, mount_point: Path, fstype: str, options: str) -> str:
    return (f"{number} 20 0:{number} / {mount_point} rw,nosuid,nodev,noexec,relatime shared:{number}"
            f" - {fstype} {fstype} rw,{options}")


def _fill_v1(directory: Path, options: str) -> None:
    (directory / "cgroup.procs").write_text("")
    if "cpuset" in options:
        (directory / "cpuset.cpus").write_text("0-3\n")
        (directory / "cpuset.mems").write_text("0\n")


def make_v1(root: Path, hierarchies: dict[str, str] = V1_HIERARCHIES,
            unified: bool = False) -> str:
    """Build a fake v1 (or hybrid) tree under root and return its mountinfo text."""
    lines = [f"19 1 0:19 / {root} rw - tmpfs tmpfs rw,mode=755"]
    for number, (name, options) in enumerate(hierarchies.items(), start=30):
        directory = root / name
        directory.mkdir(parents=True)
        _fill_v1(directory, options)
        lines.append(_mount_line(number, directory, "cgroup", options))

    if unified:
        (root / "unified").mkdir()
        (root / "unified" / "cgroup.controllers").write_text("")
        (root / "unified" / "cgroup.subtree_control").write_text("")
        lines.append(_mount_line(50, root / "unified", "cgroup2", "nsdelegate"))

    # A mount elsewhere must not count.
    lines.append(_mount_line(60, root.parent / "elsewhere", "cgroup", "memory"))
    return "\n".join(lines) + "\n"


def make_v2(root: Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc") -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("memory\n")
    (root / "cgroup.procs").write_text("1\n")
    return _mount_line(30, root, "cgroup2", "nsdelegate,memory_recursiveprot") + "\n"


@pytest.fixture(autouse=True)
def cgroupfs_rmdir(monkeypatch):
    """Emulate cgroupfs rmdir: interface files vanish with their directory."""
    def rmdir(directory: Path) -> None:
        for entry in Path(directory).iterdir():
            if entry.is_file():
                entry.unlink()
        os.rmdir(directory)

    monkeypatch.setattr(cgroup_module, "_rmdir", rmdir)


def read(path: Path) -> str:
    return path.read_text().strip()


# detect


def test_detect_v1(tmp_path):
    layout = detect(tmp_path / "cg", make_v1(tmp_path / "cg"))

    assert layout.mode == "v1"
    assert layout.unified is None
    assert layout.v1_mounts["cpu"] == str(tmp_path / "cg" / "cpu,cpuacct")
    assert layout.v1_mounts["cpuacct"] == str(tmp_path / "cg" / "cpu,cpuacct")
    assert layout.v1_mounts["memory"] == str(tmp_path / "cg" / "memory")
    assert "net_cls" in layout.v1_mounts


def test_detect_v1_uses_known_hierarchies(tmp_path):
    layout = detect(tmp_path / "cg", make_v1(tmp_path / "cg"))
    used = [os.path.basename(hierarchy.mount_point) for hierarchy in layout.hierarchies()]

    assert "net_cls" not in used
    assert "systemd" in used
    assert "memory" in used


def test_detect_hybrid(tmp_path):
    layout = detect(tmp_path / "cg", make_v1(tmp_path / "cg", unified=True))

    assert layout.mode == "hybrid"
    assert layout.unified == str(tmp_path / "cg" / "unified")
    # The hybrid v2 tree has no controllers, so containers are not placed in it.
    assert all(hierarchy.version == 1 for hierarchy in layout.hierarchies())


def test_detect_v2(tmp_path):
    layout = detect(tmp_path / "cg", make_v2(tmp_path / "cg"))

    assert layout.mode == "v2"
    assert layout.unified == str(tmp_path / "cg")
    assert "memory" in layout.v2_controllers
    assert layout.v1 == ()


def test_detect_nothing_mounted(tmp_path):
    with pytest.raises(CgroupError, match="no cgroup filesystem mounted"):
        detect(tmp_path, "19 1 0:19 / / rw - ext4 /dev/vda rw\n")


def test_detect_escaped_mount_point(tmp_path):
    root = tmp_path / "with space"
    text = make_v2(root).replace(str(root), str(root).replace(" ", "\\040"))

    assert detect(root, text).mode == "v2"


def test_hierarchy_mount_options(tmp_path):
    layout = detect(tmp_path / "cg", make_v1(tmp_path / "cg"))
    options = {os.path.basename(hierarchy.mount_point): hierarchy.mount_options
               for hierarchy in layout.v1}

    assert options["cpu,cpuacct"] == "cpu,cpuacct"
    assert options["systemd"] == "none,name=systemd"
    assert options["memory"] == "memory"


# conversions


@pytest.mark.parametrize(("shares", "weight"), [
    (2, 1), (1024, 39), (262144, 10000), (512, 20), (0, 1), (1_000_000, 10000),
])
def test_shares_to_weight(shares, weight):
    assert shares_to_weight(shares) == weight


def test_swap_max():
    assert swap_max(100, 300) == "200"
    assert swap_max(100, 100) == "0"
    assert swap_max(100, -1) == "max"


@pytest.mark.parametrize(("resources", "message"), [
    (Resources(memory_limit=200, memory_swap=100), "memory_swap 100 is below memory_limit 200"),
    (Resources(memory_swap=100), "memory_swap 100 needs a memory_limit"),
    (Resources(memory_limit=-5), "invalid memory_limit -5"),
    (Resources(cpu_period=0), "invalid cpu_period 0"),
])
def test_resources_validate_rejects(resources, message):
    with pytest.raises(CgroupError, match=message):
        resources.validate()


@pytest.mark.parametrize(("path", "expected"), [
    ("kakoi/abc", "kakoi/abc"), ("/kakoi/abc", "kakoi/abc"), ("kakoi//abc/", "kakoi/abc"),
])
def test_normalize_path(path, expected):
    assert normalize_path(path) == expected


@pytest.mark.parametrize("path", ["", "/", "kakoi/../etc", "kakoi/./x"])
def test_normalize_path_rejects(path):
    with pytest.raises(CgroupError, match="invalid cgroup path"):
        normalize_path(path)


# create on v1


def test_create_v1_writes_limits(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))

    Cgroup.create(layout, "kakoi/c1", FULL)

    memory = root / "memory" / "kakoi" / "c1"
    assert read(memory / "memory.limit_in_bytes") == str(100 * 2**20)
    assert read(memory / "memory.soft_limit_in_bytes") == str(50 * 2**20)
    cpu = root / "cpu,cpuacct" / "kakoi" / "c1"
    assert read(cpu / "cpu.shares") == "512"
    assert read(cpu / "cpu.cfs_quota_us") == "50000"
    assert read(cpu / "cpu.cfs_period_us") == "100000"
    assert read(root / "cpuset" / "kakoi" / "c1" / "cpuset.cpus") == "0"
    assert read(root / "pids" / "kakoi" / "c1" / "pids.max") == "64"


def test_create_v1_makes_every_used_directory(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))

    Cgroup.create(layout, "/kakoi/c1", Resources())

    for name in ("cpu,cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
                 "systemd"):
        assert (root / name / "kakoi" / "c1").is_dir(), name
    assert not (root / "net_cls" / "kakoi").exists()


def test_create_v1_fills_cpuset_from_parent(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))

    Cgroup.create(layout, "kakoi/c1", Resources())

    for directory in (root / "cpuset" / "kakoi", root / "cpuset" / "kakoi" / "c1"):
        assert read(directory / "cpuset.cpus") == "0-3"
        assert read(directory / "cpuset.mems") == "0"


def _record_writes(monkeypatch) -> list[str]:
    writes = []
    original = cgroup_module.v1.files.write

    def record(path, value):
        writes.append(os.path.basename(path))
        original(path, value)

    monkeypatch.setattr(cgroup_module.v1.files, "write", record)
    return writes


def test_v1_limit_first_when_memsw_is_higher(tmp_path, monkeypatch):
    # A new cgroup starts with memsw at the kernel's maximum, so the limit can go first.
    (tmp_path / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    writes = _record_writes(monkeypatch)

    cgroup_module.v1._memory_and_swap(tmp_path, 100, 300)

    assert writes == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    assert read(tmp_path / "memory.limit_in_bytes") == "100"
    assert read(tmp_path / "memory.memsw.limit_in_bytes") == "300"


def test_v1_memsw_first_when_limit_grows(tmp_path, monkeypatch):
    # A cgroup with limit 100 and memsw 200 gets limit 400 and memsw 800: memsw goes first.
    (tmp_path / "memory.limit_in_bytes").write_text("100\n")
    (tmp_path / "memory.memsw.limit_in_bytes").write_text("200\n")
    writes = _record_writes(monkeypatch)

    cgroup_module.v1._memory_and_swap(tmp_path, 400, 800)

    assert writes == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    assert read(tmp_path / "memory.limit_in_bytes") == "400"
    assert read(tmp_path / "memory.memsw.limit_in_bytes") == "800"


def test_v1_unlimited_memsw_then_limit(tmp_path, monkeypatch):
    (tmp_path / "memory.memsw.limit_in_bytes").write_text("200\n")
    writes = _record_writes(monkeypatch)

    cgroup_module.v1._memory_and_swap(tmp_path, -1, -1)

    assert writes == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]


def test_v1_memsw_skipped_when_missing(tmp_path, caplog):
    cgroup_module.v1._memory_and_swap(tmp_path, 100, 300)

    assert read(tmp_path / "memory.limit_in_bytes") == "100"
    assert not (tmp_path / "memory.memsw.limit_in_bytes").exists()
    assert "memory_swap 300 is not applied" in caplog.text


def test_create_v1_unlimited_values(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))

    resources = Resources(memory_limit=-1, cpu_quota=-1, pids_limit=0, cpu_shares=0)
    Cgroup.create(layout, "kakoi/c1", resources)

    assert not (root / "cpu,cpuacct" / "kakoi" / "c1" / "cpu.shares").exists()
    assert read(root / "memory" / "kakoi" / "c1" / "memory.limit_in_bytes") == "-1"
    assert read(root / "cpu,cpuacct" / "kakoi" / "c1" / "cpu.cfs_quota_us") == "-1"
    assert read(root / "pids" / "kakoi" / "c1" / "pids.max") == "max"


def test_create_v1_missing_controller(tmp_path):
    root = tmp_path / "cg"
    hierarchies = {name: options for name, options in V1_HIERARCHIES.items() if name != "pids"}
    layout = detect(root, make_v1(root, hierarchies))

    with pytest.raises(CgroupError, match="pids_limit needs the pids cgroup controller"):
        Cgroup.create(layout, "kakoi/c1", Resources(pids_limit=10))

    assert not (root / "memory" / "kakoi").exists()


def test_create_v1_unlimited_pids_without_controller(tmp_path):
    root = tmp_path / "cg"
    hierarchies = {name: options for name, options in V1_HIERARCHIES.items() if name != "pids"}
    layout = detect(root, make_v1(root, hierarchies))

    Cgroup.create(layout, "kakoi/c1", Resources(pids_limit=-1))

    assert (root / "memory" / "kakoi" / "c1").is_dir()


def test_create_rejects_existing_leaf(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    (root / "pids" / "kakoi" / "c1").mkdir(parents=True)

    with pytest.raises(CgroupError, match="already exists"):
        Cgroup.create(layout, "kakoi/c1", Resources())

    assert (root / "pids" / "kakoi" / "c1").is_dir()
    assert not (root / "memory" / "kakoi" / "c1").exists()
    assert not (root / "cpu,cpuacct" / "kakoi" / "c1").exists()


def test_create_removes_directories_after_failed_file(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    # A directory where cpuset.mems should be makes the cpuset fill-in fail after the cpu
    # hierarchy (listed first) already has its new directory.
    (root / "cpuset" / "kakoi" / "cpuset.mems").mkdir(parents=True)

    with pytest.raises(CgroupError, match=r"cpuset/kakoi/cpuset\.mems: Is a directory"):
        Cgroup.create(layout, "kakoi/c1", FULL)

    assert not (root / "cpu,cpuacct" / "kakoi" / "c1").exists()
    assert not (root / "cpuset" / "kakoi" / "c1").exists()
    assert not (root / "memory" / "kakoi").exists()
    # The shared top-level parent stays for other containers.
    assert (root / "cpu,cpuacct" / "kakoi").is_dir()


def test_create_removes_directories_after_failed_limit(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    # The pids hierarchy is listed last, so every directory exists when its write fails.
    # The rejection is emulated, because a plain file accepts any value.
    original = cgroup_module.v1.files.write

    def reject_pids(path, value):
        if os.path.basename(path) == "pids.max":
            raise CgroupError(f"write {value} to {path}: Invalid argument")
        original(path, value)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(cgroup_module.v1.files, "write", reject_pids)
        with pytest.raises(CgroupError, match="pids.max"):
            Cgroup.create(layout, "kakoi/c1", FULL)

    for name in V1_HIERARCHIES:
        assert not (root / name / "kakoi" / "c1").exists(), name


# create on hybrid and v2


def test_create_hybrid_leaves_unified_alone(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root, unified=True))

    Cgroup.create(layout, "kakoi/c1", Resources(memory_limit=1 << 20))

    assert not (root / "unified" / "kakoi").exists()
    assert read(root / "unified" / "cgroup.subtree_control") == ""
    assert read(root / "memory" / "kakoi" / "c1" / "memory.limit_in_bytes") == str(1 << 20)


def test_create_v2_writes_limits(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))

    Cgroup.create(layout, "kakoi/c1", FULL)

    leaf = root / "kakoi" / "c1"
    assert read(leaf / "memory.max") == str(100 * 2**20)
    assert read(leaf / "memory.swap.max") == str(200 * 2**20)
    assert read(leaf / "memory.low") == str(50 * 2**20)
    assert read(leaf / "cpu.weight") == "20"
    assert read(leaf / "cpu.max") == "50000 100000"
    assert read(leaf / "cpuset.cpus") == "0"
    assert read(leaf / "cpuset.mems") == "0"
    assert read(leaf / "pids.max") == "64"


def test_create_v2_enables_controllers(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))

    Cgroup.create(layout, "kakoi/group/c1", FULL)

    # The root, shared with other managers, gets only what the limits need; memory was
    # already enabled there.
    assert read(root / "cgroup.subtree_control") == "+cpu +cpuset +pids"
    expected = "+cpu +cpuset +memory +pids"
    assert read(root / "kakoi" / "cgroup.subtree_control") == expected
    assert read(root / "kakoi" / "group" / "cgroup.subtree_control") == expected
    assert not (root / "kakoi" / "group" / "c1" / "cgroup.subtree_control").exists()


def test_create_v2_enables_offered_below_kakoi(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    (root / "cgroup.subtree_control").write_text("cpu io memory pids\n")

    Cgroup.create(layout, "kakoi/c1", Resources())

    assert read(root / "cgroup.subtree_control") == "cpu io memory pids"
    assert read(root / "kakoi" / "cgroup.subtree_control") == "+cpu +io +memory +pids"


def test_enable_controllers_one_at_a_time(tmp_path, caplog):
    # The kernel rejects a whole write when one controller fails; then each is tried
    # alone, and only a required one that fails is an error.
    directory = tmp_path
    written = []

    def write(path, value):
        written.append(value)
        if "io" in value:
            raise CgroupError(f"write {value} to {path}: Invalid argument")

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(cgroup_module.v2.files, "write", write)
        enabled = cgroup_module.v2.enable_controllers(
            directory, {"cpu", "io", "memory"}, {"memory"}, {"cpu", "io", "memory"})

        assert enabled == {"cpu", "memory"}
        assert written == ["+cpu +io +memory", "+cpu", "+io", "+memory"]
        assert "controller io stays disabled" in caplog.text

        with pytest.raises(CgroupError, match=r"write \+io"):
            cgroup_module.v2.enable_controllers(directory, {"io"}, {"io"}, {"io"})


def test_create_v2_unlimited_values(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    resources = Resources(memory_limit=-1, memory_swap=-1, cpu_quota=-1, cpu_period=50000,
                          pids_limit=-1)

    Cgroup.create(layout, "kakoi/c1", resources)

    leaf = root / "kakoi" / "c1"
    assert read(leaf / "memory.max") == "max"
    assert read(leaf / "memory.swap.max") == "max"
    assert read(leaf / "cpu.max") == "max 50000"
    assert read(leaf / "pids.max") == "max"


def test_create_v2_quota_without_period(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))

    Cgroup.create(layout, "kakoi/c1", Resources(cpu_quota=25000, cpu_shares=1024))

    assert read(root / "kakoi" / "c1" / "cpu.max") == "25000 100000"
    assert read(root / "kakoi" / "c1" / "cpu.weight") == "39"


def test_create_v2_missing_controller(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root, controllers="cpu memory pids"))

    with pytest.raises(CgroupError, match="cpuset_cpus needs the cpuset cgroup controller"):
        Cgroup.create(layout, "kakoi/c1", Resources(cpuset_cpus="0"))

    assert not (root / "kakoi").exists()


def test_create_v2_removes_leaf_after_failed_write(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    # The rejection is emulated, because a plain file accepts any value.
    original = cgroup_module.v2.files.write

    def reject_cpu(path, value):
        if os.path.basename(path) == "cpu.max":
            raise CgroupError(f"write {value} to {path}: Invalid argument")
        original(path, value)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(cgroup_module.v2.files, "write", reject_cpu)
        with pytest.raises(CgroupError, match="cpu.max"):
            Cgroup.create(layout, "kakoi/c1", FULL)

    assert not (root / "kakoi" / "c1").exists()
    assert (root / "kakoi").is_dir()


# processes, OOM count, children


def test_add_process_zero_writes_zero(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root, unified=True))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())

    for directory in cgroup.directories:
        (Path(directory) / "tasks").write_text("")

    cgroup.add_process(0)

    # On v1 the caller moves itself through tasks, which skips the global lock.
    for directory in cgroup.directories:
        assert read(Path(directory) / "tasks") == "0", directory


def test_add_process_by_version(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())

    cgroup.add_process(1234, versions=(1,))
    assert not (root / "kakoi" / "c1" / "cgroup.procs").exists()

    cgroup.add_process(1234, versions=(2,))
    assert read(root / "kakoi" / "c1" / "cgroup.procs") == "1234"


def test_add_process_writes_pid(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())

    cgroup.add_process(1234)

    assert read(root / "kakoi" / "c1" / "cgroup.procs") == "1234"


def test_pids_union_of_hierarchies(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())
    (root / "memory" / "kakoi" / "c1" / "cgroup.procs").write_text("12\n7\n")
    (root / "pids" / "kakoi" / "c1" / "cgroup.procs").write_text("7\n30\n")

    assert cgroup.pids() == [7, 12, 30]


def test_oom_kill_count_v1(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())
    oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    (root / "memory" / "kakoi" / "c1" / "memory.oom_control").write_text(oom_control)

    assert cgroup.oom_kill_count() == 3


def test_oom_kill_count_v2(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())
    events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n"
    (root / "kakoi" / "c1" / "memory.events").write_text(events)

    assert cgroup.oom_kill_count() == 1


def test_oom_kill_count_without_file(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())

    assert cgroup.oom_kill_count() == 0


def test_memory_max_usage(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())
    (root / "memory" / "kakoi" / "c1" / "memory.max_usage_in_bytes").write_text("4096\n")

    assert cgroup.memory_max_usage() == 4096


def test_open_and_list_children(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root, unified=True))
    Cgroup.create(layout, "kakoi/a", Resources())
    Cgroup.create(layout, "kakoi/b", Resources())

    assert list_children(layout) == ["kakoi/a", "kakoi/b"]
    assert Cgroup.open(layout, "/kakoi/b").path == "kakoi/b"
    with pytest.raises(CgroupError, match="cgroup kakoi/c not found"):
        Cgroup.open(layout, "kakoi/c")


# destroy


def test_destroy_removes_every_directory(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root, unified=True))
    cgroup = Cgroup.create(layout, "kakoi/c1", FULL)
    (root / "memory" / "kakoi" / "c1" / "nested").mkdir()

    cgroup.destroy()

    for directory in cgroup.directories:
        assert not os.path.exists(directory), directory
    assert (root / "memory" / "kakoi").is_dir()


def test_destroy_twice_is_fine(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())

    cgroup.destroy()
    cgroup.destroy()

    assert not (root / "kakoi" / "c1").exists()


def test_destroy_kills_and_reports_busy(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (root / "kakoi" / "c1" / "cgroup.procs").write_text(f"{child.pid}\n")

        # Emulates a cgroup that stays busy, which a plain directory never is.
        def busy(directory):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(directory))

        monkeypatch.setattr(cgroup_module, "_rmdir", busy)
        with pytest.raises(CgroupError, match=r"remove cgroup kakoi/c1: .* still busy") as info:
            cgroup.destroy(timeout=0.2)

        assert str(child.pid) in str(info.value)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


# the container view, with mount(2) recorded because mounting needs root


def test_mount_view_hybrid_calls(tmp_path, monkeypatch):
    from kakoi.kernel import libc

    root = tmp_path / "cg"
    layout = detect(root, make_v1(root, unified=True))
    target = tmp_path / "view"
    target.mkdir()
    calls = []
    monkeypatch.setattr(libc, "mount", lambda *args: calls.append(args))

    mount_container_view(layout, str(target), read_only=True)

    flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    assert calls[0] == ("tmpfs", str(target), "tmpfs", flags, "mode=755")
    assert ("cgroup", str(target / "cpu,cpuacct"), "cgroup", flags, "cpu,cpuacct") in calls
    assert ("cgroup", str(target / "systemd"), "cgroup", flags, "none,name=systemd") in calls
    # The hybrid v2 tree is not joined, so its view would show the host's whole tree.
    assert not any(call[2] == "cgroup2" for call in calls)
    assert os.readlink(target / "cpu") == "cpu,cpuacct"
    assert os.readlink(target / "cpuacct") == "cpu,cpuacct"
    assert not (target / "net_cls").exists()
    remounts = [call for call in calls if call[3] & libc.MS_REMOUNT]
    assert len(remounts) == 8  # every hierarchy, not the tmpfs that contains them
    assert all(call[3] & libc.MS_BIND and call[3] & libc.MS_RDONLY for call in remounts)
    assert all(call[1] != str(target) for call in remounts)


def test_mount_view_v2_calls(tmp_path, monkeypatch):
    from kakoi.kernel import libc

    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    calls = []
    monkeypatch.setattr(libc, "mount", lambda *args: calls.append(args))

    mount_container_view(layout, "/target", read_only=False)

    flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    assert calls == [("cgroup2", "/target", "cgroup2", flags, None)]


# blkio, hugepages, devices, unified and the memory and cpu extras

from kakoi.kernel.cgroups import DeviceRule  # noqa: E402
from kakoi.kernel.cgroups import devices_bpf  # noqa: E402

BLKIO = Resources(
    blkio_weight=500,
    blkio_leaf_weight=300,
    blkio_weight_device=[(8, 0, 200, 100), (8, 16, None, 50)],
    blkio_throttle_read_bps=[(8, 0, 1048576)],
    blkio_throttle_write_bps=[(8, 0, 2097152)],
    blkio_throttle_read_iops=[(8, 0, 100)],
    blkio_throttle_write_iops=[(8, 16, 0)],
)


def _v1_leaf(root: Path, hierarchy: str) -> Path:
    return root / hierarchy / "kakoi" / "c1"


def _recorded(monkeypatch, module) -> list[tuple[str, str]]:
    """Record every write as (file name, value), because a plain file keeps only the last."""
    writes = []
    original = module.files.write

    def record(path, value):
        writes.append((os.path.basename(path), value))
        original(path, value)

    monkeypatch.setattr(module.files, "write", record)
    return writes


def test_create_v1_blkio_cfq_files(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    writes = _recorded(monkeypatch, cgroup_module.v1)
    # CFQ offers blkio.weight in every cgroup; the fake tree gets it from the parent.
    original_make = cgroup_module._make_directory

    def make_with_weight(directory, is_leaf, created):
        original_make(directory, is_leaf, created)
        if "blkio" in str(directory) and is_leaf:
            (Path(directory) / "blkio.weight").write_text("500\n")

    monkeypatch.setattr(cgroup_module, "_make_directory", make_with_weight)

    Cgroup.create(layout, "kakoi/c1", BLKIO)

    blkio_writes = [write for write in writes if write[0].startswith("blkio")]
    assert blkio_writes == [
        ("blkio.weight", "500"),
        ("blkio.leaf_weight", "300"),
        ("blkio.weight_device", "8:0 200"),
        ("blkio.leaf_weight_device", "8:0 100"),
        ("blkio.leaf_weight_device", "8:16 50"),
        ("blkio.throttle.read_bps_device", "8:0 1048576"),
        ("blkio.throttle.write_bps_device", "8:0 2097152"),
        ("blkio.throttle.read_iops_device", "8:0 100"),
        ("blkio.throttle.write_iops_device", "8:16 0"),
    ]


def test_create_v1_blkio_bfq_fallback(tmp_path, monkeypatch):
    # Without CFQ the kernel offers only blkio.bfq.weight, as on this project's test host.
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root, unified=True))
    writes = _recorded(monkeypatch, cgroup_module.v1)

    Cgroup.create(layout, "kakoi/c1", Resources(blkio_weight=700,
                                                blkio_weight_device=[(8, 0, 300, None)]))

    blkio_writes = [write for write in writes if write[0].startswith("blkio")]
    assert blkio_writes == [("blkio.bfq.weight", "700"), ("blkio.bfq.weight_device", "8:0 300")]
    assert not (_v1_leaf(root, "blkio") / "blkio.weight").exists()


def test_create_v2_io_files(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    writes = _recorded(monkeypatch, cgroup_module.v2)
    resources = Resources(blkio_weight=500, blkio_weight_device=[(8, 0, 1000, None)],
                          blkio_throttle_read_bps=[(8, 0, 1048576)],
                          blkio_throttle_write_bps=[(8, 0, 0)],
                          blkio_throttle_read_iops=[(8, 16, 10)],
                          blkio_throttle_write_iops=[(8, 16, 20)])

    Cgroup.create(layout, "kakoi/c1", resources)

    io_writes = [write for write in writes if write[0].startswith("io.")]
    assert io_writes == [
        ("io.weight", "4950"),
        ("io.weight", "8:0 10000"),
        ("io.max", "8:0 rbps=1048576"),
        ("io.max", "8:0 wbps=max"),
        ("io.max", "8:16 riops=10"),
        ("io.max", "8:16 wiops=20"),
    ]
    assert "+io" in read(root / "cgroup.subtree_control")


def test_create_v2_io_bfq_weight(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    (root / "kakoi" / "c1").mkdir(parents=True)
    (root / "kakoi" / "c1" / "io.bfq.weight").write_text("default 100\n")
    cgroup = Cgroup(layout, "kakoi/c1")
    writes = _recorded(monkeypatch, cgroup_module.v2)

    cgroup.update(Resources(blkio_weight=500, blkio_weight_device=[(8, 0, 200, None)]))

    assert writes == [("io.bfq.weight", "500"), ("io.bfq.weight", "8:0 200")]


@pytest.mark.parametrize(("weight", "io_weight"), [(10, 1), (500, 4950), (1000, 10000)])
def test_blkio_to_io_weight(weight, io_weight):
    assert cgroup_module.v2.blkio_to_io_weight(weight) == io_weight


@pytest.mark.parametrize(("resources", "message"), [
    (Resources(blkio_leaf_weight=100), "blkio_leaf_weight 100 is not supported on cgroup v2"),
    (Resources(blkio_weight_device=[(8, 0, 100, 200)]), "8:0 leaf_weight 200 is not supported"),
    (Resources(cpu_realtime_runtime=950000), "cpu_realtime_runtime 950000 is not supported"),
    (Resources(memory_swappiness=10), "memory_swappiness 10 is not supported on cgroup v2"),
    (Resources(memory_disable_oom_killer=True), "memory_disable_oom_killer True is not supported"),
    (Resources(memory_use_hierarchy=False), "memory_use_hierarchy False is not supported"),
])
def test_create_v2_rejects_v1_only_values(tmp_path, resources, message):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))

    with pytest.raises(CgroupError, match=message):
        Cgroup.create(layout, "kakoi/c1", resources)

    assert not (root / "kakoi").exists()


def test_create_v2_accepts_neutral_memory_extras(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    resources = Resources(memory_swappiness=-1, memory_disable_oom_killer=False,
                          memory_use_hierarchy=True)

    Cgroup.create(layout, "kakoi/c1", resources)

    assert sorted(os.listdir(root / "kakoi" / "c1")) == []


def test_create_v1_memory_extras(tmp_path, caplog):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    resources = Resources(memory_limit=1 << 30, memory_kernel=1 << 20, memory_kernel_tcp=1 << 20,
                          memory_swappiness=30, memory_disable_oom_killer=True,
                          memory_use_hierarchy=True)

    Cgroup.create(layout, "kakoi/c1", resources)

    memory = _v1_leaf(root, "memory")
    assert read(memory / "memory.swappiness") == "30"
    assert read(memory / "memory.oom_control") == "1"
    assert read(memory / "memory.use_hierarchy") == "1"
    assert not (memory / "memory.kmem.limit_in_bytes").exists()
    assert not (memory / "memory.kmem.tcp.limit_in_bytes").exists()
    assert "memory_kernel 1048576 is ignored" in caplog.text
    assert "memory_kernel_tcp 1048576 is ignored" in caplog.text


def test_create_v1_swappiness_minus_one_unset(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))

    Cgroup.create(layout, "kakoi/c1", Resources(memory_swappiness=-1,
                                                memory_disable_oom_killer=False))

    assert not (_v1_leaf(root, "memory") / "memory.swappiness").exists()
    assert not (_v1_leaf(root, "memory") / "memory.oom_control").exists()


def test_create_v1_cpu_extras(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    writes = _recorded(monkeypatch, cgroup_module.v1)
    resources = Resources(cpu_quota=50000, cpu_period=100000, cpu_burst=20000,
                          cpu_realtime_runtime=10000, cpu_realtime_period=1000000, cpu_idle=1)

    Cgroup.create(layout, "kakoi/c1", resources)

    cpu_writes = [write for write in writes if write[0].startswith("cpu.")]
    assert cpu_writes == [
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "50000"),
        ("cpu.cfs_burst_us", "20000"),
        ("cpu.rt_period_us", "1000000"),
        ("cpu.rt_runtime_us", "10000"),
        ("cpu.idle", "1"),
    ]


def test_create_v2_cpu_extras(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))

    Cgroup.create(layout, "kakoi/c1", Resources(cpu_quota=50000, cpu_burst=10000, cpu_idle=1))

    leaf = root / "kakoi" / "c1"
    assert read(leaf / "cpu.max") == "50000 100000"
    assert read(leaf / "cpu.max.burst") == "10000"
    assert read(leaf / "cpu.idle") == "1"


def test_create_v2_idle_alone(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))

    Cgroup.create(layout, "kakoi/c1", Resources(cpu_idle=1))

    assert read(root / "kakoi" / "c1" / "cpu.idle") == "1"
    assert not (root / "kakoi" / "c1" / "cpu.max").exists()


def test_create_hugepages_v1(tmp_path):
    root = tmp_path / "cg"
    hierarchies = dict(V1_HIERARCHIES, hugetlb="hugetlb")
    layout = detect(root, make_v1(root, hierarchies))

    Cgroup.create(layout, "kakoi/c1", Resources(hugepage_limits=[("2MB", 4 << 20),
                                                                 ("1GB", 0)]))

    hugetlb = _v1_leaf(root, "hugetlb")
    assert read(hugetlb / "hugetlb.2MB.limit_in_bytes") == str(4 << 20)
    assert read(hugetlb / "hugetlb.1GB.limit_in_bytes") == "0"


def test_create_hugepages_v2(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))

    Cgroup.create(layout, "kakoi/c1", Resources(hugepage_limits=[("2MB", 4 << 20)]))

    assert read(root / "kakoi" / "c1" / "hugetlb.2MB.max") == str(4 << 20)
    assert "+hugetlb" in read(root / "cgroup.subtree_control")


def test_create_hugepages_hybrid_without_v1_hugetlb(tmp_path):
    # On a hybrid host whose hugetlb controller sits in the v2 tree, as on the test host,
    # v1 cgroups cannot limit huge pages.
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root, unified=True))

    with pytest.raises(CgroupError, match="hugepage_limits needs the hugetlb cgroup controller"):
        Cgroup.create(layout, "kakoi/c1", Resources(hugepage_limits=[("2MB", 1 << 21)]))


@pytest.mark.parametrize(("resources", "message"), [
    (Resources(blkio_weight=5), "invalid blkio_weight 5"),
    (Resources(blkio_weight_device=[(8, 0, 2000, None)]), "8:0 weight 2000"),
    (Resources(blkio_throttle_read_bps=[(8, 0, -1)]), "invalid blkio_throttle_read_bps rate -1"),
    (Resources(blkio_throttle_write_iops=[(-1, 0, 5)]), "device -1:0"),
    (Resources(hugepage_limits=[("2M", 1)]), "invalid hugepage page size '2M'"),
    (Resources(hugepage_limits=[("2MB", -1)]), "invalid hugepage limit -1"),
    (Resources(memory_swappiness=101), "invalid memory_swappiness 101"),
    (Resources(cpu_realtime_period=0), "invalid cpu_realtime_period 0"),
    (Resources(cpu_burst=-1), "invalid cpu_burst -1"),
    (Resources(devices=[DeviceRule(True, "x")]), "invalid device rule type 'x'"),
    (Resources(devices=[DeviceRule(True, "c", 1, 3, "rx")]), "invalid device rule access 'rx'"),
    (Resources(devices=[DeviceRule(True, "c", -2, 3)]), "invalid device rule major -2"),
    (Resources(unified={"memory/high": "1"}), "invalid unified key 'memory/high'"),
    (Resources(unified={"memoryhigh": "1"}), "invalid unified key 'memoryhigh'"),
])
def test_resources_validate_rejects_new_fields(resources, message):
    with pytest.raises(CgroupError, match=message):
        resources.validate()


def test_resources_hashable_with_sequences():
    first = Resources(devices=[DeviceRule(False)], unified={"b.x": "1", "a.y": "2"},
                      blkio_throttle_read_bps=[[8, 0, 1]])
    second = Resources(devices=(DeviceRule(False),), unified={"a.y": "2", "b.x": "1"},
                       blkio_throttle_read_bps=[(8, 0, 1)])

    assert first == second
    assert hash(first) == hash(second)
    assert first.unified == (("a.y", "2"), ("b.x", "1"))


@pytest.mark.parametrize(("rule", "text"), [
    (DeviceRule(True, "c", 1, 3, "rwm"), "c 1:3 rwm"),
    (DeviceRule(True, "c", None, None, "m"), "c *:* m"),
    (DeviceRule(False, "b", 8, -1, "r"), "b 8:* r"),
    (DeviceRule(False), "a *:* rwm"),
    (DeviceRule(True, "c", 136, None, None), "c 136:* rwm"),
])
def test_device_rule_text(rule, text):
    assert str(rule) == text


def test_create_v1_devices_order(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    writes = _recorded(monkeypatch, cgroup_module.v1)
    rules = [DeviceRule(False), DeviceRule(True, "c", 1, 3, "rwm"),
             DeviceRule(True, "c", 136, None, "rwm"), DeviceRule(False, "c", 1, 3, "w")]

    Cgroup.create(layout, "kakoi/c1", Resources(devices=rules))

    device_writes = [write for write in writes if write[0].startswith("devices")]
    assert device_writes == [
        ("devices.deny", "a"),
        ("devices.deny", "a *:* rwm"),
        ("devices.allow", "c 1:3 rwm"),
        ("devices.allow", "c 136:* rwm"),
        ("devices.deny", "c 1:3 w"),
    ]


def test_create_v1_devices_empty_denies_all(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))

    Cgroup.create(layout, "kakoi/c1", Resources(devices=[]))

    assert read(_v1_leaf(root, "devices") / "devices.deny") == "a"


def test_create_v2_devices_attach_program(tmp_path, monkeypatch):
    # Attaching needs a real cgroup2 directory; the kernel test does that for real.
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    applied = []
    monkeypatch.setattr(devices_bpf, "apply", lambda directory, rules: applied.append(
        (directory, rules)))
    rules = (DeviceRule(False), DeviceRule(True, "c", 1, 3, "rw"))

    Cgroup.create(layout, "kakoi/c1", Resources(devices=rules))

    assert applied == [(str(root / "kakoi" / "c1"), rules)]


def test_create_unified_v2(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))

    Cgroup.create(layout, "kakoi/c1", Resources(unified={"memory.high": "1000000",
                                                        "cgroup.max.depth": "3",
                                                        "io.latency": "8:0 target=10"}))

    leaf = root / "kakoi" / "c1"
    assert read(leaf / "memory.high") == "1000000"
    assert read(leaf / "cgroup.max.depth") == "3"
    assert read(leaf / "io.latency") == "8:0 target=10"
    assert "+io" in read(root / "cgroup.subtree_control")


def test_create_unified_v2_missing_controller(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root, controllers="cpu memory pids"))

    with pytest.raises(CgroupError, match="unified resource 'io.latency' needs the io cgroup"):
        Cgroup.create(layout, "kakoi/c1", Resources(unified={"io.latency": "8:0 target=10"}))


@pytest.mark.parametrize("unified", [False, True])
def test_create_unified_rejected_on_v1(tmp_path, unified):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root, unified=unified))

    with pytest.raises(CgroupError, match="unified resource 'memory.high' needs cgroup v2"):
        Cgroup.create(layout, "kakoi/c1", Resources(unified={"memory.high": "1"}))

    assert not (root / "memory" / "kakoi").exists()


def test_create_unified_empty_on_v1(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root, unified=True))

    Cgroup.create(layout, "kakoi/c1", Resources(unified={}))

    assert (_v1_leaf(root, "memory")).is_dir()


# the eBPF device program, run by a small interpreter of the instructions it uses


def _run_program(program: list[bytes], device_type: int, access: int, major: int,
                 minor: int) -> int:
    """Interpret the few eBPF instructions that devices_bpf emits, on one request."""
    import struct

    context = {0: (access << 16) | device_type, 4: major, 8: minor}
    registers = [0] * 11
    pc = 0
    while True:
        code, regs, offset, imm = struct.unpack("<BBhi", program[pc])
        dst, src = regs & 0xF, regs >> 4
        pc += 1
        if code == 0x61:
            assert src == 1
            registers[dst] = context[offset]
        elif code == 0x57:
            registers[dst] &= imm & 0xFFFFFFFFFFFFFFFF
        elif code == 0x77:
            registers[dst] >>= imm
        elif code == 0xB7:
            registers[dst] = imm
        elif code == 0xBF:
            registers[dst] = registers[src]
        elif code == 0x15:
            if registers[dst] == imm:
                pc += offset
        elif code == 0x55:
            if registers[dst] != imm:
                pc += offset
        elif code == 0x95:
            return registers[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


CHAR, BLOCK = 2, 1
READ, WRITE, MKNOD = 2, 4, 1


@pytest.mark.parametrize(("rules", "request_", "allowed"), [
    ([], (CHAR, READ, 1, 3), 0),
    ([DeviceRule(True)], (BLOCK, WRITE, 8, 0), 1),
    ([DeviceRule(False), DeviceRule(True, "c", 1, 3, "rwm")], (CHAR, READ | WRITE, 1, 3), 1),
    ([DeviceRule(False), DeviceRule(True, "c", 1, 3, "rwm")], (CHAR, READ, 1, 5), 0),
    ([DeviceRule(False), DeviceRule(True, "c", 1, 3, "rwm")], (BLOCK, READ, 1, 3), 0),
    ([DeviceRule(False), DeviceRule(True, "c", 1, 3, "r")], (CHAR, READ, 1, 3), 1),
    ([DeviceRule(False), DeviceRule(True, "c", 1, 3, "r")], (CHAR, READ | WRITE, 1, 3), 0),
    ([DeviceRule(False), DeviceRule(True, "c", 136, None, "rw")], (CHAR, WRITE, 136, 7), 1),
    ([DeviceRule(False), DeviceRule(True, "c", None, None, "m")], (CHAR, MKNOD, 10, 200), 1),
    ([DeviceRule(False), DeviceRule(True, "c", None, None, "m")], (CHAR, READ, 10, 200), 0),
    ([DeviceRule(True), DeviceRule(False, "c", 1, 3, "w")], (CHAR, READ, 1, 3), 1),
    ([DeviceRule(True), DeviceRule(False, "c", 1, 3, "w")], (CHAR, READ | WRITE, 1, 3), 0),
    # A later deny-all rule wins over earlier allows.
    ([DeviceRule(True, "c", 1, 3), DeviceRule(False)], (CHAR, READ, 1, 3), 0),
])
def test_device_program_verdicts(rules, request_, allowed):
    program = devices_bpf.assemble(rules)

    assert _run_program(program, *request_) == allowed


def test_device_program_stops_at_match_all():
    rules = [DeviceRule(True, "c", 1, 3), DeviceRule(False, "c", 1, 5), DeviceRule(True)]

    # Prologue of 6 instructions, then the allow-all block: mov and exit.
    assert len(devices_bpf.assemble(rules)) == 8


def test_device_instruction_encoding():
    # jne r4, 136, +3: opcode 0x55, dst 4 in the low nibble, offset 3, immediate 136.
    assert devices_bpf.instruction(0x55, 4, 0, 3, 136) == bytes.fromhex("5504030088000000")


# update


def test_update_v1_memory_grows_with_swap(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources(memory_limit=100))
    memory = _v1_leaf(root, "memory")
    (memory / "memory.memsw.limit_in_bytes").write_text("200\n")
    writes = _recorded(monkeypatch, cgroup_module.v1)

    cgroup.update(Resources(memory_limit=400, memory_swap=800, pids_limit=5))

    assert writes == [("memory.memsw.limit_in_bytes", "800"), ("memory.limit_in_bytes", "400"),
                      ("pids.max", "5")]


def test_update_v2_writes_only_given_fields(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", FULL)

    cgroup.update(Resources(memory_limit=200 << 20, cpu_quota=-1))

    leaf = root / "kakoi" / "c1"
    assert read(leaf / "memory.max") == str(200 << 20)
    assert read(leaf / "cpu.max") == "max 100000"
    assert read(leaf / "memory.swap.max") == str(200 * 2**20)
    assert read(leaf / "pids.max") == "64"


def test_update_validates_first(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root, unified=True))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources(pids_limit=10))

    with pytest.raises(CgroupError, match="memory_swap 100 needs a memory_limit"):
        cgroup.update(Resources(pids_limit=20, memory_swap=100))
    with pytest.raises(CgroupError, match="needs cgroup v2"):
        cgroup.update(Resources(pids_limit=20, unified={"pids.max": "3"}))

    assert read(_v1_leaf(root, "pids") / "pids.max") == "10"


def test_update_missing_cgroup(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))

    with pytest.raises(CgroupError, match="update cgroup kakoi/gone: it does not exist"):
        Cgroup(layout, "kakoi/gone").update(Resources(pids_limit=1))


# freeze and thaw, with the kernel's state changes emulated on plain files


def test_freeze_thaw_v1(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())
    state_file = _v1_leaf(root, "freezer") / "freezer.state"
    state_file.write_text("THAWED\n")
    from kakoi.kernel.cgroups import freezer
    writes = _recorded(monkeypatch, freezer)
    # The kernel reports FREEZING until its second attempt freezes every task.
    original_read = freezer.files.read
    reads = []

    def read_state(path):
        value = original_read(path)
        reads.append(value)
        return "FREEZING" if value == "FROZEN" and len(reads) == 1 else value

    monkeypatch.setattr(freezer.files, "read", read_state)

    assert cgroup.state() == "thawed"
    cgroup.freeze()
    assert writes == [("freezer.state", "FROZEN"), ("freezer.state", "FROZEN")]
    assert cgroup.state() == "frozen"

    cgroup.thaw()
    assert read(state_file) == "THAWED"
    assert cgroup.state() == "thawed"


def test_freeze_v1_timeout_thaws(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())
    from kakoi.kernel.cgroups import freezer
    original_read = freezer.files.read
    # Emulates a task that never freezes.
    monkeypatch.setattr(freezer.files, "read", lambda path: (
        "FREEZING" if path.endswith("freezer.state") and original_read(path) == "FROZEN"
        else original_read(path)))

    with pytest.raises(CgroupError, match="not frozen after 0.05s"):
        cgroup.freeze(timeout=0.05)

    assert read(_v1_leaf(root, "freezer") / "freezer.state") == "THAWED"


def test_freeze_thaw_v2(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())
    leaf = root / "kakoi" / "c1"
    from kakoi.kernel.cgroups import freezer
    original_write = freezer.files.write

    def write(path, value):
        original_write(path, value)
        # The kernel updates cgroup.events once every process has stopped.
        (leaf / "cgroup.events").write_text(f"populated 1\nfrozen {value}\n")

    monkeypatch.setattr(freezer.files, "write", write)

    cgroup.freeze()
    assert read(leaf / "cgroup.freeze") == "1"
    assert cgroup.state() == "frozen"

    cgroup.thaw()
    assert read(leaf / "cgroup.freeze") == "0"
    assert cgroup.state() == "thawed"


def test_freeze_without_freezer(tmp_path):
    root = tmp_path / "cg"
    hierarchies = {name: options for name, options in V1_HIERARCHIES.items() if name != "freezer"}
    layout = detect(root, make_v1(root, hierarchies))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())

    assert cgroup.state() == "thawed"
    with pytest.raises(CgroupError, match="freezer controller is not mounted"):
        cgroup.freeze()


# stats


def _write_files(directory: Path, contents: dict[str, str]) -> None:
    for name, content in contents.items():
        (directory / name).write_text(content)


def test_stats_v1(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    _write_files(_v1_leaf(root, "cpu,cpuacct"), {
        "cpuacct.usage": "5000\n",
        "cpuacct.usage_percpu": "3000 2000 \n",
        "cpuacct.stat": "user 7\nsystem 3\n",
        "cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 900\n",
    })
    _write_files(_v1_leaf(root, "memory"), {
        "memory.usage_in_bytes": "4096\n",
        "memory.max_usage_in_bytes": "8192\n",
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.failcnt": "0\n",
        "memory.memsw.usage_in_bytes": "4096\n",
        "memory.stat": "cache 1024\nrss 3072\n",
    })
    _write_files(_v1_leaf(root, "pids"), {"pids.current": "1\n", "pids.max": "max\n"})
    _write_files(_v1_leaf(root, "blkio"), {
        "blkio.throttle.io_service_bytes_recursive": "8:0 Read 512\n8:0 Write 1024\nTotal 1536\n",
        "blkio.throttle.io_serviced_recursive": "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
    })

    stats = cgroup.stats()

    assert stats["cpu"]["usage"] == {"total": 5000, "percpu": [3000, 2000], "kernel": 3 * tick_ns,
                                     "user": 7 * tick_ns}
    assert stats["cpu"]["throttling"] == {"periods": 10, "throttled_periods": 2,
                                          "throttled_time": 900}
    assert stats["memory"]["usage"] == {"usage": 4096, "max": 8192,
                                        "limit": 9223372036854771712, "failcnt": 0}
    assert stats["memory"]["swap"] == {"usage": 4096}
    assert stats["memory"]["cache"] == 1024
    assert stats["memory"]["raw"] == {"cache": 1024, "rss": 3072}
    assert stats["pids"] == {"current": 1, "limit": 0}
    assert stats["blkio"]["ioServiceBytesRecursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 512},
        {"major": 8, "minor": 0, "op": "Write", "value": 1024},
    ]
    assert len(stats["blkio"]["ioServicedRecursive"]) == 2
    assert stats["hugetlb"] == {}


def test_stats_v1_prefers_bfq_counters(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v1(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())
    _write_files(_v1_leaf(root, "blkio"), {
        "blkio.bfq.io_service_bytes_recursive": "8:16 Read 7\nTotal 7\n",
        "blkio.throttle.io_service_bytes_recursive": "8:0 Read 512\nTotal 512\n",
    })

    blkio = cgroup.stats()["blkio"]

    assert blkio["ioServiceBytesRecursive"] == [{"major": 8, "minor": 16, "op": "Read", "value": 7}]
    assert blkio["ioServicedRecursive"] == []


def test_stats_v2(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources(memory_limit=1 << 20))
    _write_files(root / "kakoi" / "c1", {
        "cpu.stat": "usage_usec 50\nuser_usec 30\nsystem_usec 20\nnr_periods 4\n"
                    "nr_throttled 1\nthrottled_usec 7\n",
        "memory.current": "4096\n",
        "memory.peak": "8192\n",
        "memory.events": "low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\n",
        "memory.swap.current": "100\n",
        "memory.swap.max": "max\n",
        "memory.stat": "anon 3000\nfile 1000\n",
        "pids.current": "2\n",
        "pids.max": "64\n",
        "io.stat": "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
        "hugetlb.2MB.current": "0\n",
        "hugetlb.2MB.max": "max\n",
        "hugetlb.2MB.events": "max 4\n",
    })

    stats = cgroup.stats()

    assert stats["cpu"]["usage"] == {"total": 50000, "kernel": 20000, "user": 30000}
    assert stats["cpu"]["throttling"] == {"periods": 4, "throttled_periods": 1,
                                          "throttled_time": 7000}
    assert stats["memory"]["usage"] == {"usage": 4096, "limit": 1 << 20, "max": 8192, "failcnt": 3}
    assert stats["memory"]["swap"] == {"usage": 4196, "limit": 2**64 - 1}
    assert stats["memory"]["cache"] == 1000
    assert stats["pids"] == {"current": 2, "limit": 64}
    assert stats["blkio"]["ioServiceBytesRecursive"][:2] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 10},
        {"major": 8, "minor": 0, "op": "Write", "value": 20},
    ]
    assert stats["blkio"]["ioServicedRecursive"][1] == {"major": 8, "minor": 0, "op": "Write",
                                                        "value": 2}
    assert stats["hugetlb"] == {"2MB": {"usage": 0, "failcnt": 4}}


def test_stats_v2_swap_limit_adds_memory(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources(memory_limit=100, memory_swap=300))

    swap = cgroup.stats()["memory"]["swap"]

    assert swap == {"limit": 300}


def test_stats_missing_files(tmp_path):
    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    cgroup = Cgroup.create(layout, "kakoi/c1", Resources())

    assert cgroup.stats() == {"cpu": {"usage": {}, "throttling": {}}, "memory": {}, "pids": {},
                              "blkio": {}, "hugetlb": {}}
