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
# Directory of built seccomp programs (see _compile_seccomp), root-only like the store.
SECCOMP_CACHE = "/var/cache/kakoi/seccomp"


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
           preserve_fds: int = 0, seccomp_cache: str | None = SECCOMP_CACHE) -> Container:
    """Fork the container's init and run its set-up up to the point of exec.

    With exec_fifo, init waits for a reader of that fifo (`kakoi-runtime start`, from
    another process) instead of the start message on the sync socket.
    """
    rootfs = oci.root_path(spec, bundle)
    namespaces = oci.namespaces(spec)
    seccomp = _compile_seccomp(spec, seccomp_cache)
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
        if "user" in namespaces:
            pid = _fork_under_user_namespace(namespaces, context, parent_sock, child_sock,
                                             spec.get("linux", {}))
        else:
            pid = _fork_init(namespaces, spec.get("linux", {}).get("timeOffsets"), context,
                             parent_sock)
            child_sock.close()
        if cgroup is not None:
            cgroup.add_process(pid, versions=(2,))
        sync.send(parent_sock, {"type": "joined"})
        console_fd = _wait_ready(parent_sock, pid, spec, container_id, bundle)
        if exec_fifo is not None:
            _wait_prepared(parent_sock, pid)
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


def _compile_seccomp(spec: dict, cache_dir: str | None = None):
    """Build the seccomp filter before fork, so that a bad profile fails before any change.

    With cache_dir, the BPF program is kept there and reused by later containers with
    the same profile, which spares them libseccomp's build.
    """
    config = spec.get("linux", {}).get("seccomp")
    if not config:
        return None
    from kakoi.kernel import seccomp

    if cache_dir is not None:
        return seccomp.compile_cached(config, cache_dir)
    return seccomp.compile(config)


def _create_cgroup(container_id: str, spec: dict):
    from kakoi.kernel import cgroups

    linux = spec.get("linux", {})
    path = linux.get("cgroupsPath") or f"{CGROUP_PARENT}/{container_id}"
    if ":" in path:
        raise NotSupportedError(f"cgroupsPath {path!r} is in systemd form (slice:prefix:name), "
                                "and kakoi manages cgroups through cgroupfs only")
    layout = cgroups.detect()
    resources = resources_from_spec(linux.get("resources", {}), linux.get("devices") or [])
    cgroup = cgroups.Cgroup.create(layout, path.lstrip("/"), resources)

    def mount_view(target: str, readonly: bool) -> None:
        cgroups.mount_container_view(layout, target, read_only=readonly)

    def bind_view(target: str, readonly: bool) -> None:
        """Show the container's cgroups by bind mounts of its own directories.

        Used without a cgroup namespace, where a new cgroup mount would show the host's
        whole tree, and in a user namespace, where mounting a v1 cgroup filesystem
        needs CAP_SYS_ADMIN in the host's user namespace. runc does the same.
        """
        flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
        libc.mount("tmpfs", target, "tmpfs", flags, "mode=755")
        for hierarchy in layout.hierarchies():
            name = os.path.basename(hierarchy.mount_point)
            destination = os.path.join(target, name)
            os.mkdir(destination, 0o755)
            libc.mount(os.path.join(hierarchy.mount_point, cgroup.path), destination, None,
                       libc.MS_BIND)
            if readonly:
                libc.mount(None, destination, None,
                           libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | flags)

    namespaces = oci.namespaces(spec)
    use_binds = "user" in namespaces or "cgroup" not in namespaces
    return cgroup, bind_view if use_binds else mount_view


