"""The container's init sequence: what the forked child does from fork to exec.

Runs as PID 1 of the container's new pid namespace, in a forked copy of the runtime.
Every step is ordered, and the comment at each step gives the reason for its place. Any
failure is sent to the parent as an error message, and the child exits without
running the parent's clean-up code (os._exit).
"""

import errno
import fcntl
import os
import resource
import signal
import socket
import struct
import termios

from kakoi import log
from kakoi.errors import CommandNotExecutable, CommandNotFound, InvalidSpecError, KakoiError
from kakoi.kernel import capabilities, libc, paths
from kakoi.runtime import rootfs as rootfs_setup
from kakoi.runtime import spec as oci
from kakoi.runtime import sync

_TIOCSCTTY = 0x540E
_TIOCSPTLCK = 0x40045431
_TIOCGPTPEER = 0x5441
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class InitContext:
    """Settings that the parent passes to the init child besides the spec."""

    def __init__(self, spec: dict, rootfs: str, sock: socket.socket, *,
                 rootfs_mounts: list[dict], stdio: tuple[int, int, int] | None,
                 cgroup, cgroup_mounter, kill_with_parent: bool, container_id: str = "",
                 bundle: str = "", exec_fifo: str | None = None, no_pivot: bool = False,
                 no_new_keyring: bool = False, preserve_fds: int = 0, seccomp=None):
        self.spec = spec
        self.rootfs = rootfs
        self.sock = sock
        self.rootfs_mounts = rootfs_mounts
        self.stdio = stdio
        self.cgroup = cgroup
        self.cgroup_mounter = cgroup_mounter
        self.kill_with_parent = kill_with_parent
        self.container_id = container_id
        self.bundle = bundle
        self.exec_fifo = exec_fifo
        self.exec_fifo_fd: int | None = None
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.preserve_fds = preserve_fds
        self.seccomp = seccomp


def child_main(context: InitContext) -> None:
    """Run the init sequence and exec the user program; never returns."""
    def sequence() -> None:
        if "user" in oci.namespaces(context.spec):
            _become_init_under_user_namespace(context)
        _run(context)

    _run_and_exit(context.sock, sequence)


def _run_and_exit(sock: socket.socket, sequence) -> None:
    """Run a child's sequence, which ends in exec; report any failure and _exit.

    os._exit, so that the forked copy never runs the parent's clean-up code.
    """
    status = 125
    try:
        sequence()
    except CommandNotFound as error:
        status = _report(sock, "not_found", error)
    except CommandNotExecutable as error:
        status = _report(sock, "not_executable", error)
    except BaseException as error:  # every failure must reach the parent, whatever its type
        status = _report(sock, "error", error)
    finally:
        os._exit(status)


def _report(sock: socket.socket, kind: str, error: BaseException) -> int:
    """Send the error to the parent, or, once it is gone (after start), to stderr."""
    message = str(error) if isinstance(error, (KakoiError, OSError)) else repr(error)
    try:
        sync.send(sock, {"type": "error", "kind": kind, "message": message})
    except OSError:
        try:
            os.write(2, f"kakoi-runtime: container init: {message}\n".encode())
        except OSError:
            pass
    return {"not_found": 127, "not_executable": 126}.get(kind, 125)


