"""`kakoi-runtime` side by side with runc 1.1: what a container sees, the CLI, hooks and errors.

Each side-by-side test runs the same bundle (a copy of the busybox rootfs and a `runc spec`
config edited per case) with both runtimes, and compares what a shell probe inside prints.
Both runtimes keep their state in private --root directories under the test's tmp_path, and
their cgroups below the tests' cgroup parent, which the fixtures remove also on failure.
"""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CGROUP_PARENT
from runtime_helpers import (KAKOI_RUNTIME, Bundles, Runtime, container_cgroups,
                             default_spec, extract_rootfs, mounts_below, normalise_mountinfo,
                             remove_cgroup_parent, remove_cgroups, unmount_below)

pytestmark = [pytest.mark.root, pytest.mark.peer]

RUNTIME_NAMES = ("runc", "kakoi")
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
              "poststop")


class SideBySide:
    """Both runtimes, each with its own state root, and the bundles that the test made."""

    def __init__(self, tmp_path: Path, rootfs: Path, spec: dict):
        self.tmp_path = tmp_path
        self.bundles = Bundles(tmp_path / "bundles", rootfs, spec, f"rt{os.getpid()}")
        self.runc = Runtime("runc", shutil.which("runc"), tmp_path / "runc-root")
        self.kakoi = Runtime("kakoi", str(KAKOI_RUNTIME), tmp_path / "kakoi-root")
        self.runtimes = {"runc": self.runc, "kakoi": self.kakoi}

    def bundle(self, name: str, args: list[str], edit=None) -> tuple[str, Path]:
        container_id = self.bundles.new_id(name)
        return container_id, self.bundles.make(container_id, args, edit)

    def run(self, runtime: Runtime, args: list[str], edit=None,
            timeout: float = 30) -> subprocess.CompletedProcess:
        container_id, bundle = self.bundle(runtime.name, args, edit)
        return runtime("run", "--bundle", str(bundle), container_id, timeout=timeout)

    def run_both(self, args: list[str], edit=None) -> dict[str, subprocess.CompletedProcess]:
        return {name: self.run(runtime, args, edit) for name, runtime in self.runtimes.items()}

    def probe(self, script: str, edit=None) -> dict[str, subprocess.CompletedProcess]:
        return self.run_both(["sh", "-c", script], edit)

    def clean_up(self) -> None:
        for runtime in self.runtimes.values():
            runtime.remove_all()
        for container_id in self.bundles.ids:
            remove_cgroups(container_id)
        unmount_below(self.tmp_path)


@pytest.fixture(scope="session")
def busybox_rootfs(busybox_archives, tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed: run scripts/install.sh")
    if not KAKOI_RUNTIME.exists():
        pytest.skip("kakoi-runtime is not installed: run scripts/install.sh")
    rootfs = tmp_path_factory.mktemp("runtime-rootfs") / "rootfs"
    extract_rootfs(busybox_archives["docker-archive"], rootfs)
    return rootfs


@pytest.fixture(scope="session")
def runc_spec(tmp_path_factory) -> dict:
    return default_spec(tmp_path_factory.mktemp("runc-spec"))


@pytest.fixture(scope="session")
def runtime_cgroup_parent():
    """Remove the tests' cgroup parent in every hierarchy once the runtime tests are done."""
    yield
    remove_cgroup_parent()


@pytest.fixture
def side(tmp_path, busybox_rootfs, runc_spec, runtime_cgroup_parent) -> SideBySide:
    both = SideBySide(tmp_path, busybox_rootfs, runc_spec)
    try:
        yield both
    finally:
        both.clean_up()


def outputs(results: dict[str, subprocess.CompletedProcess]) -> dict[str, list[str]]:
    return {name: result.stdout.splitlines() for name, result in results.items()}


def assert_same_output(results: dict[str, subprocess.CompletedProcess]) -> list[str]:
    """Check that both runs succeeded and printed the same lines; return runc's lines."""
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    lines = outputs(results)
    assert lines["kakoi"] == lines["runc"]
    return lines["runc"]


def assert_one_line_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def assert_nothing_left(runtime: Runtime, container_id: str) -> None:
    assert runtime.container_ids() == []
    assert container_cgroups(container_id) == []


# What the container observes.


def test_identity_matches_runc(side):
    lines = assert_same_output(side.probe("id; id -G"))
    assert lines[0].startswith("uid=0(root) gid=0(root)")


def test_capabilities_match_runc(side):
    lines = assert_same_output(side.probe("grep -E '^(Cap|NoNewPrivs)' /proc/self/status"))
    assert len(lines) == 6


def test_hostname_and_domainname(side):
    def edit(config, bundle):
        config["hostname"] = "probe-host"
        config["domainname"] = "probe.test"

    results = side.probe("hostname; cat /proc/sys/kernel/domainname", edit)
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    lines = outputs(results)
    assert lines["kakoi"] == ["probe-host", "probe.test"]
    # runc 1.1.5 (Debian 12) ignores the spec's domainname; it sets only the hostname.
    assert lines["runc"] == ["probe-host", "(none)"]


def test_env_and_cwd(side):
    def edit(config, bundle):
        config["process"]["env"] += ["PROBE_A=1", "PROBE_B=two words"]
        config["process"]["cwd"] = "/tmp/work"

    lines = assert_same_output(side.probe("env | sort; pwd", edit))
    assert "PROBE_B=two words" in lines
    assert lines[-1] == "/tmp/work"


def test_mounts_match_runc(side):
    results = side.probe("cat /proc/self/mountinfo")
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    runc_mounts = normalise_mountinfo(results["runc"].stdout)
    kakoi_mounts = normalise_mountinfo(results["kakoi"].stdout)
    assert kakoi_mounts == runc_mounts


def test_cgroup_limits_visible(side):
    def edit(config, bundle):
        config["linux"]["resources"].update({
            "memory": {"limit": 64 * 1024 * 1024},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            "pids": {"limit": 40},
        })

    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
              "/sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.shares")
    lines = assert_same_output(side.probe(script, edit))
    assert lines == [str(64 * 1024 * 1024), "40", "50000", "512"]


