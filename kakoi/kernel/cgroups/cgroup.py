"""Create, join, inspect and remove one cgroup in every hierarchy that kakoi uses.

A path such as "kakoi/<id>" names the cgroup relative to each hierarchy's root, never to
the caller's own cgroup, which may belong to another manager.
"""

import errno
import os
import time

from kakoi import log
from kakoi.errors import CgroupError

from . import files, v1, v2
from .layout import Hierarchy, Layout
from .resources import Resources
from .writers import Writer

DESTROY_TIMEOUT = 5.0
FREEZE_TIMEOUT = 5.0

# signal.SIGKILL, which is 9 on every Linux architecture. Importing the signal module
# would also import enum, about 4 ms, for this one number.
SIGKILL = 9


class Cgroup:
    """One cgroup, present under the same path in each hierarchy that kakoi uses."""

    def __init__(self, layout: Layout, path: str):
        self.layout = layout
        self.path = normalize_path(path)
        self.hierarchies = layout.hierarchies()

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r}, mode={self.layout.mode!r})"

    @property
    def directories(self) -> list[str]:
        """Return the cgroup's directory in each hierarchy, v1 ones first."""
        return [os.path.join(hierarchy.mount_point, self.path) for hierarchy in self.hierarchies]

    def directory(self, controller: str) -> str | None:
        """Return the directory whose files control `controller`, or None if not mounted."""
        if self.layout.mode == "v2":
            return os.path.join(self.layout.unified, self.path)

        for hierarchy in self.hierarchies:
            if hierarchy.version == 1 and controller in hierarchy.controllers:
                return os.path.join(hierarchy.mount_point, self.path)
        return None

    @classmethod
    def create(cls, layout: Layout, path: str, resources: Resources) -> "Cgroup":
        """Create the cgroup in every hierarchy and write its limits.

        Raises:
            CgroupError: a limit needs a controller that the host lacks, the cgroup
                already exists, or a directory or file could not be written. Everything
                that create made is removed first, except the top-level parent directory
                (such as "kakoi"), which concurrent creates share.
        """
        cgroup = cls(layout, path)
        resources.validate()

        writers = v2.WRITERS if layout.mode == "v2" else v1.WRITERS
        required = _required_controllers(layout, writers, resources)
        log.debug("create cgroup %s in %s", cgroup.path,
                  [hierarchy.mount_point for hierarchy in cgroup.hierarchies], name=__name__)

        created: list[str] = []
        try:
            for hierarchy in cgroup.hierarchies:
                cgroup._make_directories(hierarchy, required, created)
            cgroup._write_limits(writers, resources)
        except BaseException:
            _remove_created(cgroup, created)
            raise
        return cgroup

    @classmethod
    def open(cls, layout: Layout, path: str) -> "Cgroup":
        """Return an existing cgroup.

        Raises:
            CgroupError: the cgroup exists in none of the hierarchies.
        """
        cgroup = cls(layout, path)
        if not any(os.path.isdir(directory) for directory in cgroup.directories):
            raise CgroupError(f"cgroup {cgroup.path} not found under {layout.root}")
        return cgroup

    def _make_directories(self, hierarchy: Hierarchy, required: set[str],
                          created: list[str]) -> None:
        parts = self.path.split("/")
        current = hierarchy.mount_point
        offered = set(hierarchy.controllers)

        for index, part in enumerate(parts):
            # On v2 a child can use only the controllers its parent enables. On a hybrid
            # host the controllers belong to v1, so the unified tree only names the cgroup.
            if self.layout.mode == "v2":
                to_enable = (required | v2.ROOT_CONTROLLERS) if index == 0 else v2.KAKOI_CONTROLLERS
                offered = v2.enable_controllers(current, offered, required, set(to_enable))

            current = os.path.join(current, part)
            is_leaf = index == len(parts) - 1
            _make_directory(current, is_leaf, created)

            if hierarchy.version == 1 and "cpuset" in hierarchy.controllers:
                v1.fill_cpuset(current)

    def update(self, resources: Resources) -> None:
        """Write new limits to the existing cgroup. Unset fields keep their current values.

        The same writers and checks as `create` apply, including the v1 order of the
        memory and memory+swap writes against the values the cgroup has now.

        Raises:
            CgroupError: a value is invalid, needs a controller that the host lacks, or
                the kernel rejected a write. Limits written before the failure stay.
        """
        resources.validate()
        writers = v2.WRITERS if self.layout.mode == "v2" else v1.WRITERS
        _required_controllers(self.layout, writers, resources)
        if not any(os.path.isdir(directory) for directory in self.directories):
            raise CgroupError(f"update cgroup {self.path}: it does not exist under "
                              f"{self.layout.root}")

        log.debug("update cgroup %s with %r", self.path, resources, name=__name__)
        self._write_limits(writers, resources)

    def freeze(self, timeout: float = FREEZE_TIMEOUT) -> None:
        """Stop every process in the cgroup and wait until the kernel reports it frozen.

        Raises:
            CgroupError: the host has no freezer, or the cgroup did not freeze within
                timeout seconds; it is thawed again before the error.
        """
        from . import freezer

        freezer.freeze(self._freezer_directory(), self.layout.mode == "v2", timeout)

    def thaw(self, timeout: float = FREEZE_TIMEOUT) -> None:
        """Let the processes of a frozen cgroup run again."""
        from . import freezer

        freezer.thaw(self._freezer_directory(), self.layout.mode == "v2", timeout)

    def state(self) -> str:
        """Return "frozen" or "thawed"; a host without a freezer reports "thawed"."""
        from . import freezer

        directory = self._freezer_directory(required=False)
        if directory is None:
            return "thawed"
        return freezer.state(directory, self.layout.mode == "v2")

    def _freezer_directory(self, required: bool = True) -> str | None:
        controller = "" if self.layout.mode == "v2" else "freezer"
        directory = self.directory(controller)
        if directory is None and required:
            raise CgroupError(f"freeze cgroup {self.path}: the freezer controller is not "
                              f"mounted on this host ({self.layout.mode})")
        return directory

    def stats(self) -> dict:
        """Return usage counters shaped like runc's `events --stats` data.

        The keys are "cpu", "memory", "pids", "blkio" and "hugetlb". Inside them, a
        counter whose file the kernel does not offer is left out.
        """
        from . import stats

        if self.layout.mode == "v2":
            return stats.read_v2(os.path.join(self.layout.unified, self.path))
        return stats.read_v1(self.directory)

    def _write_limits(self, writers: tuple[Writer, ...], resources: Resources) -> None:
        for writer in writers:
            if not any(getattr(resources, name) is not None for name in writer.fields):
                continue

            directory = self.directory(writer.controller)
            if directory is None:
                # _required_controllers let this through, so every value is a no-op.
                log.debug("skip %s: controller %s not mounted", writer.fields, writer.controller,
                          name=__name__)
                continue
            writer.apply(directory, resources)

    def add_process(self, pid: int = 0, versions: tuple[int, ...] = (1, 2)) -> None:
        """Move a process into the cgroup in every hierarchy of the given versions.

        Args:
            pid: the process to move; 0 means the calling process, which also works from
                inside a new PID namespace, where the caller's own pid number differs.
                The caller of pid 0 on v1 must be single-threaded: it is moved through
                the `tasks` file, one thread, because the kernel then skips its global
                threadgroup lock and the RCU grace period that taking it can cost.
            versions: which hierarchies to use, so that a caller can move itself into
                the v1 ones and let another process handle v2.
        """
        for hierarchy in self.hierarchies:
            if hierarchy.version not in versions:
                continue
            name = "tasks" if pid == 0 and hierarchy.version == 1 else "cgroup.procs"
            directory = os.path.join(hierarchy.mount_point, self.path)
            files.write(os.path.join(directory, name), str(pid))

    def pids(self) -> list[int]:
        """Return the processes in the cgroup, as pids of the caller's PID namespace."""
        found = set()
        for directory in self.directories:
            content = files.read_optional(os.path.join(directory, "cgroup.procs"))
            found.update(int(line) for line in (content or "").split())
        return sorted(found)

    def kill(self, signal_number: int = SIGKILL) -> None:
        """Send a signal to every process in the cgroup."""
        if signal_number == SIGKILL:
            self._kill_with_cgroup_kill()

        # NOTE: a pid read from cgroup.procs may be reused before the signal arrives.
        # cgroup.kill (v2, Linux 5.14 and later) has no such race, but it sends only SIGKILL.
        for pid in self.pids():
            try:
                os.kill(pid, signal_number)
            except ProcessLookupError:
                pass

    def _kill_with_cgroup_kill(self) -> None:
        for hierarchy, directory in zip(self.hierarchies, self.directories):
            kill_file = os.path.join(directory, "cgroup.kill")
            if hierarchy.version == 2 and os.path.exists(kill_file):
                files.write(kill_file, "1")

    def destroy(self, timeout: float = DESTROY_TIMEOUT) -> None:
        """Remove the cgroup and its child cgroups from every hierarchy.

        Processes still inside are killed with SIGKILL, and rmdir is retried until they
        are gone or `timeout` seconds have passed. Directories already gone are fine.

        Raises:
            CgroupError: a directory could still not be removed when the time ran out.
        """
        deadline = time.monotonic() + timeout
        remaining = [directory for directory in self.directories if os.path.exists(directory)]

        while True:
            remaining = [directory for directory in remaining if not _remove_tree(directory)]
            if not remaining:
                log.debug("destroyed cgroup %s", self.path, name=__name__)
                return

            if time.monotonic() > deadline:
                names = ", ".join(remaining)
                raise CgroupError(f"remove cgroup {self.path}: {names} still busy after "
                                  f"{timeout}s with processes {self.pids()}")

            self.kill(SIGKILL)
            time.sleep(0.01)

    def oom_kill_count(self) -> int:
        """Return how many processes the OOM killer killed in the cgroup.

        Returns 0 when the host has no memory controller or the file is missing.
        """
        directory = self.directory("memory")
        if directory is None:
            return 0

        name = "memory.events" if self.layout.mode == "v2" else "memory.oom_control"
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            return 0
        return files.read_keyed(path).get("oom_kill", 0)

    def memory_max_usage(self) -> int | None:
        """Return the peak memory usage in bytes, or None where the kernel does not record it."""
        directory = self.directory("memory")
        if directory is None:
            return None

        # memory.peak needs Linux 5.19 or later.
        name = "memory.peak" if self.layout.mode == "v2" else "memory.max_usage_in_bytes"
        content = files.read_optional(os.path.join(directory, name))
        return int(content) if content else None


