"""Seccomp filters from the OCI runtime spec's linux.seccomp, built with the host's libseccomp.

compile() checks a linux.seccomp object and turns it into a libseccomp filter context
without touching the calling process, so a bad profile fails before anything changes.
Filter.load() then installs the filter in the calling process. The rules follow runc's
libcontainer/seccomp. SCMP_ACT_KILL kills the thread, and errnoRet defaults to EPERM.
A rule whose action equals the default action is skipped, and so are syscall names that
libseccomp does not know. The conditions of one rule are ANDed, unless two of them test
the same argument: then each condition becomes a rule of its own, so they are ORed.

libseccomp.so.2 is opened through ctypes at the first compile(), so importing this
module costs nothing on runs without seccomp.
"""

from __future__ import annotations

import errno
import os
import weakref

from kakoi import log
from kakoi.errors import InvalidSpecError, KernelError, NotSupportedError

LIBRARY = "libseccomp.so.2"

# Action values from libseccomp's seccomp.h, which uses the kernel's SECCOMP_RET_* values.
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000

ACTIONS = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_ERRNO": _ACT_ERRNO,
    "SCMP_ACT_TRACE": _ACT_TRACE,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
    "SCMP_ACT_LOG": _ACT_LOG,
}
# The two actions whose low 16 bits carry errnoRet (for TRACE, the value the tracer receives).
_ACTIONS_WITH_ERRNO = {"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"}

# enum scmp_compare in seccomp.h.
OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# Architectures named by the runtime spec; libseccomp resolves the lowercase suffix.
ARCHITECTURES = (
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K", "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
)

# enum scmp_filter_attr in seccomp.h (libseccomp 2.5; CTL_WAITKILL arrived in 2.6).
_ATTR_CTL_NNP = 3
_ATTR_CTL_TSYNC = 4
_ATTR_CTL_LOG = 6
_ATTR_CTL_SSB = 7
_ATTR_CTL_OPTIMIZE = 8
_ATTR_API_SYSRAWRC = 9
_ATTR_CTL_WAITKILL = 10

FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": _ATTR_CTL_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": _ATTR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _ATTR_CTL_SSB,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": _ATTR_CTL_WAITKILL,
}

# Above this many rules runc requests a binary tree of syscall numbers from libseccomp,
# which checks a syscall in O(log n) jumps. libseccomp up to 2.5.4 fails on an empty tree.
_BINARY_TREE_MIN_RULES = 32

_NR_SCMP_ERROR = -1
_MAX_ARGS = 6
_MAX_ERRNO_RET = 0xFFFF
_MAX_UINT64 = (1 << 64) - 1
_EPERM = 1


class _Condition:
    """One argument comparison of a rule, checked and converted to libseccomp's numbers."""

    __slots__ = ("index", "op", "value", "value_two")

    def __init__(self, index: int, op: int, value: int, value_two: int):
        self.index = index
        self.op = op
        self.value = value
        self.value_two = value_two


class _Rule:
    """One entry of linux.seccomp.syscalls; where is its place in the spec for messages."""

    __slots__ = ("names", "action", "conditions", "where")

    def __init__(self, names: list[str], action: int, conditions: list[_Condition],
                 where: str):
        self.names = names
        self.action = action
        self.conditions = conditions
        self.where = where


class _Plan:
    """A checked linux.seccomp object, ready to build without further errors in the spec."""

    __slots__ = ("default_action", "architectures", "flags", "rules")

    def __init__(self, default_action: int, architectures: list[str], flags: list[str],
                 rules: list[_Rule]):
        self.default_action = default_action
        self.architectures = architectures
        self.flags = flags
        self.rules = rules


