"""Tests of kakoi.kernel.seccomp that build filters without loading them.

Building a filter changes nothing in the test process, so these run as any user, but
they need the host's libseccomp.so.2 (Debian's libseccomp2).
"""

import ctypes
import subprocess
import sys

import pytest

from kakoi.errors import InvalidSpecError, NotSupportedError
from kakoi.kernel import seccomp

try:
    ctypes.CDLL(seccomp.LIBRARY)
except OSError:
    pytest.skip(f"needs {seccomp.LIBRARY}: install libseccomp2", allow_module_level=True)

# struct sock_filter is 8 bytes: code (u16), jt (u8), jf (u8), k (u32).
SOCK_FILTER_SIZE = 8


def allow_all(*syscalls: dict) -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": list(syscalls)}


def errno_rule(*names: str, **extra) -> dict:
    return {"names": list(names), "action": "SCMP_ACT_ERRNO", **extra}


def bpf_size(config: dict) -> int:
    with seccomp.compile(config) as compiled:
        return len(compiled.export_bpf())


@pytest.mark.parametrize("config, message", [
    (allow_all({"names": ["mkdir"], "action": "SCMP_ACT_FOO"}),
     'unknown seccomp action "SCMP_ACT_FOO" in linux.seccomp.syscalls[0].action'),
    ({"defaultAction": "SCMP_ACT_NOPE"},
     'unknown seccomp action "SCMP_ACT_NOPE" in linux.seccomp.defaultAction'),
    ({}, "missing linux.seccomp.defaultAction"),
    (allow_all({"names": ["mkdir"]}), "missing linux.seccomp.syscalls[0].action"),
    (allow_all(errno_rule("personality", args=[{"index": 0, "value": 1, "op": "SCMP_CMP_IS"}])),
     'unknown seccomp operator "SCMP_CMP_IS" in linux.seccomp.syscalls[0].args[0].op'),
    (allow_all(errno_rule("personality", args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}])),
     "invalid linux.seccomp.syscalls[0].args[0].index 6"),
    (allow_all(errno_rule("personality", args=[{"index": -1, "value": 1, "op": "SCMP_CMP_EQ"}])),
     "invalid linux.seccomp.syscalls[0].args[0].index -1"),
    (allow_all(errno_rule("personality", args=[{"index": 0, "value": 1 << 64,
                                                "op": "SCMP_CMP_EQ"}])),
     "invalid linux.seccomp.syscalls[0].args[0].value"),
    (allow_all(errno_rule("personality", args=[{"index": 0, "value": 1, "valueTwo": -2,
                                                "op": "SCMP_CMP_MASKED_EQ"}])),
     "invalid linux.seccomp.syscalls[0].args[0].valueTwo -2"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]},
     'unknown seccomp architecture "SCMP_ARCH_VAX" in linux.seccomp.architectures'),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_FAST"]},
     'unknown seccomp flag "SECCOMP_FILTER_FLAG_FAST" in linux.seccomp.flags'),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1},
     "invalid linux.seccomp.defaultErrnoRet: SCMP_ACT_ALLOW takes no errno"),
    (allow_all({"names": ["mkdir"], "action": "SCMP_ACT_KILL", "errnoRet": 1}),
     "invalid linux.seccomp.syscalls[0].errnoRet: SCMP_ACT_KILL takes no errno"),
    (allow_all(errno_rule("mkdir", errnoRet=70000)),
     "invalid linux.seccomp.syscalls[0].errnoRet 70000"),
    (allow_all(errno_rule("mkdir", errnoRet=True)),
     "invalid linux.seccomp.syscalls[0].errnoRet True"),
    (allow_all({"names": [], "action": "SCMP_ACT_ERRNO"}),
     "invalid linux.seccomp.syscalls[0].names: expected at least one syscall name"),
    (allow_all({"names": "mkdir", "action": "SCMP_ACT_ERRNO"}),
     "invalid linux.seccomp.syscalls[0].names: expected an array of strings"),
    (allow_all(errno_rule("getpid"), "mkdir"),
     "invalid linux.seccomp.syscalls[1]: expected an object"),
    ([], "invalid linux.seccomp: expected an object"),
])
def test_compile_rejects_invalid_spec(config, message):
    with pytest.raises(InvalidSpecError) as caught:
        seccomp.compile(config)

    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_compile_rejects_listener_path():
    config = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}

    with pytest.raises(NotSupportedError, match="listenerPath is not supported"):
        seccomp.compile(config)


@pytest.mark.parametrize("config", [
    allow_all({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}),
    {"defaultAction": "SCMP_ACT_NOTIFY"},
])
def test_compile_rejects_notify(config):
    with pytest.raises(NotSupportedError, match="SCMP_ACT_NOTIFY .* is not supported"):
        seccomp.compile(config)


