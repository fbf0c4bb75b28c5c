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
    assert len(remounts) == 9
    assert all(call[3] & libc.MS_BIND and call[3] & libc.MS_RDONLY for call in remounts)
    assert remounts[-1][1] == str(target)


def test_mount_view_v2_calls(tmp_path, monkeypatch):
    from kakoi.kernel import libc

    root = tmp_path / "cg"
    layout = detect(root, make_v2(root))
    calls = []
    monkeypatch.setattr(libc, "mount", lambda *args: calls.append(args))

    mount_container_view(layout, "/target", read_only=False)

    flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    assert calls == [("cgroup2", "/target", "cgroup2", flags, None)]
