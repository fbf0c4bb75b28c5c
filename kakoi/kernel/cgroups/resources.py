"""The resource limits that kakoi writes into a cgroup, independent of cgroup version.

Each field is None when unset, so that the cgroup keeps the kernel's default. The v1 and
v2 backends each own a table of controller writers that names the fields they apply. A
new limit is a new field plus a writer in each backend. `Cgroup.create` and
`Cgroup.update` reject a set field that no writer handles, and each writer's `check`
rejects a value that its cgroup version cannot apply, before anything is written.
"""

from kakoi.errors import CgroupError

UNLIMITED = -1

# Device rule values for "any major" or "any minor", as the OCI spec writes them.
ANY = -1

_SIZE_UNITS = ("KB", "MB", "GB", "TB", "PB")


class DeviceRule:
    """One device cgroup rule: allow or deny `access` ("rwm") on a device type and number.

    `type` is "a" (all devices), "c" (character) or "b" (block). A major or minor of None
    or -1 matches any number.
    """

    __slots__ = ("allow", "type", "major", "minor", "access")

    def __init__(self, allow: bool, type: str = "a", major: int | None = None,
                 minor: int | None = None, access: str | None = "rwm"):
        set_field = object.__setattr__
        set_field(self, "allow", bool(allow))
        set_field(self, "type", type or "a")
        set_field(self, "major", ANY if major is None else major)
        set_field(self, "minor", ANY if minor is None else minor)
        set_field(self, "access", access or "rwm")

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: DeviceRule is immutable")

    def _values(self) -> tuple:
        return (self.allow, self.type, self.major, self.minor, self.access)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        verb = "allow" if self.allow else "deny"
        return f"DeviceRule({verb} {self})"

    def __str__(self) -> str:
        """Return the rule in the v1 devices.allow format, such as "c 1:3 rwm"."""
        major = "*" if self.major == ANY else str(self.major)
        minor = "*" if self.minor == ANY else str(self.minor)
        return f"{self.type} {major}:{minor} {self.access}"

    @property
    def matches_all(self) -> bool:
        """Whether the rule covers every device and every access."""
        return (self.type == "a" and self.major == ANY and self.minor == ANY
                and set(self.access) == set("rwm"))

    def validate(self) -> None:
        """Raise CgroupError when the type, numbers or access letters are invalid."""
        if self.type not in ("a", "b", "c"):
            raise CgroupError(f"invalid device rule type {self.type!r}: use a, b or c")

        if not self.access or set(self.access) - set("rwm"):
            raise CgroupError(f"invalid device rule access {self.access!r}: "
                              "use a combination of r, w and m")

        for name in ("major", "minor"):
            number = getattr(self, name)
            if number != ANY and number < 0:
                raise CgroupError(f"invalid device rule {name} {number}: "
                                  "use a non-negative number or -1 for any")