def test_rlimits_match_runc(side):
    def edit(config, bundle):
        config["process"]["rlimits"].append({"type": "RLIMIT_CORE", "soft": 0, "hard": 0})

    lines = assert_same_output(side.probe("ulimit -a", edit))
    assert any("1024" in line for line in lines)


def test_masked_and_readonly_paths(side):
    # Reads only: a write test against /proc/sys would aim at the host's kernel settings
    # if a runtime failed to make it read-only.
    # /proc/kcore is absent on some kernels, so its size is read with cat, which prints
    # nothing there, and the count lines come first.
    script = ("echo $(cat /proc/kcore 2>/dev/null | wc -c); ls /proc/acpi | wc -l; "
              "ls /sys/firmware | wc -l; "
              "grep -E ' /proc/(sys|bus|irq|fs|sysrq-trigger|kcore|acpi) ' /proc/self/mountinfo")
    results = side.probe(script)
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    lines = {name: result.stdout.splitlines() for name, result in results.items()}
    assert lines["kakoi"][:3] == lines["runc"][:3] == ["0", "0", "0"]
    runc_mounts = normalise_mountinfo("\n".join(lines["runc"][3:]))
    assert normalise_mountinfo("\n".join(lines["kakoi"][3:])) == runc_mounts
    assert "/proc/sys proc ro" in runc_mounts


@pytest.mark.parametrize("args, expected", [
    (["true"], 0),
    (["sh", "-c", "exit 3"], 3),
    (["no-such-command"], 1),
    (["/bin/no-such-file"], 1),
])
def test_exit_codes_match_runc(side, args, expected):
    results = side.run_both(args)
    assert results["runc"].returncode == expected
    assert results["kakoi"].returncode == expected
    runc_id, kakoi_id = side.bundles.ids
    assert_nothing_left(side.runc, runc_id)
    assert_nothing_left(side.kakoi, kakoi_id)


def test_missing_command_fails_create(side):
    for name, runtime in side.runtimes.items():
        container_id, bundle = side.bundle(name, ["no-such-command"])
        result = runtime("create", "--bundle", str(bundle), container_id)
        assert result.returncode == 1, name
        assert "no-such-command" in result.stderr, name
        assert_nothing_left(runtime, container_id)
    assert_one_line_error(result)


def test_impossible_rlimit_fails_create(side):
    # More open files than fs.nr_open allows, which even root cannot set: both runtimes
    # finish the process before create returns, so create reports it.
    with open("/proc/sys/fs/nr_open") as file:
        too_many = int(file.read()) + 1

    def edit(config, bundle):
        config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": too_many,
                                         "hard": too_many}]

    for name, runtime in side.runtimes.items():
        container_id, bundle = side.bundle(name, ["true"], edit)
        result = runtime("create", "--bundle", str(bundle), container_id)
        assert result.returncode == 1, (name, result.stderr)
        assert_nothing_left(runtime, container_id)
    assert "RLIMIT_NOFILE" in result.stderr
    assert_one_line_error(result)