def test_compile_skips_unknown_syscalls():
    config = allow_all(errno_rule("mkdir", "kakoi_no_such_syscall", "rmdir"))

    with seccomp.compile(config) as compiled:
        assert compiled.skipped_syscalls == ["kakoi_no_such_syscall"]
        assert compiled.export_bpf()


def test_export_bpf_grows_with_rules():
    empty = bpf_size(allow_all())
    one = bpf_size(allow_all(errno_rule("mkdir")))
    two = bpf_size(allow_all(errno_rule("mkdir", "rmdir")))
    with_arg = bpf_size(allow_all(errno_rule("mkdir", "rmdir"),
                                  errno_rule("personality", args=[
                                      {"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_EQ"}])))

    assert empty > 0
    assert empty % SOCK_FILTER_SIZE == 0
    assert one > empty
    assert two > one
    assert with_arg > two


def test_rule_with_default_action_is_skipped():
    # libseccomp rejects a rule that repeats the default action; runc drops it, as kakoi does.
    redundant = {"names": ["mkdir"], "action": "SCMP_ACT_ALLOW"}

    assert bpf_size(allow_all(redundant)) == bpf_size(allow_all())


def test_repeated_argument_index_becomes_separate_rules():
    # Two EQ conditions on argument 0 can never both hold when ANDed, so runc adds one rule
    # for each, which ORs them. Conditions on different arguments stay one ANDed rule.
    same_index = [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                  {"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_EQ"}]
    different_index = [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                       {"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]
    conditions_same = seccomp._parse(allow_all(errno_rule("personality", args=same_index)))
    conditions_different = seccomp._parse(allow_all(errno_rule("fcntl", args=different_index)))

    groups_same = seccomp._condition_groups(conditions_same.rules[0].conditions)
    groups_different = seccomp._condition_groups(conditions_different.rules[0].conditions)

    assert [len(group) for group in groups_same] == [1, 1]
    assert [len(group) for group in groups_different] == [2]
    assert bpf_size(allow_all(errno_rule("personality", args=same_index))) > 0


def test_actions_and_errno_values():
    plan = seccomp._parse({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "syscalls": [{"names": ["a"], "action": "SCMP_ACT_KILL"},
                     {"names": ["b"], "action": "SCMP_ACT_KILL_PROCESS"},
                     {"names": ["c"], "action": "SCMP_ACT_ERRNO"},
                     {"names": ["d"], "action": "SCMP_ACT_TRACE", "errnoRet": 5},
                     {"names": ["e"], "action": "SCMP_ACT_LOG"}]})

    assert plan.default_action == 0x00050000 | 38
    assert [rule.action for rule in plan.rules] == [
        0x00000000, 0x80000000, 0x00050000 | 1, 0x7FF00000 | 5, 0x7FFC0000]


def test_compile_accepts_architectures_and_flags():
    config = {"defaultAction": "SCMP_ACT_ALLOW",
              "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                                "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
              "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                        "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
              "syscalls": [errno_rule("mkdir")]}

    native_only = bpf_size(allow_all(errno_rule("mkdir")))

    assert bpf_size(config) > native_only


def test_wait_killable_recv_needs_new_libseccomp():
    # The flag maps to SCMP_FLTATR_CTL_WAITKILL, which libseccomp 2.5.4 rejects as invalid.
    config = {"defaultAction": "SCMP_ACT_ALLOW",
              "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}

    try:
        seccomp.compile(config).release()
    except NotSupportedError as exc:
        assert "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV is not supported" in str(exc)


def test_release_is_idempotent():
    compiled = seccomp.compile(allow_all(errno_rule("mkdir")))

    compiled.release()
    compiled.release()

    with pytest.raises(ValueError, match="already released"):
        compiled.export_bpf()


def test_default_profile_compiles():
    profile = seccomp.default_profile()
    allowed = set(profile["syscalls"][0]["names"])

    with seccomp.compile(profile) as compiled:
        program = compiled.export_bpf()

    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    assert len(program) > 1000
    for name in ("read", "write", "openat", "execve", "exit_group", "mmap", "futex"):
        assert name in allowed
    for name in ("mount", "umount2", "unshare", "setns", "keyctl", "add_key", "request_key",
                 "kexec_load", "kexec_file_load", "bpf", "ptrace", "init_module",
                 "finit_module", "reboot", "open_by_handle_at", "perf_event_open", "clone3"):
        assert name not in allowed


def test_default_profile_lists_each_syscall_once():
    names = seccomp.default_profile()["syscalls"][0]["names"]

    assert len(names) == len(set(names))


def test_import_does_not_load_library():
    code = ("import kakoi.kernel.seccomp as s, sys; "
            "sys.exit(0 if s._loaded_library is None else 1)")

    result = subprocess.run([sys.executable, "-c", code], check=False)

    assert result.returncode == 0