class Resources:
    """Limits for one cgroup; memory sizes in bytes, CPU times in microseconds.

    An immutable plain class, not a dataclass: importing dataclasses costs about 5 ms,
    which every container start would pay. Sequence fields are stored as tuples and
    `unified` as a tuple of (file, value) pairs sorted by file, so that a Resources is
    hashable; the constructor accepts lists and a dict.

    Device lists:
        blkio_weight_device: (major, minor, weight, leaf_weight), either weight None.
        blkio_throttle_*: (major, minor, rate) in bytes or I/O operations per second.
        hugepage_limits: (page_size, limit), page_size as in "2MB" or "1GB".
        devices: DeviceRule items, applied in order, so a later rule wins.
    """

    __slots__ = (
        "memory_limit", "memory_swap", "memory_reservation", "memory_kernel",
        "memory_kernel_tcp", "memory_swappiness", "memory_disable_oom_killer",
        "memory_use_hierarchy",
        "cpu_shares", "cpu_quota", "cpu_period", "cpu_burst", "cpu_realtime_runtime",
        "cpu_realtime_period", "cpu_idle",
        "cpuset_cpus", "cpuset_mems", "pids_limit",
        "blkio_weight", "blkio_leaf_weight", "blkio_weight_device",
        "blkio_throttle_read_bps", "blkio_throttle_write_bps",
        "blkio_throttle_read_iops", "blkio_throttle_write_iops",
        "hugepage_limits", "devices", "unified",
    )

    def __init__(self, memory_limit: int | None = None, memory_swap: int | None = None,
                 memory_reservation: int | None = None, cpu_shares: int | None = None,
                 cpu_quota: int | None = None, cpu_period: int | None = None,
                 cpuset_cpus: str | None = None, cpuset_mems: str | None = None,
                 pids_limit: int | None = None, *,
                 memory_kernel: int | None = None, memory_kernel_tcp: int | None = None,
                 memory_swappiness: int | None = None,
                 memory_disable_oom_killer: bool | None = None,
                 memory_use_hierarchy: bool | None = None,
                 cpu_burst: int | None = None, cpu_realtime_runtime: int | None = None,
                 cpu_realtime_period: int | None = None, cpu_idle: int | None = None,
                 blkio_weight: int | None = None, blkio_leaf_weight: int | None = None,
                 blkio_weight_device=None, blkio_throttle_read_bps=None,
                 blkio_throttle_write_bps=None, blkio_throttle_read_iops=None,
                 blkio_throttle_write_iops=None, hugepage_limits=None, devices=None,
                 unified: dict[str, str] | None = None):
        set_field = object.__setattr__
        set_field(self, "memory_limit", memory_limit)
        # Memory plus swap, as OCI defines it: -1 means unlimited swap.
        set_field(self, "memory_swap", memory_swap)
        set_field(self, "memory_reservation", memory_reservation)
        # Kernel memory limits are deprecated in Linux 5.4 and later; the writers ignore them.
        set_field(self, "memory_kernel", memory_kernel)
        set_field(self, "memory_kernel_tcp", memory_kernel_tcp)
        # 0 to 100; -1 keeps the parent's value, as Docker sends it.
        set_field(self, "memory_swappiness", memory_swappiness)
        set_field(self, "memory_disable_oom_killer", memory_disable_oom_killer)
        set_field(self, "memory_use_hierarchy", memory_use_hierarchy)
        set_field(self, "cpu_shares", cpu_shares)
        # -1 means no quota.
        set_field(self, "cpu_quota", cpu_quota)
        set_field(self, "cpu_period", cpu_period)
        set_field(self, "cpu_burst", cpu_burst)
        set_field(self, "cpu_realtime_runtime", cpu_realtime_runtime)
        set_field(self, "cpu_realtime_period", cpu_realtime_period)
        set_field(self, "cpu_idle", cpu_idle)
        set_field(self, "cpuset_cpus", cpuset_cpus)
        set_field(self, "cpuset_mems", cpuset_mems)
        # Zero or negative means no limit.
        set_field(self, "pids_limit", pids_limit)
        set_field(self, "blkio_weight", blkio_weight)
        set_field(self, "blkio_leaf_weight", blkio_leaf_weight)
        set_field(self, "blkio_weight_device", _tuples(blkio_weight_device))
        set_field(self, "blkio_throttle_read_bps", _tuples(blkio_throttle_read_bps))
        set_field(self, "blkio_throttle_write_bps", _tuples(blkio_throttle_write_bps))
        set_field(self, "blkio_throttle_read_iops", _tuples(blkio_throttle_read_iops))
        set_field(self, "blkio_throttle_write_iops", _tuples(blkio_throttle_write_iops))
        set_field(self, "hugepage_limits", _tuples(hugepage_limits))
        set_field(self, "devices", None if devices is None else tuple(devices))
        set_field(self, "unified", None if unified is None else tuple(sorted(dict(unified).items())))

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
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.requested())
        return f"Resources({fields})"

    def requested(self) -> list[str]:
        """Return the names of the fields that are set."""
        return [name for name in self.__slots__ if getattr(self, name) is not None]

    def validate(self) -> None:
        """Raise CgroupError when the values contradict each other or are out of range."""
        for name in ("memory_limit", "memory_swap", "memory_reservation", "cpu_quota",
                     "memory_kernel", "memory_kernel_tcp"):
            _check_size(name, getattr(self, name))

        _check_swap(self.memory_limit, self.memory_swap)

        if self.cpu_shares is not None and self.cpu_shares < 0:
            raise CgroupError(f"invalid cpu_shares {self.cpu_shares}: use a value from 2 to 262144")

        for name in ("cpu_period", "cpu_realtime_period"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise CgroupError(f"invalid {name} {value}: use a positive number of µs")

        if self.cpu_burst is not None and self.cpu_burst < 0:
            raise CgroupError(f"invalid cpu_burst {self.cpu_burst}: use a non-negative number of µs")

        swappiness = self.memory_swappiness
        if swappiness is not None and not (swappiness == -1 or 0 <= swappiness <= 100):
            raise CgroupError(f"invalid memory_swappiness {swappiness}: use a value from 0 to 100")

        self._validate_blkio()
        self._validate_hugepages()
        for rule in self.devices or ():
            rule.validate()
        self._validate_unified()

    def _validate_blkio(self) -> None:
        for name in ("blkio_weight", "blkio_leaf_weight"):
            _check_weight(name, getattr(self, name))

        for major, minor, weight, leaf_weight in self.blkio_weight_device or ():
            _check_device_number("blkio_weight_device", major, minor)
            _check_weight(f"blkio_weight_device {major}:{minor} weight", weight)
            _check_weight(f"blkio_weight_device {major}:{minor} leaf_weight", leaf_weight)

        for name in ("blkio_throttle_read_bps", "blkio_throttle_write_bps",
                     "blkio_throttle_read_iops", "blkio_throttle_write_iops"):
            for major, minor, rate in getattr(self, name) or ():
                _check_device_number(name, major, minor)
                if rate < 0:
                    raise CgroupError(f"invalid {name} rate {rate} for {major}:{minor}: "
                                      "use a non-negative number, 0 for no limit")

    def _validate_hugepages(self) -> None:
        for page_size, limit in self.hugepage_limits or ():
            number = page_size[:-2]
            if not (number.isdigit() and page_size[-2:] in _SIZE_UNITS):
                raise CgroupError(f"invalid hugepage page size {page_size!r}: "
                                  "use a size such as 2MB or 1GB")
            if limit < 0:
                raise CgroupError(f"invalid hugepage limit {limit} for {page_size}: "
                                  "use a non-negative number of bytes")

    def _validate_unified(self) -> None:
        for key, _ in self.unified or ():
            controller, dot, parameter = key.partition(".")
            if "/" in key or not dot or not controller or not parameter:
                raise CgroupError(f"invalid unified key {key!r}: "
                                  "use a cgroup v2 file name such as memory.high")


def _tuples(items) -> tuple | None:
    if items is None:
        return None
    return tuple(tuple(item) for item in items)


def _check_size(name: str, value: int | None) -> None:
    if value is None or value == UNLIMITED or value >= 0:
        return
    raise CgroupError(f"invalid {name} {value}: use a non-negative value or -1 for unlimited")


def _check_weight(name: str, value: int | None) -> None:
    # The OCI spec and the v1 kernel take weights from 10 to 1000; runc treats 0 as unset.
    if value is None or value == 0 or 10 <= value <= 1000:
        return
    raise CgroupError(f"invalid {name} {value}: use a value from 10 to 1000")


def _check_device_number(name: str, major: int, minor: int) -> None:
    if major < 0 or minor < 0:
        raise CgroupError(f"invalid {name} device {major}:{minor}: "
                          "use non-negative major and minor numbers")


def _check_swap(memory: int | None, swap: int | None) -> None:
    if swap is None or swap == UNLIMITED:
        return

    if memory is None or memory == UNLIMITED:
        raise CgroupError(f"memory_swap {swap} needs a memory_limit: swap counts memory plus swap")

    if swap < memory:
        raise CgroupError(
            f"memory_swap {swap} is below memory_limit {memory}: memory_swap counts memory plus swap"
        )
