"""The OCI lifecycle as `kakoi-runtime` runs it: create, start, state, kill, delete, exec.

Each operation is one short-lived process, like runc: create leaves the container's
init waiting on its exec fifo and exits, start (another process) opens the fifo, and
every later command finds the container through its state directory.
"""

import os
import time

from kakoi import log
from kakoi.errors import ContainerError, InvalidArgument, InvalidSpecError
from kakoi.runtime import hooks
from kakoi.runtime import state as states
from kakoi.runtime.state import InvalidState

OCI_VERSION = "1.0.2"
_DEATH_TIMEOUT = 10.0


def create(root: str, container_id: str, bundle: str, *, pid_file: str | None = None,
           console_socket: str | None = None, no_pivot: bool = False,
           no_new_keyring: bool = False, preserve_fds: int = 0,
           allow_terminal_relay: bool = False):
    """Create the container and leave its init waiting for start; return the Container."""
    from kakoi.runtime import process
    from kakoi.runtime import spec as oci

    bundle = os.path.abspath(bundle)
    spec = oci.load(bundle)
    terminal = spec["process"].get("terminal", False)
    if terminal and console_socket is None and not allow_terminal_relay:
        raise InvalidArgument("process.terminal is true, so create needs --console-socket "
                              "to hand the terminal to its caller")
    if not terminal and console_socket is not None:
        raise InvalidArgument("--console-socket is given but process.terminal is false")

    directory = states.reserve(root, container_id)
    try:
        fifo = os.path.join(directory, "exec.fifo")
        os.mkfifo(fifo, 0o622)
        # Past the umask: init writes to it, and in a user namespace init is not its owner.
        os.chmod(fifo, 0o622)
        container = process.create(container_id, spec, bundle, exec_fifo=fifo,
                                   no_pivot=no_pivot, no_new_keyring=no_new_keyring,
                                   preserve_fds=preserve_fds)
    except BaseException:
        _remove_directory(directory)
        raise
    container.sock.close()
    try:
        if container.console_fd is not None and console_socket is not None:
            _send_console(console_socket, container.console_fd)
            os.close(container.console_fd)
            container.console_fd = None
        states.write(directory, {
            "ociVersion": spec.get("ociVersion", OCI_VERSION), "id": container_id,
            "pid": container.pid, "start_time": states.process_start_time(container.pid),
            "bundle": bundle, "rootfs": oci.root_path(spec, bundle), "created": states.now(),
            "cgroup_path": container.cgroup.path if container.cgroup is not None else None,
            "annotations": spec.get("annotations") or {}, "spec": spec,
        })
        if pid_file:
            _write_pid_file(pid_file, container.pid)
    except BaseException:
        container.kill()
        container.destroy()
        _remove_directory(directory)
        raise
    return container


def _send_console(path: str, fd: int) -> None:
    """Hand the pty master to the caller's console socket, as runc's --console-socket does."""
    import array
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            sock.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", [fd]))])
    except OSError as error:
        raise ContainerError(f"cannot send the terminal to --console-socket {path}: "
                             f"{error.strerror}")


def _write_pid_file(path: str, pid: int) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as file:
        file.write(str(pid))
    os.rename(temporary, path)


def start(root: str, container_id: str) -> None:
    """Let a created container's init exec its program."""
    state = states.load(root, container_id)
    status = states.status(state)
    if status != "created":
        raise InvalidState(f"cannot start container {container_id}: it is {status}, "
                           "and only a created container can start")
    fifo = os.path.join(state["_dir"], "exec.fifo")
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _read_start_byte(fd, state)
    finally:
        os.close(fd)
    os.unlink(fifo)
    _run_hooks_warning(state, "poststart", "running")


