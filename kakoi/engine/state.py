"""Containers on disk: one directory each under ROOT/containers, with a container.json.

container.json is replaced atomically by a rename, so a reader sees the old record or
the new one. It is not fsynced: it records a process's state, which a crash ends
anyway, and an fsync would add milliseconds to every container start. A lock file
serializes the commands that create or remove containers.
"""

import fcntl
import json
import os
import re
import time
from contextlib import contextmanager

from kakoi.errors import ContainerError, InvalidArgument

# Docker's rule for container names.
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")

_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "keen", "lucid", "merry", "nimble",
               "proud", "quiet", "sharp", "steady", "swift", "tidy", "vivid", "warm", "witty")
_NOUNS = ("badger", "crane", "falcon", "heron", "ibis", "lynx", "marten", "otter", "panda",
          "quail", "raven", "sable", "stoat", "tern", "vole", "wren", "yak", "zebu")


def containers_dir(root: str) -> str:
    return os.path.join(root, "containers")


@contextmanager
def locked(root: str):
    """Hold the containers lock, so that two commands never pick the same name."""
    os.makedirs(containers_dir(root), exist_ok=True)
    fd = os.open(os.path.join(containers_dir(root), ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_record(directory: str, record: dict) -> None:
    path = os.path.join(directory, "container.json")
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(record, file, indent=1)
    os.rename(temporary, path)


def read_record(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, "container.json")) as file:
            return json.load(file)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def all_records(root: str) -> list[dict]:
    records = []
    try:
        names = os.listdir(containers_dir(root))
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith("."):
            continue
        record = read_record(os.path.join(containers_dir(root), name))
        if record is not None:
            records.append(record)
    return records


def find(root: str, name_or_id: str) -> dict:
    """Return the record with this name, full id or unique id prefix."""
    records = all_records(root)
    for record in records:
        if record["Name"] == name_or_id or record["Id"] == name_or_id:
            return record
    matches = [r for r in records if len(name_or_id) >= 3 and r["Id"].startswith(name_or_id)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ContainerError(f"container id prefix {name_or_id!r} is ambiguous: give more of it")
    raise ContainerError(f"no such container: {name_or_id}")


def unique_name(root: str, requested: str | None) -> str:
    taken = {record["Name"] for record in all_records(root)}
    if requested:
        if not _NAME.match(requested):
            raise InvalidArgument(f"invalid container name {requested!r}: use letters, digits "
                                  "and _ . -, starting with a letter or digit")
        if requested in taken:
            raise ContainerError(f"the container name {requested!r} is already in use: remove "
                                 "that container with kakoi rm, or choose another name")
        return requested
    while True:
        # os.urandom rather than the random module, which costs a millisecond to import.
        adjective, noun, number = os.urandom(3)
        name = f"{_ADJECTIVES[adjective % len(_ADJECTIVES)]}_{_NOUNS[noun % len(_NOUNS)]}"
        if name not in taken:
            return name
        name += f"_{number}"
        if name not in taken:
            return name


def images_in_use(root: str) -> dict[str, list[str]]:
    """Return image id -> names of the containers made from it."""
    result: dict[str, list[str]] = {}
    for record in all_records(root):
        result.setdefault(record["Image"], []).append(record["Name"])
    return result


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
