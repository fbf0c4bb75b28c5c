"""The table shape shared by the v1 and v2 limit writers, and the writers both use."""

from __future__ import annotations

import os

from kakoi import log
from kakoi.errors import CgroupError

from . import files
from .resources import Resources

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Writer:
    """Writer of one controller's limits into a cgroup directory.

    `fields` names the Resources fields that this writer applies. `needs` returns the
    subset of them whose values require the controller, because an unlimited pids_limit,
    for example, needs no pids controller. `check` raises CgroupError for a value that
    this cgroup version cannot apply; it runs before any directory is made. `apply` gets
    the directory as a str path. An empty controller name means the files belong to
    every cgroup (cgroup.freeze, the v2 device program), not to a controller.
    """

    __slots__ = ("controller", "fields", "apply", "needs", "check")

    def __init__(self, controller: str, fields: tuple[str, ...],
                 apply: Callable[[str, Resources], None],
                 needs: Callable[[Resources], list[str]] | None = None,
                 check: Callable[[Resources], None] | None = None):
        self.controller = controller
        self.fields = fields
        self.apply = apply
        self.needs = needs
        self.check = check

    def __repr__(self) -> str:
        return f"Writer({self.controller!r}, {self.fields!r})"

    def required_fields(self, resources: Resources) -> list[str]:
        """Return the set fields that cannot be applied without this controller."""
        if not self.controller:
            return []
        if self.needs is not None:
            return self.needs(resources)
        return [name for name in self.fields if getattr(resources, name) is not None]


def limited_pids(resources: Resources) -> list[str]:
    """Return ["pids_limit"] when pids_limit is positive, which only the pids controller enforces."""
    if resources.pids_limit is not None and resources.pids_limit > 0:
        return ["pids_limit"]
    return []


def pids_max(limit: int) -> str:
    """Format pids.max: zero or a negative limit means no limit."""
    return "max" if limit <= 0 else str(limit)


def device_line(major: int, minor: int, value) -> str:
    """Format a per-device line such as "8:0 1048576"."""
    return f"{major}:{minor} {value}"


def reject_set(resources: Resources, names: tuple[str, ...], version: str) -> None:
    """Raise CgroupError for the first of names that is set, which version cannot apply."""
    for name in names:
        value = getattr(resources, name)
        if value is not None:
            raise CgroupError(f"{name} {value} is not supported on cgroup {version}: "
                              "remove it from the resources")


def ignore_kernel_memory(resources: Resources) -> None:
    """Log that kernel memory limits are ignored, as runc 1.0 and later ignore them.

    Linux 5.4 deprecated the kmem limit, and setting it could exhaust kernel memory
    accounting ids on older kernels.
    """
    for name in ("memory_kernel", "memory_kernel_tcp"):
        value = getattr(resources, name)
        if value is not None:
            log.warning("%s %d is ignored: kernel memory limits are deprecated", name, value,
                        name=__name__)


def memory_extras_needed(resources: Resources, fields: tuple[str, ...]) -> list[str]:
    """Return the set memory fields whose values change something, for Writer.needs."""
    needed = []
    for name in fields:
        value = getattr(resources, name)
        if value is None or name in ("memory_kernel", "memory_kernel_tcp"):
            continue
        if name == "memory_swappiness" and value == -1:
            continue
        if name == "memory_disable_oom_killer" and not value:
            continue
        needed.append(name)
    return needed


def write_cpuset(directory: str, resources: Resources) -> None:
    """Write cpuset.cpus and cpuset.mems, which have the same names and format on v1 and v2."""
    if resources.cpuset_cpus is not None:
        files.write(os.path.join(directory, "cpuset.cpus"), resources.cpuset_cpus)

    if resources.cpuset_mems is not None:
        files.write(os.path.join(directory, "cpuset.mems"), resources.cpuset_mems)


def write_pids(directory: str, resources: Resources) -> None:
    """Write pids.max, the same file on v1 and v2."""
    if resources.pids_limit is not None:
        files.write(os.path.join(directory, "pids.max"), pids_max(resources.pids_limit))