class Filter:
    """A compiled libseccomp filter context; release it, or let garbage collection do so.

    skipped_syscalls lists the profile's syscall names that libseccomp did not know.
    """

    def __init__(self, context: int, library):
        self._context = context
        self._library = library
        self.skipped_syscalls: list[str] = []
        self._finalizer = weakref.finalize(self, library.seccomp_release, context)

    def load(self) -> None:
        """Install the filter in the calling process, for it and every child it creates.

        The kernel accepts a filter only from a thread that has PR_SET_NO_NEW_PRIVS set or
        CAP_SYS_ADMIN in its user namespace, so call it after prctl(PR_SET_NO_NEW_PRIVS)
        or before dropping capabilities. This filter never sets no_new_privs itself.
        Only the calling thread is filtered unless the profile has SECCOMP_FILTER_FLAG_TSYNC.
        The filter stays usable afterwards, for example to load it again after a fork.
        """
        _check(self._library.seccomp_load(self._require_context()), "seccomp_load")

    def export_bpf(self) -> bytes:
        """Return the BPF program that load() would install, as struct sock_filter entries."""
        fd = os.memfd_create("kakoi-seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _check(self._library.seccomp_export_bpf(self._require_context(), fd),
                   "seccomp_export_bpf")
            os.lseek(fd, 0, os.SEEK_SET)
            return _read_all(fd)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Free the libseccomp context; a filter already loaded stays in force."""
        self._finalizer()

    def _require_context(self) -> int:
        if not self._finalizer.alive:
            raise ValueError("seccomp filter already released")
        return self._context

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def compile(config: dict) -> Filter:
    """Check the spec's linux.seccomp object and build a filter from it.

    Raises InvalidSpecError for a malformed profile, NotSupportedError for what kakoi or
    the host's libseccomp cannot do, and KernelError when a libseccomp call fails.
    Nothing in the calling process changes: only Filter.load() installs the filter.
    """
    # NOTE: runc also patches the program so that syscalls newer than any the profile
    # names fail with ENOSYS, which makes libc fall back to older calls. kakoi does not, so
    # such syscalls get the default action; the default profile sets clone3 to ENOSYS.
    plan = _parse(config)
    library = _library()

    context = library.seccomp_init(plan.default_action)
    if not context:
        raise KernelError(errno.EINVAL, "seccomp_init", f"default action {plan.default_action:#x}")

    result = Filter(context, library)
    try:
        _configure(library, context, plan)
        result.skipped_syscalls = _add_rules(library, context, plan)
    except BaseException:
        result.release()
        raise
    return result


def _parse(config: dict) -> _Plan:
    if not isinstance(config, dict):
        raise InvalidSpecError("invalid linux.seccomp: expected an object")

    if config.get("listenerPath"):
        raise NotSupportedError("linux.seccomp.listenerPath is not supported: kakoi has no "
                                "seccomp user notification; remove it and SCMP_ACT_NOTIFY")

    default_action = _action(config.get("defaultAction"), config.get("defaultErrnoRet"),
                             "linux.seccomp.defaultAction", "linux.seccomp.defaultErrnoRet")

    architectures = _string_list(config.get("architectures"), "linux.seccomp.architectures")
    for name in architectures:
        if name not in ARCHITECTURES:
            raise InvalidSpecError(f'unknown seccomp architecture "{name}" in '
                                   "linux.seccomp.architectures: use a name such as "
                                   "SCMP_ARCH_X86_64")

    flags = _string_list(config.get("flags"), "linux.seccomp.flags")
    for name in flags:
        if name not in FLAGS:
            raise InvalidSpecError(f'unknown seccomp flag "{name}" in linux.seccomp.flags: '
                                   f"use one of {', '.join(FLAGS)}")

    syscalls = config.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise InvalidSpecError("invalid linux.seccomp.syscalls: expected an array")
    rules = [_rule(entry, f"linux.seccomp.syscalls[{i}]") for i, entry in enumerate(syscalls)]
    return _Plan(default_action, architectures, flags, rules)


def _action(name: object, errno_ret: object, where: str, errno_where: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise NotSupportedError(f"SCMP_ACT_NOTIFY in {where} is not supported: kakoi has no "
                                "seccomp user notification; use SCMP_ACT_ERRNO instead")
    if name is None:
        raise InvalidSpecError(f"missing {where}: set it to a seccomp action such as "
                               "SCMP_ACT_ERRNO")
    if name not in ACTIONS:
        raise InvalidSpecError(f'unknown seccomp action "{name}" in {where}: use one of '
                               f"{', '.join(ACTIONS)}")

    if errno_ret is None:
        errno_ret = _EPERM
    elif name not in _ACTIONS_WITH_ERRNO:
        raise InvalidSpecError(f"invalid {errno_where}: {name} takes no errno, only "
                               "SCMP_ACT_ERRNO and SCMP_ACT_TRACE do")
    elif not _is_int(errno_ret) or not 0 <= errno_ret <= _MAX_ERRNO_RET:
        raise InvalidSpecError(f"invalid {errno_where} {errno_ret!r}: expected an integer "
                               f"from 0 to {_MAX_ERRNO_RET}")

    action = ACTIONS[name]
    if name in _ACTIONS_WITH_ERRNO:
        action |= errno_ret
    return action


def _rule(entry: object, where: str) -> _Rule:
    if not isinstance(entry, dict):
        raise InvalidSpecError(f"invalid {where}: expected an object")

    names = _string_list(entry.get("names"), f"{where}.names")
    if not names or any(not name for name in names):
        raise InvalidSpecError(f"invalid {where}.names: expected at least one syscall name")

    action = _action(entry.get("action"), entry.get("errnoRet"), f"{where}.action",
                     f"{where}.errnoRet")

    args = entry.get("args") or []
    if not isinstance(args, list):
        raise InvalidSpecError(f"invalid {where}.args: expected an array")
    conditions = [_condition(arg, f"{where}.args[{i}]") for i, arg in enumerate(args)]
    return _Rule(names, action, conditions, where)


def _condition(arg: object, where: str) -> _Condition:
    if not isinstance(arg, dict):
        raise InvalidSpecError(f"invalid {where}: expected an object")

    index = arg.get("index")
    if not _is_int(index) or not 0 <= index < _MAX_ARGS:
        raise InvalidSpecError(f"invalid {where}.index {index!r}: a syscall argument index "
                               f"is from 0 to {_MAX_ARGS - 1}")

    op = arg.get("op")
    if op not in OPERATORS:
        raise InvalidSpecError(f'unknown seccomp operator "{op}" in {where}.op: use one of '
                               f"{', '.join(OPERATORS)}")

    values = []
    for key in ("value", "valueTwo"):
        value = arg.get(key, 0)
        if not _is_int(value) or not 0 <= value <= _MAX_UINT64:
            raise InvalidSpecError(f"invalid {where}.{key} {value!r}: expected an unsigned "
                                   "64-bit integer")
        values.append(value)
    return _Condition(index, OPERATORS[op], values[0], values[1])


def _string_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidSpecError(f"invalid {where}: expected an array of strings")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _configure(library, context: int, plan: _Plan) -> None:
    # The runtime sets no_new_privs only when process.noNewPrivileges requests it, so
    # libseccomp must not set it on load as it does by default.
    _check(library.seccomp_attr_set(context, _ATTR_CTL_NNP, 0), "seccomp_attr_set",
           "SCMP_FLTATR_CTL_NNP")
    # Return the kernel's errno from seccomp_load rather than libseccomp's ECANCELED.
    # libseccomp before 2.5 lacks the attribute, and its plain error is still usable.
    library.seccomp_attr_set(context, _ATTR_API_SYSRAWRC, 1)

    for name in plan.architectures:
        _add_architecture(library, context, name)

    for name in plan.flags:
        _set_flag(library, context, name)

    if len(plan.rules) > _BINARY_TREE_MIN_RULES:
        if library.seccomp_attr_set(context, _ATTR_CTL_OPTIMIZE, 2) < 0:
            log.debug("seccomp binary tree optimization not available in this libseccomp")


def _add_architecture(library, context: int, name: str) -> None:
    token = library.seccomp_arch_resolve_name(name.removeprefix("SCMP_ARCH_").lower().encode())
    if token == 0:
        raise NotSupportedError(f"seccomp architecture {name} is unknown to the host's "
                                "libseccomp: upgrade libseccomp2 or remove it from "
                                "linux.seccomp.architectures")

    # A new context already contains the native architecture, and adding it again fails.
    if library.seccomp_arch_exist(context, token) == 0:
        return
    _check(library.seccomp_arch_add(context, token), "seccomp_arch_add", name)


def _set_flag(library, context: int, name: str) -> None:
    result = library.seccomp_attr_set(context, FLAGS[name], 1)
    if result < 0:
        raise NotSupportedError(f"seccomp flag {name} is not supported by the host's "
                                f"libseccomp ({os.strerror(-result)}): remove it from "
                                "linux.seccomp.flags or upgrade libseccomp2")


def _add_rules(library, context: int, plan: _Plan) -> list[str]:
    skipped = []
    for rule in plan.rules:
        # libseccomp rejects a rule that repeats the default action, and it changes nothing.
        if rule.action == plan.default_action:
            continue
        for name in rule.names:
            number = library.seccomp_syscall_resolve_name(name.encode())
            if number == _NR_SCMP_ERROR:
                # Profiles list syscalls newer than this kernel or libseccomp, as runc allows.
                log.debug("seccomp: skipped syscall %s, unknown to libseccomp", name)
                skipped.append(name)
                continue
            for group in _condition_groups(rule.conditions):
                _add_rule(library, context, rule, name, number, group)
    return skipped


def _condition_groups(conditions: list[_Condition]) -> list[list[_Condition]]:
    """Split conditions into the rules to add: one ANDed rule, or one rule per condition."""
    indexes = [condition.index for condition in conditions]
    if len(indexes) != len(set(indexes)):
        return [[condition] for condition in conditions]
    return [conditions]


def _add_rule(library, context: int, rule: _Rule, name: str, number: int,
              conditions: list[_Condition]) -> None:
    import ctypes

    array = (library.scmp_arg_cmp * max(len(conditions), 1))()
    for slot, condition in zip(array, conditions):
        slot.arg = condition.index
        slot.op = condition.op
        slot.datum_a = condition.value
        slot.datum_b = condition.value_two

    pointer = array if conditions else ctypes.cast(None, ctypes.POINTER(library.scmp_arg_cmp))
    result = library.seccomp_rule_add_array(context, rule.action, number, len(conditions),
                                            pointer)
    _check(result, "seccomp_rule_add_array", f"for syscall {name} in {rule.where}")


def _check(result: int, operation: str, detail: str = "") -> int:
    if result < 0:
        raise KernelError(-result, operation, detail)
    return result


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


_loaded_library = None


def _library():
    """Open libseccomp.so.2 once and declare the signatures this module calls."""
    global _loaded_library
    if _loaded_library is None:
        _loaded_library = _open_library()
    return _loaded_library


def _open_library():
    import ctypes

    try:
        library = ctypes.CDLL(LIBRARY)
    except OSError as exc:
        raise NotSupportedError(f"seccomp needs {LIBRARY}, which failed to load ({exc}): "
                                "install libseccomp2, or run without a seccomp profile") from None

    class ScmpArgCmp(ctypes.Structure):
        """struct scmp_arg_cmp: argument index, enum scmp_compare, then two 64-bit data."""

        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

    class ScmpVersion(ctypes.Structure):
        """struct scmp_version: the library's major, minor and micro version."""

        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    context, u32, c_int = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    signatures = {
        "seccomp_version": ([], ctypes.POINTER(ScmpVersion)),
        "seccomp_init": ([u32], context),
        "seccomp_release": ([context], None),
        "seccomp_load": ([context], c_int),
        "seccomp_attr_set": ([context, c_int, u32], c_int),
        "seccomp_arch_resolve_name": ([ctypes.c_char_p], u32),
        "seccomp_arch_exist": ([context, u32], c_int),
        "seccomp_arch_add": ([context, u32], c_int),
        "seccomp_syscall_resolve_name": ([ctypes.c_char_p], c_int),
        "seccomp_rule_add_array": ([context, u32, c_int, ctypes.c_uint,
                                    ctypes.POINTER(ScmpArgCmp)], c_int),
        "seccomp_export_bpf": ([context, c_int], c_int),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(library, name)
        function.argtypes = argtypes
        function.restype = restype
    library.scmp_arg_cmp = ScmpArgCmp
    return library


# The syscalls that kakoi's default profile allows, grouped by what they do. Left out,
# and so failing with EPERM: mounts and the new mount API, namespaces (unshare, setns),
# kernel keyrings, kexec, bpf, ptrace and cross-process memory access, perf_event_open,
# kernel modules, reboot, swap, accounting, clock and time setting, raw I/O ports,
# quotactl, open_by_handle_at, userfaultfd, io_uring, fanotify and modify_ldt. Names
# unknown to libseccomp or to an architecture are skipped when the filter is built.
_DEFAULT_ALLOWED = (
    # Files, directories and file descriptors.
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "arm_fadvise64_64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr",
    "flock", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "getcwd", "getdents", "getdents64",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat",
    "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pipe", "pipe2", "pread64",
    "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readdir",
    "readlink", "readlinkat", "readv", "removexattr", "rename", "renameat", "renameat2",
    "rmdir", "sendfile", "sendfile64", "setxattr", "splice", "stat", "stat64", "statfs",
    "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "sync_file_range2", "arm_sync_file_range", "syncfs", "tee", "truncate", "truncate64",
    "umask", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes",
    "vmsplice", "write", "writev", "chroot", "memfd_create", "memfd_secret", "ioctl",
    "getrandom",
    # Memory.
    "brk", "madvise", "membarrier", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "get_mempolicy", "set_mempolicy", "mbind",
    "remap_file_pages", "cacheflush", "breakpoint", "set_tls",
    # Processes, threads, credentials and scheduling. clone is allowed further down only
    # without namespace flags, and clone3 returns ENOSYS so that libc falls back to clone.
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork",
    "vfork", "get_robust_list", "set_robust_list", "get_thread_area", "set_thread_area",
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getresgid",
    "getresgid32", "getresuid", "getresuid32", "getrlimit", "ugetrlimit", "getrusage",
    "getsid", "gettid", "getuid", "getuid32", "ioprio_get", "ioprio_set", "kill", "tkill",
    "tgkill", "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "rseq",
    "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "set_tid_address", "setfsgid",
    "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid", "setuid",
    "setuid32", "wait4", "waitid", "waitpid", "uname", "olduname", "oldolduname",
    "sethostname", "setdomainname", "sysinfo", "times", "restart_syscall",
    # Signals.
    "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo", "sigaction", "sigaltstack", "signal", "signalfd", "signalfd4",
    "sigpending", "sigprocmask", "sigreturn", "sigsuspend",
    # Time: reading clocks, sleeping and timers, never setting the clock.
    "alarm", "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "getitimer", "gettimeofday", "nanosleep",
    "setitimer", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64",
    # Waiting on file descriptors, futexes and asynchronous I/O.
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "futex",
    "futex_time64", "futex_waitv", "io_cancel", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit", "poll", "ppoll",
    "ppoll_time64", "pselect6", "pselect6_time64", "select", "_newselect",
    # Sockets.
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send",
    "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socket", "socketcall",
    "socketpair",
    # System V and POSIX IPC, which the container's IPC namespace keeps apart.
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
    "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
)

_CLONE_NAMESPACE_FLAGS = (0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000
                          | 0x10000000 | 0x20000000 | 0x40000000)
_ENOSYS = 38
# personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26, and
# 0xffffffff, which only queries the current persona.
_ALLOWED_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def default_profile() -> dict:
    """Return kakoi's default linux.seccomp object, applied by `kakoi run` unless unconfined.

    Every syscall not listed fails with EPERM. The profile is built for this machine's
    architecture and also admits its 32-bit companions (x86 and x32 beside x86_64, arm
    beside aarch64), so 32-bit programs get the same rules instead of being killed.
    """
    syscalls = [
        {"names": list(_DEFAULT_ALLOWED), "action": "SCMP_ACT_ALLOW"},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": _CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                   "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS},
    ]
    for persona in _ALLOWED_PERSONALITIES:
        syscalls.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                         "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]})

    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": _EPERM,
        "architectures": _native_architectures(),
        "syscalls": syscalls,
    }


