"""Write resource limits into a cgroup v2 directory and enable controllers on the way."""

import os

from kakoi import log
from kakoi.errors import CgroupError

from . import files
from .resources import UNLIMITED, Resources
from .writers import Writer, limited_pids, pids_max

# Controllers that kakoi enables below its own parent when the parent offers them.
KAKOI_CONTROLLERS = ("cpu", "cpuset", "hugetlb", "io", "memory", "misc", "pids", "rdma")

# At the hierarchy root, which other managers share, kakoi enables only the controllers
# its limits need plus memory, whose memory.events file reports OOM kills.
ROOT_CONTROLLERS = frozenset({"memory"})

DEFAULT_CPU_PERIOD = 100000


def shares_to_weight(shares: int) -> int:
    """Convert v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000).

    This is the linear map that runc and crun use, so that shares 1024 become weight 39.
    Values outside 2..262144 are clamped first, as the v1 kernel clamps them.
    """
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def swap_max(memory: int, swap: int) -> str:
    """Convert OCI memory+swap to memory.swap.max, which counts swap alone."""
    if swap == UNLIMITED:
        return "max"
    return str(swap - memory)


def _limit(value: int) -> str:
    return "max" if value == UNLIMITED else str(value)


def _memory(directory: str, resources: Resources) -> None:
    if resources.memory_limit is not None:
        files.write(os.path.join(directory, "memory.max"), _limit(resources.memory_limit))

    if resources.memory_swap is not None:
        # Resources.validate guarantees a memory limit when swap is limited.
        memory = resources.memory_limit if resources.memory_limit is not None else UNLIMITED
        swap = swap_max(memory, resources.memory_swap)
        files.write(os.path.join(directory, "memory.swap.max"), swap)

    if resources.memory_reservation is not None:
        # NOTE: v1's "-1" soft limit means no soft limit; the v2 equivalent is no protection.
        reservation = max(resources.memory_reservation, 0)
        files.write(os.path.join(directory, "memory.low"), str(reservation))


def _cpu(directory: str, resources: Resources) -> None:
    # runc treats shares 0 as unset, so a zero from a spec leaves the default weight.
    if resources.cpu_shares:
        weight = shares_to_weight(resources.cpu_shares)
        files.write(os.path.join(directory, "cpu.weight"), str(weight))

    if resources.cpu_quota is None and resources.cpu_period is None:
        return

    quota = resources.cpu_quota if resources.cpu_quota is not None else UNLIMITED
    period = resources.cpu_period or DEFAULT_CPU_PERIOD
    files.write(os.path.join(directory, "cpu.max"), f"{_limit(quota)} {period}")


def _cpuset(directory: str, resources: Resources) -> None:
    if resources.cpuset_cpus is not None:
        files.write(os.path.join(directory, "cpuset.cpus"), resources.cpuset_cpus)

    if resources.cpuset_mems is not None:
        files.write(os.path.join(directory, "cpuset.mems"), resources.cpuset_mems)


def _pids(directory: str, resources: Resources) -> None:
    if resources.pids_limit is not None:
        files.write(os.path.join(directory, "pids.max"), pids_max(resources.pids_limit))


WRITERS = (
    Writer("memory", ("memory_limit", "memory_swap", "memory_reservation"), _memory),
    Writer("cpu", ("cpu_shares", "cpu_quota", "cpu_period"), _cpu),
    Writer("cpuset", ("cpuset_cpus", "cpuset_mems"), _cpuset),
    Writer("pids", ("pids_limit",), _pids, limited_pids),
)


def enable_controllers(directory: str, offered: set[str], required: set[str],
                       to_enable: set[str]) -> set[str]:
    """Enable the requested controllers in directory's cgroup.subtree_control.

    Args:
        directory: a cgroup whose children will use the controllers.
        offered: the controllers that directory itself has (its cgroup.controllers).
        required: controllers whose failure to enable is an error, not a warning.
        to_enable: the controllers to enable where offered.

    Returns:
        The controllers enabled for directory's children afterwards.
    """
    control = os.path.join(directory, "cgroup.subtree_control")
    enabled = set((files.read_optional(control) or "").split())
    missing = [name for name in KAKOI_CONTROLLERS
               if name in to_enable and name in offered and name not in enabled]
    if not missing:
        return enabled

    try:
        files.write(control, " ".join(f"+{name}" for name in missing))
        log.debug("enabled controllers %s in %s", missing, control, name=__name__)
        return enabled | set(missing)
    except CgroupError:
        log.debug("enabling %s in %s at once failed, trying one at a time", missing, control,
                  name=__name__)

    # One at a time, so that one controller the kernel refuses (cpu with a realtime task
    # in the way, for example) does not keep the others off.
    for name in missing:
        try:
            files.write(control, f"+{name}")
            enabled.add(name)
        except CgroupError as exc:
            if name in required:
                raise
            log.warning("controller %s stays disabled below %s: %s", name, directory, exc,
                        name=__name__)
    return enabled