@pytest.mark.parametrize("user", [{"uid": -1, "gid": 0}, {"uid": 4294967295, "gid": 0},
                                  {"uid": 1000, "gid": -1},
                                  {"uid": 1000, "gid": 1000, "additionalGids": [-1]}])
def test_out_of_range_user_fails_create(side, user):
    # setresuid(2) reads -1 as "unchanged": accepting it would run the program as root.
    def edit(config, bundle):
        config["process"]["user"] = user

    for name, runtime in side.runtimes.items():
        container_id, bundle = side.bundle(name, ["id"], edit)
        result = runtime("create", "--bundle", str(bundle), container_id)
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert_nothing_left(runtime, container_id)
    assert "from 0 to 2147483647" in result.stderr
    assert_one_line_error(result)


def test_program_the_user_cannot_run_fails_create(side):
    def edit(config, bundle):
        secret = bundle / "rootfs" / "secret"
        secret.write_text("#!/bin/sh\necho secret\n")
        secret.chmod(0o700)
        config["process"]["user"] = {"uid": 1000, "gid": 1000}

    for name, runtime in side.runtimes.items():
        container_id, bundle = side.bundle(name, ["/secret"], edit)
        result = runtime("create", "--bundle", str(bundle), container_id)
        assert result.returncode == 1, (name, result.stderr)
        assert "permission denied" in result.stderr, name
        assert_nothing_left(runtime, container_id)
    assert_one_line_error(result)


@pytest.mark.parametrize("name_or_number, expected_code, expected_output", [
    ("TERM", 5, ["ready", "term"]),
    ("SIGTERM", 5, ["ready", "term"]),
    ("15", 5, ["ready", "term"]),
    ("SIGKILL", 137, ["ready"]),
    ("KILL", 137, ["ready"]),
    ("9", 137, ["ready"]),
])
def test_kill_signal_names_and_numbers(side, name_or_number, expected_code, expected_output):
    script = "trap 'echo term; exit 5' TERM; echo ready; while :; do sleep 0.1; done"
    for name, runtime in side.runtimes.items():
        container_id, bundle = side.bundle(name, ["sh", "-c", script])
        running = runtime.popen("run", "--bundle", str(bundle), container_id,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert running.stdout.readline() == "ready\n", name
            kill = runtime("kill", container_id, name_or_number)
            assert kill.returncode == 0, f"{name}: {kill.stderr}"
            stdout, stderr = running.communicate(timeout=15)
        finally:
            if running.poll() is None:
                runtime("kill", container_id, "KILL")
                running.wait(timeout=15)
        assert running.returncode == expected_code, f"{name}: {stderr}"
        assert ["ready", *stdout.splitlines()] == expected_output, name


def test_sysctls_in_new_namespaces(side):
    def edit(config, bundle):
        config["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"}

    script = "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shm_rmid_forced"
    lines = assert_same_output(side.probe(script, edit))
    assert lines == ["1", "1"]


def test_oom_score_adj(side):
    def edit(config, bundle):
        config["process"]["oomScoreAdj"] = 123

    assert assert_same_output(side.probe("cat /proc/self/oom_score_adj", edit)) == ["123"]


def test_user_groups_and_umask(side):
    def edit(config, bundle):
        config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10, 20],
                                     "umask": 0o027}

    lines = assert_same_output(side.probe("id -u; id -g; id -G; umask", edit))
    assert lines == ["1000", "1000", "1000 10 20", "0027"]


@pytest.mark.parametrize("propagation", ["private", "rprivate", "slave", "rslave", "shared"])
def test_rootfs_propagation(side, propagation):
    def edit(config, bundle):
        config["linux"]["rootfsPropagation"] = propagation

    results = side.probe("grep ' / / ' /proc/self/mountinfo", edit)
    assert results["kakoi"].returncode == results["runc"].returncode
    runc_root = normalise_mountinfo(results["runc"].stdout, propagation=True)
    assert normalise_mountinfo(results["kakoi"].stdout, propagation=True) == runc_root


