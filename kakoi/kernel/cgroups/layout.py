"""Detect which cgroup hierarchies a host mounts: pure v1, pure v2 or hybrid.

Detection reads /proc/self/mountinfo (or a mountinfo text that a test passes in) and keeps
the cgroup and cgroup2 mounts at the root directory or one level below it. Tests point the
root at a fake tree in a temporary directory, so that no root and no real cgroupfs is
needed.
"""

import os

from kakoi import log
from kakoi.errors import CgroupError

from . import files

DEFAULT_ROOT = "/sys/fs/cgroup"

# Every controller that a v1 mount may carry in its options.
V1_CONTROLLERS = frozenset({
    "blkio", "cpu", "cpuacct", "cpuset", "debug", "devices", "freezer", "hugetlb", "memory",
    "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma",
})

# The v1 hierarchies that kakoi creates its cgroups in. It also joins the named
# "systemd" hierarchy, as runc does, so that the container's view of it starts at its own
# cgroup instead of the host's root.
USED_V1_CONTROLLERS = frozenset({
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory", "pids",
})
USED_V1_NAMES = frozenset({"systemd"})


class _Frozen:
    """Immutable value class with equality and hashing over `__slots__`.

    Used instead of frozen dataclasses, whose import costs about 5 ms on every container
    start.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Hierarchy(_Frozen):
    """One mounted cgroup hierarchy; `mount_point` is an absolute str path."""

    # name is the name= option of a named v1 hierarchy, such as "systemd".
    __slots__ = ("mount_point", "version", "controllers", "name")

    def __init__(self, mount_point: str, version: int, controllers: frozenset[str],
                 name: str | None = None):
        object.__setattr__(self, "mount_point", os.fspath(mount_point))
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "controllers", controllers)
        object.__setattr__(self, "name", name)

    @property
    def mount_options(self) -> str:
        """Return the mount(2) data that mounts this v1 hierarchy again."""
        options = sorted(self.controllers)
        if self.name is not None:
            options.append(f"name={self.name}")
            if not self.controllers:
                options.insert(0, "none")
        return ",".join(options)

    @property
    def used(self) -> bool:
        """Whether kakoi creates its cgroups in this hierarchy."""
        if self.version == 2:
            return True
        return bool(self.controllers & USED_V1_CONTROLLERS) or self.name in USED_V1_NAMES


class Layout(_Frozen):
    """The cgroup hierarchies of a host, found by `detect`; every path is a str.

    `unified` is the cgroup2 mount: the root itself on v2, usually root/unified on a
    hybrid host. `v2_controllers` lists the v2 root's cgroup.controllers.
    """

    __slots__ = ("mode", "root", "unified", "v1", "v2_controllers")

    def __init__(self, mode: str, root: str, unified: str | None,
                 v1: tuple[Hierarchy, ...] = (),
                 v2_controllers: frozenset[str] = frozenset()):
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "root", os.fspath(root))
        object.__setattr__(self, "unified", None if unified is None else os.fspath(unified))
        object.__setattr__(self, "v1", tuple(v1))
        object.__setattr__(self, "v2_controllers", frozenset(v2_controllers))

    @property
    def v1_mounts(self) -> dict[str, str]:
        """Map each mounted v1 controller to its hierarchy's mount point."""
        return {
            controller: hierarchy.mount_point
            for hierarchy in self.v1
            for controller in sorted(hierarchy.controllers)
        }

    def hierarchies(self) -> list[Hierarchy]:
        """Return the hierarchies that kakoi creates cgroups in, v1 ones first.

        On a hybrid host the v2 tree is left out: its controllers are all bound to v1,
        so it limits nothing, and moving a process into it takes the kernel's global
        threadgroup lock, whose first taking after a quiet spell waits for an RCU grace
        period (7-15 ms per container start here).
        """
        used = [hierarchy for hierarchy in self.v1 if hierarchy.used]
        if self.unified is not None and self.mode == "v2":
            used.append(Hierarchy(self.unified, 2, self.v2_controllers))
        return used

    def available(self, controller: str) -> bool:
        """Return whether kakoi can set limits through this controller on this host."""
        if self.mode == "v2":
            return controller in self.v2_controllers
        return controller in self.v1_mounts


