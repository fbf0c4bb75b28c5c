"""Read and write cgroup interface files, turning OSError into CgroupError with the path.

Paths are str (or any os.PathLike): the run path avoids pathlib, which costs several
milliseconds to import.
"""

import os

from kakoi import log
from kakoi.errors import CgroupError


def write(path: str, value: str) -> None:
    """Write value to an interface file in one write(2), as the kernel expects."""
    log.debug("write %s to %s", value, path, name=__name__)
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


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as stream:
        return stream.read().rstrip("\n")


def read(path: str) -> str:
    """Return the file's content without the trailing newline."""
    try:
        return _read_text(path)
    except OSError as exc:
        raise CgroupError(f"read {path}: {exc.strerror}") from exc


def read_optional(path: str) -> str | None:
    """Return the file's content, or None when the file does not exist."""
    try:
        return _read_text(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CgroupError(f"read {path}: {exc.strerror}") from exc


def read_keyed(path: str) -> dict[str, int]:
    """Parse a flat keyed file such as memory.events ("key value" per line)."""
    values = {}
    for line in read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values