def test_readonly_root(side):
    def edit(config, bundle):
        config["root"]["readonly"] = True

    # The root mount is the one whose mount point (field 5) is "/"; its root field (4)
    # is the rootfs path when the runtime bind-mounted the bundle's directory.
    script = ("touch /probe 2>/dev/null && echo writable || echo read-only; "
              "awk '$5 == \"/\" {print $6}' /proc/self/mountinfo | cut -d , -f 1")
    lines = assert_same_output(side.probe(script, edit))
    assert lines == ["read-only", "ro"]


def test_tmpfs_and_bind_mount_options(side):
    def edit(config, bundle):
        for name in ("ro-source", "rw-source"):
            (bundle / name).mkdir()
            (bundle / name / "file").write_text("from the host\n")
        config["mounts"] += [
            {"destination": "/t1", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "noexec", "nodev", "mode=1770", "size=1m"]},
            {"destination": "/b1", "type": "bind", "source": str(bundle / "ro-source"),
             "options": ["rbind", "ro", "nosuid", "noexec", "nodev"]},
            {"destination": "/b2", "type": "bind", "source": str(bundle / "rw-source"),
             "options": ["bind"]},
        ]

    script = ("grep -E ' /(t1|b1|b2) ' /proc/self/mountinfo; stat -c %a /t1; cat /b1/file; "
              "touch /b1/new 2>/dev/null && echo b1-writable || echo b1-read-only; "
              "touch /b2/new && echo b2-writable")
    results = side.probe(script, edit)
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    lines = outputs(results)
    runc_mounts = normalise_mountinfo("\n".join(lines["runc"][:3]))
    assert normalise_mountinfo("\n".join(lines["kakoi"][:3])) == runc_mounts
    assert lines["kakoi"][3:] == lines["runc"][3:]
    assert lines["runc"][3:] == ["1770", "from the host", "b1-read-only", "b2-writable"]
    for container_id in side.bundles.ids:
        assert (side.bundles.directory / container_id / "rw-source" / "new").exists()
        assert not (side.bundles.directory / container_id / "ro-source" / "new").exists()


@pytest.mark.parametrize("link_kind", ["absolute", "relative"])
def test_bind_through_symlink_stays_in_rootfs(side, tmp_path, link_kind):
    canaries = {}

    def edit(config, bundle):
        canary = tmp_path / f"canary-{bundle.name}"
        canary.mkdir()
        (canary / "canary.txt").write_text("untouched\n")
        canaries[bundle.name] = canary
        target = str(canary) if link_kind == "absolute" else "../" * 12 + str(canary)[1:]
        os.symlink(target, bundle / "rootfs" / "escape")
        (bundle / "source").mkdir()
        (bundle / "source" / "marker").write_text("mounted\n")
        config["mounts"].append({"destination": "/escape", "type": "bind",
                                 "source": str(bundle / "source"), "options": ["rbind"]})

    results = side.probe("cat /escape/marker; ls /escape", edit)
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    assert outputs(results)["kakoi"] == outputs(results)["runc"]
    for canary in canaries.values():
        assert sorted(os.listdir(canary)) == ["canary.txt"]
        assert (canary / "canary.txt").read_text() == "untouched\n"
        assert mounts_below(canary) == []


def test_personality_linux32(side):
    def edit(config, bundle):
        config["linux"]["personality"] = {"domain": "LINUX32"}

    results = side.probe("uname -m", edit)
    lines = outputs(results)
    assert lines["kakoi"] == ["i686"]
    # runc 1.1.5 (Debian 12) predates linux.personality and ignores it.
    assert lines["runc"] == [os.uname().machine]


# The command line: state, list, ps, exec, console, fds, logs.


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_state_transitions(side, name):
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["sleep", "60"])
    runtime("create", "--bundle", str(bundle), container_id, check=True)

    state = runtime.state(container_id)
    assert state["status"] == "created"
    assert state["id"] == container_id
    assert state["pid"] > 0
    assert state["bundle"] == str(bundle)
    assert state["rootfs"] == str(bundle / "rootfs")
    assert {"ociVersion", "created", "owner"} <= set(state)

    runtime("start", container_id, check=True)
    assert runtime.status(container_id) == "running"

    runtime("kill", container_id, "KILL", check=True)
    assert runtime.wait_status(container_id, "stopped") == "stopped"

    runtime("delete", container_id, check=True)
    assert runtime("state", container_id).returncode != 0
    assert_nothing_left(runtime, container_id)


def test_state_fields_match_runc(side):
    keys = {}
    for name, runtime in side.runtimes.items():
        container_id, bundle = side.bundle(name, ["true"])
        runtime("create", "--bundle", str(bundle), container_id, check=True)
        keys[name] = set(runtime.state(container_id))
    assert keys["kakoi"] == keys["runc"]


