"""Build the container's filesystem view from the spec's root and mounts, then pivot into it.

Runs inside the container's new mount namespace, in the init process, before the
user program is executed. The order of the steps matters and is noted at each one.
"""

import os
import stat

from kakoi.errors import InvalidSpecError, KernelError
from kakoi.kernel import libc, paths

# Mount options of the runtime spec (and of mount(8)) that map to mount flags: the
# option name -> (flag, True when the option sets the flag, False when it clears it).
_FLAG_OPTIONS = {
    "ro": (libc.MS_RDONLY, True), "rw": (libc.MS_RDONLY, False),
    "nosuid": (libc.MS_NOSUID, True), "suid": (libc.MS_NOSUID, False),
    "nodev": (libc.MS_NODEV, True), "dev": (libc.MS_NODEV, False),
    "noexec": (libc.MS_NOEXEC, True), "exec": (libc.MS_NOEXEC, False),
    "sync": (libc.MS_SYNCHRONOUS, True), "async": (libc.MS_SYNCHRONOUS, False),
    "dirsync": (libc.MS_DIRSYNC, True), "remount": (libc.MS_REMOUNT, True),
    "mand": (libc.MS_MANDLOCK, True), "nomand": (libc.MS_MANDLOCK, False),
    "atime": (libc.MS_NOATIME, False), "noatime": (libc.MS_NOATIME, True),
    "diratime": (libc.MS_NODIRATIME, False), "nodiratime": (libc.MS_NODIRATIME, True),
    "relatime": (libc.MS_RELATIME, True), "norelatime": (libc.MS_RELATIME, False),
    "strictatime": (libc.MS_STRICTATIME, True), "nosymfollow": (libc.MS_NOSYMFOLLOW, True),
    "bind": (libc.MS_BIND, True), "rbind": (libc.MS_BIND | libc.MS_REC, True),
}
_PROPAGATION_OPTIONS = {
    "private": libc.MS_PRIVATE, "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "shared": libc.MS_SHARED, "rshared": libc.MS_SHARED | libc.MS_REC,
    "slave": libc.MS_SLAVE, "rslave": libc.MS_SLAVE | libc.MS_REC,
    "unbindable": libc.MS_UNBINDABLE, "runbindable": libc.MS_UNBINDABLE | libc.MS_REC,
}

# Devices every container gets, as runc adds them: (path, major, minor).
DEFAULT_DEVICES = (
    ("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7),
    ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0),
)
_DEV_SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"), ("/proc/kcore", "/dev/core"),
)


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """Split mount options into (flags, propagation flags, filesystem data)."""
    flags = 0
    propagation = 0
    data = []
    for option in options:
        if option in _FLAG_OPTIONS:
            flag, sets = _FLAG_OPTIONS[option]
            flags = flags | flag if sets else flags & ~flag
        elif option in _PROPAGATION_OPTIONS:
            propagation |= _PROPAGATION_OPTIONS[option]
        else:
            data.append(option)
    return flags, propagation, ",".join(data)


def prepare_root(rootfs: str, propagation: str, rootfs_mounts: list[dict]) -> None:
    """Make rootfs a mount point, private from the host, holding the given base mounts.

    rootfs_mounts are mounted onto rootfs first (the engine passes the overlay of the
    image layers here), the way containerd hands a shim its rootfs mounts apart from
    config.json.
    """
    # Stop mounts made here from propagating back to the host: slave by default, as runc.
    flags = _PROPAGATION_OPTIONS.get(propagation or "rslave")
    if flags is None:
        raise InvalidSpecError(f"invalid rootfsPropagation {propagation!r}")
    libc.mount(None, "/", None, flags)

    for mount in rootfs_mounts:
        mount_flags, _, data = parse_options(mount.get("options", []))
        libc.mount(mount.get("source"), rootfs, mount["type"], mount_flags, data or None)

    # pivot_root needs the new root to be a mount point.
    libc.mount(rootfs, rootfs, None, libc.MS_BIND | libc.MS_REC)


def mount_entry(rootfs: str, root_fd: int, mount: dict, cgroup_mounter=None) -> None:
    """Mount one entry of the spec's mounts, resolving its destination inside rootfs."""
    destination = mount.get("destination", "")
    if not destination.startswith("/"):
        raise InvalidSpecError(f"mount destination {destination!r} is not an absolute path")
    kind = mount.get("type") or ""
    flags, propagation, data = parse_options(mount.get("options", []))
    source = mount.get("source") or kind

    is_bind = bool(flags & libc.MS_BIND) or kind == "bind"
    if is_bind:
        flags |= libc.MS_BIND
        if not os.path.exists(source):
            raise InvalidSpecError(f"bind mount source {source!r} does not exist")
    create = "file" if is_bind and not os.path.isdir(source) else "dir"
    target_fd = paths.open_in_root(root_fd, destination, create=create)
    try:
        target = paths.fd_path(target_fd)
        if kind == "cgroup":
            if cgroup_mounter is None:
                raise InvalidSpecError("a cgroup mount needs the container to have cgroups")
            # The view mounts a tmpfs and then more mounts below it, which need a path
            # that goes through the new tmpfs, not the descriptor of the covered directory.
            # No container process runs yet that could swap the path in between.
            cgroup_mounter(os.readlink(target), bool(flags & libc.MS_RDONLY))
        elif is_bind:
            libc.mount(source, target, None, flags & (libc.MS_BIND | libc.MS_REC))
        else:
            libc.mount(source, target, kind, flags, data or None)
    finally:
        os.close(target_fd)

    # A bind mount takes its other flags only from a remount. Both that and a change of
    # propagation act on the new mount, so they need a descriptor opened after it.
    remount_flags = flags & ~(libc.MS_BIND | libc.MS_REC) if is_bind else 0
    if remount_flags or propagation:
        mounted_fd = paths.open_in_root(root_fd, destination)
        try:
            mounted = paths.fd_path(mounted_fd)
            if remount_flags:
                libc.mount(None, mounted, None, libc.MS_BIND | libc.MS_REMOUNT | remount_flags)
            if propagation:
                libc.mount(None, mounted, None, propagation)
        finally:
            os.close(mounted_fd)
    if kind == "tmpfs" and destination == "/dev":
        _populate_dev_links(root_fd)