def list_children(layout: Layout, parent: str = "kakoi") -> list[str]:
    """Return the paths of the cgroups directly below parent, in any hierarchy."""
    parent = normalize_path(parent)
    names = set()
    for hierarchy in layout.hierarchies():
        directory = os.path.join(hierarchy.mount_point, parent)
        if os.path.isdir(directory):
            with os.scandir(directory) as entries:
                names.update(entry.name for entry in entries if entry.is_dir())
    return [f"{parent}/{name}" for name in sorted(names)]


def normalize_path(path: str) -> str:
    """Return path relative to the hierarchy roots; "/kakoi/x" and "kakoi/x" are the same.

    Raises:
        CgroupError: the path is empty or contains "." or "..".
    """
    parts = [part for part in path.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts) or "." in path.split("/"):
        raise CgroupError(f"invalid cgroup path {path!r}: use a path such as kakoi/<id>")
    return "/".join(parts)


def _required_controllers(layout: Layout, writers: tuple[Writer, ...],
                          resources: Resources) -> set[str]:
    handled = {name for writer in writers for name in writer.fields}
    for name in resources.requested():
        if name not in handled:
            raise CgroupError(f"{name} is not supported by the cgroup {layout.mode} backend")

    required = set()
    for writer in writers:
        if writer.check is not None:
            writer.check(resources)

        fields = writer.required_fields(resources)
        if not fields:
            continue

        if not layout.available(writer.controller):
            raise CgroupError(f"{fields[0]} needs the {writer.controller} cgroup controller, "
                              f"which is not available on this host ({layout.mode})")
        required.add(writer.controller)

    if layout.mode == "v2":
        for controller, key in v2.unified_controllers(resources).items():
            if not layout.available(controller):
                raise CgroupError(f"unified resource {key!r} needs the {controller} cgroup "
                                  f"controller, which is not available on this host")
            required.add(controller)
    return required