def resources_from_spec(resources: dict, linux_devices: list[dict] = ()):
    """Convert the spec's linux.resources into the cgroup layer's Resources.

    Every field of the spec is passed on, so that one the cgroup layer cannot apply
    raises there instead of being dropped here.
    """
    from kakoi.kernel.cgroups import DeviceRule, Resources

    known = {"memory", "cpu", "pids", "blockIO", "hugepageLimits", "devices", "unified",
             "network", "rdma"}
    unknown = set(resources) - known
    if unknown:
        raise InvalidSpecError(f"unknown field linux.resources.{sorted(unknown)[0]}")
    for unsupported in ("network", "rdma"):
        if resources.get(unsupported):
            raise NotSupportedError(f"linux.resources.{unsupported} is not supported: kakoi "
                                    "has no net_cls, net_prio or rdma cgroup support")
    memory = resources.get("memory") or {}
    cpu = resources.get("cpu") or {}
    block_io = resources.get("blockIO") or {}
    try:
        result = Resources(
            memory_limit=memory.get("limit"), memory_swap=memory.get("swap"),
            memory_reservation=memory.get("reservation"),
            cpu_shares=cpu.get("shares"), cpu_quota=cpu.get("quota"),
            cpu_period=cpu.get("period"), cpuset_cpus=cpu.get("cpus"),
            cpuset_mems=cpu.get("mems"), pids_limit=(resources.get("pids") or {}).get("limit"),
            memory_kernel=memory.get("kernel"), memory_kernel_tcp=memory.get("kernelTCP"),
            memory_swappiness=memory.get("swappiness"),
            memory_disable_oom_killer=memory.get("disableOOMKiller"),
            memory_use_hierarchy=memory.get("useHierarchy"),
            cpu_burst=cpu.get("burst"), cpu_realtime_runtime=cpu.get("realtimeRuntime"),
            cpu_realtime_period=cpu.get("realtimePeriod"), cpu_idle=cpu.get("idle"),
            blkio_weight=block_io.get("weight"), blkio_leaf_weight=block_io.get("leafWeight"),
            blkio_weight_device=_device_weights(block_io.get("weightDevice")),
            blkio_throttle_read_bps=_throttles(block_io.get("throttleReadBpsDevice")),
            blkio_throttle_write_bps=_throttles(block_io.get("throttleWriteBpsDevice")),
            blkio_throttle_read_iops=_throttles(block_io.get("throttleReadIOPSDevice")),
            blkio_throttle_write_iops=_throttles(block_io.get("throttleWriteIOPSDevice")),
            hugepage_limits=[(entry["pageSize"], entry["limit"])
                             for entry in resources.get("hugepageLimits") or []] or None,
            devices=_device_rules(DeviceRule, resources.get("devices"), linux_devices),
            unified=resources.get("unified") or None)
        result.validate()
    except (TypeError, ValueError, KeyError, CgroupError) as error:
        raise InvalidSpecError(f"invalid linux.resources: {error}")
    return result


def _device_weights(entries):
    if not entries:
        return None
    return [(entry["major"], entry["minor"], entry.get("weight"), entry.get("leafWeight"))
            for entry in entries]


def _throttles(entries):
    if not entries:
        return None
    return [(entry["major"], entry["minor"], entry["rate"]) for entry in entries]


# The devices that runc always allows after the spec's own rules, because every
# container gets their nodes (null, zero, full, random, urandom, tty, console, ptmx,
# pts, tun), plus mknod of any device: (type, major, minor, access).
_ALLOWED_DEVICES = (
    ("c", None, None, "m"), ("b", None, None, "m"), ("c", 1, 3, "rwm"), ("c", 1, 5, "rwm"),
    ("c", 1, 7, "rwm"), ("c", 1, 8, "rwm"), ("c", 1, 9, "rwm"), ("c", 5, 0, "rwm"),
    ("c", 5, 1, "rwm"), ("c", 5, 2, "rwm"), ("c", 136, None, "rwm"), ("c", 10, 200, "rwm"),
)


