"""The table shape shared by the v1 and v2 limit writers."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .resources import Resources


@dataclass(frozen=True)
class Writer:
    """Writer of one controller's limits into a cgroup directory.

    `fields` names the Resources fields that this writer applies. `needs` returns the
    subset of them whose values require the controller, because an unlimited pids_limit,
    for example, needs no pids controller.
    """

    controller: str
    fields: tuple[str, ...]
    apply: Callable[[Path, Resources], None]
    needs: Callable[[Resources], list[str]] | None = None

    def required_fields(self, resources: Resources) -> list[str]:
        """Return the set fields that cannot be applied without this controller."""
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
