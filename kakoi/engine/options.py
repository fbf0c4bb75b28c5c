"""Parse the values of `kakoi run` flags the way Docker reads them."""

import os
import re

from kakoi.errors import InvalidArgument

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}

# Docker's lower bound for --memory, because a smaller limit kills the container at start.
MIN_MEMORY = 6 * 1024 * 1024

ULIMIT_NAMES = {
    "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE",
    "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC",
    "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO", "rttime": "RLIMIT_RTTIME",
    "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK", "as": "RLIMIT_AS",
}


def parse_size(text: str, flag: str) -> int:
    """Parse "50m", "1.5g", "512k" or "1048576" (bytes) with binary units."""
    match = _SIZE.match(text)
    if not match:
        raise InvalidArgument(f"invalid size {text!r} for {flag}: use a number with an optional "
                              "unit b, k, m or g, such as 50m")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def parse_memory(text: str | None) -> int | None:
    """Parse --memory; 0 means no limit, as in Docker."""
    if text is None:
        return None
    value = parse_size(text, "--memory")
    if value == 0:
        return None
    if value < MIN_MEMORY:
        raise InvalidArgument(f"--memory {text} is below the minimum of 6m")
    return value


def parse_memory_swap(text: str | None, memory: int | None) -> int | None:
    """Return the spec's memory.swap (memory plus swap), Docker's default being twice --memory."""
    if text is None:
        return memory * 2 if memory else None
    if text.strip() == "-1":
        return -1
    if memory is None:
        raise InvalidArgument("--memory-swap needs --memory as well")
    value = parse_size(text, "--memory-swap")
    if value < memory:
        raise InvalidArgument(f"--memory-swap {text} must be at least --memory, or -1 for unlimited")
    return value


def parse_cpus(text: str | None, period: int = 100000) -> tuple[int, int] | None:
    """Return (quota, period) in microseconds for --cpus, such as 0.5."""
    if text is None:
        return None
    try:
        cpus = float(text)
    except ValueError:
        raise InvalidArgument(f"invalid --cpus {text!r}: use a decimal number such as 0.5")
    if cpus <= 0:
        raise InvalidArgument(f"invalid --cpus {text!r}: it must be greater than 0")
    if cpus * period < 1000:
        raise InvalidArgument(f"invalid --cpus {text!r}: the minimum is 0.01, because the "
                              "kernel's smallest CPU quota is 1 ms per 100 ms period")
    available = os.cpu_count() or 1
    if cpus > available:
        raise InvalidArgument(f"--cpus {text} exceeds the {available} CPUs of this host")
    return int(cpus * period), period


def parse_ulimit(text: str) -> dict:
    """Parse name=soft[:hard], such as nofile=1024:2048, into a spec rlimit."""
    name, _, values = text.partition("=")
    if name not in ULIMIT_NAMES or not values:
        raise InvalidArgument(f"invalid --ulimit {text!r}: use name=soft[:hard] with a name "
                              "such as nofile, nproc or core")
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = _ulimit_value(soft_text)
        hard = _ulimit_value(hard_text) if hard_text else soft
    except ValueError:
        raise InvalidArgument(f"invalid --ulimit {text!r}: limits must be integers or -1")
    if soft > hard:
        raise InvalidArgument(f"invalid --ulimit {text!r}: the soft limit exceeds the hard limit")
    return {"type": ULIMIT_NAMES[name], "soft": soft, "hard": hard}


def _ulimit_value(text: str) -> int:
    value = int(text)
    return (1 << 64) - 1 if value == -1 else value


def parse_env_file(path: str) -> list[str]:
    """Read KEY=VALUE lines as `docker run --env-file` does: # comments, bare KEY from the host."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as error:
        raise InvalidArgument(f"cannot read --env-file {path}: {error.strerror}")
    result = []
    for number, line in enumerate(lines, 1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        result.extend(parse_env([stripped], f"--env-file {path}:{number}"))
    return result


def parse_env(entries: list[str], flag: str = "--env") -> list[str]:
    """Return KEY=VALUE entries; a bare KEY takes the host's value, or is dropped if unset."""
    result = []
    for entry in entries:
        key, equals, value = entry.partition("=")
        if not key or any(c.isspace() for c in key):
            raise InvalidArgument(f"invalid environment variable {entry!r} in {flag}")
        if equals:
            result.append(f"{key}={value}")
        elif key in os.environ:
            result.append(f"{key}={os.environ[key]}")
    return result


def parse_volume(text: str) -> dict:
    """Parse host:container[:options] into a bind mount of the spec."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 3 or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume {text!r}: use /host/path:/container/path[:ro]")
    source, destination = parts[0], parts[1]
    options = parts[2].split(",") if len(parts) == 3 else []
    if not source.startswith("/"):
        raise InvalidArgument(f"invalid volume {text!r}: the host path must be absolute "
                              "(named volumes are not supported yet)")
    if not destination.startswith("/") or destination == "/":
        raise InvalidArgument(f"invalid volume {text!r}: the container path must be absolute "
                              "and not /")
    if not os.path.exists(source):
        raise InvalidArgument(f"volume source {source} does not exist: create it first")
    mount_options = ["rbind", "rprivate"]
    for option in options:
        if option in ("ro", "rw"):
            mount_options.append(option)
        elif option in ("z", "Z", "rprivate", "private", "rslave", "slave", "rshared", "shared"):
            if option not in ("z", "Z"):
                mount_options[1] = option
        else:
            raise InvalidArgument(f"invalid volume option {option!r} in {text!r}: use ro or rw")
    return {"destination": os.path.normpath(destination), "type": "bind",
            "source": os.path.realpath(source), "options": mount_options}


_TMPFS_OPTIONS = {"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "huge", "mpol"}
_TMPFS_FLAGS = {"ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
                "noatime", "atime", "nodiratime", "diratime", "relatime", "strictatime"}


def parse_tmpfs(text: str) -> dict:
    """Parse /path[:options] into a tmpfs mount, with Docker's defaults nosuid,nodev,noexec."""
    destination, _, option_text = text.partition(":")
    if not destination.startswith("/"):
        raise InvalidArgument(f"invalid --tmpfs {text!r}: the path must be absolute")
    if os.path.normpath(destination) == "/":
        raise InvalidArgument(f"invalid --tmpfs {text!r}: a tmpfs cannot replace the root; "
                              "use --read-only with --tmpfs on the paths that need writes")
    options = ["nosuid", "nodev", "noexec"]
    for option in option_text.split(","):
        if not option:
            continue
        key, equals, value = option.partition("=")
        if option in _TMPFS_FLAGS:
            pass
        elif key in _TMPFS_OPTIONS and equals and value:
            if key == "mode" and not (value.isdigit() and set(value) <= set("01234567")):
                raise InvalidArgument(f"invalid --tmpfs option {option!r} in {text!r}: "
                                      "mode is an octal number such as 1777")
            if key == "size" and not _SIZE.match(value.rstrip("%")):
                raise InvalidArgument(f"invalid --tmpfs option {option!r} in {text!r}: "
                                      "size is a number with k, m or g, or a percentage")
        else:
            raise InvalidArgument(f"invalid --tmpfs option {option!r} in {text!r}: use size, "
                                  "mode, uid, gid, nr_inodes or a mount flag such as ro")
        options.append(option)
    return {"destination": os.path.normpath(destination), "type": "tmpfs", "source": "tmpfs",
            "options": options}
