"""Tests of kakoi.kernel.cgroups against the host's real cgroup hierarchies.

Each test creates kakoi/kakoi-test-<random> and removes it in a finally block, together
with every process it forked. Namespace changes happen only in forked children, so the
test process's own mounts and cgroups never change.
"""

import errno
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from kakoi.errors import CgroupError
from kakoi.kernel import libc
from kakoi.kernel.cgroups import Cgroup, Resources, detect, list_children, mount_container_view

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups"),
]

MIB = 1 << 20


@pytest.fixture
def layout():
    try:
        return detect()
    except CgroupError as exc:
        pytest.skip(f"needs a mounted cgroup filesystem: {exc}")


@pytest.fixture
def cgroup_path():
    return f"kakoi/kakoi-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def children():
    """Forked pids, killed and reaped after the test whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _destroy(cgroup: Cgroup | None) -> None:
    if cgroup is not None:
        cgroup.destroy()


def _fork(children: list[int], body) -> tuple[int, int]:
    """Fork a child that runs body(write_fd) and exits; return its pid and a read fd."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(read_fd)
            body(write_fd)
        except BaseException as exc:  # the child must never return into pytest
            os.write(write_fd, json.dumps({"error": repr(exc)}).encode() + b"\n")
            status = 1
        finally:
            os._exit(status)

    children.append(pid)
    os.close(write_fd)
    return pid, read_fd


def _read_report(read_fd: int) -> dict:
    with os.fdopen(read_fd, "rb") as stream:
        line = stream.readline()
    assert line, "the child exited without a report"
    report = json.loads(line)
    assert "error" not in report, report["error"]
    return report


def _cgroup_lines(pid: int) -> dict[str, str]:
    lines = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        lines[controllers] = path
    return lines


def _joined_hierarchies(layout) -> list[str]:
    keys = []
    for hierarchy in layout.hierarchies():
        if hierarchy.version == 2:
            keys.append("")
        elif hierarchy.name is not None:
            keys.append(f"name={hierarchy.name}")
        else:
            keys.append(",".join(sorted(hierarchy.controllers)))
    return keys


def _limit_file(layout, cgroup: Cgroup) -> Path:
    name = "memory.max" if layout.mode == "v2" else "memory.limit_in_bytes"
    return Path(cgroup.directory("memory")) / name


def test_create_join_destroy(layout, cgroup_path, children):
    cgroup = None
    try:
        resources = Resources(memory_limit=64 * MIB, cpu_shares=512, pids_limit=100)
        cgroup = Cgroup.create(layout, cgroup_path, resources)

        def join_and_sleep(write_fd):
            cgroup.add_process(0)
            os.write(write_fd, b'{"joined": true}\n')
            time.sleep(60)

        pid, read_fd = _fork(children, join_and_sleep)
        assert _read_report(read_fd) == {"joined": True}

        lines = _cgroup_lines(pid)
        for key in _joined_hierarchies(layout):
            assert lines[key] == f"/{cgroup_path}", key
        assert cgroup.pids() == [pid]
        assert _limit_file(layout, cgroup).read_text().strip() == str(64 * MIB)
        assert list_children(layout).count(cgroup_path) == 1
        assert Cgroup.open(layout, "/" + cgroup_path).directories == cgroup.directories

        # destroy kills the sleeping child, which it must wait out before rmdir works.
        cgroup.destroy()
        for directory in cgroup.directories:
            assert not os.path.exists(directory), directory
        _, status = os.waitpid(pid, 0)
        children.remove(pid)
        assert os.WIFSIGNALED(status)
        assert os.WTERMSIG(status) == signal.SIGKILL
    finally:
        _destroy(cgroup)


