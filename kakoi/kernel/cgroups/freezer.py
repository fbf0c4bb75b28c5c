"""Freeze and thaw every process in a cgroup, through v1 freezer.state or v2 cgroup.freeze.

Freezing is asynchronous in the kernel, so each function writes the request and then
polls the state file until the kernel reports the new state or the timeout runs out.
"""

import os
import time

from kakoi import log
from kakoi.errors import CgroupError

from . import files

POLL_INTERVAL = 0.001
MAX_POLL_INTERVAL = 0.05


def freeze(directory: str, is_v2: bool, timeout: float) -> None:
    """Freeze the cgroup at directory and wait until every process in it is frozen.

    Raises:
        CgroupError: the cgroup was not frozen within timeout seconds; it is thawed again
            first, so that its processes do not stay half frozen.
    """
    if is_v2:
        files.write(os.path.join(directory, "cgroup.freeze"), "1")
        frozen = _wait(lambda: _v2_frozen(directory) == 1, timeout)
    else:
        frozen = _wait(lambda: _v1_freeze_step(directory) == "FROZEN", timeout)

    if frozen:
        log.debug("froze cgroup %s", directory, name=__name__)
        return

    thaw(directory, is_v2, timeout)
    raise CgroupError(f"freeze cgroup {directory}: not frozen after {timeout}s; a process may "
                      "be stuck in the kernel, so retry or kill the container")


def thaw(directory: str, is_v2: bool, timeout: float) -> None:
    """Thaw the cgroup at directory and wait until the kernel reports it thawed.

    Raises:
        CgroupError: the cgroup still reported frozen after timeout seconds.
    """
    if is_v2:
        files.write(os.path.join(directory, "cgroup.freeze"), "0")
        thawed = _wait(lambda: _v2_frozen(directory) == 0, timeout)
    else:
        files.write(os.path.join(directory, "freezer.state"), "THAWED")
        thawed = _wait(lambda: files.read(os.path.join(directory, "freezer.state")) == "THAWED",
                       timeout)

    if not thawed:
        raise CgroupError(f"thaw cgroup {directory}: still frozen after {timeout}s; "
                          "retry the thaw")
    log.debug("thawed cgroup %s", directory, name=__name__)


def state(directory: str, is_v2: bool) -> str:
    """Return "frozen" when the cgroup is frozen or asked to be, else "thawed"."""
    if is_v2:
        content = files.read_optional(os.path.join(directory, "cgroup.freeze"))
        return "frozen" if content == "1" else "thawed"

    content = files.read_optional(os.path.join(directory, "freezer.state"))
    # FREEZING is a freeze in progress; a paused container reports it as paused too.
    return "frozen" if content in ("FROZEN", "FREEZING") else "thawed"


def _v1_freeze_step(directory: str) -> str:
    # The v1 kernel tries the tasks that are not frozen yet again at every write, so
    # each poll repeats the request.
    path = os.path.join(directory, "freezer.state")
    files.write(path, "FROZEN")
    return files.read(path)


def _v2_frozen(directory: str) -> int:
    events = files.read_keyed(os.path.join(directory, "cgroup.events"))
    return events.get("frozen", 0)


def _wait(done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    interval = POLL_INTERVAL
    while True:
        if done():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 2, MAX_POLL_INTERVAL)
