"""Write resource limits into a cgroup v2 directory and enable controllers on the way."""

import os

from kakoi import log
from kakoi.errors import CgroupError

from . import files
from .resources import UNLIMITED, Resources
from .writers import (
    Writer,
    device_line,
    ignore_kernel_memory,
    limited_pids,
    memory_extras_needed,
    reject_set,
    write_cpuset,
    write_pids,
)

# Controllers that kakoi enables below its own parent when the parent offers them.
KAKOI_CONTROLLERS = ("cpu", "cpuset", "hugetlb", "io", "memory", "misc", "pids", "rdma")

# At the hierarchy root, which other managers share, kakoi enables only the controllers
# its limits need plus memory, whose memory.events file reports OOM kills.
ROOT_CONTROLLERS = frozenset({"memory"})

DEFAULT_CPU_PERIOD = 100000

MEMORY_FIELDS = ("memory_limit", "memory_swap", "memory_reservation", "memory_kernel",
                 "memory_kernel_tcp", "memory_swappiness", "memory_disable_oom_killer",
                 "memory_use_hierarchy")
CPU_FIELDS = ("cpu_shares", "cpu_quota", "cpu_period", "cpu_burst", "cpu_realtime_runtime",
              "cpu_realtime_period", "cpu_idle")
IO_FIELDS = ("blkio_weight", "blkio_leaf_weight", "blkio_weight_device",
             "blkio_throttle_read_bps", "blkio_throttle_write_bps",
             "blkio_throttle_read_iops", "blkio_throttle_write_iops")
IO_MAX_KEYS = (
    ("blkio_throttle_read_bps", "rbps"),
    ("blkio_throttle_write_bps", "wbps"),
    ("blkio_throttle_read_iops", "riops"),
    ("blkio_throttle_write_iops", "wiops"),
)


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


def blkio_to_io_weight(weight: int) -> int:
    """Convert a v1 blkio weight (10..1000) to a v2 io.weight (1..10000), as runc does."""
    return 1 + (weight - 10) * 9999 // 990


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

    ignore_kernel_memory(resources)


def _memory_check(resources: Resources) -> None:
    # v2 has no per-cgroup swappiness and no switch for the OOM killer, and it always
    # accounts hierarchically, so only the values that change nothing are accepted.
    if resources.memory_swappiness not in (None, -1):
        reject_set(resources, ("memory_swappiness",), "v2")
    if resources.memory_disable_oom_killer:
        reject_set(resources, ("memory_disable_oom_killer",), "v2")
    if resources.memory_use_hierarchy is False:
        reject_set(resources, ("memory_use_hierarchy",), "v2")


def _memory_needs(resources: Resources) -> list[str]:
    needed = memory_extras_needed(resources, MEMORY_FIELDS)
    return [name for name in needed if name != "memory_use_hierarchy"]


def _cpu(directory: str, resources: Resources) -> None:
    # runc treats shares 0 as unset, so a zero from a spec leaves the default weight.
    if resources.cpu_shares:
        weight = shares_to_weight(resources.cpu_shares)
        files.write(os.path.join(directory, "cpu.weight"), str(weight))

    if resources.cpu_quota is not None or resources.cpu_period is not None:
        quota = resources.cpu_quota if resources.cpu_quota is not None else UNLIMITED
        period = resources.cpu_period or DEFAULT_CPU_PERIOD
        files.write(os.path.join(directory, "cpu.max"), f"{_limit(quota)} {period}")

    # The kernel checks the burst against the quota in cpu.max, so the burst goes after it.
    if resources.cpu_burst is not None:
        files.write(os.path.join(directory, "cpu.max.burst"), str(resources.cpu_burst))

    if resources.cpu_idle is not None:
        files.write(os.path.join(directory, "cpu.idle"), str(resources.cpu_idle))


