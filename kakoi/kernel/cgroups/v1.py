"""Write resource limits into cgroup v1 controller directories.

Each controller has its own hierarchy, so each writer gets the cgroup's directory in the
hierarchy that carries its controller.
"""

import os

from kakoi import log

from . import files
from .resources import UNLIMITED, Resources
from .writers import Writer, limited_pids, pids_max


def _memory(directory: str, resources: Resources) -> None:
    _memory_and_swap(directory, resources.memory_limit, resources.memory_swap)

    if resources.memory_reservation is not None:
        soft_limit = os.path.join(directory, "memory.soft_limit_in_bytes")
        files.write(soft_limit, str(resources.memory_reservation))


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
