"""Container state on disk for `kakoi-runtime`: one directory per container under the root.

    <root>/<id>/state.marshal   the container as created: init pid and start time, bundle,
                                the spec it was made from, its cgroup path
    <root>/<id>/exec.fifo       present from create until start (see init's exec fifo)

The state is written in marshal's format rather than JSON, because every command reads
it and marshal is built into the interpreter (see kakoi.jsontext for what json costs).
`kakoi-runtime state` prints it as the spec's JSON. Only kakoi-runtime, as root, writes
the file, so marshal may trust its content. marshal's format can change between Python
versions: a state written by another version is reported as unreadable, and
`delete --force` removes it.

The status is not stored: it is read from the process and the fifo each time, the
way runc does, so that a container whose init died shows "stopped" without anyone
having recorded it.
"""

import marshal
import os
import time

from kakoi.errors import ContainerError, InvalidArgument

DEFAULT_ROOT = "/run/kakoi"
STATE_FILE = "state.marshal"
_ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")
# The id names a directory, so it must fit in one file name.
_ID_MAX_LENGTH = 255


class InvalidState(ContainerError):
    """An operation that the container's current status does not allow."""


class UnreadableState(ContainerError):
    """A state file that this kakoi-runtime cannot decode."""


def validate_id(container_id: str) -> None:
    # runc's rule, ^[\w+-.]+$ with Go's ASCII-only \w, checked without compiling a regex.
    valid = 0 < len(container_id) <= _ID_MAX_LENGTH and _ID_CHARACTERS.issuperset(container_id)
    if not valid or container_id in (".", ".."):
        raise InvalidArgument(f"invalid container id {container_id[:80]!r}: use 1 to "
                              f"{_ID_MAX_LENGTH} ASCII letters, digits and + - . _")


def container_dir(root: str, container_id: str) -> str:
    validate_id(container_id)
    return os.path.join(root, container_id)


def reserve(root: str, container_id: str) -> str:
    """Make the container's directory; an existing one means the id is taken."""
    directory = container_dir(root, container_id)
    os.makedirs(root, mode=0o711, exist_ok=True)
    try:
        os.mkdir(directory, 0o711)
    except FileExistsError:
        raise ContainerError(f"container with id {container_id} already exists: delete it "
                             "first, or choose another id")
    return directory


def write(directory: str, state: dict) -> None:
    path = os.path.join(directory, STATE_FILE)
    temporary = path + ".tmp"
    with open(temporary, "wb") as file:
        file.write(marshal.dumps(state))
    os.rename(temporary, path)


def load(root: str, container_id: str) -> dict:
    directory = container_dir(root, container_id)
    try:
        with open(os.path.join(directory, STATE_FILE), "rb") as file:
            state = marshal.loads(file.read())
    except FileNotFoundError:
        if os.path.isdir(directory):
            raise InvalidState(f"container {container_id} is still being created")
        raise ContainerError(f"container {container_id} does not exist")
    except (EOFError, ValueError, TypeError):
        raise UnreadableState(f"the state of container {container_id} in {directory} is "
                             "unreadable (written by another version?): remove it with "
                             "delete --force")
    if not isinstance(state, dict):
        raise UnreadableState(f"the state of container {container_id} in {directory} is "
                             "unreadable: remove it with delete --force")
    state["_dir"] = directory
    return state


def process_start_time(pid: int) -> int | None:
    """Return the start time of pid in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None  # a zombie has exited; only its parent's wait is missing
    return int(fields[19])


def is_alive(state: dict) -> bool:
    """Whether the container's init is the process recorded at create, and not a zombie."""
    pid = state.get("pid", 0)
    return pid > 0 and process_start_time(pid) == state.get("start_time")


def status(state: dict, cgroup=None) -> str:
    if not is_alive(state):
        return "stopped"
    if os.path.exists(os.path.join(state["_dir"], "exec.fifo")):
        return "created"
    if cgroup is not None:
        try:
            if cgroup.state() == "frozen":
                return "paused"
        except (OSError, AttributeError):
            pass
    return "running"


def now() -> str:
    """Return the current time in RFC 3339 with nanoseconds, as runc's state shows it."""
    seconds = time.time_ns()
    whole, fraction = divmod(seconds, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{fraction:09d}Z"


def list_ids(root: str) -> list[str]:
    try:
        return sorted(name for name in os.listdir(root)
                      if os.path.isdir(os.path.join(root, name)))
    except FileNotFoundError:
        return []