def _read_start_byte(fd: int, state: dict) -> None:
    """Wait for init's byte on the fifo, then for end of file: init has exec'd (or died).

    Init writes its byte when it opens the fifo, and exec closes its end.
    """
    import select

    started = False
    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            data = os.read(fd, 1)
            if data:
                started = True
                continue
            if started:
                return
        if not states.is_alive(state):
            if started:
                return  # it ran and exited already, or failed to exec: status tells
            raise ContainerError(f"container {state['id']} init exited before start")


def _run_hooks_warning(state: dict, kind: str, status: str) -> None:
    """Run hooks whose failure the spec says must not stop the lifecycle: warn instead."""
    spec = state["spec"]
    if not hooks.has(spec, kind):
        return
    try:
        hooks.run(spec, kind, hooks.state(spec, state["id"], status, state["pid"],
                                          state["bundle"]))
    except ContainerError as error:
        log.warning("%s", error, name=__name__)


def describe(root: str, container_id: str) -> dict:
    """Return the state object of the runtime spec, as `runc state` prints it."""
    state = states.load(root, container_id)
    status = states.status(state, _open_cgroup(state))
    described = {
        "ociVersion": state["ociVersion"], "id": state["id"],
        "pid": state["pid"] if status != "stopped" else 0, "status": status,
        "bundle": state["bundle"], "rootfs": state["rootfs"], "created": state["created"],
        "owner": "",
    }
    if state.get("annotations"):
        described["annotations"] = state["annotations"]  # runc leaves out an empty map
    return described


def list_all(root: str) -> list[dict]:
    """Describe every container under root; the owner is root, as runc's list shows it."""
    rows = []
    for container_id in states.list_ids(root):
        try:
            row = describe(root, container_id)
        except states.UnreadableState as error:
            log.warning("%s", error, name=__name__)
            continue
        except ContainerError:
            continue  # being created or deleted at this moment
        rows.append({**row, "owner": "root"})
    return rows


def _open_cgroup(state: dict):
    path = state.get("cgroup_path")
    if not path:
        return None
    from kakoi.kernel import cgroups

    try:
        return cgroups.Cgroup.open(cgroups.detect(), path)
    except Exception:  # the cgroup is gone: the container is stopped and being deleted
        return None


def parse_signal(text: str) -> int:
    """Parse "KILL", "SIGKILL", "9", "sigkill" or "RTMIN+3" into a signal number."""
    # _signal has the same numbers as signal, whose enums cost about 5 ms to import.
    import _signal

    text = text.strip()
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if text.isdigit():
        number = int(text)
    elif name.startswith(("SIGRTMIN+", "SIGRTMAX-")) and name[9:].isdigit():
        offset = int(name[9:])
        number = _signal.SIGRTMIN + offset if name.startswith("SIGRTMIN") else _signal.SIGRTMAX - offset
    else:
        number = getattr(_signal, name, 0) if name.isalnum() else 0
    if (isinstance(number, int) and 0 < number < _signal.NSIG) or text == "0":
        return number  # 0 only checks that init is alive, as kill(2) does
    raise InvalidArgument(f"invalid signal {text!r}: use a name such as TERM or a number "
                          f"from 0 to {_signal.NSIG - 1}")


def kill(root: str, container_id: str, signal_number: int, all_processes: bool = False) -> None:
    state = states.load(root, container_id)
    cgroup = _open_cgroup(state)
    status = states.status(state, cgroup)
    if status == "stopped" and not all_processes:
        raise InvalidState(f"cannot kill container {container_id}: it is stopped")
    if all_processes and cgroup is not None:
        cgroup.kill(signal_number)
        return
    try:
        os.kill(state["pid"], signal_number)
    except ProcessLookupError:
        raise InvalidState(f"cannot kill container {container_id}: it is stopped")