def _populate_dev_links(root_fd: int) -> None:
    dev_fd = paths.open_in_root(root_fd, "/dev")
    try:
        for link_target, link in _DEV_SYMLINKS:
            try:
                os.symlink(link_target, os.path.basename(link), dir_fd=dev_fd)
            except FileExistsError:
                pass
    finally:
        os.close(dev_fd)


def create_devices(root_fd: int, devices: list[dict], bind: bool = False) -> None:
    """Make the default devices and the spec's linux.devices inside rootfs/dev.

    With bind (in a user namespace, where mknod is not allowed), each device is the
    host's node of the same path, bind-mounted, as runc does.
    """
    wanted = {path: {"path": path, "type": "c", "major": major, "minor": minor,
                     "fileMode": 0o666, "uid": 0, "gid": 0}
              for path, major, minor in DEFAULT_DEVICES}
    for device in devices:
        wanted[device["path"]] = device
    for device in wanted.values():
        if bind:
            _bind_device(root_fd, device)
        else:
            _make_device(root_fd, device)


def _bind_device(root_fd: int, device: dict) -> None:
    if not os.path.exists(device["path"]):
        raise InvalidSpecError(f"device {device['path']} cannot be bind-mounted in a user "
                               "namespace: the host has no node at that path")
    target_fd = paths.open_in_root(root_fd, device["path"], create="file")
    try:
        libc.mount(device["path"], paths.fd_path(target_fd), None, libc.MS_BIND)
    finally:
        os.close(target_fd)


def _make_device(root_fd: int, device: dict) -> None:
    kinds = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    kind = kinds.get(device.get("type", ""))
    if kind is None:
        raise InvalidSpecError(f"invalid device type {device.get('type')!r} for {device['path']}")
    parent, name = os.path.split(device["path"])
    parent_fd = paths.open_in_root(root_fd, parent, create="dir")
    try:
        try:
            os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        mode = device.get("fileMode", 0o666) & 0o7777
        os.mknod(name, kind | mode, os.makedev(device.get("major", 0), device.get("minor", 0)),
                 dir_fd=parent_fd)
        os.chown(name, device.get("uid", 0), device.get("gid", 0), dir_fd=parent_fd,
                 follow_symlinks=False)
        os.chmod(name, mode, dir_fd=parent_fd, follow_symlinks=False)
    finally:
        os.close(parent_fd)


def pivot(rootfs: str) -> None:
    """Enter rootfs as "/" and detach the old root, so no host path stays reachable."""
    os.chdir(rootfs)
    # pivot_root(".", ".") stacks the old root under the new one at "/"; unmounting
    # "." then removes the old root without needing a put_old directory in the image.
    libc.pivot_root(".", ".")
    libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
    libc.umount(".", libc.MNT_DETACH)
    os.chdir("/")


def move_root(rootfs: str) -> None:
    """Enter rootfs by moving it over "/" and chroot, for roots where pivot_root fails.

    Used with --no-pivot (a root on ramfs, say). Unlike pivot, the old root stays
    underneath, reachable by a process that can escape the chroot.
    """
    os.chdir(rootfs)
    libc.mount(rootfs, "/", None, libc.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def mask_paths(masked: list[str]) -> None:
    """Hide each path: /dev/null over a file, an empty read-only tmpfs over a directory."""
    for path in masked:
        try:
            if os.path.isdir(path):
                libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY)
            else:
                libc.mount("/dev/null", path, None, libc.MS_BIND)
        except KernelError as error:
            if error.errno != 2:
                raise


def make_readonly(readonly: list[str]) -> None:
    for path in readonly:
        if not os.path.exists(path):
            continue
        libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
        flags = libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_REC
        libc.mount(None, path, None, flags | _locked_flags(path))


def _locked_flags(path: str) -> int:
    """Return the nosuid/nodev/noexec flags already on path's mount, which a remount keeps."""
    result = os.statvfs(path).f_flag
    flags = 0
    for statvfs_flag, mount_flag in ((os.ST_NOSUID, libc.MS_NOSUID),
                                     (os.ST_NODEV, libc.MS_NODEV),
                                     (os.ST_NOEXEC, libc.MS_NOEXEC)):
        if result & statvfs_flag:
            flags |= mount_flag
    return flags


def remount_root_readonly() -> None:
    libc.mount(None, "/", None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY
               | _locked_flags("/"))
