"""The table shape shared by the v1 and v2 limit writers."""

from __future__ import annotations

from .resources import Resources

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Writer:
    """Writer of one controller's limits into a cgroup directory.

    `fields` names the Resources fields that this writer applies. `needs` returns the
    subset of them whose values require the controller, because an unlimited pids_limit,
    for example, needs no pids controller. `apply` gets the directory as a str path.
    """

    __slots__ = ("controller", "fields", "apply", "needs")

    def __init__(self, controller: str, fields: tuple[str, ...],
                 apply: Callable[[str, Resources], None],
                 needs: Callable[[Resources], list[str]] | None = None):
        self.controller = controller
        self.fields = fields
        self.apply = apply
        self.needs = needs

    def __repr__(self) -> str:
        return f"Writer({self.controller!r}, {self.fields!r})"

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