def detect(root: str = DEFAULT_ROOT, mountinfo: str | None = None) -> Layout:
    """Find the cgroup mounts at root and return the host's layout.

    Args:
        root: the directory under which the host mounts its cgroup hierarchies (str or
            os.PathLike).
        mountinfo: text in /proc/self/mountinfo format; read from /proc when None.

    Raises:
        CgroupError: no cgroup filesystem is mounted at root or directly below it.
    """
    if mountinfo is None:
        mountinfo = files.read("/proc/self/mountinfo")

    root = os.path.normpath(os.fspath(root))
    unified, v1 = _parse_mounts(root, mountinfo)

    if unified is None and not v1:
        raise CgroupError(f"no cgroup filesystem mounted at {root}: mount cgroup2 or cgroup v1")

    if unified == root:
        mode = "v2"
    elif unified is not None and any(hierarchy.controllers for hierarchy in v1):
        mode = "hybrid"
    elif v1:
        mode = "v1"
    else:
        mode = "v2"

    controllers = _v2_controllers(unified) if unified is not None else frozenset()
    layout = Layout(mode, root, unified, tuple(v1), controllers)

    log.debug("cgroup mode %s, unified %s, v1 controllers %s, v2 controllers %s",
              mode, unified, sorted(layout.v1_mounts), sorted(controllers), name=__name__)
    return layout


def _parse_mounts(root: str, mountinfo: str) -> tuple[str | None, list[Hierarchy]]:
    unified = None
    by_mount_point: dict[str, Hierarchy] = {}

    for line in mountinfo.splitlines():
        mount = _parse_line(line)
        if mount is None:
            continue

        mount_point, fstype, options = mount
        if mount_point != root and os.path.dirname(mount_point) != root:
            continue

        if fstype == "cgroup2":
            # A cgroup2 mount at the root hides anything mounted below it.
            unified = mount_point
        elif fstype == "cgroup":
            by_mount_point[mount_point] = _v1_hierarchy(mount_point, options)

    if unified == root:
        return unified, []

    return unified, _dedupe(by_mount_point.values())


def _parse_line(line: str) -> tuple[str, str, str] | None:
    # Fields: id parent major:minor root mount_point options [optional...] - fstype source super
    left, separator, right = line.partition(" - ")
    if not separator:
        return None

    left_fields = left.split()
    right_fields = right.split()
    if len(left_fields) < 5 or len(right_fields) < 3:
        return None

    mount_point = os.path.normpath(_unescape(left_fields[4]))
    return mount_point, right_fields[0], right_fields[2]


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as three-digit octal escapes.
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(escaped, plain)
    return text


def _v1_hierarchy(mount_point: str, options: str) -> Hierarchy:
    controllers = set()
    name = None
    for option in options.split(","):
        if option in V1_CONTROLLERS:
            controllers.add(option)
        elif option.startswith("name="):
            name = option.removeprefix("name=")
    return Hierarchy(mount_point, 1, frozenset(controllers), name)


def _dedupe(hierarchies) -> list[Hierarchy]:
    # The same hierarchy may be mounted twice, by a bind mount or under a second name for
    # a co-mounted pair. Only the first mount of each set of controllers is kept.
    seen = set()
    unique = []
    for hierarchy in hierarchies:
        key = (hierarchy.controllers, hierarchy.name)
        if key in seen:
            continue
        seen.add(key)
        unique.append(hierarchy)
    return unique


def _v2_controllers(unified: str) -> frozenset[str]:
    content = files.read_optional(os.path.join(unified, "cgroup.controllers"))
    return frozenset((content or "").split())