def test_add_process_zero_in_pid_namespace(layout, cgroup_path, children):
    cgroup = None
    try:
        cgroup = Cgroup.create(layout, cgroup_path, Resources())

        def join_as_pid_one(write_fd):
            libc.unshare(libc.CLONE_NEWPID)
            inner = os.fork()
            if inner == 0:
                try:
                    cgroup.add_process(0)
                    os.write(write_fd, json.dumps({"pid": os.getpid()}).encode() + b"\n")
                    time.sleep(60)
                finally:
                    os._exit(0)
            os.waitpid(inner, 0)

        _, read_fd = _fork(children, join_as_pid_one)
        assert _read_report(read_fd) == {"pid": 1}

        [host_pid] = cgroup.pids()
        assert _cgroup_lines(host_pid)["" if layout.mode == "v2" else "pids"] == f"/{cgroup_path}"
    finally:
        _destroy(cgroup)


def test_oom_kill_counted(layout, cgroup_path, children):
    cgroup = None
    try:
        # Swap equal to memory means no swap, so the allocation cannot escape to swap.
        resources = Resources(memory_limit=20 * MIB, memory_swap=20 * MIB)
        cgroup = Cgroup.create(layout, cgroup_path, resources)

        def join_and_allocate(write_fd):
            cgroup.add_process(0)
            os.write(write_fd, b'{"joined": true}\n')
            # A fresh interpreter is charged to the new cgroup from its first page.
            program = "data = bytearray(100 << 20)\ndata[::4096] = b'x' * len(data[::4096])"
            os.execv(sys.executable, [sys.executable, "-c", program])

        pid, read_fd = _fork(children, join_and_allocate)
        assert _read_report(read_fd) == {"joined": True}

        _, status = os.waitpid(pid, 0)
        children.remove(pid)
        assert os.WIFSIGNALED(status), f"child exited with status {status:#x}"
        assert os.WTERMSIG(status) == signal.SIGKILL
        assert cgroup.oom_kill_count() >= 1
        assert cgroup.memory_max_usage() is None or cgroup.memory_max_usage() <= 20 * MIB
    finally:
        _destroy(cgroup)


def _mount_view_and_inspect(layout, cgroup: Cgroup, rootfs: Path, write_fd: int) -> None:
    cgroup.add_process(0)
    libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWCGROUP)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE, None)
    libc.mount("tmpfs", str(rootfs), "tmpfs", 0, "mode=755")
    target = rootfs / "sys" / "fs" / "cgroup"
    target.mkdir(parents=True)

    mount_container_view(layout, str(target), read_only=True)

    memory = target if layout.mode == "v2" else target / "memory"
    try:
        os.mkdir(memory / "escape")
        mkdir_errno = 0
    except OSError as exc:
        mkdir_errno = exc.errno

    report = {
        "entries": sorted(os.listdir(target)),
        "memory_entries": sorted(os.listdir(memory)),
        "own_cgroup": _cgroup_lines(os.getpid()),
        "mkdir_errno": mkdir_errno,
    }
    os.write(write_fd, json.dumps(report).encode() + b"\n")


def test_mount_container_view(layout, cgroup_path, children, tmp_path):
    cgroup = None
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    try:
        cgroup = Cgroup.create(layout, cgroup_path, Resources(memory_limit=64 * MIB))

        pid, read_fd = _fork(
            children, lambda write_fd: _mount_view_and_inspect(layout, cgroup, rootfs, write_fd))
        report = _read_report(read_fd)
        os.waitpid(pid, 0)
        children.remove(pid)

        expected = [os.path.basename(hierarchy.mount_point) for hierarchy in layout.hierarchies()
                    if hierarchy.version == 1]
        if layout.mode != "v2":
            assert set(expected) <= set(report["entries"])
        if layout.mode == "hybrid":
            # The hybrid v2 tree is not joined, so it stays out of the view.
            assert "unified" not in report["entries"]
        assert "cgroup.procs" in report["memory_entries"]
        # The view starts at the container's own cgroup, so kakoi's parent is not in it.
        assert "kakoi" not in report["memory_entries"]
        assert set(report["own_cgroup"].values()) == {"/"}
        assert report["mkdir_errno"] == errno.EROFS
        assert str(rootfs) not in Path("/proc/self/mountinfo").read_text()
    finally:
        _destroy(cgroup)


def _join_and_sleep(cgroup: Cgroup):
    def body(write_fd):
        cgroup.add_process(0)
        os.write(write_fd, b'{"joined": true}\n')
        time.sleep(60)
    return body


