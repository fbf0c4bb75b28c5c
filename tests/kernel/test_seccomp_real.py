"""Tests that load kakoi's seccomp filters into forked children and watch them act.

A loaded filter can never be removed, so every filter is loaded in a child forked for
the test, after PR_SET_NO_NEW_PRIVS, and the child reports through its exit status or a
pipe. Every probe syscall is harmless even if the filter let it through: it either fails
on bad arguments, or changes only the child, which exits at once. Children are killed
and reaped in a fixture, also when a test fails.
"""

import ctypes
import errno
import json
import os
import resource
import signal
import traceback
from pathlib import Path

import pytest

from kakoi.kernel import seccomp

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: probes compare privileged calls"),
]

try:
    _libseccomp = ctypes.CDLL(seccomp.LIBRARY)
except OSError:
    pytest.skip(f"needs {seccomp.LIBRARY}: install libseccomp2", allow_module_level=True)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libseccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4
PR_GET_NO_NEW_PRIVS = 39
CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
# The child's failure codes, above the range that the checks themselves use.
EXIT_EXCEPTION = 100


def syscall_number(name: str) -> int:
    number = _libseccomp.seccomp_syscall_resolve_name(name.encode())
    assert number >= 0, f"{name} has no number on this architecture"
    return number


def raw_syscall(name: str, *args: int | bytes | None) -> int:
    """Call a syscall by name; return 0 or more on success, or minus errno on failure."""
    ctypes.set_errno(0)
    converted = [ctypes.c_long(arg) if isinstance(arg, int) else arg for arg in args]
    result = _libc.syscall(ctypes.c_long(syscall_number(name)), *converted)
    return -ctypes.get_errno() if result == -1 else result


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


def run_filtered(children: list[int], config: dict | None, body) -> tuple[int, str]:
    """Fork, load config's filter in the child, run body there; return status and output.

    body returns the child's exit code and may write text to the file descriptor it gets.
    With config None the child runs body unfiltered, for a comparison.
    """
    compiled = seccomp.compile(config) if config is not None else None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(compiled, body, write_end)
    children.append(pid)

    os.close(write_end)
    if compiled is not None:
        compiled.release()
    with os.fdopen(read_end) as pipe:
        output = pipe.read()
    _, status = os.waitpid(pid, 0)
    children.remove(pid)
    return status, output


def _child(compiled, body, report_fd: int) -> None:
    code = EXIT_EXCEPTION
    try:
        # A process killed by SIGSYS would dump core through the host's core_pattern.
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if compiled is not None:
            assert _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            compiled.load()
        code = body(report_fd)
    except BaseException:
        os.write(report_fd, traceback.format_exc().encode())
    finally:
        os._exit(code)


def allow_all(*syscalls: dict) -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": list(syscalls)}


def errno_of(call) -> int:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


def test_errno_rule_blocks_mkdir(children, tmp_path):
    config = allow_all({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                        "errnoRet": errno.EPERM})

    def body(report_fd: int) -> int:
        failure = errno_of(lambda: os.mkdir(tmp_path / "blocked"))
        (tmp_path / "written").write_text("fine")
        os.write(report_fd, json.dumps({"mkdir": failure}).encode())
        return 0

    status, output = run_filtered(children, config, body)

    assert os.waitstatus_to_exitcode(status) == 0, output
    assert json.loads(output) == {"mkdir": errno.EPERM}
    assert not (tmp_path / "blocked").exists()
    assert (tmp_path / "written").read_text() == "fine"


def test_argument_rule_matches_value(children):
    query = 0xFFFFFFFF
    config = allow_all({"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                        "errnoRet": errno.EACCES,
                        "args": [{"index": 0, "value": query, "op": "SCMP_CMP_EQ"}]})
    current = raw_syscall("personality", query)

    def body(report_fd: int) -> int:
        results = {"query": raw_syscall("personality", query),
                   "set current": raw_syscall("personality", current)}
        os.write(report_fd, json.dumps(results).encode())
        return 0

    status, output = run_filtered(children, config, body)

    assert os.waitstatus_to_exitcode(status) == 0, output
    assert json.loads(output) == {"query": -errno.EACCES, "set current": current}


def test_repeated_index_rules_are_ored(children):
    # runc turns conditions that repeat an argument index into separate rules, so either
    # value matches. PER_LINUX32 and the query both would be harmless if they got through.
    query, linux32 = 0xFFFFFFFF, 0x0008
    config = allow_all({"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 0, "value": linux32, "op": "SCMP_CMP_EQ"},
                                 {"index": 0, "value": query, "op": "SCMP_CMP_EQ"}]})
    current = raw_syscall("personality", query)

    def body(report_fd: int) -> int:
        results = {"query": raw_syscall("personality", query),
                   "linux32": raw_syscall("personality", linux32),
                   "set current": raw_syscall("personality", current)}
        os.write(report_fd, json.dumps(results).encode())
        return 0

    status, output = run_filtered(children, config, body)

    assert os.waitstatus_to_exitcode(status) == 0, output
    assert json.loads(output) == {"query": -errno.EPERM, "linux32": -errno.EPERM,
                                  "set current": current}