def _native_architectures() -> list[str]:
    machine = os.uname().machine
    if machine == "x86_64":
        return ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    if machine == "aarch64":
        return ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    # NOTE: other machines get only their native architecture, which libseccomp adds itself.
    return []


# Kernel values of seccomp(2) and its filter flags, from <linux/seccomp.h>.
_SECCOMP_SET_MODE_FILTER = 1
_KERNEL_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2,
                 "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
                 "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 32}
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}
_SOCK_FILTER_SIZE = 8


class CompiledFilter:
    """A filter kept as its BPF program, installed with seccomp(2) and no libseccomp.

    Building a large profile with libseccomp takes milliseconds (about 14 ms for the
    default profile here, half of a container start), so compile_cached keeps the
    program it exports and later starts load that.
    """

    def __init__(self, program: bytes, flags: int):
        if not program or len(program) % _SOCK_FILTER_SIZE:
            raise ValueError("a BPF program is a non-empty array of 8-byte instructions")
        self.program = program
        self.flags = flags

    def load(self) -> None:
        """Install the program; the same conditions as Filter.load apply."""
        import ctypes

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        buffer = ctypes.create_string_buffer(self.program, len(self.program))
        fprog = SockFprog(len(self.program) // _SOCK_FILTER_SIZE, ctypes.addressof(buffer))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        number = _SYS_SECCOMP.get(os.uname().machine)
        if number is None:
            raise NotSupportedError(f"seccomp is not supported on {os.uname().machine}")
        result = libc.syscall(number, _SECCOMP_SET_MODE_FILTER, ctypes.c_uint(self.flags),
                              ctypes.byref(fprog))
        if result < 0:
            raise KernelError(ctypes.get_errno(), "seccomp set mode filter")

    def release(self) -> None:
        """Nothing to free; present so that callers treat both filter kinds alike."""


def compile_cached(config: dict, cache_dir: str) -> CompiledFilter:
    """Check config like compile(), and return its program from cache_dir or build it.

    The cache key is the profile's JSON text with the libseccomp file's identity and
    the machine, so a changed profile or library gets a new program. A cache file holds
    its whole key, which is compared before the program is used, so its name can be a
    cheap checksum: importing hashlib would cost more (7 ms here) than the cache saves.
    """
    import binascii

    from kakoi import jsontext

    plan = _parse(config)
    key = jsontext.dumps([config, _library_identity(), os.uname().machine],
                         sort_keys=True).encode()
    path = os.path.join(cache_dir, f"{binascii.crc32(key):08x}-{len(key)}.bpf")
    flags = 0
    for name in plan.flags:
        flags |= _KERNEL_FLAGS[name]
    cached = _read_cached(path, key)
    if cached is not None:
        return CompiledFilter(cached, flags)

    with compile(config) as built:
        program = built.export_bpf()
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as file:
        file.write(len(key).to_bytes(8, "little") + key + program)
    os.rename(temporary, path)
    return CompiledFilter(program, flags)


def _read_cached(path: str, key: bytes) -> bytes | None:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    length = int.from_bytes(data[:8], "little")
    if data[8:8 + length] != key:
        return None  # another profile with the same checksum, or a damaged file
    program = data[8 + length:]
    if not program or len(program) % _SOCK_FILTER_SIZE:
        return None
    return program


def _library_identity() -> list:
    """Return the libseccomp file's path, size and mtime, without loading it."""
    import sys

    multiarch = getattr(sys.implementation, "_multiarch", "")
    for directory in (f"/lib/{multiarch}", f"/usr/lib/{multiarch}", "/lib64", "/usr/lib64",
                      "/lib", "/usr/lib"):
        path = os.path.join(directory, LIBRARY)
        try:
            status = os.stat(path)
        except OSError:
            continue
        return [path, status.st_size, status.st_mtime_ns]
    return ["unknown"]