def test_list_table_and_json(side):
    listed = {}
    for name, runtime in side.runtimes.items():
        container_id, bundle = side.bundle(name, ["true"])
        runtime("create", "--bundle", str(bundle), container_id, check=True)
        table = runtime("list", check=True).stdout.splitlines()
        rows = json.loads(runtime("list", "--format", "json", check=True).stdout)
        quiet = runtime("list", "-q", check=True).stdout.split()
        listed[name] = (table, rows)
        assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
        assert table[1].split()[:3] == [container_id, str(rows[0]["pid"]), "created"]
        assert [row["id"] for row in rows] == [container_id]
        assert rows[0]["status"] == "created"
        assert quiet == [container_id]
    assert set(listed["kakoi"][1][0]) == set(listed["runc"][1][0])


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_ps_table_and_json(side, name):
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["sh", "-c", "sleep 60 & wait"])
    runtime("run", "-d", "--bundle", str(bundle), container_id, check=True)
    init_pid = runtime.state(container_id)["pid"]

    pids = json.loads(runtime("ps", "--format", "json", container_id, check=True).stdout)
    assert init_pid in pids
    assert len(pids) == 2

    table = runtime("ps", container_id, check=True).stdout.splitlines()
    assert "PID" in table[0].split()
    assert len(table) == 3
    assert any(str(init_pid) in line.split() for line in table[1:])


def start_sleeper(side: SideBySide, name: str) -> str:
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["sleep", "60"])
    runtime("run", "-d", "--bundle", str(bundle), container_id, check=True)
    return container_id


def test_exec_options_match_runc(side):
    script = "echo $PROBE; pwd; id -u; id -g; grep -E '^Cap(Eff|Bnd|Amb)' /proc/self/status"
    results = {}
    for name, runtime in side.runtimes.items():
        container_id = start_sleeper(side, name)
        results[name] = runtime("exec", "--env", "PROBE=from-exec", "--cwd", "/tmp",
                                "--user", "1000:1000", "--cap", "CAP_SYS_ADMIN",
                                container_id, "sh", "-c", script)
    lines = assert_same_output(results)
    assert lines[:4] == ["from-exec", "/tmp", "1000", "1000"]


def test_exec_exit_code(side):
    for name, runtime in side.runtimes.items():
        container_id = start_sleeper(side, name)
        assert runtime("exec", container_id, "sh", "-c", "exit 4").returncode == 4, name


def test_exec_process_json(side, tmp_path):
    process = {"terminal": False, "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
               "args": ["sh", "-c", "echo $PROBE; pwd; id -G"],
               "env": ["PATH=/bin:/usr/bin", "PROBE=from-json"], "cwd": "/etc"}
    path = tmp_path / "process.json"
    path.write_text(json.dumps(process))
    results = {}
    for name, runtime in side.runtimes.items():
        container_id = start_sleeper(side, name)
        results[name] = runtime("exec", "--process", str(path), container_id)
    assert assert_same_output(results) == ["from-json", "/etc", "1000 10"]