def test_allow_list_with_errno_default(children):
    # Only what the child needs to report and exit is allowed; getcwd is not.
    config = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EOPNOTSUPP,
              "syscalls": [{"names": ["write", "exit", "exit_group", "brk", "mmap", "munmap",
                                      "mremap", "madvise", "rt_sigaction", "rt_sigprocmask",
                                      "rt_sigreturn", "futex", "close"],
                            "action": "SCMP_ACT_ALLOW"}]}

    def body(report_fd: int) -> int:
        failure = errno_of(os.getcwd)
        os.write(report_fd, str(failure).encode())
        return 0

    status, output = run_filtered(children, config, body)

    assert os.waitstatus_to_exitcode(status) == 0, output
    assert output == str(errno.EOPNOTSUPP)


def test_kill_process_sends_sigsys(children):
    config = allow_all({"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"})

    def body(report_fd: int) -> int:
        raw_syscall("getppid")
        return 0

    status, output = run_filtered(children, config, body)

    assert os.WIFSIGNALED(status), f"child exited with {status:#x}: {output}"
    assert os.WTERMSIG(status) == signal.SIGSYS
    assert not os.WCOREDUMP(status)


def test_load_leaves_no_new_privs_unset(children):
    # Root here has CAP_SYS_ADMIN, so the kernel accepts the filter without no_new_privs.
    # The check is that loading does not set no_new_privs behind the runtime's back.
    config = allow_all({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"})
    compiled = seccomp.compile(config)
    pid = os.fork()
    if pid == 0:
        code = EXIT_EXCEPTION
        try:
            compiled.load()
            code = _libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
        finally:
            os._exit(code)
    children.append(pid)
    compiled.release()

    _, status = os.waitpid(pid, 0)
    children.remove(pid)

    assert os.waitstatus_to_exitcode(status) == 0


def test_flags_load(children, tmp_path):
    config = allow_all({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"})
    config["flags"] = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                       "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]

    def body(report_fd: int) -> int:
        return errno_of(lambda: os.mkdir(tmp_path / "blocked"))

    status, output = run_filtered(children, config, body)

    assert os.waitstatus_to_exitcode(status) == errno.EPERM, output


# Probes of syscalls that the default profile leaves out. Each returns minus errno, and
# each is harmless if it runs: it fails on its arguments, or it changes only the child.
def _probes(tmp_path: Path) -> dict:
    return {
        "unshare": lambda: raw_syscall("unshare", CLONE_NEWUTS),
        "mount": lambda: raw_syscall("mount", b"none", bytes(tmp_path / "missing"), b"tmpfs",
                                     0, None),
        "keyctl": lambda: raw_syscall("keyctl", 9999, 0, 0, 0, 0),
        "bpf": lambda: raw_syscall("bpf", 9999, None, 0),
        "ptrace": lambda: raw_syscall("ptrace", 0x7777, 0, 0, 0),
        "clone namespace": lambda: raw_syscall("clone", CLONE_NEWNS | CLONE_FS, 0, 0, 0, 0),
    }


def test_default_profile_rejects_privileged_calls(children, tmp_path):
    probes = _probes(tmp_path)
    # kexec_load runs only under the filter: with a segment count above the maximum and an
    # unknown architecture the kernel would reject it, but it is not probed unfiltered.
    probes["kexec_load"] = lambda: raw_syscall("kexec_load", 0, 1000, None, 0xDEAD0000)
    probes["clone3"] = lambda: raw_syscall("clone3", None, 0)

    def body(report_fd: int) -> int:
        os.write(report_fd, json.dumps({name: probe() for name, probe in probes.items()})
                 .encode())
        return 0

    status, output = run_filtered(children, seccomp.default_profile(), body)

    assert os.waitstatus_to_exitcode(status) == 0, output
    results = json.loads(output)
    for name in _probes(tmp_path):
        assert results[name] == -errno.EPERM, name
    assert results["kexec_load"] == -errno.EPERM
    assert results["clone3"] == -errno.ENOSYS


def test_probes_fail_differently_unfiltered(children, tmp_path):
    # Without this, EPERM from the filtered probes could come from the kernel instead.
    probes = _probes(tmp_path)

    def body(report_fd: int) -> int:
        os.write(report_fd, json.dumps({name: probe() for name, probe in probes.items()})
                 .encode())
        return 0

    status, output = run_filtered(children, None, body)

    assert os.waitstatus_to_exitcode(status) == 0, output
    results = json.loads(output)
    assert results["unshare"] == 0
    assert results["mount"] == -errno.ENOENT
    assert results["keyctl"] == -errno.EOPNOTSUPP
    assert results["bpf"] == -errno.EINVAL
    assert results["ptrace"] == -errno.ESRCH
    assert results["clone namespace"] == -errno.EINVAL


def test_default_profile_runs_busybox_workload(children, tmp_path):
    if not Path("/bin/busybox").exists():
        pytest.skip("/bin/busybox is missing: install Debian's busybox-static")
    script = (f"ls / >/dev/null; cat /proc/self/status >/dev/null; mkdir {tmp_path}/d; "
              "echo ok")

    def body(report_fd: int) -> int:
        os.dup2(report_fd, 1)
        os.dup2(report_fd, 2)
        os.execv("/bin/busybox", ["busybox", "sh", "-c", script])

    status, output = run_filtered(children, seccomp.default_profile(), body)

    assert os.waitstatus_to_exitcode(status) == 0, output
    assert output == "ok\n"
    assert (tmp_path / "d").is_dir()