def _run(context: InitContext) -> None:
    spec = context.spec
    process = spec["process"]
    linux = spec.get("linux", {})
    namespaces = oci.namespaces(spec)

    # Python ignores SIGPIPE and SIGXFSZ and handles SIGINT; the user program must
    # start with default dispositions, and PID 1 gets only signals it handles.
    _reset_signals()
    if context.kill_with_parent:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    # Not dumpable until exec, so that no process in the container can open this
    # one's /proc/<pid>/exe or fds (the runc CVE-2019-5736 kind); exec resets it.
    libc.prctl(libc.PR_SET_DUMPABLE, 0)
    if hooks_module_needed(spec):
        # After pivot_root the host's Python library is out of sight, so every module
        # that a later step imports has to be loaded now.
        import subprocess  # noqa: F401  (used by kakoi.runtime.hooks)

        from kakoi.runtime import hooks  # noqa: F401
    if context.exec_fifo is not None:
        # Opened before pivot_root hides the host path; reopened for writing later.
        context.exec_fifo_fd = os.open(context.exec_fifo, os.O_PATH | os.O_CLOEXEC)

    # This process joins its v1 cgroups itself, the cheap way (see add_process). The
    # parent moves it into the v2 one while it builds the filesystem, because that move
    # can wait for an RCU grace period (7-15 ms here). Only the cgroup namespace has to
    # wait for that move.
    cgroup_namespace = namespaces.pop("cgroup", False)
    if namespaces.pop("user", False) is False and context.cgroup is not None:
        context.cgroup.add_process(0, versions=(1,))  # else done before the user namespace
    _enter_namespaces(namespaces)
    if not context.no_new_keyring:
        libc.join_session_keyring(context.container_id or None)
    if "network" in namespaces and namespaces["network"] is None:
        _loopback_up()
    joined = []

    def enter_cgroup_namespace() -> None:
        if joined:
            return
        _expect(context.sock, "joined")
        if cgroup_namespace is not False:
            _enter_namespaces({"cgroup": cgroup_namespace})
        joined.append(True)

    if "mount" in namespaces:
        _setup_filesystem(context, linux, process, enter_cgroup_namespace)
    else:
        _run_creation_hooks(context)
    enter_cgroup_namespace()
    if spec.get("hostname") is not None and "uts" in namespaces:
        libc.sethostname(spec["hostname"])
    if spec.get("domainname") is not None and "uts" in namespaces:
        libc.setdomainname(spec["domainname"])

    if process.get("terminal"):
        _attach_console(context.sock, process)
    elif context.stdio is not None:
        for target, source in enumerate(context.stdio):
            if source != target:
                os.dup2(source, target)
    sync.send(context.sock, {"type": "ready"})
    if context.exec_fifo_fd is not None:
        # As runc does: the process is finished and its program found, as its own user,
        # before init waits on the exec fifo. So create reports a failure here (the parent
        # reads until the socket closes), and start has only the exec left to wait for.
        _prepare_process(context, linux, process)
        executable = _find_executable(process)
        context.sock.close()
        _wait_for_fifo(context)
        _run_container_hooks(context, "startContainer", "created")
    else:
        # Found before start, so that a missing program fails before the caller starts it.
        executable = _find_executable(process)
        _expect(context.sock, "start")
        _run_container_hooks(context, "startContainer", "created")
        _prepare_process(context, linux, process)
    if context.seccomp is not None and process.get("noNewPrivileges"):
        context.seccomp.load()
    _exec(process, executable, context)


def _prepare_process(context: InitContext, linux: dict, process: dict) -> None:
    """Set the personality, limits, identity and capabilities of the program to exec.

    Without no_new_privs, loading the seccomp filter needs CAP_SYS_ADMIN, which the process
    may drop here, so the filter goes in first. With no_new_privs the caller loads it last,
    so that it need not allow the calls of the steps in between. runc orders them the same.
    """
    if linux.get("personality"):
        libc.set_personality(linux["personality"])
    if context.seccomp is not None and not process.get("noNewPrivileges"):
        context.seccomp.load()
    _finalize_process(process)


def hooks_module_needed(spec: dict) -> bool:
    return bool(spec.get("hooks"))


def _expect(sock: socket.socket, kind: str) -> None:
    message, _ = sync.receive(sock)
    if message is None or message.get("type") != kind:
        os._exit(125)  # the parent went away or changed its mind: never run the program


