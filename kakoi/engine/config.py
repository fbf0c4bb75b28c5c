"""Turn an image config and `kakoi run` options into an OCI runtime config.json.

The defaults follow Docker's (moby's oci defaults): its capability set, its masked
and read-only /proc paths, its /dev and mounts, with rlimits clamped to the host's
hard limits because this host's root cannot raise them.
"""

import os

from kakoi.errors import InvalidArgument, NotSupportedError
from kakoi.engine import options as parse
from kakoi.engine import users
from kakoi.kernel import capabilities

OCI_VERSION = "1.0.2"

DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]
READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]
# Docker's default device cgroup rules: mknod of any device, and use of the ones a
# container's /dev holds (null, zero, full, random, urandom, tty, console, ptmx, pts).
DEFAULT_DEVICE_RULES = [{"allow": False, "access": "rwm"}] + [
    {"allow": True, "type": kind, "major": major, "minor": minor, "access": access}
    for kind, major, minor, access in (
        ("c", None, None, "m"), ("b", None, None, "m"), ("c", 1, 3, "rwm"), ("c", 1, 5, "rwm"),
        ("c", 1, 7, "rwm"), ("c", 1, 8, "rwm"), ("c", 1, 9, "rwm"), ("c", 5, 0, "rwm"),
        ("c", 5, 1, "rwm"), ("c", 5, 2, "rwm"), ("c", 136, None, "rwm"), ("c", 10, 200, "rwm"),
    )
]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# containerd's default open-file limit for containers, lowered to the host's hard limit.
DEFAULT_NOFILE = 1048576


class RunOptions:
    """The `kakoi run` flags, as strings and lists the way the command line gives them.

    A plain class rather than a dataclass: importing dataclasses costs about 5 ms of
    every container start.
    """

    _DEFAULTS = {
        "command": list, "name": None, "remove": False, "env": list, "env_files": list,
        "workdir": None, "user": None, "hostname": None, "entrypoint": None, "volumes": list,
        "tmpfs": list, "read_only": False, "interactive": False, "tty": False, "memory": None,
        "memory_swap": None, "cpus": None, "cpu_shares": None, "pids_limit": None,
        "ulimits": list, "cap_add": list, "cap_drop": list, "privileged": False,
        "security_opt": list, "network": "none", "cgroup_parent": "kakoi", "pull": "missing",
    }

    def __init__(self, image: str, **values):
        unknown = set(values) - set(self._DEFAULTS)
        if unknown:
            raise TypeError(f"unknown run options: {', '.join(sorted(unknown))}")
        self.image = image
        for key, default in self._DEFAULTS.items():
            if key in values:
                setattr(self, key, values[key])
            else:
                setattr(self, key, default() if default is list else default)


def build(run: RunOptions, image_config: dict, container_id: str, layer_dirs: list[str],
          container_dir: str) -> dict:
    """Return the config.json of a new container."""
    config = image_config.get("config") or {}
    args = _command(run, config)
    user = users.resolve(run.user or config.get("User") or "", layer_dirs)
    hostname = run.hostname or container_id[:12]
    env = _environment(run, config, hostname, user)
    namespaces = _namespaces(run.network)
    resources = _resources(run)

    spec = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": run.tty,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
            "args": args,
            "env": env,
            "cwd": run.workdir or config.get("WorkingDir") or "/",
            "capabilities": _capabilities(run, user.uid),
            "rlimits": _rlimits(run.ulimits),
            "noNewPrivileges": _no_new_privileges(run.security_opt),
        },
        "root": {"path": "rootfs", "readonly": run.read_only},
        "hostname": hostname,
        "mounts": _mounts(run, container_dir),
        "linux": {
            "namespaces": namespaces,
            "resources": resources,
            "cgroupsPath": f"{run.cgroup_parent.strip('/')}/{container_id}",
            "maskedPaths": [] if run.privileged else MASKED_PATHS,
            "readonlyPaths": [] if run.privileged else READONLY_PATHS,
        },
    }
    _check_values(run)
    if not run.cgroup_parent.strip("/") or ".." in run.cgroup_parent.split("/"):
        raise InvalidArgument(f"invalid --cgroup-parent {run.cgroup_parent!r}: use a path "
                              "such as kakoi or mygroup/sub")
    seccomp = _seccomp_profile(run)
    if seccomp is not None:
        spec["linux"]["seccomp"] = seccomp
    if run.tty:
        from kakoi.runtime.attach import terminal_size
        size = terminal_size()
        if size:
            spec["process"]["consoleSize"] = size
    return spec


