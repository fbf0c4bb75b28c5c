"""Write resource limits into cgroup v1 controller directories.

Each controller has its own hierarchy, so each writer gets the cgroup's directory in the
hierarchy that carries its controller. The order of writes within a controller follows
runc 1.1, because the kernel checks some values against others already set.
"""

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
    write_cpuset,
    write_pids,
)

MEMORY_FIELDS = ("memory_limit", "memory_swap", "memory_reservation", "memory_kernel",
                 "memory_kernel_tcp", "memory_swappiness", "memory_disable_oom_killer",
                 "memory_use_hierarchy")
CPU_FIELDS = ("cpu_shares", "cpu_quota", "cpu_period", "cpu_burst", "cpu_realtime_runtime",
              "cpu_realtime_period", "cpu_idle")
BLKIO_FIELDS = ("blkio_weight", "blkio_leaf_weight", "blkio_weight_device",
                "blkio_throttle_read_bps", "blkio_throttle_write_bps",
                "blkio_throttle_read_iops", "blkio_throttle_write_iops")
THROTTLE_FILES = (
    ("blkio_throttle_read_bps", "blkio.throttle.read_bps_device"),
    ("blkio_throttle_write_bps", "blkio.throttle.write_bps_device"),
    ("blkio_throttle_read_iops", "blkio.throttle.read_iops_device"),
    ("blkio_throttle_write_iops", "blkio.throttle.write_iops_device"),
)


def _memory(directory: str, resources: Resources) -> None:
    _memory_and_swap(directory, resources.memory_limit, resources.memory_swap)

    if resources.memory_reservation is not None:
        soft_limit = os.path.join(directory, "memory.soft_limit_in_bytes")
        files.write(soft_limit, str(resources.memory_reservation))

    ignore_kernel_memory(resources)

    if resources.memory_disable_oom_killer:
        files.write(os.path.join(directory, "memory.oom_control"), "1")

    swappiness = resources.memory_swappiness
    if swappiness is not None and swappiness != -1:
        files.write(os.path.join(directory, "memory.swappiness"), str(swappiness))

    # Linux 5.16 and later always use the hierarchy and reject a write of 0.
    if resources.memory_use_hierarchy is not None:
        value = "1" if resources.memory_use_hierarchy else "0"
        files.write(os.path.join(directory, "memory.use_hierarchy"), value)


def _memory_needs(resources: Resources) -> list[str]:
    return memory_extras_needed(resources, MEMORY_FIELDS)


def _memory_and_swap(directory: str, limit: int | None, swap: int | None) -> None:
    memsw = os.path.join(directory, "memory.memsw.limit_in_bytes")
    if swap is not None and not os.path.exists(memsw):
        log.warning("%s is missing, so memory_swap %d is not applied: the kernel was built "
                    "without swap accounting", memsw, swap, name=__name__)
        swap = None

    limit_file = os.path.join(directory, "memory.limit_in_bytes")
    if limit is None:
        if swap is not None:
            files.write(memsw, str(swap))
        return

    if swap is None:
        files.write(limit_file, str(limit))
        return

    # The kernel rejects any write that leaves memory+swap below memory, so a limit above
    # the current memory+swap value needs the memory+swap value raised first.
    current_memsw = int(files.read(memsw))
    if _above(limit, current_memsw):
        files.write(memsw, str(swap))
        files.write(limit_file, str(limit))
    else:
        files.write(limit_file, str(limit))
        files.write(memsw, str(swap))


def _above(value: int, current: int) -> bool:
    if current == UNLIMITED:
        return False
    return value == UNLIMITED or value > current


def _cpu(directory: str, resources: Resources) -> None:
    # runc treats shares 0 as unset; the kernel would otherwise clamp it to 2.
    if resources.cpu_shares:
        files.write(os.path.join(directory, "cpu.shares"), str(resources.cpu_shares))

    # The period goes first, because a new quota is checked against the current period.
    if resources.cpu_period is not None:
        files.write(os.path.join(directory, "cpu.cfs_period_us"), str(resources.cpu_period))

    if resources.cpu_quota is not None:
        files.write(os.path.join(directory, "cpu.cfs_quota_us"), str(resources.cpu_quota))

    # The kernel checks the burst against the quota, so the burst goes after it.
    if resources.cpu_burst is not None:
        files.write(os.path.join(directory, "cpu.cfs_burst_us"), str(resources.cpu_burst))

    # The realtime runtime is checked against the period, so the period goes first too.
    if resources.cpu_realtime_period is not None:
        files.write(os.path.join(directory, "cpu.rt_period_us"),
                    str(resources.cpu_realtime_period))

    if resources.cpu_realtime_runtime is not None:
        files.write(os.path.join(directory, "cpu.rt_runtime_us"),
                    str(resources.cpu_realtime_runtime))

    if resources.cpu_idle is not None:
        files.write(os.path.join(directory, "cpu.idle"), str(resources.cpu_idle))


