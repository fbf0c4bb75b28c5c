"""Open paths inside a container's root without following a symlink out of it.

Every path that the runtime mounts onto or creates inside a rootfs goes through
open_in_root, which uses openat2(2) with RESOLVE_IN_ROOT, so that a symlink in the
image (absolute, or climbing with "..") resolves as if the rootfs were "/". The
caller then mounts onto /proc/self/fd/N of the returned descriptor, so a symlink
swapped in after the check cannot redirect the mount (the runc CVE-2021-30465 kind).
"""

import ctypes
import errno
import os
import stat

from kakoi.errors import KernelError
from kakoi.kernel.tree import remove_tree  # noqa: F401 (kept here for its callers)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_SYS_OPENAT2 = 437  # the same number on every architecture since Linux 5.6
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = _OpenHow(flags, mode, resolve)
    result = _libc.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how),
                           ctypes.sizeof(how))
    if result < 0:
        raise KernelError(ctypes.get_errno(), "openat2", path)
    return result


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _open_existing(root_fd: int, path: str) -> int | None:
    try:
        return openat2(root_fd, path or ".", os.O_PATH | os.O_CLOEXEC,
                       RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    except KernelError as error:
        if error.errno == errno.ENOENT:
            return None
        raise


_MAX_SYMLINKS = 40  # as the kernel's own limit on links followed in one lookup


def open_in_root(root_fd: int, path: str, create: str | None = None, _depth: int = 0) -> int:
    """Return an O_PATH descriptor of path resolved inside root_fd.

    create is None (the path must exist), "dir" or "file": missing components are
    made as directories, and the last one as the given type. A dangling symlink on the
    way is resolved inside the root, and its target is made there, as runc does.
    """
    parts = _components(path)
    fd = _open_existing(root_fd, "/".join(parts))
    if fd is not None or create is None:
        if fd is None:
            raise KernelError(errno.ENOENT, "open", path)
        return fd

    current = os.dup(root_fd)
    try:
        for index, name in enumerate(parts):
            prefix = "/".join(parts[: index + 1])
            existing = _open_existing(root_fd, prefix)
            if existing is None:
                target = _symlink_target(current, name)
                if target is not None:
                    if _depth >= _MAX_SYMLINKS:
                        raise KernelError(errno.ELOOP, "resolve", path)
                    base = "/".join(parts[:index])
                    resolved = target if target.startswith("/") else f"{base}/{target}"
                    rest = "/".join(parts[index + 1:])
                    return open_in_root(root_fd, _clamp(f"{resolved}/{rest}"), create,
                                        _depth + 1)
                _create(current, name, "dir" if index < len(parts) - 1 else create, path)
                existing = _open_existing(root_fd, prefix)
                if existing is None:
                    raise KernelError(errno.ENOENT, "create", path)
            os.close(current)
            current = existing
        return current
    except BaseException:
        os.close(current)
        raise


def _symlink_target(parent_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=parent_fd)
    except OSError:
        return None


def _clamp(path: str) -> str:
    """Normalise path as if its root were "/": ".." never climbs above it."""
    parts: list[str] = []
    for part in _components(path):
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def _create(parent_fd: int, name: str, kind: str, path: str) -> None:
    try:
        if kind == "dir":
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        else:
            fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=parent_fd)
            os.close(fd)
    except FileExistsError:
        # A dangling symlink sits here: its target resolved inside the root does not exist.
        raise KernelError(errno.ENOENT, "create (a dangling symlink is in the way)", path)


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def is_dir(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)