class ConsoleListener:
    """An AF_UNIX socket that receives a pty master fd the way runc's --console-socket sends it."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.sock.settimeout(15)

    def receive(self) -> int:
        connection, _ = self.sock.accept()
        with connection:
            _, fds, _, _ = socket.recv_fds(connection, 1024, 1)
        assert len(fds) == 1
        return fds[0]

    def close(self) -> None:
        self.sock.close()


def read_terminal(fd: int, timeout: float = 10) -> str:
    """Read a pty master until the other side closes it (EIO) or the timeout passes."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def terminal_edit(config, bundle):
    config["process"]["terminal"] = True


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_console_socket_create_start(side, tmp_path, name):
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["sh"], terminal_edit)
    listener = ConsoleListener(tmp_path / f"console-{name}.sock")
    try:
        creating = runtime.popen("create", "--console-socket", str(listener.path),
                                 "--bundle", str(bundle), container_id,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        master = listener.receive()
        _, stderr = creating.communicate(timeout=30)
    finally:
        listener.close()
    try:
        assert creating.returncode == 0, stderr
        runtime("start", container_id, check=True)
        os.write(master, b"echo hi; exit 7\n")
        output = read_terminal(master)
    finally:
        os.close(master)
    assert "hi\r\n" in output
    assert runtime.wait_status(container_id, "stopped") == "stopped"


def test_exec_tty_with_console_socket(side, tmp_path):
    outputs_by_name = {}
    for name, runtime in side.runtimes.items():
        container_id = start_sleeper(side, name)
        listener = ConsoleListener(tmp_path / f"exec-{name}.sock")
        try:
            execing = runtime.popen("exec", "-t", "-d", "--console-socket", str(listener.path),
                                    container_id, "sh", "-c", "tty; echo done",
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            master = listener.receive()
            _, stderr = execing.communicate(timeout=30)
        finally:
            listener.close()
        try:
            assert execing.returncode == 0, f"{name}: {stderr}"
            outputs_by_name[name] = read_terminal(master)
        finally:
            os.close(master)
    for name, output in outputs_by_name.items():
        assert "/dev/pts/" in output, name
        assert "done" in output, name


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_pid_file(side, tmp_path, name):
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["true"])
    pid_file = tmp_path / f"{name}.pid"
    runtime("create", "--pid-file", str(pid_file), "--bundle", str(bundle), container_id,
            check=True)
    assert int(pid_file.read_text()) == runtime.state(container_id)["pid"]


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_preserve_fds_reach_container(side, name):
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["sh", "-c", "echo via-fd-3 >&3"])
    read_end, write_end = os.pipe()
    try:
        # A small Python wrapper puts the pipe's write end at fd 3 exactly, where
        # --preserve-fds 1 looks; dash cannot redirect from descriptors above 9.
        wrapper = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.close(int(sys.argv[1])); "
                   "os.execvp(sys.argv[2], sys.argv[2:])")
        command = [sys.executable, "-c", wrapper, str(write_end),
                   *runtime.argv("run", "--preserve-fds", "1", "--bundle", str(bundle),
                                 container_id)]
        result = subprocess.run(command, pass_fds=(write_end,), capture_output=True, text=True,
                                timeout=30)
        os.close(write_end)
        write_end = -1
        assert result.returncode == 0, result.stderr
        assert os.read(read_end, 100) == b"via-fd-3\n"
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_log_json_on_failure(side, tmp_path, name):
    runtime = side.runtimes[name]
    log = tmp_path / f"{name}.log"
    result = runtime("start", "no-such-container",
                     global_args=("--log", str(log), "--log-format", "json"))
    assert result.returncode != 0
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    errors = [entry for entry in entries if entry["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["msg"]
    assert "time" in errors[0]


def test_features_json_keys(side):
    documents = {name: json.loads(runtime("features", check=True).stdout)
                 for name, runtime in side.runtimes.items()}
    assert set(documents["kakoi"]) == set(documents["runc"])
    assert set(documents["kakoi"]["hooks"]) == set(HOOK_KINDS)
    assert {"namespaces", "capabilities", "cgroup", "seccomp"} <= set(
        documents["kakoi"]["linux"])


def test_spec_output_runs(side, tmp_path, busybox_rootfs):
    directory = tmp_path / "spec"
    directory.mkdir()
    side.kakoi("spec", "--bundle", str(directory), check=True)
    config = json.loads((directory / "config.json").read_text())
    assert config["process"]["terminal"] is True
    assert config["root"]["path"] == "rootfs"

    for name, runtime in side.runtimes.items():
        container_id = side.bundles.new_id(name)
        bundle = tmp_path / container_id
        bundle.mkdir()
        shutil.copytree(busybox_rootfs, bundle / "rootfs", symlinks=True)
        edited = json.loads(json.dumps(config))
        edited["process"]["terminal"] = False
        edited["process"]["args"] = ["echo", "from-spec"]
        edited.setdefault("linux", {})["cgroupsPath"] = f"/{CGROUP_PARENT}/{container_id}"
        (bundle / "config.json").write_text(json.dumps(edited))
        result = runtime("run", "--bundle", str(bundle), container_id)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert result.stdout == "from-spec\n"


def test_run_leaves_nothing(side):
    for name, runtime in side.runtimes.items():
        container_id, bundle = side.bundle(name, ["true"])
        runtime("run", "--bundle", str(bundle), container_id, check=True)
        assert_nothing_left(runtime, container_id)


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_kill_all_signals_every_process(side, name):
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["sh", "-c", "sleep 60 & sleep 60 & wait"])
    runtime("run", "-d", "--bundle", str(bundle), container_id, check=True)
    runtime("kill", "--all", container_id, "KILL", check=True)
    assert runtime.wait_status(container_id, "stopped") == "stopped"


# Hooks.


HOOK_SCRIPT = """#!/bin/sh
status=$(sed -n 's/.*"status": *"\\([a-z]*\\)".*/\\1/p' | head -n 1)
echo "$(basename "$0") $1 ${status:-none}" >> "$(dirname "$0")/log"
"""


def hooks_edit(hook_dir: Path):
    """Return an edit that adds all six hooks, each calling hook.sh with its kind as $1.

    The hook directory is bind-mounted at its own host path, because startContainer hooks
    run inside the container and must find the script and the log there too.
    """
    script = hook_dir / "hook.sh"

    def edit(config, bundle):
        hook_env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
        config["hooks"] = {kind: [{"path": str(script), "args": ["hook.sh", kind],
                                   "env": hook_env}] for kind in HOOK_KINDS}
        config["mounts"].append({"destination": str(hook_dir), "type": "bind",
                                 "source": str(hook_dir), "options": ["rbind"]})

    return edit


def test_hooks_order_and_status(side, tmp_path):
    logs = {}
    for name, runtime in side.runtimes.items():
        hook_dir = tmp_path / f"hooks-{name}"
        hook_dir.mkdir()
        (hook_dir / "hook.sh").write_text(HOOK_SCRIPT)
        (hook_dir / "hook.sh").chmod(0o755)
        container_id, bundle = side.bundle(name, ["true"], hooks_edit(hook_dir))
        result = runtime("run", "--bundle", str(bundle), container_id)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        logs[name] = (hook_dir / "log").read_text().splitlines()
    # The spec's order and states. runc 1.1.5 runs poststart from `start` as soon as it
    # has opened the exec fifo, so its poststart can come before startContainer and
    # read "created"; kakoi waits for the program's exec first.
    assert logs["kakoi"] == [
        "hook.sh prestart creating", "hook.sh createRuntime creating",
        "hook.sh createContainer creating", "hook.sh startContainer created",
        "hook.sh poststart running", "hook.sh poststop stopped"]
    assert sorted(line.split()[1] for line in logs["runc"]) == sorted(HOOK_KINDS)


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_hook_timeout_fails_create(side, name):
    runtime = side.runtimes[name]

    def edit(config, bundle):
        config["hooks"] = {"prestart": [{"path": "/bin/sleep", "args": ["sleep", "20"],
                                         "timeout": 1}]}

    container_id, bundle = side.bundle(name, ["true"], edit)
    started = time.monotonic()
    result = runtime("create", "--bundle", str(bundle), container_id)
    assert result.returncode != 0
    assert time.monotonic() - started < 15
    assert "timed out" in result.stderr or "timeout" in result.stderr
    assert_nothing_left(runtime, container_id)


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_failing_prestart_hook_fails_create(side, name):
    runtime = side.runtimes[name]

    def edit(config, bundle):
        config["hooks"] = {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]}

    container_id, bundle = side.bundle(name, ["true"], edit)
    result = runtime("create", "--bundle", str(bundle), container_id)
    assert result.returncode != 0
    assert_nothing_left(runtime, container_id)
    if name == "kakoi":
        assert_one_line_error(result)