def _blkio(directory: str, resources: Resources) -> None:
    # With the BFQ scheduler and no CFQ, the kernel offers only blkio.bfq.weight. runc
    # picks the file the same way, by whether blkio.weight exists.
    if os.path.exists(os.path.join(directory, "blkio.weight")):
        weight_file, weight_device_file = "blkio.weight", "blkio.weight_device"
    else:
        weight_file, weight_device_file = "blkio.bfq.weight", "blkio.bfq.weight_device"

    # runc treats weight 0 as unset.
    if resources.blkio_weight:
        files.write(os.path.join(directory, weight_file), str(resources.blkio_weight))

    if resources.blkio_leaf_weight:
        files.write(os.path.join(directory, "blkio.leaf_weight"),
                    str(resources.blkio_leaf_weight))

    for major, minor, weight, leaf_weight in resources.blkio_weight_device or ():
        if weight:
            files.write(os.path.join(directory, weight_device_file),
                        device_line(major, minor, weight))
        if leaf_weight:
            files.write(os.path.join(directory, "blkio.leaf_weight_device"),
                        device_line(major, minor, leaf_weight))

    for field, name in THROTTLE_FILES:
        for major, minor, rate in getattr(resources, field) or ():
            files.write(os.path.join(directory, name), device_line(major, minor, rate))


def _blkio_needs(resources: Resources) -> list[str]:
    needed = []
    for name in BLKIO_FIELDS:
        value = getattr(resources, name)
        if value:
            needed.append(name)
    return needed


def _hugetlb(directory: str, resources: Resources) -> None:
    for page_size, limit in resources.hugepage_limits or ():
        files.write(os.path.join(directory, f"hugetlb.{page_size}.limit_in_bytes"), str(limit))


def _hugetlb_needs(resources: Resources) -> list[str]:
    return ["hugepage_limits"] if resources.hugepage_limits else []


def _devices(directory: str, resources: Resources) -> None:
    """Deny every device, then apply the rules in order, so that a later rule wins.

    Writing "a" to devices.deny also drops every exception that the cgroup had, so an
    update starts from the same empty state as a create.
    """
    # NOTE: on an update, the processes inside lose every device between this write and
    # the allow rules that follow; runc 1.1 avoids that window by writing only the
    # difference between the old and the new rules.
    files.write(os.path.join(directory, "devices.deny"), "a")

    for rule in resources.devices or ():
        name = "devices.allow" if rule.allow else "devices.deny"
        files.write(os.path.join(directory, name), str(rule))


def _unified_check(resources: Resources) -> None:
    for key, _ in resources.unified or ():
        raise CgroupError(f"unified resource {key!r} needs cgroup v2: this host mounts "
                          "cgroup v1 controllers, so remove it or use the matching v1 field")


def _unified(directory: str, resources: Resources) -> None:
    # _unified_check rejects a non-empty map before anything is created.
    return


WRITERS = (
    Writer("memory", MEMORY_FIELDS, _memory, _memory_needs),
    Writer("cpu", CPU_FIELDS, _cpu),
    Writer("cpuset", ("cpuset_cpus", "cpuset_mems"), write_cpuset),
    Writer("pids", ("pids_limit",), write_pids, limited_pids),
    Writer("blkio", BLKIO_FIELDS, _blkio, _blkio_needs),
    Writer("hugetlb", ("hugepage_limits",), _hugetlb, _hugetlb_needs),
    Writer("devices", ("devices",), _devices),
    Writer("", ("unified",), _unified, check=_unified_check),
)


def fill_cpuset(directory: str) -> None:
    """Copy cpuset.cpus and cpuset.mems from the parent when they are empty.

    A v1 cpuset cgroup starts with both empty, and the kernel rejects a task joining it
    until both are set.
    """
    for name in ("cpuset.cpus", "cpuset.mems"):
        if files.read_optional(os.path.join(directory, name)):
            continue
        value = files.read(os.path.join(os.path.dirname(directory), name))
        files.write(os.path.join(directory, name), value)
