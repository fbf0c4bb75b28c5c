"""Create a container's init process from a spec, and start it.

The parent side of the handshake in sync.py. create() returns once the child has
built the container (namespaces, cgroup, mounts) and waits to exec; start() lets it
exec the user program and reports whether that worked.
"""

import os
import signal
import socket

from kakoi import log
from kakoi.errors import (CgroupError, CommandNotExecutable, CommandNotFound, ContainerError,
                          InvalidSpecError, KakoiError, NotSupportedError)
from kakoi.kernel import libc
from kakoi.runtime import spec as oci
from kakoi.runtime import sync
from kakoi.runtime.init import InitContext, child_main

CGROUP_PARENT = "kakoi"


class Container:
    """A created container: its init process, waiting to exec, and what it holds."""

    def __init__(self, container_id: str, pid: int, sock: socket.socket, cgroup,
                 console_fd: int | None):
        self.id = container_id
        self.pid = pid
        self.sock = sock
        self.cgroup = cgroup
        self.console_fd = console_fd

    def start(self) -> None:
        """Let init exec the program; raise CommandNotFound and the like if exec fails."""
        sync.send(self.sock, {"type": "start"})
        message, _ = sync.receive(self.sock)
        self.sock.close()
        if message is not None:
            _, status = os.waitpid(self.pid, 0)
            raise _error_from(message)

    def kill(self, signal_number: int = signal.SIGKILL) -> None:
        try:
            os.kill(self.pid, signal_number)
        except ProcessLookupError:
            pass

    def oom_killed(self) -> bool:
        if self.cgroup is None:
            return False
        try:
            return self.cgroup.oom_kill_count() > 0
        except (OSError, CgroupError):
            return False

    def destroy(self) -> None:
        """Kill what is left and remove the cgroup; safe to call more than once."""
        if self.console_fd is not None:
            os.close(self.console_fd)
            self.console_fd = None
        if self.cgroup is not None:
            cgroup, self.cgroup = self.cgroup, None
            cgroup.destroy()


def create(container_id: str, spec: dict, bundle: str, *, rootfs_mounts: list[dict] = (),
           stdio: tuple[int, int, int] | None = None, kill_with_parent: bool = False,
           exec_fifo: str | None = None, no_pivot: bool = False, no_new_keyring: bool = False,
           preserve_fds: int = 0) -> Container:
    """Fork the container's init and run its set-up up to the point of exec.

    With exec_fifo, init waits for a reader of that fifo (`kakoi-runtime start`, from
    another process) instead of the start message on the sync socket.
    """
    rootfs = oci.root_path(spec, bundle)
    namespaces = oci.namespaces(spec)
    seccomp = _compile_seccomp(spec)
    cgroup, cgroup_mounter = _create_cgroup(container_id, spec)
    parent_sock, child_sock = sync.pair()
    pid = None
    try:
        context = InitContext(spec, rootfs, child_sock, rootfs_mounts=list(rootfs_mounts),
                              stdio=stdio, cgroup=cgroup, cgroup_mounter=cgroup_mounter,
                              kill_with_parent=kill_with_parent, container_id=container_id,
                              bundle=bundle, exec_fifo=exec_fifo, no_pivot=no_pivot,
                              no_new_keyring=no_new_keyring, preserve_fds=preserve_fds,
                              seccomp=seccomp)
        pid = _fork_init(namespaces.get("pid", False), context, parent_sock)
        child_sock.close()
        if cgroup is not None:
            cgroup.add_process(pid, versions=(2,))
        sync.send(parent_sock, {"type": "joined"})
        console_fd = _wait_ready(parent_sock, pid, spec, container_id, bundle)
        log.debug("container %s: init %d is ready", container_id, pid, name=__name__)
        return Container(container_id, pid, parent_sock, cgroup, console_fd)
    except BaseException:
        if pid is not None:
            _reap(pid)
        parent_sock.close()
        child_sock.close()
        if cgroup is not None:
            cgroup.destroy()
        raise
    finally:
        if seccomp is not None:
            seccomp.release()