# pause, resume, events and update need the freezer and stats of kakoi's cgroup code.


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_pause_and_resume(side, name):
    runtime = side.runtimes[name]
    container_id = start_sleeper(side, name)
    runtime("pause", container_id, check=True)
    assert runtime.status(container_id) == "paused"
    runtime("resume", container_id, check=True)
    assert runtime.status(container_id) == "running"


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_events_stats_once(side, name):
    runtime = side.runtimes[name]
    container_id = start_sleeper(side, name)
    event = json.loads(runtime("events", "--stats", container_id, check=True).stdout)
    assert event["type"] == "stats"
    assert event["id"] == container_id
    assert event["data"]["memory"]["usage"]["usage"] > 0
    assert event["data"]["pids"]["current"] == 1


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_update_limits(side, name):
    runtime = side.runtimes[name]
    container_id = start_sleeper(side, name)
    runtime("update", "--memory", "100m", "--pids-limit", "55", "--cpu-quota", "20000",
            container_id, check=True)
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
              "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    result = runtime("exec", container_id, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(100 * 1024 * 1024), "55", "20000"]


# Bad input: a non-zero exit, one line on stderr, no traceback, and nothing left behind.


def drop_args(config, bundle):
    del config["process"]["args"]


def unknown_namespace(config, bundle):
    config["linux"]["namespaces"].append({"type": "no-such-namespace"})