def _wait_for_fifo(context: InitContext) -> None:
    """Block until `kakoi-runtime start` opens the exec fifo for reading.

    Opening the fifo for writing blocks until start opens it, as runc's exec.fifo does. The
    written end stays open until exec closes it, so that start reads end of file once the
    program runs, and runs poststart hooks only then.
    """
    fd = os.open(f"/proc/self/fd/{context.exec_fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fd, b"0")
    os.close(context.exec_fifo_fd)
    context.exec_fifo_fd = fd


def _hook_state(context: InitContext, status: str) -> dict:
    from kakoi.runtime import hooks

    return hooks.state(context.spec, context.container_id, status, os.getpid(),
                       context.bundle)


def _run_creation_hooks(context: InitContext) -> None:
    """Let the runtime run prestart and createRuntime hooks, then run createContainer."""
    if not context.spec.get("hooks"):
        return
    from kakoi.runtime import hooks

    if hooks.has(context.spec, "prestart", "createRuntime"):
        sync.send(context.sock, {"type": "create-runtime"})
        _expect(context.sock, "continue")
    _run_container_hooks(context, "createContainer", "creating")


def _run_container_hooks(context: InitContext, kind: str, status: str) -> None:
    if not context.spec.get("hooks"):
        return
    from kakoi.runtime import hooks

    if hooks.has(context.spec, kind):
        hooks.run(context.spec, kind, _hook_state(context, status))


def _reset_signals() -> None:
    for number in range(1, signal.NSIG):
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(number, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # real-time signals reserved by the C library
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _become_init_under_user_namespace(context: InitContext) -> None:
    """Enter the user namespace, then fork the real init into new pid and time namespaces.

    A pid namespace must belong to the container's user namespace, or the container
    cannot mount its /proc, so it can only be made after that user namespace. This
    process makes both, forks init as PID 1, sends init's pid to the parent, and exits.
    The parent, a child subreaper, inherits init. Only init returns from here.
    """
    namespaces = oci.namespaces(context.spec)
    if context.cgroup is not None:
        # Before the user namespace: inside it the host's cgroup files are not ours.
        context.cgroup.add_process(0, versions=(1,))
    _enter_user_namespace(context.sock, namespaces["user"])
    for kind in ("pid", "time"):
        if kind not in namespaces:
            continue
        path = namespaces[kind]
        if path is None:
            libc.unshare(oci.NAMESPACE_FLAGS[kind])
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc.setns(fd, oci.NAMESPACE_FLAGS[kind])
            finally:
                os.close(fd)
        if kind == "time" and path is None:
            _write_time_offsets(context.spec.get("linux", {}).get("timeOffsets") or {})
    init_pid = os.fork()
    if init_pid != 0:
        sync.send(context.sock, {"type": "init", "pid": init_pid})
        os._exit(0)


def _write_time_offsets(offsets: dict) -> None:
    """Set a new time namespace's clock offsets, before any process enters it."""
    lines = [f"{clock} {offsets[clock].get('secs', 0)} {offsets[clock].get('nanosecs', 0)}"
             for clock in ("monotonic", "boottime") if offsets.get(clock)]
    if lines:
        with open("/proc/self/timens_offsets", "w") as file:
            file.write("\n".join(lines) + "\n")


def _enter_user_namespace(sock: socket.socket, path: str | None) -> None:
    """Join or make the user namespace, and become its root (uid and gid 0)."""
    if path is None:
        libc.unshare(libc.CLONE_NEWUSER)
        # Only a process outside the namespace can write its id maps: the parent does.
        sync.send(sock, {"type": "user-namespace"})
        _expect(sock, "mapped")
    else:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, libc.CLONE_NEWUSER)
        finally:
            os.close(fd)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    # Changing ids made the process non-dumpable, which gives its /proc files to the
    # host's root. The next steps write one of them (timens_offsets), and init resets
    # the flag later.
    libc.prctl(libc.PR_SET_DUMPABLE, 1)


def _enter_namespaces(namespaces: dict[str, str | None]) -> None:
    unshare_flags = 0
    for kind, path in namespaces.items():
        if kind in ("pid", "time"):
            continue  # the parent set these up before fork: they apply to its children
        if path is None:
            unshare_flags |= oci.NAMESPACE_FLAGS[kind]
            continue
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, oci.NAMESPACE_FLAGS[kind])
        finally:
            os.close(fd)
    if unshare_flags:
        libc.unshare(unshare_flags)