def _make_directory(directory: str, is_leaf: bool, created: list[str]) -> None:
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:
        if is_leaf:
            raise CgroupError(f"create cgroup {directory}: it already exists; "
                              "destroy it or choose another path") from None
        return
    except OSError as exc:
        raise CgroupError(f"create cgroup {directory}: {exc.strerror}") from exc

    created.append(directory)


def _remove_created(cgroup: Cgroup, created: list[str]) -> None:
    mount_points = {hierarchy.mount_point for hierarchy in cgroup.hierarchies}
    for directory in reversed(created):
        is_shared_parent = os.path.dirname(directory) in mount_points and "/" in cgroup.path
        if is_shared_parent:
            continue
        try:
            _rmdir(directory)
        except OSError as exc:
            log.warning("leave %s after the failed create: %s", directory, exc.strerror,
                        name=__name__)


def _remove_tree(directory: str) -> bool:
    # Child cgroups (made by a process inside the container) must go before their parent.
    for current, _, _ in os.walk(directory, topdown=False):
        try:
            _rmdir(current)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                return False
            raise CgroupError(f"remove cgroup {current}: {exc.strerror}") from exc
    return True


def _rmdir(directory: str) -> None:
    # A cgroupfs directory can be removed with its interface files still listed in it.
    # Unit tests replace this function to give their fake trees the same behaviour.
    os.rmdir(directory)