def _cpu_check(resources: Resources) -> None:
    # The v2 cpu controller has no realtime bandwidth files; runc rejects them too.
    reject_set(resources, ("cpu_realtime_runtime", "cpu_realtime_period"), "v2")


def _io(directory: str, resources: Resources) -> None:
    # With the BFQ scheduler the kernel offers io.bfq.weight, which takes the v1 range
    # and per-device lines; otherwise io.weight takes the converted value, as in runc.
    bfq_weight = os.path.join(directory, "io.bfq.weight")
    use_bfq = os.path.exists(bfq_weight)

    # runc treats weight 0 as unset.
    if resources.blkio_weight:
        if use_bfq:
            files.write(bfq_weight, str(resources.blkio_weight))
        else:
            weight = blkio_to_io_weight(resources.blkio_weight)
            files.write(os.path.join(directory, "io.weight"), str(weight))

    for major, minor, weight, _ in resources.blkio_weight_device or ():
        if not weight:
            continue
        if use_bfq:
            files.write(bfq_weight, device_line(major, minor, weight))
        else:
            files.write(os.path.join(directory, "io.weight"),
                        device_line(major, minor, blkio_to_io_weight(weight)))

    for field, key in IO_MAX_KEYS:
        for major, minor, rate in getattr(resources, field) or ():
            # In v1 a rate of 0 removes the limit; io.max spells that "max".
            value = rate if rate else "max"
            files.write(os.path.join(directory, "io.max"), f"{major}:{minor} {key}={value}")


def _io_check(resources: Resources) -> None:
    # Leaf weights belonged to the v1 CFQ scheduler, which v2 never had.
    if resources.blkio_leaf_weight:
        reject_set(resources, ("blkio_leaf_weight",), "v2")
    for major, minor, _, leaf_weight in resources.blkio_weight_device or ():
        if leaf_weight:
            raise CgroupError(f"blkio_weight_device {major}:{minor} leaf_weight {leaf_weight} "
                              "is not supported on cgroup v2: remove the leaf weight")


def _io_needs(resources: Resources) -> list[str]:
    return [name for name in IO_FIELDS if getattr(resources, name)]


def _hugetlb(directory: str, resources: Resources) -> None:
    for page_size, limit in resources.hugepage_limits or ():
        files.write(os.path.join(directory, f"hugetlb.{page_size}.max"), str(limit))


def _hugetlb_needs(resources: Resources) -> list[str]:
    return ["hugepage_limits"] if resources.hugepage_limits else []


def _devices(directory: str, resources: Resources) -> None:
    # Imported here: the eBPF module loads ctypes and runs only when rules are given.
    from . import devices_bpf

    devices_bpf.apply(directory, resources.devices or ())


def _unified(directory: str, resources: Resources) -> None:
    for key, value in resources.unified or ():
        files.write(os.path.join(directory, key), str(value))


def unified_controllers(resources: Resources) -> dict[str, str]:
    """Map each controller that the unified keys need to its first key.

    Keys of the core "cgroup." files need no controller.
    """
    needed: dict[str, str] = {}
    for key, _ in resources.unified or ():
        controller = key.partition(".")[0]
        if controller != "cgroup":
            needed.setdefault(controller, key)
    return needed


WRITERS = (
    Writer("memory", MEMORY_FIELDS, _memory, _memory_needs, _memory_check),
    Writer("cpu", CPU_FIELDS, _cpu, check=_cpu_check),
    Writer("cpuset", ("cpuset_cpus", "cpuset_mems"), write_cpuset),
    Writer("pids", ("pids_limit",), write_pids, limited_pids),
    Writer("io", IO_FIELDS, _io, _io_needs, _io_check),
    Writer("hugetlb", ("hugepage_limits",), _hugetlb, _hugetlb_needs),
    # Device rules need no controller on v2: an eBPF program attached to the cgroup
    # enforces them.
    Writer("", ("devices",), _devices),
    Writer("", ("unified",), _unified),
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

