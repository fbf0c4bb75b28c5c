"""`kakoi run`: from an image to a running container and back to an exit code.

The engine writes a real OCI bundle (config.json plus an empty rootfs mount point)
under ROOT/containers/<id>, then hands it to the runtime in-process. The image
layers reach the runtime as an overlay mount for the rootfs, mounted inside the
container's own mount namespace, so it disappears with the container even if kakoi
is killed.
"""

import json
import os
import sys

from kakoi.engine import config as oci_config
from kakoi.engine import state
from kakoi.engine.config import RunOptions
from kakoi.errors import ImageError, ImageNotFound

# Linux refuses mount options longer than a page, which caps the lowerdir list.
_MAX_MOUNT_DATA = 4096


def run(root: str, options: RunOptions) -> int:
    """Create, run and (with --rm) remove a container; return its exit code."""
    from kakoi.image.store import Store

    store = Store(root)
    image = store.ensure_unpacked(resolve_image(store, options.image, options.pull))
    image_config = store.config(image)
    layer_dirs = [str(path) for path in store.layer_dirs(image)]

    container_id = os.urandom(32).hex()
    directory = os.path.join(state.containers_dir(root), container_id)
    with state.locked(root):
        name = state.unique_name(root, options.name)
        os.makedirs(directory)
        record = {"Id": container_id, "Name": name, "Image": image.id,
                  "ImageName": options.image, "Created": state.now(),
                  "State": {"Status": "created", "Pid": 0, "ExitCode": 0, "OOMKilled": False},
                  "AutoRemove": options.remove}
        state.write_record(directory, record)
    try:
        spec = _write_bundle(directory, options, image_config, container_id, layer_dirs)
        exit_code = _run_bundle(root, directory, record, spec, layer_dirs, options)
    except BaseException:
        if options.remove:
            remove_directory(directory)
        else:
            _mark_exited(directory, record, 125)
        raise
    if options.remove:
        remove_directory(directory)
    return exit_code


PULL_POLICIES = ("missing", "always", "never")


def resolve_image(store, name: str, policy: str = "missing"):
    """Find the image in the store, pulling it first as the --pull policy says."""
    if policy not in PULL_POLICIES:
        from kakoi.errors import InvalidArgument
        raise InvalidArgument(f"invalid --pull {policy!r}: use missing, always or never")
    if policy != "always":
        try:
            return store.resolve(name)
        except ImageNotFound:
            if policy == "never":
                raise ImageNotFound(f"unable to find image {name!r} locally, and --pull never "
                                    "forbids pulling it: pull or load it first")
            print(f"Unable to find image {name!r} locally", file=sys.stderr)
    from kakoi.registry.pull import pull

    result = pull(store, name)
    print(f"Pulled {name}: {result.digest}", file=sys.stderr)
    return store.resolve(name)


def _write_bundle(directory: str, options: RunOptions, image_config: dict, container_id: str,
                  layer_dirs: list[str]) -> dict:
    for name in ("rootfs", "upper", "work"):
        os.mkdir(os.path.join(directory, name))
    spec = oci_config.build(options, image_config, container_id, layer_dirs, directory)
    _write_etc_files(directory, spec["hostname"], options.network)
    with open(os.path.join(directory, "config.json"), "w") as file:
        json.dump(spec, file, indent=1)
    return spec


def _write_etc_files(directory: str, hostname: str, network: str) -> None:
    with open(os.path.join(directory, "hostname"), "w") as file:
        file.write(hostname + "\n")
    with open(os.path.join(directory, "hosts"), "w") as file:
        file.write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                   f"127.0.1.1\t{hostname}\n")
    with open(os.path.join(directory, "resolv.conf"), "w") as file:
        file.write(_resolv_conf(network))


def _resolv_conf(network: str) -> str:
    """Return the host's resolv.conf; in a private network namespace, without loopback servers.

    A nameserver on the host's loopback cannot be reached from the container's own
    loopback, and kakoi adds no public resolver in its place.
    """
    try:
        with open("/etc/resolv.conf") as file:
            lines = file.read().splitlines()
    except OSError:
        lines = []
    if network != "host":
        lines = [line for line in lines
                 if not (line.split()[:1] == ["nameserver"]
                         and (line.split()[1:2] or [""])[0].startswith(("127.", "::1")))]
    return "\n".join(lines) + "\n"


def overlay_mount(directory: str, layer_dirs: list[str]) -> dict:
    lower = ":".join(reversed(layer_dirs))
    data = (f"lowerdir={lower},upperdir={directory}/upper,workdir={directory}/work")
    if len(data) >= _MAX_MOUNT_DATA:
        raise ImageError(f"the image has too many layers ({len(layer_dirs)}) for one overlay "
                         "mount: the layer paths exceed the kernel's 4096-byte option limit")
    return {"type": "overlay", "source": "overlay", "options": [data]}


def _run_bundle(root: str, directory: str, record: dict, spec: dict, layer_dirs: list[str],
                options: RunOptions) -> int:
    from kakoi.runtime import attach, process
    from kakoi.runtime.state import process_start_time

    record["Command"] = spec["process"]["args"]
    record["CgroupsPath"] = spec["linux"]["cgroupsPath"]
    # Written before the cgroup exists, so that `kakoi rm` can find and remove it even if
    # this process is killed before the container starts.
    state.write_record(directory, record)
    stdin = 0 if options.interactive else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    forwarder = attach.SignalForwarder()
    try:
        try:
            container = process.create(record["Id"], spec, directory,
                                       rootfs_mounts=[overlay_mount(directory, layer_dirs)],
                                       stdio=(stdin, 1, 2), kill_with_parent=True,
                                       seccomp_cache=os.path.join(root, "cache", "seccomp"))
        finally:
            if stdin != 0:
                os.close(stdin)
        try:
            forwarder.target(container.pid)
            container.start()
            # Recorded after start, so that the write overlaps the program's run.
            record["State"].update(Status="running", Pid=container.pid, StartedAt=state.now(),
                                   PidStartTime=process_start_time(container.pid))
            state.write_record(directory, record)
            status = attach.wait(container.pid, container.console_fd, options.interactive)
            oom_killed = container.oom_killed()
        finally:
            container.kill()
            container.destroy()
    finally:
        forwarder.restore()

    exit_code = attach.exit_code(status)
    if oom_killed and exit_code == 137:
        print(f"kakoi: container {record['Name']} was killed because it reached its memory "
              f"limit (--memory {options.memory})", file=sys.stderr)
    _mark_exited(directory, record, exit_code, oom_killed)
    return exit_code


def _mark_exited(directory: str, record: dict, exit_code: int, oom_killed: bool = False) -> None:
    record["State"].update(Status="exited", Pid=0, ExitCode=exit_code, OOMKilled=oom_killed,
                           FinishedAt=state.now())
    if os.path.isdir(directory):
        state.write_record(directory, record)


def remove_directory(directory: str) -> None:
    """Remove a container's directory, whose upper dir may hold files of any owner and mode."""
    from kakoi.kernel.paths import remove_tree

    remove_tree(directory)