def _check_values(run: RunOptions) -> None:
    """Reject values that the kernel would refuse later with a less helpful message."""
    if run.hostname is not None and (len(run.hostname) > 64 or not run.hostname):
        raise InvalidArgument(f"invalid --hostname {run.hostname!r}: it must be 1 to 64 "
                              "characters long")
    if run.workdir is not None and not run.workdir.startswith("/"):
        raise InvalidArgument(f"invalid --workdir {run.workdir!r}: it must be an absolute path")
    if run.tty and run.interactive:
        if not os.isatty(0):
            raise InvalidArgument("the input device is not a TTY: drop -t, or run from a "
                                  "terminal")


def _command(run: RunOptions, config: dict) -> list[str]:
    if run.entrypoint is not None:
        entrypoint = [run.entrypoint] if run.entrypoint else []
        command = run.command
    else:
        entrypoint = list(config.get("Entrypoint") or [])
        command = run.command or list(config.get("Cmd") or [])
    args = entrypoint + command
    if not args:
        raise InvalidArgument("no command specified: give one after the image name, "
                              "or use an image with a Cmd or Entrypoint")
    return args


def _environment(run: RunOptions, config: dict, hostname: str, user) -> list[str]:
    values: dict[str, str] = {"PATH": DEFAULT_PATH}
    if run.tty:
        values["TERM"] = "xterm"
    values["HOSTNAME"] = hostname
    for entry in config.get("Env") or []:
        key, _, value = entry.partition("=")
        values[key] = value
    for path in run.env_files:
        for entry in parse.parse_env_file(path):
            key, _, value = entry.partition("=")
            values[key] = value
    for entry in parse.parse_env(run.env):
        key, _, value = entry.partition("=")
        values[key] = value
    values.setdefault("HOME", user.home)
    return [f"{key}={value}" for key, value in values.items()]


def _namespaces(network: str) -> list[dict]:
    kinds = ["pid", "ipc", "uts", "mount", "cgroup"]
    if network == "none":
        # NOTE: there is no bridge network yet, so the default is a network namespace
        # with only loopback, as --network none gives.
        kinds.append("network")
    elif network == "bridge":
        raise NotSupportedError("--network bridge is not supported yet: kakoi has no bridge "
                                "network; use none (the default) or host")
    elif network != "host":
        raise InvalidArgument(f"invalid --network {network!r}: use none or host")
    return [{"type": kind} for kind in kinds]


def _resources(run: RunOptions) -> dict:
    memory = parse.parse_memory(run.memory)
    swap = parse.parse_memory_swap(run.memory_swap, memory)
    cpu_quota = parse.parse_cpus(run.cpus)
    resources: dict = {}
    if memory is not None:
        resources["memory"] = {"limit": memory}
        if swap is not None:
            resources["memory"]["swap"] = swap
    cpu = {}
    if cpu_quota:
        cpu["quota"], cpu["period"] = cpu_quota
    if run.cpu_shares:  # 0 means the default weight, as in Docker
        if run.cpu_shares < 2:
            raise InvalidArgument(f"invalid --cpu-shares {run.cpu_shares}: the minimum is 2")
        cpu["shares"] = run.cpu_shares
    if cpu:
        resources["cpu"] = cpu
    if run.pids_limit is not None:
        resources["pids"] = {"limit": run.pids_limit if run.pids_limit > 0 else -1}
    resources["devices"] = ([{"allow": True, "access": "rwm"}] if run.privileged
                            else DEFAULT_DEVICE_RULES)
    return resources


