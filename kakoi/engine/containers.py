"""Containers as `kakoi ps` and `kakoi rm` see them, including ones whose kakoi died."""

import os
import signal

from kakoi.engine import state
from kakoi.engine.run import remove_directory
from kakoi.errors import ContainerError


def _alive(record: dict) -> bool:
    """Whether the container's init still runs: a zombie or a reused pid does not count."""
    from kakoi.runtime.state import process_start_time

    status = record["State"]
    pid = status.get("Pid", 0)
    if pid <= 0:
        return False
    started = process_start_time(pid)
    return started is not None and started == status.get("PidStartTime", started)


def _refresh(root: str, record: dict) -> dict:
    """Mark a "running" container whose process is gone as exited, and drop its cgroup.

    This happens when the kakoi process that ran it was killed before it could clean up.
    """
    status = record["State"]
    if status["Status"] == "running" and not _alive(record):
        _remove_cgroup(record)
        status.update(Status="exited", Pid=0, ExitCode=status.get("ExitCode") or 137)
        state.write_record(os.path.join(state.containers_dir(root), record["Id"]), record)
    return record


def _remove_cgroup(record: dict) -> None:
    from kakoi.kernel import cgroups

    path = record.get("CgroupsPath") or f"kakoi/{record['Id']}"
    try:
        cgroups.Cgroup.open(cgroups.detect(), path).destroy()
    except Exception:  # the cgroup may never have been made, or is gone already
        pass


def list_containers(root: str, include_exited: bool = False) -> list[dict]:
    rows = []
    for record in state.all_records(root):
        record = _refresh(root, record)
        status = record["State"]
        if status["Status"] != "running" and not include_exited:
            continue
        if status["Status"] == "exited":
            record["StatusText"] = f"Exited ({status.get('ExitCode', 0)})"
        else:
            record["StatusText"] = status["Status"].capitalize()
        record.setdefault("Command", [])
        rows.append(record)
    return sorted(rows, key=lambda row: row["Created"], reverse=True)


def remove(root: str, name_or_id: str, force: bool = False) -> None:
    with state.locked(root):
        record = _refresh(root, state.find(root, name_or_id))
        status = record["State"]
        if status["Status"] == "running":
            if not force:
                raise ContainerError(f"container {record['Name']} is running: stop it first, "
                                     "or use kakoi rm -f")
            try:
                os.kill(status["Pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Also for a container that never got to run: a kakoi killed between creating
        # its cgroup and starting it leaves the cgroup behind with a "created" record.
        _remove_cgroup(record)
        remove_directory(os.path.join(state.containers_dir(root), record["Id"]))
