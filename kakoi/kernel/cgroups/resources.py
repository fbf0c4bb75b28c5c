"""The resource limits that kakoi writes into a cgroup, independent of cgroup version.

Each field is None when unset, so that the cgroup keeps the kernel's default. The v1 and
v2 backends each own a table of controller writers that names the fields they apply. A
new limit (blkio, hugepages, devices, a raw `unified` map) is a new field plus a writer in
each backend. `Cgroup.create` rejects a set field that no writer handles.
"""

from kakoi.errors import CgroupError

UNLIMITED = -1


class Resources:
    """Limits for one cgroup; memory sizes in bytes, CPU times in microseconds.

    An immutable plain class, not a dataclass: importing dataclasses costs about 5 ms,
    which every container start would pay.
    """

    __slots__ = ("memory_limit", "memory_swap", "memory_reservation", "cpu_shares",
                 "cpu_quota", "cpu_period", "cpuset_cpus", "cpuset_mems", "pids_limit")

    def __init__(self, memory_limit: int | None = None, memory_swap: int | None = None,
                 memory_reservation: int | None = None, cpu_shares: int | None = None,
                 cpu_quota: int | None = None, cpu_period: int | None = None,
                 cpuset_cpus: str | None = None, cpuset_mems: str | None = None,
                 pids_limit: int | None = None):
        set_field = object.__setattr__
        set_field(self, "memory_limit", memory_limit)
        # Memory plus swap, as OCI defines it: -1 means unlimited swap.
        set_field(self, "memory_swap", memory_swap)
        set_field(self, "memory_reservation", memory_reservation)
        set_field(self, "cpu_shares", cpu_shares)
        # -1 means no quota.
        set_field(self, "cpu_quota", cpu_quota)
        set_field(self, "cpu_period", cpu_period)
        set_field(self, "cpuset_cpus", cpuset_cpus)
        set_field(self, "cpuset_mems", cpuset_mems)
        # Zero or negative means no limit.
        set_field(self, "pids_limit", pids_limit)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: Resources is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: Resources is immutable")

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
        return f"Resources({fields})"

    def requested(self) -> list[str]:
        """Return the names of the fields that are set."""
        return [name for name in self.__slots__ if getattr(self, name) is not None]

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
