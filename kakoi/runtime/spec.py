"""The OCI runtime spec's config.json: loading and validation before any kernel state changes.

The spec stays a dict, as config.json has it; this module checks the parts kakoi
acts on and converts the ones that need typed values.
"""

import os

from kakoi import jsontext
from kakoi.errors import InvalidSpecError, NotSupportedError

NAMESPACE_FLAGS = {
    "pid": 0x20000000, "network": 0x40000000, "mount": 0x00020000, "ipc": 0x08000000,
    "uts": 0x04000000, "user": 0x10000000, "cgroup": 0x02000000, "time": 0x00000080,
}

RLIMIT_NAMES = (
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
    "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
)


def load(bundle: str) -> dict:
    """Read and validate bundle/config.json."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as file:
            spec = jsontext.loads(file.read())
    except FileNotFoundError:
        raise InvalidSpecError(f"{path} not found: a bundle needs a config.json")
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidSpecError(f"invalid JSON in {path}: {error}")
    validate(spec, bundle)
    return spec


def validate(spec: dict, bundle: str) -> None:
    """Raise InvalidSpecError for the first problem that would stop the container."""
    if not isinstance(spec, dict):
        raise InvalidSpecError("config.json must hold a JSON object")
    if not spec.get("ociVersion"):
        raise InvalidSpecError("config.json is missing ociVersion")
    _validate_root(spec, bundle)
    _validate_process(spec.get("process"))
    _validate_mounts(spec.get("mounts", []))
    _validate_linux(spec)


def root_path(spec: dict, bundle: str) -> str:
    path = spec["root"]["path"]
    return path if os.path.isabs(path) else os.path.join(bundle, path)


def _validate_root(spec: dict, bundle: str) -> None:
    root = spec.get("root")
    if not isinstance(root, dict) or not root.get("path"):
        raise InvalidSpecError("config.json is missing root.path")
    path = root_path(spec, bundle)
    if not os.path.isdir(path):
        raise InvalidSpecError(f"root.path {path} is not a directory: create the rootfs first")


def validate_process(process) -> None:
    """Check a process object, as config.json's process or an exec's process.json."""
    _validate_process(process)


def _validate_process(process) -> None:
    if not isinstance(process, dict):
        raise InvalidSpecError("config.json is missing process")
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise InvalidSpecError("process.args must be a non-empty list of strings")
    cwd = process.get("cwd", "/")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise InvalidSpecError(f"process.cwd {cwd!r} must be an absolute path")
    _validate_user(process.get("user", {}))
    for entry in process.get("env", []):
        if not isinstance(entry, str) or "=" not in entry:
            raise InvalidSpecError(f"process.env entry {entry!r} is not of the form KEY=VALUE")
    seen = set()
    for rlimit in process.get("rlimits", []):
        name = rlimit.get("type")
        if name not in RLIMIT_NAMES:
            raise InvalidSpecError(f"unknown rlimit type {name!r}")
        if name in seen:
            raise InvalidSpecError(f"rlimit {name} is given twice")
        seen.add(name)
        if rlimit.get("soft", 0) > rlimit.get("hard", 0):
            raise InvalidSpecError(f"rlimit {name}: soft limit exceeds hard limit")


# setresuid(2) and its kin read -1 as "leave unchanged", so an id outside this range could
# leave the process running as root. runc takes the same range.
MAX_ID = 2**31 - 1


def _validate_user(user) -> None:
    if not isinstance(user, dict):
        raise InvalidSpecError("process.user must be an object")
    for field in ("uid", "gid"):
        check_id(user.get(field, 0), f"process.user.{field}")
    gids = user.get("additionalGids") or []
    if not isinstance(gids, list):
        raise InvalidSpecError("process.user.additionalGids must be a list of integers")
    for gid in gids:
        check_id(gid, "process.user.additionalGids")
    umask = user.get("umask", 0)
    if isinstance(umask, bool) or not isinstance(umask, int) or not 0 <= umask <= 0o7777:
        raise InvalidSpecError(f"invalid process.user.umask {umask!r}: use 0 to 4095 (0o7777)")


def check_id(value, field: str) -> None:
    """Raise InvalidSpecError unless value is a uid or gid in 0..2147483647."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise InvalidSpecError(f"invalid {field} {value!r}: use an integer from 0 to {MAX_ID}")


