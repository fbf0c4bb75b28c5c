"""Start a new process inside a running container, as `runc exec` does."""

import json
import os

from kakoi.errors import InvalidArgument, InvalidSpecError
from kakoi.kernel import libc
from kakoi.runtime import spec as oci
from kakoi.runtime import sync
from kakoi.runtime.init import ExecContext, exec_child_main
from kakoi.runtime.process import (SECCOMP_CACHE, Container, _compile_seccomp, _error_from,
                                   _reap)


def process_from_args(base: dict, args: list[str], *, env: list[str], cwd: str | None,
                      user: str | None, additional_gids: list[int], caps: list[str],
                      tty: bool, no_new_privs: bool) -> dict:
    """Build an exec's process from the container's own process and the command line flags.

    Like runc, the container's process is the base: its env, cwd, user and capabilities
    hold unless a flag replaces them, and --env adds to its environment.
    """
    import copy

    process = copy.deepcopy(base)
    if not args:
        raise InvalidArgument("exec needs a command, or --process with a process.json")
    process["args"] = args
    process["terminal"] = tty
    process.pop("consoleSize", None)
    if cwd:
        process["cwd"] = cwd
    merged = dict(entry.split("=", 1) for entry in process.get("env", []) if "=" in entry)
    for entry in env:
        key, equals, value = entry.partition("=")
        if not equals:
            raise InvalidArgument(f"invalid --env {entry!r}: use KEY=VALUE")
        merged[key] = value
    process["env"] = [f"{key}={value}" for key, value in merged.items()]
    if user:
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise InvalidArgument(f"invalid --user {user!r}: use uid[:gid] as numbers")
        process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if additional_gids:
        process.setdefault("user", {})["additionalGids"] = additional_gids
    if caps:
        for kind in ("bounding", "effective", "permitted", "ambient"):
            existing = process.setdefault("capabilities", {}).setdefault(kind, [])
            for cap in caps:
                if cap not in existing:
                    existing.append(cap)
    if no_new_privs:
        process["noNewPrivileges"] = True
    return process


def load_process(path: str) -> dict:
    try:
        with open(path) as file:
            process = json.load(file)
    except OSError as error:
        raise InvalidArgument(f"cannot read --process {path}: {error.strerror}")
    except ValueError as error:
        raise InvalidSpecError(f"invalid JSON in --process {path}: {error}")
    oci.validate_process(process)
    return process


def spawn(state: dict, process: dict, *, cgroup, preserve_fds: int = 0,
          stdio: tuple[int, int, int] | None = None) -> Container:
    """Fork a process into the container of state and bring it to the point of exec."""
    pid = state["pid"]
    spec = state["spec"]
    namespace_paths = {kind: f"/proc/{pid}/ns/{_PROC_NAMES[kind]}"
                       for kind in oci.namespaces(spec) if kind in _PROC_NAMES}
    seccomp = _compile_seccomp({"linux": {"seccomp": spec.get("linux", {}).get("seccomp")}},
                               SECCOMP_CACHE)
    parent_sock, child_sock = sync.pair()
    child = None
    try:
        context = ExecContext(process, child_sock, namespace_paths=namespace_paths,
                              cgroup=cgroup, seccomp=seccomp, preserve_fds=preserve_fds,
                              stdio=stdio)
        pid_namespace = namespace_paths.pop("pid", None)
        child = _fork_into_pid_namespace(pid_namespace, context, parent_sock)
        child_sock.close()
        console_fd = None
        while True:
            message, fd = sync.receive(parent_sock)
            if message is None:
                raise _error_from({"message": "the exec process exited during set-up"})
            if message.get("type") == "console" and fd is not None:
                console_fd = fd
            elif message.get("type") == "ready":
                break
            elif message.get("type") == "error":
                raise _error_from(message)
        return Container(state["id"], child, parent_sock, None, console_fd)
    except BaseException:
        if child is not None:
            _reap(child)
        parent_sock.close()
        child_sock.close()
        raise
    finally:
        if seccomp is not None:
            seccomp.release()


_PROC_NAMES = {"ipc": "ipc", "uts": "uts", "network": "net", "cgroup": "cgroup",
               "mount": "mnt", "pid": "pid"}


def _fork_into_pid_namespace(path: str | None, context: ExecContext, parent_sock) -> int:
    """Fork the exec process; with path, into that pid namespace (see process._fork_init)."""
    own_namespace = None
    if path is not None:
        own_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(target, libc.CLONE_NEWPID)
        finally:
            os.close(target)
    try:
        child = os.fork()
        if child == 0:
            parent_sock.close()
            exec_child_main(context)
        return child
    finally:
        if own_namespace is not None:
            libc.setns(own_namespace, libc.CLONE_NEWPID)
            os.close(own_namespace)