def _device_rules(rule_class, entries, linux_devices):
    """Return the spec's device rules, then runc's default allows and linux.devices."""
    if entries is None:
        return None
    rules = [rule_class(entry.get("allow", False), entry.get("type") or "a",
                        entry.get("major"), entry.get("minor"), entry.get("access") or "rwm")
             for entry in entries]
    rules += [rule_class(True, kind, major, minor, access)
              for kind, major, minor, access in _ALLOWED_DEVICES]
    rules += [rule_class(True, "b" if device.get("type") == "b" else "c", device.get("major"),
                         device.get("minor"), "rwm")
              for device in linux_devices if device.get("type") in ("c", "b", "u")]
    return rules


def _fork_init(namespaces: dict, time_offsets: dict | None, context: InitContext,
               parent_sock: socket.socket) -> int:
    """Fork init into its pid and time namespaces; return its pid in the host's pid namespace.

    unshare(CLONE_NEWPID) and unshare(CLONE_NEWTIME) affect only the caller's later
    children, so the runtime makes the namespaces (or joins the given ones), forks
    init into them, then returns its own *_for_children to where they were with setns,
    so that its later forks stay on the host.
    """
    restore = []
    try:
        for kind in ("pid", "time"):
            if kind not in namespaces:
                continue
            restore.append((kind, os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)))
            _enter_for_children(kind, namespaces[kind])
            if kind == "time" and namespaces[kind] is None:
                from kakoi.runtime.init import _write_time_offsets
                _write_time_offsets(time_offsets or {})
        pid = os.fork()
        if pid == 0:
            parent_sock.close()
            child_main(context)
        return pid
    finally:
        for kind, fd in restore:
            libc.setns(fd, oci.NAMESPACE_FLAGS[kind])
            os.close(fd)


def _fork_under_user_namespace(namespaces: dict, context: InitContext,
                               parent_sock: socket.socket, child_sock: socket.socket,
                               linux: dict) -> int:
    """Fork the process that makes the user namespace and then init (see init.py)."""
    # init outlives its parent, the intermediate process; as a subreaper this process
    # inherits it and can wait for it.
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    intermediate = os.fork()
    if intermediate == 0:
        parent_sock.close()
        child_main(context)
    child_sock.close()
    try:
        if namespaces["user"] is None:
            _map_user_namespace(parent_sock, intermediate, linux)
        message, _ = sync.receive(parent_sock)
        if message is None or message.get("type") != "init":
            raise _error_from(message or {"message": "the process that makes the user "
                                                     "namespace exited"})
        return int(message["pid"])
    finally:
        os.waitpid(intermediate, 0)


def _enter_for_children(kind: str, path: str | None) -> None:
    flag = oci.NAMESPACE_FLAGS[kind]
    if path is None:
        libc.unshare(flag)
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(fd, flag)
    finally:
        os.close(fd)


def _map_user_namespace(sock: socket.socket, pid: int, linux: dict) -> None:
    """Write the id maps of init's new user namespace, which only a process outside can do."""
    message, _ = sync.receive(sock)
    if message is None or message.get("type") != "user-namespace":
        if message is not None and message.get("type") == "error":
            raise _error_from(message)
        raise ContainerError("container init exited before its user namespace was mapped")
    for kind, key in (("uid", "uidMappings"), ("gid", "gidMappings")):
        lines = "".join(f"{entry['containerID']} {entry['hostID']} {entry['size']}\n"
                        for entry in linux.get(key, []))
        try:
            with open(f"/proc/{pid}/{kind}_map", "w") as file:
                file.write(lines)
        except OSError as error:
            raise InvalidSpecError(f"cannot write linux.{key} of the user namespace: "
                                   f"{error.strerror}")
    sync.send(sock, {"type": "mapped"})


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


def _wait_prepared(sock: socket.socket, pid: int) -> None:
    """Wait until an init that waits on an exec fifo has finished its process and closed sync.

    An error message instead means that setting limits, identity or capabilities failed.
    """
    message, _ = sync.receive(sock)
    if message is None:
        return
    _reap(pid)
    if message.get("type") == "error":
        raise _error_from(message)
    raise ContainerError(f"container init sent {message.get('type')!r} where it should have "
                         "closed the sync socket")


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
