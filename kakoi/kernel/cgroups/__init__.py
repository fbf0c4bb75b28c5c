"""cgroups v1, v2 and hybrid: detection, creation with limits, joining, and removal.

This package owns the cgroup directories that kakoi creates below its own parent at each
hierarchy's root, and the container's mounted view of them. It contains no OCI logic:
the runtime converts a spec's resources into `Resources`. It imports only kakoi.errors
and kakoi.kernel.libc.
"""

from .cgroup import Cgroup, list_children, normalize_path
from .layout import Hierarchy, Layout, detect
from .resources import Resources
from .v2 import shares_to_weight, swap_max
from .view import mount_container_view

__all__ = [
    "Cgroup",
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