def missing_root(config, bundle):
    config["root"]["path"] = "no-such-rootfs"


def relative_destination(config, bundle):
    config["mounts"].append({"destination": "relative/dir", "type": "tmpfs", "source": "tmpfs"})


@pytest.mark.parametrize("name", RUNTIME_NAMES)
@pytest.mark.parametrize("case, edit", [
    ("invalid-json", None),
    ("missing-args", drop_args),
    ("unknown-namespace", unknown_namespace),
    ("missing-root", missing_root),
    ("relative-destination", relative_destination),
])
def test_bad_config_rejected(side, name, case, edit):
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["true"], edit)
    if edit is None:
        (bundle / "config.json").write_text('{"ociVersion": "1.0.2", "process": ')
    result = runtime("create", "--bundle", str(bundle), container_id)
    if name == "runc" and case == "relative-destination":
        # runc 1.1 accepts a relative destination as relative to / (with a warning), although
        # the runtime spec requires an absolute one; kakoi follows the spec.
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0
    assert_nothing_left(runtime, container_id)
    if name == "kakoi":
        assert_one_line_error(result)


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_duplicate_id_rejected(side, name):
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["true"])
    runtime("create", "--bundle", str(bundle), container_id, check=True)
    pid = runtime.state(container_id)["pid"]
    result = runtime("create", "--bundle", str(bundle), container_id)
    assert result.returncode != 0
    assert runtime.state(container_id)["pid"] == pid
    assert runtime.status(container_id) == "created"
    if name == "kakoi":
        assert_one_line_error(result)


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_invalid_operations_on_running(side, name):
    runtime = side.runtimes[name]
    container_id = start_sleeper(side, name)
    for args in (("start", container_id), ("delete", container_id),
                 ("kill", container_id, "NOSUCHSIGNAL")):
        result = runtime(*args)
        assert result.returncode != 0, f"{name} {args}"
        if name == "kakoi":
            assert_one_line_error(result)
        assert runtime.status(container_id) == "running", f"{name} {args}"


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_invalid_operations_on_stopped(side, name):
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["true"])
    runtime("run", "-d", "--bundle", str(bundle), container_id, check=True)
    assert runtime.wait_status(container_id, "stopped") == "stopped"
    for args in (("start", container_id), ("kill", container_id, "TERM"),
                 ("exec", container_id, "true")):
        result = runtime(*args)
        assert result.returncode != 0, f"{name} {args}"
        if name == "kakoi":
            assert_one_line_error(result)
    runtime("delete", container_id, check=True)
    assert_nothing_left(runtime, container_id)


def test_systemd_cgroup_rejected(side):
    container_id, bundle = side.bundle("kakoi", ["true"])
    result = side.kakoi("create", "--bundle", str(bundle), container_id,
                        global_args=("--systemd-cgroup",))
    assert_one_line_error(result)
    assert_nothing_left(side.kakoi, container_id)


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_terminal_without_console_socket(side, name):
    runtime = side.runtimes[name]
    container_id, bundle = side.bundle(name, ["sh"], terminal_edit)
    result = runtime("create", "--bundle", str(bundle), container_id)
    assert result.returncode != 0
    assert_nothing_left(runtime, container_id)
    if name == "kakoi":
        assert_one_line_error(result)


# Hardening.


def test_runtime_executable_unreachable_from_container(side):
    """A created container's init is still the runtime's Python: no process may reach it.

    It is not dumpable until it execs, so /proc/1/exe (the host's interpreter, the
    CVE-2019-5736 kind of target) cannot be opened from inside the container.
    """
    runtime = side.kakoi
    container_id, bundle = side.bundle("kakoi", ["sleep", "60"])
    runtime("create", "--bundle", str(bundle), container_id, check=True)
    result = runtime("exec", container_id, "sh", "-c",
                     "cat /proc/1/exe > /dev/null && echo read; "
                     "echo x 2>/dev/null >> /proc/1/exe && echo written; "
                     "readlink /proc/1/fd/0 && echo fd-link")
    assert result.stdout.strip() == ""
    assert "Permission denied" in result.stderr


def test_no_runtime_fd_reaches_container(side):
    """Only stdio (and --preserve-fds) reach the program: the CVE-2024-21626 kind of leak."""
    result = side.kakoi("run", "--bundle", str(side.bundle("kakoi", ["ls", "/proc/self/fd"])[1]),
                        side.bundles.ids[-1])
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["0", "1", "2", "3"]  # 3 is ls's own directory
