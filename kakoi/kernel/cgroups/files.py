"""Read and write cgroup interface files, turning OSError into CgroupError with the path."""

import logging
import os
from pathlib import Path

from kakoi.errors import CgroupError

log = logging.getLogger(__name__)


def write(path: Path, value: str) -> None:
    """Write value to an interface file in one write(2), as the kernel expects."""
    log.debug("write %s to %s", value, path)
    try:
        # O_CREAT is a no-op for an existing cgroupfs file and fails for a missing one,
        # while it lets a fake tree in a temporary directory record the value.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError(f"write {value} to {path}: {exc.strerror}") from exc


def read(path: Path) -> str:
    """Return the file's content without the trailing newline."""
    try:
        return path.read_text().rstrip("\n")
    except OSError as exc:
        raise CgroupError(f"read {path}: {exc.strerror}") from exc


def read_optional(path: Path) -> str | None:
    """Return the file's content, or None when the file does not exist."""
    try:
        return path.read_text().rstrip("\n")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CgroupError(f"read {path}: {exc.strerror}") from exc


def read_keyed(path: Path) -> dict[str, int]:
    """Parse a flat keyed file such as memory.events ("key value" per line)."""
    values = {}
    for line in read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values
