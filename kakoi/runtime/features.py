"""What this runtime supports, in the runtime spec's features format, and a default spec."""

from kakoi.kernel import capabilities
from kakoi.runtime.rootfs import _FLAG_OPTIONS, _PROPAGATION_OPTIONS
from kakoi.runtime.spec import NAMESPACE_FLAGS

OCI_VERSION_MIN = "1.0.0"
OCI_VERSION_MAX = "1.0.2"


def features() -> dict:
    """Return the features object of the runtime spec (features.md) for this host."""
    seccomp = _seccomp_features()
    return {
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": sorted(set(_FLAG_OPTIONS) | set(_PROPAGATION_OPTIONS)),
        "linux": {
            # user and time namespaces are refused by validation, so they are not listed.
            "namespaces": sorted(set(NAMESPACE_FLAGS) - {"user", "time"}),
            "capabilities": list(capabilities.NAMES[: capabilities.last_cap() + 1]),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False,
                       "rdma": False},
            "seccomp": seccomp,
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
        },
        "annotations": {"io.github.kakoi.runtime": "kakoi-runtime"},
    }


def _seccomp_features() -> dict:
    try:
        from kakoi.kernel import seccomp

        return {"enabled": True, "actions": sorted(seccomp.ACTIONS),
                "operators": sorted(seccomp.OPERATORS), "archs": sorted(seccomp.ARCHITECTURES),
                "supportedFlags": sorted(seccomp.FLAGS)}
    except (ImportError, AttributeError):
        return {"enabled": False}


def default_spec(rootless: bool = False) -> dict:
    """Return a config.json for a bundle whose rootfs/ holds a shell, like `runc spec`."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    spec = {
        "ociVersion": OCI_VERSION_MAX,
        "process": {
            "terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {kind: list(caps) for kind in ("bounding", "effective",
                                                           "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "kakoi",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts",
                                                       "mount", "cgroup")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }
    if rootless:
        # NOTE: kakoi-runtime itself refuses user namespaces for now; this spec is for
        # other runtimes, as `runc spec --rootless` writes it.
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
        spec["linux"]["resources"] = {}
        spec["mounts"] = [mount for mount in spec["mounts"] if mount["type"] != "cgroup"]
    return spec
