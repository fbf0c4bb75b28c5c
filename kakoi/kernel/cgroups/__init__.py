"""cgroups v1, v2 and hybrid: detection, creation with limits, joining, and removal.

This package owns the cgroup directories that kakoi creates below its own parent at each
hierarchy's root, and the container's mounted view of them. It contains no OCI logic:
the runtime converts a spec's resources into `Resources`. It imports only kakoi.errors,
kakoi.log and kakoi.kernel.libc. Every path it takes or returns is a str, because
`kakoi run` imports this package and pathlib would add several milliseconds to each start.
"""

from .cgroup import Cgroup, list_children, normalize_path
from .layout import Hierarchy, Layout, detect
from .resources import DeviceRule, Resources
from .v2 import shares_to_weight, swap_max
from .view import mount_container_view

__all__ = [
    "Cgroup",
    "DeviceRule",
    "Hierarchy",
    "Layout",
    "Resources",
    "detect",
    "list_children",
    "mount_container_view",
    "normalize_path",
    "shares_to_weight",
    "swap_max",
]
