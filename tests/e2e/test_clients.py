"""Podman (through conmon) and containerd (through its runc shim) driving kakoi-runtime.

Each client gets a private store and state. podman runs with its own --root, --runroot and
--tmpdir under a fresh /tmp directory. containerd runs as a fixture process with its own
config: root, state and socket in a fresh /tmp directory, and the CRI plugin disabled.
kakoi-runtime keeps its state in the test's directory too. Container cgroups go under
kakoi-test-podman-<pid> or kakoi-test-ctr-<pid>. The fixtures remove containers, processes,
mounts, cgroups and directories, also when a test fails.

Terminals come from `script`, which gives the client a pty of its own as a user's shell would.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.peer]

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / ".venv" / "bin" / "kakoi-runtime"
CGROUP_ROOT = Path("/sys/fs/cgroup")
IMAGE = "docker.io/library/busybox:latest"
# The limits podman sets by default are above this host's hard limits, which root cannot
# raise without CAP_SYS_RESOURCE.
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
# containerd 1.6's runc shim puts its socket in this fixed directory, whatever the config sets.
SHIM_SOCKET_DIR = Path("/run/containerd/s")


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    if not RUNTIME.exists():
        pytest.skip(f"{RUNTIME} is missing: run scripts/install.sh")


def _write_runtime_wrapper(base: Path, root: Path | None) -> Path:
    """Write a script that runs kakoi-runtime and records each call with its exit status.

    With root, the script also pins kakoi-runtime's --root: podman leaves its
    --runtime-flag options out of the clean-up command that conmon runs when the
    container exits, so a flag given to podman would not reach the final delete.
    """
    wrapper = base / "kakoi-runtime"
    root_flag = f"--root {shlex.quote(str(root))} " if root is not None else ""
    log = shlex.quote(str(base / "runtime-calls.log"))
    wrapper.write_text("#!/bin/sh\n"
                       f"{shlex.quote(str(RUNTIME))} {root_flag}\"$@\"\n"
                       "status=$?\n"
                       f"echo \"$status $*\" >> {log}\n"
                       "exit $status\n")
    wrapper.chmod(0o755)
    return wrapper


_SUBCOMMANDS = ("create", "start", "state", "kill", "delete", "exec", "ps")


def _runtime_calls(base: Path) -> list[tuple[str, int, str]]:
    """Return each kakoi-runtime call: its subcommand, exit status and arguments."""
    path = base / "runtime-calls.log"
    if not path.exists():
        return []
    calls = []
    for line in path.read_text().splitlines():
        status, _, arguments = line.partition(" ")
        words = arguments.split()
        subcommand = next((word for word in words if word in _SUBCOMMANDS), arguments)
        calls.append((subcommand, int(status), arguments))
    return calls


def _failed_calls(base: Path) -> list[str]:
    return [f"exit {status}: {arguments}" for _, status, arguments in _runtime_calls(base)
            if status != 0]


def _in_terminal(command: list[str], input: str, timeout: float = 60) \
        -> subprocess.CompletedProcess:
    """Run command on a fresh pty fed with input; return its exit status and output."""
    if shutil.which("script") is None:
        pytest.skip("script (util-linux) is missing, so no pty can be given to the client")
    return subprocess.run(["script", "-eqc", shlex.join(command), "/dev/null"], input=input,
                          capture_output=True, text=True, timeout=timeout)


def _pids_matching(*words: str) -> list[int]:
    """Return the pids of processes whose command line contains every one of words."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [argument.decode(errors="replace") for argument in arguments]
        if all(any(word in argument for argument in text) for word in words):
            pids.append(int(entry.name))
    return pids


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _cgroup_dirs(name: str) -> list[Path]:
    """Return the cgroup named name at the root of each hierarchy and its descendants."""
    found = []
    for parent in CGROUP_ROOT.glob(f"*/{name}"):
        found.append(parent)
        found.extend(path for path in parent.rglob("*") if path.is_dir())
    if (CGROUP_ROOT / name).is_dir():
        found.append(CGROUP_ROOT / name)
    return found


def _remove_cgroups(name: str) -> None:
    """Kill what is left in the test's cgroups, then remove them, deepest first."""
    for directory in _cgroup_dirs(name):
        for procs in ("cgroup.procs", "tasks"):
            try:
                _kill([int(line) for line in (directory / procs).read_text().split()])
            except OSError:
                continue
    for directory in sorted(_cgroup_dirs(name), key=lambda path: len(path.parts),
                            reverse=True):
        for _ in range(50):
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)  # killed processes leave the cgroup a moment later


