"""Mount a container's view of its cgroups, from inside its mount and cgroup namespaces.

The caller has already joined the container's cgroup and unshared a cgroup namespace, so
each cgroup filesystem mounted here shows that cgroup as its root.
"""

import os

from kakoi import log

from .layout import Hierarchy, Layout


def mount_container_view(layout: Layout, target: str, read_only: bool = True) -> None:
    """Mount the cgroup hierarchies at target, which must exist.

    On v2, target gets a cgroup2 mount. On v1 and hybrid hosts, target gets a tmpfs with
    one cgroup mount per hierarchy that kakoi uses, named as on the host, a symlink for
    each co-mounted controller (cpu -> cpu,cpuacct), and `unified` on a hybrid host.

    Raises:
        KernelError: a mount(2) call failed; the message names the target.
    """
    from kakoi.kernel import libc

    target = os.fspath(target)
    flags = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    mounts = []

    if layout.mode == "v2":
        libc.mount("cgroup2", target, "cgroup2", flags, None)
        mounts.append(target)
    else:
        libc.mount("tmpfs", target, "tmpfs", flags, "mode=755")
        mounts.append(target)
        mounts.extend(_mount_hierarchies(layout, target, flags))

    log.debug("mounted the cgroup view at %s (%s, read-only %s)", target, layout.mode, read_only,
              name=__name__)
    if not read_only:
        return

    # A bind remount changes only these mounts' flags, never the cgroup superblocks,
    # which the host's own mounts share. The tmpfs that holds them stays writable, as
    # runc leaves it: nothing can be created in it that reaches the host.
    for mount_point in reversed(mounts):
        if mount_point == target and layout.mode != "v2":
            continue
        remount = libc.MS_REMOUNT | libc.MS_BIND | libc.MS_RDONLY | flags
        libc.mount(None, mount_point, None, remount, None)


def _mount_hierarchies(layout: Layout, target: str, flags: int) -> list[str]:
    from kakoi.kernel import libc

    mounts = []
    for hierarchy in layout.hierarchies():
        if hierarchy.version == 2:
            mount_point = os.path.join(target, "unified")
            os.mkdir(mount_point, 0o755)
            libc.mount("cgroup2", mount_point, "cgroup2", flags, None)
        else:
            mount_point = os.path.join(target, os.path.basename(hierarchy.mount_point))
            os.mkdir(mount_point, 0o755)
            libc.mount("cgroup", mount_point, "cgroup", flags, hierarchy.mount_options)
            _link_controllers(target, hierarchy)
        mounts.append(mount_point)
    return mounts


def _link_controllers(target: str, hierarchy: Hierarchy) -> None:
    # Docker shows a co-mounted "cpu,cpuacct" hierarchy also as "cpu" and "cpuacct".
    directory_name = os.path.basename(hierarchy.mount_point)
    for controller in sorted(hierarchy.controllers):
        link = os.path.join(target, controller)
        if controller == directory_name or os.path.lexists(link):
            continue
        os.symlink(directory_name, link)