def _validate_mounts(mounts) -> None:
    if not isinstance(mounts, list):
        raise InvalidSpecError("mounts must be a list")
    for mount in mounts:
        destination = mount.get("destination") if isinstance(mount, dict) else None
        if not isinstance(destination, str) or not destination.startswith("/"):
            raise InvalidSpecError(f"mount destination {destination!r} must be an absolute path")


def _validate_linux(spec: dict) -> None:
    linux = spec.get("linux", {})
    types = set()
    for namespace in linux.get("namespaces", []):
        kind = namespace.get("type")
        if kind not in NAMESPACE_FLAGS:
            raise InvalidSpecError(f"unknown namespace type {kind!r}: use one of "
                                   + ", ".join(sorted(NAMESPACE_FLAGS)))
        if kind in types:
            raise InvalidSpecError(f"namespace {kind} is given twice")
        types.add(kind)
    if spec.get("hostname") and "uts" not in types:
        raise InvalidSpecError("setting hostname needs a new uts namespace")
    _validate_sysctls(linux.get("sysctl") or {}, types)
    _validate_capabilities(spec.get("process", {}).get("capabilities") or {})
    if spec.get("process", {}).get("apparmorProfile"):
        raise NotSupportedError("process.apparmorProfile is not supported: kakoi applies no "
                                "AppArmor profile; leave the field out")
    _validate_user_namespace(linux, types)
    if linux.get("timeOffsets") and "time" not in types:
        raise InvalidSpecError("linux.timeOffsets needs a new time namespace")
    if linux.get("intelRdt"):
        raise NotSupportedError("linux.intelRdt is not supported by kakoi")
    if spec.get("process", {}).get("selinuxLabel") or linux.get("mountLabel"):
        raise NotSupportedError("SELinux labels are not supported: no SELinux policy is loaded")
    if linux.get("personality"):
        from kakoi.kernel.libc import personality_value
        try:
            personality_value(linux["personality"])
        except ValueError as error:
            raise InvalidSpecError(f"invalid linux.personality: {error}")


# Sysctls that belong to an IPC namespace, as runc's validator lists them; a sysctl in no
# namespace of the container would change the host's value.
_IPC_SYSCTLS = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"}


def _validate_sysctls(sysctls: dict, types: set[str]) -> None:
    for key in sysctls:
        if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
            needed = "ipc"
        elif key.startswith("net."):
            needed = "network"
        elif key == "kernel.domainname":
            needed = "uts"
        elif key == "kernel.hostname":
            raise InvalidSpecError("sysctl kernel.hostname is not allowed: use the hostname "
                                   "field")
        else:
            raise InvalidSpecError(f"sysctl {key} is not in a namespace of its own, so "
                                   "setting it would change the host: leave it out")
        if needed not in types:
            raise InvalidSpecError(f"sysctl {key} needs the container to have its own "
                                   f"{needed} namespace")


def _validate_capabilities(capabilities: dict) -> None:
    from kakoi.kernel.capabilities import NUMBERS

    for kind, names in capabilities.items():
        for name in names or []:
            if name not in NUMBERS:
                raise InvalidSpecError(f"unknown capability {name!r} in "
                                       f"process.capabilities.{kind}")


def _validate_user_namespace(linux: dict, types: set[str]) -> None:
    mappings = linux.get("uidMappings"), linux.get("gidMappings")
    if any(mappings) and "user" not in types:
        raise InvalidSpecError("linux.uidMappings and gidMappings need a user namespace")
    new_user_namespace = "user" in types and not any(
        ns.get("path") for ns in linux.get("namespaces", []) if ns.get("type") == "user")
    if new_user_namespace and not all(mappings):
        raise InvalidSpecError("a new user namespace needs both linux.uidMappings and "
                               "linux.gidMappings")
    for key in ("uidMappings", "gidMappings"):
        for entry in linux.get(key) or []:
            if not all(isinstance(entry.get(field), int) and entry[field] >= 0
                       for field in ("containerID", "hostID", "size")):
                raise InvalidSpecError(f"invalid linux.{key} entry {entry}: containerID, "
                                       "hostID and size must be non-negative integers")


def namespaces(spec: dict) -> dict[str, str | None]:
    """Return namespace type -> path to join (None for a new namespace)."""
    return {ns["type"]: ns.get("path") or None
            for ns in spec.get("linux", {}).get("namespaces", [])}
