"""Resolve `--user` (or the image's User) against the image's /etc/passwd and /etc/group."""

import os

from kakoi.errors import InvalidArgument
from kakoi.runtime.spec import MAX_ID


class User:
    """The ids a container process runs with, and the home directory for $HOME."""

    def __init__(self, uid: int = 0, gid: int = 0, additional_gids: list[int] | None = None,
                 home: str = "/root"):
        self.uid = uid
        self.gid = gid
        self.additional_gids = additional_gids or []
        self.home = home


def read_image_file(layer_dirs: list[str], path: str) -> str | None:
    """Return the text of path as the merged image shows it: the topmost layer that has it.

    Reads each layer's copy without following symlinks, so an image cannot point this
    read at a host file. A whiteout (a 0/0 character device) in a higher layer hides it.
    """
    relative = path.lstrip("/")
    for layer in reversed(layer_dirs):
        candidate = os.path.join(layer, relative)
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None  # a symlink or a whiteout device: leave the lookup to numeric ids
        with os.fdopen(fd, encoding="utf-8", errors="replace") as file:
            if not os.path.isfile(candidate):
                return None
            return file.read(1 << 20)
    return None


def resolve(text: str, layer_dirs: list[str]) -> User:
    """Parse user[:group], each a name or a number, as Docker does."""
    user_part, _, group_part = text.partition(":")
    passwd = _parse(read_image_file(layer_dirs, "/etc/passwd"), 7)
    groups = _parse(read_image_file(layer_dirs, "/etc/group"), 4)

    entry = _find(passwd, user_part or "0")
    if entry is not None:
        uid, gid, home, name = int(entry[2]), int(entry[3]), entry[5] or "/", entry[0]
    elif user_part.isdigit() or not user_part:
        uid, gid, home, name = int(user_part or 0), 0, "/", None
    else:
        raise InvalidArgument(f"unable to find user {user_part}: no matching entries in the "
                              "image's /etc/passwd")
    if group_part:
        group = _find(groups, group_part)
        if group is not None:
            gid = int(group[2])
        elif group_part.isdigit():
            gid = int(group_part)
        else:
            raise InvalidArgument(f"unable to find group {group_part}: no matching entries in "
                                  "the image's /etc/group")
    additional = sorted({int(group[2]) for group in groups
                         if name and name in group[3].split(",") and int(group[2]) != gid})
    for value in (uid, gid, *additional):
        if value > MAX_ID:
            raise InvalidArgument(f"invalid user {text!r}: ids must be from 0 to {MAX_ID}")
    return User(uid, gid, additional, home if uid != 0 or home != "/" else "/root")


def _parse(text: str | None, fields: int) -> list[list[str]]:
    rows = []
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) >= fields and parts[2].isdigit() and (fields < 4 or parts[3].isdigit()
                                                            or fields == 4):
            rows.append(parts)
    return rows


def _find(rows: list[list[str]], key: str) -> list[str] | None:
    for row in rows:
        if row[0] == key:
            return row
    if key.isdigit():
        for row in rows:
            if row[2] == key:
                return row
    return None
