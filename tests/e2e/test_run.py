"""`kakoi run` end to end: isolation, limits, options, exit codes and clean-up."""

import os
import re
import signal
import subprocess
import time

import pytest

from conftest import CGROUP_PARENT, container_pid, kakoi_cgroups, mount_table

pytestmark = pytest.mark.root


def test_echo_prints_output(kakoi, clean_host):
    result = kakoi("run", "--rm", "busybox", "echo", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"


def test_exit_status_becomes_kakois(kakoi, clean_host):
    assert kakoi("run", "--rm", "busybox", "sh", "-c", "exit 3").returncode == 3


def test_missing_command_exits_127(kakoi, clean_host):
    result = kakoi("run", "--rm", "busybox", "no-such-command")
    assert result.returncode == 127
    assert "no-such-command" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_non_executable_command_exits_126(kakoi, clean_host):
    result = kakoi("run", "--rm", "busybox", "/etc/passwd")
    assert result.returncode == 126
    assert "/etc/passwd" in result.stderr


def test_run_options_reach_process(kakoi, clean_host, tmp_path):
    (tmp_path / "x").write_text("from the host\n")
    result = kakoi("run", "--rm", "--memory", "50m", "--cpus", "0.5", "--pids-limit", "64",
                   "--hostname", "demo", "-e", "A=1", "-w", "/tmp",
                   "-v", f"{tmp_path}:/data:ro", "busybox",
                   "sh", "-c", "hostname; id -u; pwd; echo $A; cat /data/x; "
                   "touch /data/y 2>/dev/null || echo read-only")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["demo", "0", "/tmp", "1", "from the host",
                                          "read-only"]
    assert not (tmp_path / "y").exists()


def test_limits_reach_cgroup(kakoi, clean_host):
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null "
              "|| cat /sys/fs/cgroup/memory.max; "
              "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; "
              "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null "
              "|| cat /sys/fs/cgroup/cpu.max")
    result = kakoi("run", "--rm", "--memory", "50m", "--cpus", "0.5", "--pids-limit", "64",
                   "busybox", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == str(50 * 1024 * 1024)
    assert lines[1] == "64"
    assert lines[2].split()[0] == "50000"


def test_env_file_and_entrypoint(kakoi, clean_host, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\nB=two\n\nC=three\n")
    result = kakoi("run", "--rm", "--env-file", str(env_file), "--entrypoint", "sh",
                   "busybox", "-c", 'echo "$B $C"')
    assert result.returncode == 0, result.stderr
    assert result.stdout == "two three\n"


@pytest.mark.parametrize("user, expected", [
    ("app", "1000 1000"), ("1000:1000", "1000 1000"), ("nobody", "65534 65534"),
    ("0:0", "0 0"), ("4242", "4242 0"),
])
def test_user_by_name_or_number(kakoi, clean_host, user, expected):
    result = kakoi("run", "--rm", "-u", user, "busybox", "sh", "-c", 'echo "$(id -u) $(id -g)"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_unknown_user_is_rejected(kakoi, clean_host):
    result = kakoi("run", "--rm", "-u", "nosuchuser", "busybox", "true")
    assert result.returncode == 125
    assert "nosuchuser" in result.stderr


@pytest.mark.parametrize("user", ["4294967295", "2147483648", "1000:4294967295"])
def test_out_of_range_user_is_rejected(kakoi, clean_host, user):
    result = kakoi("run", "--rm", "-u", user, "busybox", "id")
    assert result.returncode == 125, result.stdout
    assert result.stderr.strip().splitlines()[-1].endswith("ids must be from 0 to 2147483647")


def test_read_only_root_with_tmpfs(kakoi, clean_host):
    result = kakoi("run", "--rm", "--read-only", "--tmpfs", "/scratch", "busybox", "sh", "-c",
                   "touch /x 2>/dev/null && echo root-writable; touch /scratch/y && echo ok")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_writes_do_not_reach_image(kakoi, clean_host):
    kakoi("run", "--rm", "busybox", "sh", "-c", "echo changed > /etc/motd; rm /bin/ls")
    result = kakoi("run", "--rm", "busybox", "sh", "-c", "cat /etc/motd; ls / >/dev/null && echo ls")
    assert result.stdout.strip().splitlines()[-1] == "ls"
    assert "changed" not in result.stdout


def capability_mask(output: str, name: str) -> int:
    return int(re.search(rf"^{name}:\s*([0-9a-f]+)$", output, re.M).group(1), 16)


def test_default_capabilities_are_dockers(kakoi, clean_host):
    result = kakoi("run", "--rm", "busybox", "cat", "/proc/self/status")
    # Docker's default set: chown dac_override fowner fsetid kill setgid setuid setpcap
    # net_bind_service net_raw sys_chroot mknod audit_write setfcap.
    assert capability_mask(result.stdout, "CapEff") == 0xA80425FB
    assert capability_mask(result.stdout, "CapBnd") == 0xA80425FB


def test_cap_drop_all_and_add_one(kakoi, clean_host):
    result = kakoi("run", "--rm", "--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "busybox",
                   "cat", "/proc/self/status")
    assert capability_mask(result.stdout, "CapEff") == 1 << 12


def test_privileged_gets_host_bounding_set(kakoi, clean_host):
    with open("/proc/self/status") as file:
        host = capability_mask(file.read(), "CapBnd")
    result = kakoi("run", "--rm", "--privileged", "busybox", "cat", "/proc/self/status")
    assert capability_mask(result.stdout, "CapEff") == host


def test_non_root_user_has_no_effective_capabilities(kakoi, clean_host):
    result = kakoi("run", "--rm", "-u", "app", "busybox", "cat", "/proc/self/status")
    assert capability_mask(result.stdout, "CapEff") == 0


def test_default_seccomp_profile_blocks_unshare(kakoi, clean_host):
    result = kakoi("run", "--rm", "busybox", "sh", "-c",
                   "grep Seccomp: /proc/self/status; unshare -U true; echo $?")
    assert result.stdout.split() == ["Seccomp:", "2", "1"]
    assert "Operation not permitted" in result.stderr


def test_seccomp_unconfined_and_privileged_have_no_filter(kakoi, clean_host):
    for flags in (["--security-opt", "seccomp=unconfined"], ["--privileged"]):
        result = kakoi("run", "--rm", *flags, "busybox", "grep", "Seccomp:", "/proc/self/status")
        assert result.stdout.split() == ["Seccomp:", "0"], flags


def test_seccomp_profile_from_file(kakoi, clean_host, tmp_path):
    import json

    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    result = kakoi("run", "--rm", "--security-opt", f"seccomp={tmp_path}/profile.json",
                   "busybox", "sh", "-c", "mkdir /tmp/d; echo $?")
    assert result.stdout.strip() == "1"
    assert "Operation not permitted" in result.stderr


def test_no_new_privileges(kakoi, clean_host):
    result = kakoi("run", "--rm", "--security-opt", "no-new-privileges", "busybox",
                   "grep", "NoNewPrivs", "/proc/self/status")
    assert result.stdout.split() == ["NoNewPrivs:", "1"]


def test_ulimit_and_default_nofile(kakoi, clean_host):
    import resource

    host_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    result = kakoi("run", "--rm", "busybox", "sh", "-c", "ulimit -n")
    assert int(result.stdout) == min(1048576, host_hard)
    result = kakoi("run", "--rm", "--ulimit", "nofile=100:200", "busybox", "sh", "-c",
                   "ulimit -Sn; ulimit -Hn")
    assert result.stdout.split() == ["100", "200"]


def test_ulimit_minus_one_is_unlimited(kakoi, clean_host):
    result = kakoi("run", "--rm", "--ulimit", "core=-1", "busybox", "sh", "-c", "ulimit -c")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unlimited"


def test_ulimit_over_host_hard_limit_is_rejected(kakoi, clean_host):
    import resource

    host_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if host_hard == resource.RLIM_INFINITY or os.getuid() != 0:
        pytest.skip("the host has no finite hard limit on open files")
    with open("/proc/self/status") as file:
        if capability_mask(file.read(), "CapEff") & (1 << 24):
            pytest.skip("root here has CAP_SYS_RESOURCE and may raise the limit")
    result = kakoi("run", "--rm", "--ulimit", f"nofile={host_hard * 2}", "busybox", "true")
    assert result.returncode == 125
    assert "RLIMIT_NOFILE" in result.stderr


def test_masked_and_read_only_proc_paths(kakoi, clean_host):
    result = kakoi("run", "--rm", "busybox", "sh", "-c",
                   "cat /proc/keys | wc -c; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null "
                   "&& echo writable || echo read-only")
    assert result.stdout.split() == ["0", "read-only"]


def test_device_cgroup_blocks_other_devices(kakoi, clean_host):
    # mknod is allowed (Docker's "b *:* m"), but reading a block device it made is not.
    result = kakoi("run", "--rm", "busybox", "sh", "-c",
                   "mknod /tmp/disk b 8 0 && head -c 1 /tmp/disk; echo $?")
    assert "Operation not permitted" in result.stderr
    assert result.stdout.strip() == "1"


def test_dev_holds_expected_nodes(kakoi, clean_host):
    result = kakoi("run", "--rm", "busybox", "ls", "/dev")
    for name in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm",
                 "mqueue"):
        assert name in result.stdout.split()


def test_etc_files_are_provided(kakoi, clean_host):
    result = kakoi("run", "--rm", "--hostname", "box", "busybox", "sh", "-c",
                   "cat /etc/hostname; grep -c localhost /etc/hosts; test -f /etc/resolv.conf "
                   "&& echo resolv")
    assert result.stdout.split() == ["box", "2", "resolv"]


def test_loopback_is_up(kakoi, clean_host):
    result = kakoi("run", "--rm", "busybox", "ip", "-o", "link", "show")
    assert "lo:" in result.stdout
    assert "UP" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1


def test_network_host_shares_interfaces(kakoi, clean_host):
    result = kakoi("run", "--rm", "--network", "host", "busybox", "ip", "-o", "link", "show")
    with open("/proc/net/dev") as file:
        host_interfaces = len(file.read().splitlines()) - 2
    assert len(result.stdout.strip().splitlines()) == host_interfaces


def test_stdin_with_interactive(kakoi, clean_host):
    result = kakoi("run", "--rm", "-i", "busybox", "cat", input="piped in\n")
    assert result.stdout == "piped in\n"


def test_stdin_is_closed_without_interactive(kakoi, clean_host):
    result = kakoi("run", "--rm", "busybox", "cat", input="ignored\n")
    assert result.returncode == 0
    assert result.stdout == ""


def read_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    """Read from fd until marker appears, the stream ends, or timeout seconds pass."""
    import select

    output = b""
    deadline = time.monotonic() + timeout
    while marker not in output and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    return output


def test_terminal_follows_window_size(kakoi, clean_host):
    import fcntl
    import pty
    import struct
    import termios

    pid, master = pty.fork()
    if pid == 0:
        os.execve(kakoi.command, [kakoi.command, "run", "--rm", "-it", "busybox", "sh"],
                  kakoi.env)
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        prompt = read_until(master, b"# ")
        os.write(master, b"tty; stty size; echo $((6*7)); exit 5\r")
        output = prompt + read_until(master, b"no marker: read to the end")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    text = output.decode(errors="replace")
    assert "/dev/pts/0" in text
    assert "33 111" in text
    assert "42" in text
    assert os.waitstatus_to_exitcode(status) == 5


# The hands-on exercises: what a container can observe of the host.

def test_hostname_set_inside_stays_inside(kakoi, clean_host):
    host_before = os.uname().nodename
    # Setting the hostname needs CAP_SYS_ADMIN, which Docker's default set leaves out.
    result = kakoi("run", "--rm", "--cap-add", "SYS_ADMIN", "busybox", "sh", "-c",
                   "hostname changed-inside; hostname")
    assert result.stdout.strip() == "changed-inside"
    assert os.uname().nodename == host_before


def test_pid_1_is_the_container_process(kakoi, clean_host):
    # The trailing "true" keeps sh from exec'ing ps as its last command.
    result = kakoi("run", "--rm", "busybox", "sh", "-c", "echo $$; ps -o pid,comm; true")
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "1"
    # Only the shell (PID 1) and ps itself are visible.
    assert [line.split()[1] for line in lines[2:]] == ["sh", "ps"]
    assert lines[2].split()[0] == "1"


def test_memory_limit_kills_with_137(kakoi, clean_host):
    grow = "BEGIN { s = \"x\"; while (1) s = s s }"
    result = kakoi("run", "--rm", "--memory", "50m", "busybox", "awk", grow)
    assert result.returncode == 137
    assert "memory limit" in result.stderr


def test_memory_under_limit_runs(kakoi, clean_host):
    grow = "BEGIN { s = \"x\"; for (i = 0; i < 22; i++) s = s s; print length(s) }"
    result = kakoi("run", "--rm", "--memory", "50m", "busybox", "awk", grow)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(1 << 22)


def test_host_files_are_invisible(kakoi, clean_host, tmp_path):
    canary = tmp_path / "canary-host-file"
    canary.write_text("host only\n")
    result = kakoi("run", "--rm", "busybox", "sh", "-c",
                   f"ls {tmp_path} 2>&1; cat {canary} 2>&1; ls /")
    assert "host only" not in result.stdout
    assert result.stdout.count("No such file") == 2
    assert canary.read_text() == "host only\n"


def test_namespaces_differ_from_host(kakoi, clean_host):
    kinds = ["mnt", "uts", "ipc", "pid", "net", "cgroup"]
    script = "; ".join(f"readlink /proc/self/ns/{kind}" for kind in kinds)
    result = kakoi("run", "--rm", "busybox", "sh", "-c", script)
    inside = result.stdout.split()
    assert len(inside) == len(kinds)
    for kind, link in zip(kinds, inside):
        assert link != os.readlink(f"/proc/self/ns/{kind}"), kind


def test_cgroup_names_the_container(kakoi, clean_host):
    process = kakoi.popen("run", "--rm", "--name", "cgroup-check", "busybox", "sleep", "30")
    try:
        pid = _wait_for_container(kakoi, "cgroup-check")
        with open(f"/proc/{pid}/cgroup") as file:
            host_view = file.read()
        container_id = _container_id(kakoi, "cgroup-check")
        assert f"{CGROUP_PARENT}/{container_id}" in host_view
        inside = kakoi("run", "--rm", "busybox", "cat", "/proc/self/cgroup").stdout
        # Inside its cgroup namespace, the container's own cgroup is the root.
        assert all(line.endswith(":/") for line in inside.strip().splitlines())
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        kakoi("rm", "-f", "cgroup-check")


def _container_id(kakoi, name: str) -> str:
    import json

    for path in (kakoi.root / "containers").glob("*/container.json"):
        record = json.loads(path.read_text())
        if record["Name"] == name:
            return record["Id"]
    raise AssertionError(f"no container named {name}")


def _wait_for_container(kakoi, name: str) -> int:
    """Return the pid of the container's init once its program runs."""
    import json

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for path in (kakoi.root / "containers").glob("*/container.json"):
            try:
                record = json.loads(path.read_text())
            except ValueError:
                continue  # replaced while we read it
            if record["Name"] == name and record["State"]["Status"] == "running":
                return record["State"]["Pid"]
        time.sleep(0.02)
    raise AssertionError(f"container {name} did not start")


# Signals and clean-up.

@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_kakoi_reaches_pid_1(kakoi, clean_host, signal_number):
    name = f"signal-{signal_number}"
    script = f'trap "echo caught; exit 7" {signal_number}; echo ready; while true; do sleep 0.1; done'
    process = kakoi.popen("run", "--rm", "--name", name, "busybox", "sh", "-c", script,
                          stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal_number)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert output == "caught\n"
    assert process.returncode == 7


def test_kill_9_of_container_process_cleans_up(kakoi, clean_host):
    name = "killed-container"
    process = kakoi.popen("run", "--rm", "--name", name, "busybox", "sleep", "60")
    try:
        pid = _wait_for_container(kakoi, name)
        os.kill(pid, signal.SIGKILL)
        assert process.wait(timeout=20) == 137
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert name not in kakoi("ps", "-a").stdout


def test_kill_9_of_kakoi_cleaned_later(kakoi, clean_host):
    name = "orphaned-container"
    process = kakoi.popen("run", "--name", name, "busybox", "sleep", "60")
    try:
        pid = _wait_for_container(kakoi, name)
        process.kill()
        process.wait()
        # The container dies with kakoi (parent-death signal), its mounts with its namespace.
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    listing = kakoi("ps", "-a").stdout
    assert "Exited (137)" in listing
    kakoi("rm", name, check=True)


def test_hundred_runs_leave_nothing(kakoi):
    cgroups_before = kakoi_cgroups()
    mounts_before = mount_table(kakoi.root)
    containers_before = container_dirs(kakoi)
    for index in range(100):
        result = kakoi("run", "--rm", "busybox", "true")
        assert result.returncode == 0, f"run {index}: {result.stderr}"
    assert kakoi_cgroups() == cgroups_before
    assert mount_table(kakoi.root) == mounts_before
    assert container_dirs(kakoi) == containers_before


def test_container_kept_without_rm(kakoi, clean_host):
    result = kakoi("run", "--name", "kept", "busybox", "sh", "-c", "exit 4")
    assert result.returncode == 4
    assert "Exited (4)" in kakoi("ps", "-a").stdout
    assert "kept" not in kakoi("ps").stdout
    assert kakoi("run", "--name", "kept", "busybox", "true").returncode == 125
    kakoi("rm", "kept", check=True)
    assert "kept" not in kakoi("ps", "-a").stdout


def container_dirs(kakoi) -> list[str]:
    directory = kakoi.root / "containers"
    return sorted(os.listdir(directory)) if directory.exists() else []


# Bad input: one line on stderr, the right exit code, nothing left behind.

@pytest.mark.parametrize("args, fragment", [
    # --pull never: a missing image would otherwise be pulled from Docker Hub.
    (["--pull", "never", "no-such-image"], "no-such-image"),
    (["127.0.0.1:9/no-such-image"], "127.0.0.1:9"),
    (["Invalid:Ref:Format"], "invalid reference"),
    (["--memory", "lots", "busybox", "true"], "--memory"),
    (["--memory", "1k", "busybox", "true"], "minimum"),
    (["--cpus", "zero", "busybox", "true"], "--cpus"),
    (["-v", "/no/such/source:/data", "busybox", "true"], "/no/such/source"),
    (["-v", "relative:/data", "busybox", "true"], "absolute"),
    (["--ulimit", "bogus=1", "busybox", "true"], "--ulimit"),
    (["--cap-add", "CAP_NOT_REAL", "busybox", "true"], "CAP_NOT_REAL"),
    (["--security-opt", "label=disable", "busybox", "true"], "security-opt"),
    (["--network", "bridge0", "busybox", "true"], "--network"),
    (["--network", "bridge", "busybox", "true"], "bridge"),
    (["--name", "bad!name", "busybox", "true"], "bad!name"),
    (["--cpus", "0.001", "busybox", "true"], "0.01"),
    (["--tmpfs", "/t:bogus", "busybox", "true"], "bogus"),
    (["--tmpfs", "/t:size=abc", "busybox", "true"], "size=abc"),
    (["--tmpfs", "/", "busybox", "true"], "--tmpfs"),
    (["--hostname", "h" * 65, "busybox", "true"], "64"),
    (["-w", "relative", "busybox", "true"], "absolute"),
    (["-w", "/etc/passwd", "busybox", "true"], "not a directory"),
    (["--no-such-flag", "busybox", "true"], "no-such-flag"),
])
def test_bad_input_fails_cleanly(kakoi, clean_host, args, fragment):
    containers_before = container_dirs(kakoi)
    result = kakoi("run", "--rm", *args)
    assert result.returncode == 125
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert container_dirs(kakoi) == containers_before