def delete(root: str, container_id: str, force: bool = False) -> None:
    """Remove a stopped (or created) container; with force, kill a running one first.

    Like runc, a directory without a state file (left by an aborted create) is removed,
    and force succeeds on a container that does not exist: engines (conmon's cleanup,
    containerd's shim) call delete --force after a failed create or a plain delete.
    """
    directory = states.container_dir(root, container_id)
    if not os.path.exists(os.path.join(directory, states.STATE_FILE)):
        _remove_directory(directory)
        if force:
            return
    try:
        state = states.load(root, container_id)
    except states.UnreadableState:
        if not force:
            raise
        log.warning("container %s: its state is unreadable, so delete --force removes only "
                    "%s; any process or cgroup of the container is left as it is",
                    container_id, directory, name=__name__)
        _remove_directory(directory)
        return
    cgroup = _open_cgroup(state)
    status = states.status(state, cgroup)
    if status in ("running", "paused") and not force:
        raise InvalidState(f"cannot delete container {container_id}: it is {status}; stop "
                           "it first, or use delete --force")
    if status != "stopped":
        if status == "paused" and cgroup is not None:
            cgroup.thaw()
        _kill_and_wait(state, cgroup)
    if cgroup is not None:
        cgroup.destroy()
    _run_hooks_warning(state, "poststop", "stopped")
    _remove_directory(state["_dir"])


def _kill_and_wait(state: dict, cgroup) -> None:
    import _signal

    if cgroup is not None:
        cgroup.kill(_signal.SIGKILL)
    try:
        os.kill(state["pid"], _signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + _DEATH_TIMEOUT
    while states.is_alive(state):
        if time.monotonic() > deadline:
            raise ContainerError(f"container {state['id']} init {state['pid']} did not die "
                                 f"within {_DEATH_TIMEOUT:.0f} s of SIGKILL")
        _reap_if_child(state["pid"])
        time.sleep(0.005)


def _reap_if_child(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _remove_directory(directory: str) -> None:
    from kakoi.kernel.tree import remove_tree

    remove_tree(directory)


def pids(root: str, container_id: str) -> list[int]:
    state = states.load(root, container_id)
    cgroup = _open_cgroup(state)
    if cgroup is None:
        return [state["pid"]] if states.is_alive(state) else []
    return cgroup.pids()


def pause(root: str, container_id: str) -> None:
    state, cgroup = _running_cgroup(root, container_id, "pause", ("running",))
    cgroup.freeze()


def resume(root: str, container_id: str) -> None:
    state, cgroup = _running_cgroup(root, container_id, "resume", ("paused",))
    cgroup.thaw()


def _running_cgroup(root: str, container_id: str, action: str, allowed: tuple[str, ...]):
    state = states.load(root, container_id)
    cgroup = _open_cgroup(state)
    status = states.status(state, cgroup)
    if status not in allowed:
        raise InvalidState(f"cannot {action} container {container_id}: it is {status}")
    if cgroup is None:
        raise ContainerError(f"container {container_id} has no cgroup to {action}")
    return state, cgroup


def stats(root: str, container_id: str) -> dict:
    state, cgroup = _running_cgroup(root, container_id, "read stats of",
                                    ("created", "running", "paused"))
    return {"type": "stats", "id": container_id, "data": cgroup.stats()}


def update(root: str, container_id: str, resources: dict) -> None:
    """Write new limits (the spec's linux.resources form) to a live container's cgroup."""
    from kakoi.runtime.process import resources_from_spec

    state, cgroup = _running_cgroup(root, container_id, "update",
                                    ("created", "running", "paused"))
    cgroup.update(resources_from_spec(resources))
    state["spec"].setdefault("linux", {}).setdefault("resources", {}).update(resources)
    directory = state.pop("_dir")
    states.write(directory, state)


def load_resources(text: str) -> dict:
    import json

    try:
        resources = json.loads(text)
    except ValueError as error:
        raise InvalidSpecError(f"invalid resources JSON: {error}")
    if not isinstance(resources, dict):
        raise InvalidSpecError("resources must be a JSON object, as linux.resources is")
    return resources


def oom_count(root: str, container_id: str) -> int:
    cgroup = _open_cgroup(states.load(root, container_id))
    return cgroup.oom_kill_count() if cgroup is not None else 0