def _join_and_open(cgroup: Cgroup, versions: tuple[int, ...] = (1, 2)):
    """Return a child body that joins cgroup and reports the errno of opening each device."""
    def body(write_fd):
        cgroup.add_process(0, versions)
        report = {}
        # Only /dev/null and /dev/zero, read-only: harmless wherever the rules let them open.
        for path in ("/dev/null", "/dev/zero"):
            try:
                os.close(os.open(path, os.O_RDONLY))
                report[path] = 0
            except OSError as exc:
                report[path] = exc.errno
        os.write(write_fd, json.dumps(report).encode() + b"\n")
    return body


def _open_report(children: list[int], body) -> dict:
    pid, read_fd = _fork(children, body)
    report = _read_report(read_fd)
    os.waitpid(pid, 0)
    children.remove(pid)
    return report


def test_freeze_and_thaw(layout, cgroup_path, children):
    cgroup = None
    try:
        cgroup = Cgroup.create(layout, cgroup_path, Resources())
        pid, read_fd = _fork(children, _join_and_sleep(cgroup))
        assert _read_report(read_fd) == {"joined": True}
        assert cgroup.state() == "thawed"

        cgroup.freeze()

        assert cgroup.state() == "frozen"
        if layout.mode == "v2":
            assert "frozen 1" in Path(cgroup.directory(""), "cgroup.events").read_text()
        else:
            assert Path(cgroup.directory("freezer"), "freezer.state").read_text().strip() == "FROZEN"

        cgroup.thaw()

        assert cgroup.state() == "thawed"
        if layout.mode != "v2":
            assert Path(cgroup.directory("freezer"), "freezer.state").read_text().strip() == "THAWED"
        # A thawed child still takes a signal and dies at once.
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        children.remove(pid)
        assert os.WTERMSIG(status) == signal.SIGTERM
    finally:
        _destroy(cgroup)


def test_update_live_memory_limit(layout, cgroup_path, children):
    cgroup = None
    try:
        cgroup = Cgroup.create(layout, cgroup_path, Resources(memory_limit=64 * MIB,
                                                                memory_swap=64 * MIB))
        _, read_fd = _fork(children, _join_and_sleep(cgroup))
        assert _read_report(read_fd) == {"joined": True}

        # Raising both limits at once needs memory+swap written first on v1.
        cgroup.update(Resources(memory_limit=128 * MIB, memory_swap=256 * MIB))
        assert _limit_file(layout, cgroup).read_text().strip() == str(128 * MIB)

        cgroup.update(Resources(memory_limit=96 * MIB, pids_limit=50))
        assert _limit_file(layout, cgroup).read_text().strip() == str(96 * MIB)
        assert Path(cgroup.directory("pids"), "pids.max").read_text().strip() == "50"
    finally:
        _destroy(cgroup)


def test_stats_of_live_cgroup(layout, cgroup_path, children):
    cgroup = None
    try:
        cgroup = Cgroup.create(layout, cgroup_path, Resources(memory_limit=64 * MIB,
                                                                pids_limit=10))
        _, read_fd = _fork(children, _join_and_sleep(cgroup))
        assert _read_report(read_fd) == {"joined": True}

        stats = cgroup.stats()

        assert stats["pids"] == {"current": 1, "limit": 10}
        assert stats["memory"]["usage"]["usage"] > 0
        assert stats["memory"]["usage"]["limit"] == 64 * MIB
        assert stats["cpu"]["usage"]["total"] > 0
        assert "raw" in stats["memory"]
        json.dumps(stats)
    finally:
        _destroy(cgroup)


