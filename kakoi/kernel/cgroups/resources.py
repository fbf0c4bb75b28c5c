"""The resource limits that kakoi writes into a cgroup, independent of cgroup version.

Each field is None when unset, so that the cgroup keeps the kernel's default. The v1 and
v2 backends each own a table of controller writers that names the fields they apply. A
new limit (blkio, hugepages, devices, a raw `unified` map) is a new field plus a writer in
each backend. `Cgroup.create` rejects a set field that no writer handles.
"""

from dataclasses import dataclass, fields

from kakoi.errors import CgroupError

UNLIMITED = -1


@dataclass(frozen=True)
class Resources:
    """Limits for one cgroup; memory sizes in bytes, CPU times in microseconds."""

    memory_limit: int | None = None
    # Memory plus swap, as OCI defines it: -1 means unlimited swap.
    memory_swap: int | None = None
    memory_reservation: int | None = None
    cpu_shares: int | None = None
    # -1 means no quota.
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    # Zero or negative means no limit.
    pids_limit: int | None = None

    def requested(self) -> list[str]:
        """Return the names of the fields that are set."""
        return [field.name for field in fields(self) if getattr(self, field.name) is not None]

    def validate(self) -> None:
        """Raise CgroupError when the values contradict each other or are out of range."""
        for name in ("memory_limit", "memory_swap", "memory_reservation", "cpu_quota"):
            _check_size(name, getattr(self, name))

        _check_swap(self.memory_limit, self.memory_swap)

        if self.cpu_shares is not None and self.cpu_shares < 0:
            raise CgroupError(f"invalid cpu_shares {self.cpu_shares}: use a value from 2 to 262144")

        if self.cpu_period is not None and self.cpu_period <= 0:
            raise CgroupError(f"invalid cpu_period {self.cpu_period}: use a positive number of µs")


def _check_size(name: str, value: int | None) -> None:
    if value is None or value == UNLIMITED or value >= 0:
        return
    raise CgroupError(f"invalid {name} {value}: use a non-negative value or -1 for unlimited")


def _check_swap(memory: int | None, swap: int | None) -> None:
    if swap is None or swap == UNLIMITED:
        return

    if memory is None or memory == UNLIMITED:
        raise CgroupError(f"memory_swap {swap} needs a memory_limit: swap counts memory plus swap")

    if swap < memory:
        raise CgroupError(
            f"memory_swap {swap} is below memory_limit {memory}: memory_swap counts memory plus swap"
        )