def _capabilities(run: RunOptions, uid: int) -> dict:
    host_bounding = capabilities.bounding_set()
    if run.privileged:
        granted = list(host_bounding)
    else:
        granted = _adjust(DEFAULT_CAPABILITIES, run.cap_add, run.cap_drop, host_bounding)
    # Docker gives a non-root user no effective capabilities, only a bounding set.
    effective = granted if uid == 0 else []
    return {"bounding": granted, "effective": effective, "permitted": effective,
            "inheritable": [], "ambient": []}


def _adjust(base: list[str], add: list[str], drop: list[str], host: list[str]) -> list[str]:
    result = list(base)
    dropped = [capabilities.normalize(name) for name in drop if name.upper() != "ALL"]
    if any(name.upper() == "ALL" for name in drop):
        result = []
    for name in add:
        if name.upper() == "ALL":
            result = list(host)
            continue
        canonical = capabilities.normalize(name)
        if canonical not in host:
            raise NotSupportedError(f"--cap-add {name}: this host's bounding set lacks "
                                    f"{canonical}, so no container can have it")
        if canonical not in result:
            result.append(canonical)
    return [name for name in result if name not in dropped and name in host]


def _rlimits(ulimits: list[str]) -> list[dict]:
    import resource

    host_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = min(DEFAULT_NOFILE, host_hard) if host_hard != resource.RLIM_INFINITY \
        else DEFAULT_NOFILE
    limits = {"RLIMIT_NOFILE": {"type": "RLIMIT_NOFILE", "soft": nofile, "hard": nofile}}
    for text in ulimits:
        rlimit = parse.parse_ulimit(text)
        limits[rlimit["type"]] = rlimit
    return list(limits.values())


def _no_new_privileges(security_opt: list[str]) -> bool:
    enabled = False
    for option in security_opt:
        key, _, value = option.replace(":", "=", 1).partition("=")
        if key == "no-new-privileges":
            if value not in ("", "true", "false"):
                raise InvalidArgument(f"invalid --security-opt {option!r}: use "
                                      "no-new-privileges or no-new-privileges=false")
            enabled = value != "false"
        elif key == "seccomp" and value:
            continue  # read by _seccomp_profile
        elif key == "apparmor" and value == "unconfined":
            continue  # kakoi applies no AppArmor profile
        else:
            raise NotSupportedError(f"--security-opt {option!r} is not supported: kakoi "
                                    "accepts no-new-privileges, seccomp=unconfined, "
                                    "seccomp=PROFILE.json and apparmor=unconfined")
    return enabled


def _seccomp_profile(run: RunOptions) -> dict | None:
    """Return the seccomp profile: Docker's kind of default, a file's, or none.

    As in Docker, --privileged and seccomp=unconfined run without one. The default
    profile has no rules that depend on added capabilities, so with --cap-add
    SYS_ADMIN, say, mount and unshare still fail unless seccomp=unconfined is given.
    """
    chosen = None
    for option in run.security_opt:
        key, _, value = option.replace(":", "=", 1).partition("=")
        if key == "seccomp":
            chosen = value
    if run.privileged or chosen == "unconfined":
        return None
    if chosen is None:
        from kakoi.kernel.seccomp import default_profile
        return default_profile()
    import json
    try:
        with open(chosen) as file:
            profile = json.load(file)
    except OSError as error:
        raise InvalidArgument(f"cannot read --security-opt seccomp={chosen}: {error.strerror}")
    except ValueError as error:
        raise InvalidArgument(f"invalid JSON in --security-opt seccomp={chosen}: {error}")
    if not isinstance(profile, dict):
        raise InvalidArgument(f"--security-opt seccomp={chosen} must hold a JSON object")
    return profile


def _mounts(run: RunOptions, container_dir: str) -> list[dict]:
    sys_options = ["nosuid", "noexec", "nodev", "rw" if run.privileged else "ro"]
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": sys_options},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ]
    for name in ("resolv.conf", "hostname", "hosts"):
        mounts.append({"destination": f"/etc/{name}", "type": "bind",
                       "source": os.path.join(container_dir, name),
                       "options": ["rbind", "rprivate"]})
    mounts += [parse.parse_tmpfs(text) for text in run.tmpfs]
    mounts += [parse.parse_volume(text) for text in run.volumes]
    return mounts