def _unmount_under(path: Path) -> None:
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts]
    for target in sorted(targets, key=len, reverse=True):
        if target == str(path) or target.startswith(f"{path}/"):
            subprocess.run(["umount", "-l", target], check=False)


class Podman:
    """podman on a private store, with kakoi-runtime as its OCI runtime."""

    def __init__(self, base: Path, cgroup_parent: str):
        self.base = base
        self.cgroup_parent = cgroup_parent
        self.state = base / "runtime-state"
        runtime = _write_runtime_wrapper(base, self.state)
        self.global_args = ["podman", "--root", str(base / "root"), "--runroot",
                            str(base / "runroot"), "--tmpdir", str(base / "tmp"),
                            "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
                            "--events-backend", "none", "--runtime", str(runtime)]

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.global_args + list(args), capture_output=True, text=True,
                              timeout=timeout)

    def check(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, f"podman {' '.join(args)} failed: {result.stderr}"
        return result.stdout

    def run_args(self, *args: str) -> list[str]:
        return ["run", "--network", "none", "--cgroup-parent", self.cgroup_parent, *ULIMITS,
                *args]

    def calls(self) -> list[str]:
        return [subcommand for subcommand, _, _ in _runtime_calls(self.base)]

    def failed_calls(self) -> list[str]:
        return _failed_calls(self.base)


@pytest.fixture
def podman(busybox_archives):
    _require_root()
    if shutil.which("podman") is None or shutil.which("conmon") is None:
        pytest.skip("podman or conmon is not installed: run scripts/install.sh")
    # podman rejects a runroot longer than 50 characters, so tmp_path is too deep for it.
    base = Path(tempfile.mkdtemp(prefix="kkp", dir="/tmp"))
    (base / "tmp").mkdir()
    instance = Podman(base, f"kakoi-test-podman-{os.getpid()}")
    try:
        instance.check("load", "-i", str(busybox_archives["docker-archive"]))
        yield instance
    finally:
        instance("rm", "--all", "--force", "--time", "0")
        instance("rmi", "--all", "--force")
        _kill(_pids_matching("conmon", str(base)))
        _unmount_under(base)
        _remove_cgroups(instance.cgroup_parent)
        shutil.rmtree(base, ignore_errors=True)


def test_podman_run_echo(podman):
    result = podman(*podman.run_args("--rm", "busybox", "echo", "ok"))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert podman.calls() == ["create", "start", "delete"]
    assert podman.failed_calls() == []
    assert os.listdir(podman.state) == []


def test_podman_exit_status(podman):
    result = podman(*podman.run_args("--rm", "busybox", "sh", "-c", "exit 7"))

    assert result.returncode == 7, result.stderr


def test_podman_missing_command(podman):
    result = podman(*podman.run_args("--rm", "busybox", "no-such-command"))

    assert result.returncode == 127
    assert "no-such-command" in result.stderr
    # podman deletes a container whose create failed with delete --force, which must
    # succeed on a container that is already gone, as runc's does.
    assert "after creation failed" not in result.stderr
    assert podman.calls() == ["create", "delete"]
    assert [failed.split(":")[0] for failed in podman.failed_calls()] == ["exit 1"]
    assert os.listdir(podman.state) == []


def test_podman_detached_lifecycle(podman):
    container = podman.check(*podman.run_args("-d", "--name", "s1", "busybox",
                                              "sleep", "1000")).strip()

    assert "s1" in podman.check("ps", "--format", "{{.Names}} {{.Status}}")
    assert "Up" in podman.check("ps", "--format", "{{.Status}}")
    assert podman.check("exec", "s1", "echo", "exec-ok") == "exec-ok\n"
    assert podman("exec", "s1", "sh", "-c", "exit 3").returncode == 3

    terminal = _in_terminal(podman.global_args + ["exec", "-it", "s1", "sh", "-c",
                                                  "tty; echo tty-ok"], input="")
    assert terminal.returncode == 0, terminal.stderr
    assert "/dev/pts/" in terminal.stdout
    assert "tty-ok" in terminal.stdout

    # sleep runs as PID 1, which ignores SIGTERM, so stop goes on to SIGKILL.
    podman.check("stop", "--time", "1", "s1")
    assert "Exited (137)" in podman.check("ps", "-a", "--format", "{{.Status}}")
    podman.check("rm", "s1")

    assert podman.check("ps", "-a", "-q") == ""
    assert os.listdir(podman.state) == []
    assert not list(CGROUP_ROOT.glob(f"*/{podman.cgroup_parent}/*{container}"))
    calls = podman.calls()
    assert calls[:2] == ["create", "start"]
    assert calls.count("exec") == 3
    assert "kill" in calls
    assert calls[-1] == "delete"
    assert podman.failed_calls() == []


def test_podman_run_interactive_terminal(podman):
    command = podman.global_args + podman.run_args("-it", "--rm", "busybox", "sh")

    result = _in_terminal(command, input="tty\necho hi-$((6*7))\nexit 5\n")

    assert result.returncode == 5, result.stdout + result.stderr
    assert "/dev/pts/0" in result.stdout
    assert "hi-42" in result.stdout
    assert podman.calls() == ["create", "start", "delete"]
    assert podman.failed_calls() == []
    assert os.listdir(podman.state) == []


class Containerd:
    """A private containerd, and ctr commands against it in the kakoi-test namespace."""

    namespace = "kakoi-test"

    def __init__(self, base: Path, cgroup_parent: str):
        self.base = base
        self.cgroup_parent = cgroup_parent
        self.socket = base / "containerd.sock"
        self.runtime = _write_runtime_wrapper(base, None)
        self.runtime_root = base / "runtime-state"
        self.fifo_dir = base / "fifo"
        self.process: subprocess.Popen | None = None

    def write_config(self) -> Path:
        config = self.base / "config.toml"
        # opt would install into /opt/containerd, and the tasks service needs the v1 runtime
        # plugin loaded, so that plugin gets paths in the test directory too.
        config.write_text(f"""\
version = 2
root = "{self.base}/root"
state = "{self.base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.runtime.v1.linux"]
  runtime = "{RUNTIME}"
  runtime_root = "{self.base}/runtime-v1"
""")
        return config

    def start(self) -> None:
        log = open(self.base / "containerd.log", "w")
        with log:
            self.process = subprocess.Popen(["containerd", "--config", str(self.write_config())],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + 30
        while self.ctr("version").returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("containerd did not start: "
                                     + (self.base / "containerd.log").read_text()[-2000:])
            time.sleep(0.1)

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.ctr_args(*args), capture_output=True, text=True,
                              timeout=timeout)

    def ctr_args(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", self.namespace, *args]

    def check(self, *args: str) -> str:
        result = self.ctr(*args)
        assert result.returncode == 0, f"ctr {' '.join(args)} failed: {result.stderr}"
        return result.stdout

    def run_args(self, *args: str, container: str) -> list[str]:
        """Return `ctr run` arguments that use kakoi-runtime; container comes after args."""
        return ["run", "--runc-binary", str(self.runtime), "--runc-root", str(self.runtime_root),
                "--cgroup", f"/{self.cgroup_parent}/{container}", "--fifo-dir",
                str(self.fifo_dir), *args]

    def task_status(self, container: str) -> str:
        for line in self.check("tasks", "ls").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container:
                return fields[-1]
        return "MISSING"

    def calls(self) -> list[str]:
        return [subcommand for subcommand, _, _ in _runtime_calls(self.base)]

    def failed_calls(self) -> list[str]:
        return _failed_calls(self.base)

    def shim_socket(self, container: str) -> Path:
        """Return the path of a container's shim socket, as containerd 1.6 derives it."""
        key = os.path.join(str(self.socket), self.namespace, container)
        return SHIM_SOCKET_DIR / hashlib.sha256(key.encode()).hexdigest()

    def stop(self, containers: list[str]) -> None:
        """Remove containers and tasks, then kill the shims and containerd."""
        if self.process is not None and self.process.poll() is None:
            for container in containers:
                self.ctr("tasks", "kill", "--signal", "SIGKILL", container, timeout=30)
                self.ctr("tasks", "delete", "--force", container, timeout=30)
                self.ctr("containers", "delete", container, timeout=30)
        _kill(_pids_matching("containerd-shim", "-namespace", self.namespace,
                             str(self.socket)))
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for container in containers:
            self.shim_socket(container).unlink(missing_ok=True)


@pytest.fixture
def containerd(busybox_archives):
    _require_root()
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd is not installed: run scripts/install.sh")
    # The shim makes /run/containerd for its socket; it goes again if the test made it.
    made = [path for path in (SHIM_SOCKET_DIR.parent, SHIM_SOCKET_DIR,
                              SHIM_SOCKET_DIR.parent / "fifo") if not path.exists()]
    base = Path(tempfile.mkdtemp(prefix="kkc", dir="/tmp"))
    instance = Containerd(base, f"kakoi-test-ctr-{os.getpid()}")
    try:
        instance.start()
        instance.check("images", "import", str(busybox_archives["oci-archive"]))
        yield instance
    finally:
        instance.stop(["c1", "c2", "c3", "c4"])
        _unmount_under(base)
        _remove_cgroups(instance.cgroup_parent)
        shutil.rmtree(base, ignore_errors=True)
        for path in reversed(made):
            try:
                path.rmdir()
            except OSError:
                pass  # not empty: something else uses it now


def test_ctr_run_echo(containerd):
    result = containerd.ctr(*containerd.run_args("--rm", IMAGE, "c1", "echo", "ok",
                                                 container="c1"))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    calls = containerd.calls()
    assert calls[:2] == ["create", "start"]
    assert set(calls[2:]) == {"delete"}
    # The shim's clean-up deletes with --force after the plain delete, which must
    # succeed on the already deleted container, as runc's does.
    assert containerd.failed_calls() == []
    assert os.listdir(containerd.runtime_root / containerd.namespace) == []
    assert not containerd.shim_socket("c1").exists()


def test_ctr_runtime_options(containerd):
    containerd.check(*containerd.run_args("--rm", IMAGE, "c1", "true", container="c1"))

    create = _runtime_calls(containerd.base)[0][2].split()
    assert create[:2] == ["--root", str(containerd.runtime_root / containerd.namespace)]
    assert create[2] == "--log"
    assert create[3].endswith("/c1/log.json")
    assert create[4:7] == ["--log-format", "json", "create"]


def test_ctr_missing_command(containerd):
    result = containerd.ctr(*containerd.run_args("--rm", IMAGE, "c3", "no-such-command",
                                                 container="c3"))

    assert result.returncode != 0
    assert "no-such-command" in result.stderr
    assert "not found" in result.stderr
    assert not list(CGROUP_ROOT.glob(f"*/{containerd.cgroup_parent}/c3"))
    assert containerd.calls() == ["create", "delete"]
    assert [failed.split(":")[0] for failed in containerd.failed_calls()] == ["exit 1"]


def test_ctr_task_exec_kill_delete(containerd):
    containerd.check(*containerd.run_args("--detach", IMAGE, "c2", "sleep", "1000",
                                          container="c2"))
    assert containerd.task_status("c2") == "RUNNING"
    assert containerd.shim_socket("c2").exists()

    exec_args = ["tasks", "exec", "--fifo-dir", str(containerd.fifo_dir)]
    assert containerd.check(*exec_args, "--exec-id", "e1", "c2", "echo", "exec-ok") \
        == "exec-ok\n"
    assert containerd.ctr(*exec_args, "--exec-id", "e2", "c2", "sh", "-c",
                          "exit 4").returncode == 4
    terminal = _in_terminal(containerd.ctr_args(*exec_args, "--tty", "--exec-id", "e3", "c2",
                                                "sh", "-c", "tty; echo tty-ok"), input="")
    assert terminal.returncode == 0, terminal.stderr
    assert "/dev/pts/" in terminal.stdout
    assert "tty-ok" in terminal.stdout
    processes = containerd.check("tasks", "ps", "c2").splitlines()
    assert len(processes) == 2  # the header and sleep, the execs having exited

    # sleep runs as PID 1, which ignores SIGTERM; SIGKILL stops it.
    containerd.check("tasks", "kill", "c2")
    time.sleep(0.5)
    assert containerd.task_status("c2") == "RUNNING"
    containerd.check("tasks", "kill", "--signal", "SIGKILL", "c2")
    deadline = time.monotonic() + 10
    while containerd.task_status("c2") != "STOPPED":
        assert time.monotonic() < deadline, "c2 did not stop within 10 s of SIGKILL"
        time.sleep(0.1)
    containerd.check("tasks", "delete", "c2")
    containerd.check("containers", "delete", "c2")

    assert containerd.check("containers", "ls", "--quiet") == ""
    assert os.listdir(containerd.runtime_root / containerd.namespace) == []
    assert not list(CGROUP_ROOT.glob(f"*/{containerd.cgroup_parent}/c2"))
    calls = containerd.calls()
    assert calls[:2] == ["create", "start"]
    assert calls.count("exec") == 3
    assert calls.count("kill") == 2
    assert containerd.failed_calls() == []


def test_ctr_run_terminal(containerd):
    command = containerd.ctr_args(*containerd.run_args("--tty", "--rm", IMAGE, "c4", "sh",
                                                       container="c4"))

    result = _in_terminal(command, input="tty\necho hi-$((6*7))\nexit 5\n")

    assert result.returncode == 5, result.stdout + result.stderr
    assert "/dev/pts/0" in result.stdout
    assert "hi-42" in result.stdout
    assert containerd.failed_calls() == []
    assert os.listdir(containerd.runtime_root / containerd.namespace) == []