def _loopback_up() -> None:
    """Bring up "lo" in the new network namespace, as runc does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _setup_filesystem(context: InitContext, linux: dict, process: dict,
                      enter_cgroup_namespace) -> None:
    rootfs = context.rootfs
    rootfs_setup.prepare_root(rootfs, linux.get("rootfsPropagation"), context.rootfs_mounts)

    root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for mount in context.spec.get("mounts", []):
            if mount.get("type") == "cgroup":
                enter_cgroup_namespace()  # the view must show the container's own cgroup
            rootfs_setup.mount_entry(rootfs, root_fd, mount, context.cgroup_mounter)
        in_user_namespace = "user" in oci.namespaces(context.spec)
        rootfs_setup.create_devices(root_fd, linux.get("devices", []),
                                    bind=in_user_namespace)
        # runc creates a missing working directory, as Docker's WORKDIR expects.
        cwd_fd = paths.open_in_root(root_fd, process.get("cwd", "/"), create="dir")
        try:
            if not paths.is_dir(cwd_fd):
                raise InvalidSpecError(f"the working directory {process.get('cwd')} is not a "
                                       "directory in the container")
        finally:
            os.close(cwd_fd)
    finally:
        os.close(root_fd)

    # createRuntime and createContainer hooks run after the mounts, before pivot_root.
    _run_creation_hooks(context)
    if context.no_pivot:
        rootfs_setup.move_root(rootfs)
    else:
        rootfs_setup.pivot(rootfs)
    _write_sysctls(linux.get("sysctl", {}))
    # Read-only paths before masked ones, in runc's order, so that the mount tables match.
    rootfs_setup.make_readonly(linux.get("readonlyPaths", []))
    rootfs_setup.mask_paths(linux.get("maskedPaths", []))
    if context.spec["root"].get("readonly"):
        rootfs_setup.remount_root_readonly()


def _write_sysctls(sysctls: dict[str, str]) -> None:
    for key, value in sysctls.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as file:
                file.write(str(value))
        except OSError as error:
            raise InvalidSpecError(f"cannot set sysctl {key}={value}: {error.strerror}")


def _attach_console(sock: socket.socket, process: dict) -> None:
    """Open a pty, send its master to the parent, and make the slave our terminal.

    The pty comes from the container's own /dev/pts (a new devpts instance), as runc
    does, so the program's terminal is /dev/pts/0.
    """
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    size = process.get("consoleSize")
    if size:
        fcntl.ioctl(slave, termios.TIOCSWINSZ,
                    struct.pack("HHHH", size.get("height", 0), size.get("width", 0), 0, 0))
    sync.send(sock, {"type": "console"}, fd=master)
    os.close(master)

    os.setsid()
    fcntl.ioctl(slave, _TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(slave, target)
    if slave > 2:
        os.close(slave)


def _rlimit_value(value: int) -> int:
    """Map the spec's uint64 limit to setrlimit's: 2**64-1 (or -1) means unlimited."""
    return resource.RLIM_INFINITY if value < 0 or value >= 1 << 63 else value


def _finalize_process(process: dict) -> None:
    """Apply limits, identity and capabilities; the order follows runc's finalizeNamespace."""
    for rlimit in process.get("rlimits", []):
        number = getattr(resource, rlimit["type"])
        try:
            resource.setrlimit(number, (_rlimit_value(rlimit["soft"]),
                                        _rlimit_value(rlimit["hard"])))
        except (ValueError, OSError):
            host_hard = resource.getrlimit(number)[1]
            shown = ":".join("unlimited" if _rlimit_value(value) == resource.RLIM_INFINITY
                             else str(value) for value in (rlimit["soft"], rlimit["hard"]))
            raise InvalidSpecError(
                f"cannot set {rlimit['type']} to {shown}: the host's hard limit is "
                f"{host_hard}, and raising it needs CAP_SYS_RESOURCE")
    if "oomScoreAdj" in process:
        with open("/proc/self/oom_score_adj", "w") as file:
            file.write(str(process["oomScoreAdj"]))

    os.chdir(process.get("cwd", "/"))
    caps = process.get("capabilities", {})
    capabilities.drop_bounding(capabilities.mask(caps.get("bounding")))

    user = process.get("user", {})
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    # Checked here too, for callers that build the spec without oci.validate: -1 would
    # keep the process's ids, that is root.
    for value in (uid, gid, *user.get("additionalGids", [])):
        oci.check_id(value, "process.user id")
    libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    os.setgroups(user.get("additionalGids", []))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc.prctl(libc.PR_SET_KEEPCAPS, 0)
    if "umask" in user:
        os.umask(user["umask"])

    capabilities_set = capabilities.mask
    libc.capset(capabilities_set(caps.get("effective")), capabilities_set(caps.get("permitted")),
                capabilities_set(caps.get("inheritable")))
    if caps.get("ambient"):
        try:
            capabilities.set_ambient(capabilities_set(caps["ambient"]))
        except OSError as error:
            # An ambient capability must also be permitted and inheritable; runc logs
            # and goes on when it is not (runc 1.1, libcontainer/capabilities).
            log.debug("cannot raise ambient capabilities: %s", error, name=__name__)
    if process.get("noNewPrivileges"):
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)