def test_v1_devices_deny_and_allow(layout, cgroup_path, children):
    if layout.mode == "v2" or not layout.available("devices"):
        pytest.skip("needs the cgroup v1 devices controller")

    from kakoi.kernel.cgroups import DeviceRule

    cgroup = None
    try:
        deny_null = [DeviceRule(False), DeviceRule(True, "c", 1, 5, "rwm")]
        cgroup = Cgroup.create(layout, cgroup_path, Resources(devices=deny_null))
        devices_list = Path(cgroup.directory("devices"), "devices.list").read_text().split("\n")
        assert "c 1:5 rwm" in devices_list

        report = _open_report(children, _join_and_open(cgroup))
        assert report == {"/dev/null": errno.EPERM, "/dev/zero": 0}

        cgroup.update(Resources(devices=[DeviceRule(False), DeviceRule(True, "c", 1, 3, "r")]))
        report = _open_report(children, _join_and_open(cgroup))
        assert report == {"/dev/null": 0, "/dev/zero": errno.EPERM}
    finally:
        _destroy(cgroup)


@pytest.fixture
def unified_layout(layout):
    """The host's cgroup2 tree as a pure v2 layout; on a hybrid host, its empty v2 tree."""
    if layout.unified is None:
        pytest.skip("needs a cgroup2 mount")
    if layout.mode == "v2":
        return layout
    return detect(layout.unified)


def test_v2_device_program(unified_layout, children):
    """Device rules on cgroup v2 are a BPF program, which also works in a hybrid v2 tree."""
    from kakoi.kernel.cgroups import DeviceRule, devices_bpf

    path = f"kakoi-test-{uuid.uuid4().hex[:12]}"
    if unified_layout.root == "/sys/fs/cgroup":
        path = f"kakoi/{path}"
    cgroup = None
    try:
        deny_null = [DeviceRule(False), DeviceRule(True, "c", 1, 5, "rwm")]
        cgroup = Cgroup.create(unified_layout, path, Resources(devices=deny_null))
        directory = cgroup.directory("")
        assert len(devices_bpf.attached_programs(directory)) == 1

        report = _open_report(children, _join_and_open(cgroup, versions=(2,)))
        assert report == {"/dev/null": errno.EPERM, "/dev/zero": 0}

        # An update replaces the program, because attached programs must all allow.
        cgroup.update(Resources(devices=[DeviceRule(False), DeviceRule(True, "c", 1, 3, "r")]))
        assert len(devices_bpf.attached_programs(directory)) == 1

        report = _open_report(children, _join_and_open(cgroup, versions=(2,)))
        assert report == {"/dev/null": 0, "/dev/zero": errno.EPERM}
    finally:
        _destroy(cgroup)


def test_v2_freeze_in_unified_tree(unified_layout, children):
    path = f"kakoi-test-{uuid.uuid4().hex[:12]}"
    if unified_layout.root == "/sys/fs/cgroup":
        path = f"kakoi/{path}"
    cgroup = None
    try:
        cgroup = Cgroup.create(unified_layout, path, Resources())
        if not os.path.exists(os.path.join(cgroup.directory(""), "cgroup.freeze")):
            pytest.skip("needs cgroup.freeze (Linux 5.2 or later)")

        def join_v2_and_sleep(write_fd):
            cgroup.add_process(0, (2,))
            os.write(write_fd, b'{"joined": true}\n')
            time.sleep(60)

        pid, read_fd = _fork(children, join_v2_and_sleep)
        assert _read_report(read_fd) == {"joined": True}

        cgroup.freeze()
        assert cgroup.state() == "frozen"
        assert "frozen 1" in Path(cgroup.directory(""), "cgroup.events").read_text()

        cgroup.thaw()
        assert cgroup.state() == "thawed"
        assert "frozen 0" in Path(cgroup.directory(""), "cgroup.events").read_text()
    finally:
        _destroy(cgroup)


def test_v1_blkio_weight_on_this_scheduler(layout, cgroup_path):
    if layout.mode == "v2" or not layout.available("blkio"):
        pytest.skip("needs the cgroup v1 blkio controller")

    cgroup = None
    try:
        cgroup = Cgroup.create(layout, cgroup_path, Resources(blkio_weight=300))
        directory = Path(cgroup.directory("blkio"))
        name = "blkio.weight" if (directory / "blkio.weight").exists() else "blkio.bfq.weight"
        # blkio.bfq.weight reads back as "default 300" on recent kernels.
        assert (directory / name).read_text().split()[-1] == "300"
    finally:
        _destroy(cgroup)