def _compile_seccomp(spec: dict):
    """Build the seccomp filter before fork, so that a bad profile fails before any change."""
    config = spec.get("linux", {}).get("seccomp")
    if not config:
        return None
    from kakoi.kernel import seccomp

    return seccomp.compile(config)


def _create_cgroup(container_id: str, spec: dict):
    from kakoi.kernel import cgroups

    linux = spec.get("linux", {})
    path = linux.get("cgroupsPath") or f"{CGROUP_PARENT}/{container_id}"
    if ":" in path:
        raise NotSupportedError(f"cgroupsPath {path!r} is in systemd form (slice:prefix:name), "
                                "and kakoi manages cgroups through cgroupfs only")
    layout = cgroups.detect()
    resources = resources_from_spec(linux.get("resources", {}))
    cgroup = cgroups.Cgroup.create(layout, path.lstrip("/"), resources)

    def mount_view(target: str, readonly: bool) -> None:
        cgroups.mount_container_view(layout, target, read_only=readonly)

    return cgroup, mount_view


def resources_from_spec(resources: dict):
    """Convert the spec's linux.resources into the cgroup layer's Resources."""
    from kakoi.kernel.cgroups import Resources

    memory = resources.get("memory", {})
    cpu = resources.get("cpu", {})
    pids = resources.get("pids", {})
    try:
        result = Resources(
            memory_limit=memory.get("limit"), memory_swap=memory.get("swap"),
            memory_reservation=memory.get("reservation"),
            cpu_shares=cpu.get("shares"), cpu_quota=cpu.get("quota"),
            cpu_period=cpu.get("period"), cpuset_cpus=cpu.get("cpus"),
            cpuset_mems=cpu.get("mems"), pids_limit=pids.get("limit"))
        result.validate()
    except (TypeError, ValueError, CgroupError) as error:
        raise InvalidSpecError(f"invalid linux.resources: {error}")
    return result


def _fork_init(pid_namespace, context: InitContext, parent_sock: socket.socket) -> int:
    """Fork init into its pid namespace and return its pid as the host sees it.

    unshare(CLONE_NEWPID) affects only the caller's later children, so the runtime
    makes the namespace, forks init as its PID 1, then returns its own
    pid_for_children to where it was with setns, so later forks stay on the host.
    """
    own_namespace = None
    if pid_namespace is not False:
        own_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        if pid_namespace is None:
            libc.unshare(libc.CLONE_NEWPID)
        else:
            target = os.open(pid_namespace, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc.setns(target, libc.CLONE_NEWPID)
            finally:
                os.close(target)
    try:
        pid = os.fork()
        if pid == 0:
            parent_sock.close()
            child_main(context)
        return pid
    finally:
        if own_namespace is not None:
            libc.setns(own_namespace, libc.CLONE_NEWPID)
            os.close(own_namespace)


def _wait_ready(sock: socket.socket, pid: int, spec: dict, container_id: str,
                bundle: str) -> int | None:
    console_fd = None
    while True:
        message, fd = sync.receive(sock)
        if message is None:
            status = _reap(pid)
            raise ContainerError(f"container init exited during set-up ({_describe(status)})")
        if message.get("type") == "console" and fd is not None:
            console_fd = fd
        elif message.get("type") == "ready":
            return console_fd
        elif message.get("type") == "create-runtime":
            _run_runtime_hooks(spec, container_id, pid, bundle)
            sync.send(sock, {"type": "continue"})
        elif message.get("type") == "error":
            _reap(pid)
            raise _error_from(message)


def _run_runtime_hooks(spec: dict, container_id: str, pid: int, bundle: str) -> None:
    """Run prestart (deprecated, kept for older callers) and createRuntime hooks."""
    from kakoi.runtime import hooks

    state = hooks.state(spec, container_id, "creating", pid, bundle)
    hooks.run(spec, "prestart", state)
    hooks.run(spec, "createRuntime", state)


def _error_from(message: dict) -> KakoiError:
    text = str(message.get("message", "unknown error"))[:2000]
    kind = message.get("kind")
    if kind == "not_found":
        return CommandNotFound(text)
    if kind == "not_executable":
        return CommandNotExecutable(text)
    return ContainerError(f"container set-up failed: {text}")


def _reap(pid: int) -> int:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