def _find_executable(process: dict) -> str:
    """Return the path of args[0], searched in the process's PATH as execvp would."""
    program = process["args"][0]
    if "/" in program:
        candidates = [program]
    else:
        env_path = next((entry[5:] for entry in process.get("env", [])
                         if entry.startswith("PATH=")), os.defpath)
        candidates = [os.path.join(directory or ".", program)
                      for directory in env_path.split(":")]
    cwd = process.get("cwd", "/")
    for candidate in candidates:
        path = candidate if candidate.startswith("/") else os.path.join(cwd, candidate)
        if os.path.isfile(path):
            if not os.access(path, os.X_OK):
                raise CommandNotExecutable(f"{program!r}: permission denied")
            return path
        if "/" in program and os.path.exists(path):
            raise CommandNotExecutable(f"{program!r}: is a directory")
    if "/" in program:
        raise CommandNotFound(f"{program!r}: no such file or directory")
    raise CommandNotFound(f"{program!r}: executable file not found in $PATH")


def _home_directory(uid: int) -> str:
    """Return uid's home from the container's /etc/passwd, or "/", for a missing $HOME."""
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as file:
            for line in file:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"


def _exec(process: dict, executable: str, context: InitContext) -> None:
    args = process["args"]
    env = dict(entry.split("=", 1) for entry in process.get("env", []))
    if "HOME" not in env:
        # runc sets HOME for the process's user when the spec leaves it out.
        env["HOME"] = _home_directory(os.getuid())
    # No descriptor of the runtime may reach the container (the runc CVE-2024-21626
    # kind). The sync socket stays open until exec, which closes it (close-on-exec),
    # and that end of stream signals the parent that the program started.
    first_closed = 3 + context.preserve_fds
    sync_fd = context.sock.fileno()
    if sync_fd >= first_closed:
        os.closerange(first_closed, sync_fd)
        os.closerange(sync_fd + 1, 1 << 20)
    else:
        os.closerange(first_closed, 1 << 20)
    try:
        os.execve(executable, args, env)
    except PermissionError:
        raise CommandNotExecutable(f"{args[0]!r}: permission denied")
    except OSError as error:
        if error.errno in (errno.ENOEXEC, errno.EISDIR, errno.ENOTDIR, errno.ENOENT):
            raise CommandNotExecutable(f"{args[0]!r}: {error.strerror}")
        raise


class ExecContext:
    """Settings that the parent passes to a process that joins a running container."""

    def __init__(self, process: dict, sock: socket.socket, *, namespace_paths: dict[str, str],
                 cgroup, seccomp, preserve_fds: int, stdio: tuple[int, int, int] | None):
        self.process = process
        self.sock = sock
        self.namespace_paths = namespace_paths
        self.cgroup = cgroup
        self.seccomp = seccomp
        self.preserve_fds = preserve_fds
        self.stdio = stdio


def exec_child_main(context: ExecContext) -> None:
    """Join the container's namespaces and cgroup, then exec; never returns."""
    _run_and_exit(context.sock, lambda: _run_exec(context))


def _run_exec(context: ExecContext) -> None:
    process = context.process
    _reset_signals()
    libc.prctl(libc.PR_SET_DUMPABLE, 0)

    # The cgroup files are host paths, so the move comes before entering the mount
    # namespace, and before the cgroup namespace, whose root must be the container's.
    if context.cgroup is not None:
        context.cgroup.add_process(0)
    # The mount namespace goes last: joining it also moves this process's root.
    order = ["ipc", "uts", "network", "cgroup", "mount"]
    for kind in order:
        path = context.namespace_paths.get(kind)
        if path is None:
            continue
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(fd, oci.NAMESPACE_FLAGS[kind])
        finally:
            os.close(fd)

    if process.get("terminal"):
        _attach_console(context.sock, process)
    elif context.stdio is not None:
        for target, source in enumerate(context.stdio):
            if source != target:
                os.dup2(source, target)
    os.chdir(process.get("cwd", "/"))
    executable = _find_executable(process)

    sync.send(context.sock, {"type": "ready"})
    _expect(context.sock, "start")
    if context.seccomp is not None and not process.get("noNewPrivileges"):
        context.seccomp.load()
    _finalize_process(process)
    if context.seccomp is not None and process.get("noNewPrivileges"):
        context.seccomp.load()
    _exec(process, executable, context)
