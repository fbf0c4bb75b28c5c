"""Read a cgroup's usage counters into the shape of runc's `events --stats` data.

The result is a dict with "cpu", "memory", "pids", "blkio" and "hugetlb" keys, with
runc's JSON field names inside. Times are in nanoseconds and sizes in bytes, as in runc.
Files that the kernel does not offer are skipped, so a missing counter is absent
rather than 0.
"""

import os

from . import files

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# The value runc reports for an unlimited v2 memory or swap limit.
MAX_UINT64 = 2**64 - 1

_V1_BLKIO_PREFIXES = ("blkio.", "blkio.bfq.", "blkio.throttle.")
_V2_IO_KEYS = (
    ("rbytes", "ioServiceBytesRecursive", "Read"),
    ("wbytes", "ioServiceBytesRecursive", "Write"),
    ("dbytes", "ioServiceBytesRecursive", "Discard"),
    ("rios", "ioServicedRecursive", "Read"),
    ("wios", "ioServicedRecursive", "Write"),
    ("dios", "ioServicedRecursive", "Discard"),
)


def read_v1(directory_of: "Callable[[str], str | None]") -> dict:
    """Return the stats of a v1 cgroup; directory_of maps a controller to its directory."""
    return {
        "cpu": _v1_cpu(directory_of("cpuacct"), directory_of("cpu")),
        "memory": _v1_memory(directory_of("memory")),
        "pids": _pids(directory_of("pids")),
        "blkio": _v1_blkio(directory_of("blkio")),
        "hugetlb": _hugetlb(directory_of("hugetlb"), "usage_in_bytes", "max_usage_in_bytes"),
    }


def read_v2(directory: str) -> dict:
    """Return the stats of the v2 cgroup at directory."""
    return {
        "cpu": _v2_cpu(directory),
        "memory": _v2_memory(directory),
        "pids": _pids(directory),
        "blkio": _v2_io(directory),
        "hugetlb": _hugetlb(directory, "current", None),
    }


def _number(directory: str | None, name: str) -> int | None:
    if directory is None:
        return None
    content = files.read_optional(os.path.join(directory, name))
    if content is None or not content.strip():
        return None
    value = content.split()[0]
    if value == "max":
        return MAX_UINT64
    return int(value)


def _keyed(directory: str | None, name: str) -> dict[str, int]:
    if directory is None or not os.path.exists(os.path.join(directory, name)):
        return {}
    return files.read_keyed(os.path.join(directory, name))


def _put(target: dict, key: str, value) -> None:
    if value is not None:
        target[key] = value


def _v1_cpu(cpuacct: str | None, cpu: str | None) -> dict:
    usage: dict = {}
    _put(usage, "total", _number(cpuacct, "cpuacct.usage"))
    for name, key in (("cpuacct.usage_percpu", "percpu"),
                      ("cpuacct.usage_percpu_sys", "percpu_kernel"),
                      ("cpuacct.usage_percpu_user", "percpu_user")):
        content = files.read_optional(os.path.join(cpuacct, name)) if cpuacct else None
        if content is not None:
            usage[key] = [int(value) for value in content.split()]

    # cpuacct.stat counts clock ticks; runc reports nanoseconds.
    ticks = _keyed(cpuacct, "cpuacct.stat")
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    if "system" in ticks:
        usage["kernel"] = ticks["system"] * tick_ns
    if "user" in ticks:
        usage["user"] = ticks["user"] * tick_ns

    stat = _keyed(cpu, "cpu.stat")
    throttling: dict = {}
    _put(throttling, "periods", stat.get("nr_periods"))
    _put(throttling, "throttled_periods", stat.get("nr_throttled"))
    _put(throttling, "throttled_time", stat.get("throttled_time"))
    return {"usage": usage, "throttling": throttling}


def _v2_cpu(directory: str) -> dict:
    stat = _keyed(directory, "cpu.stat")
    usage: dict = {}
    for source, key in (("usage_usec", "total"), ("system_usec", "kernel"), ("user_usec", "user")):
        if source in stat:
            usage[key] = stat[source] * 1000

    throttling: dict = {}
    _put(throttling, "periods", stat.get("nr_periods"))
    _put(throttling, "throttled_periods", stat.get("nr_throttled"))
    if "throttled_usec" in stat:
        throttling["throttled_time"] = stat["throttled_usec"] * 1000
    return {"usage": usage, "throttling": throttling}


def _v1_memory_entry(directory: str, prefix: str) -> dict:
    entry: dict = {}
    for name, key in (("usage_in_bytes", "usage"), ("max_usage_in_bytes", "max"),
                      ("limit_in_bytes", "limit"), ("failcnt", "failcnt")):
        _put(entry, key, _number(directory, f"{prefix}{name}"))
    return entry


def _v1_memory(directory: str | None) -> dict:
    if directory is None:
        return {}

    memory: dict = {}
    for prefix, key in (("memory.", "usage"), ("memory.memsw.", "swap"),
                        ("memory.kmem.", "kernel"), ("memory.kmem.tcp.", "kernelTCP")):
        entry = _v1_memory_entry(directory, prefix)
        if entry:
            memory[key] = entry

    raw = _keyed(directory, "memory.stat")
    if raw:
        memory["raw"] = raw
        _put(memory, "cache", raw.get("cache"))
    return memory


def _v2_memory(directory: str) -> dict:
    memory: dict = {}
    usage: dict = {}
    _put(usage, "usage", _number(directory, "memory.current"))
    _put(usage, "limit", _number(directory, "memory.max"))
    _put(usage, "max", _number(directory, "memory.peak"))
    events = _keyed(directory, "memory.events")
    if "max" in events:
        usage["failcnt"] = events["max"]
    if usage:
        memory["usage"] = usage

    swap = _v2_swap(directory, usage)
    if swap:
        memory["swap"] = swap

    raw = _keyed(directory, "memory.stat")
    if raw:
        memory["raw"] = raw
        _put(memory, "cache", raw.get("file"))
    return memory


def _v2_swap(directory: str, usage: dict) -> dict:
    # v1 reports memory+swap in its swap entry; runc adds memory to v2's swap-only
    # counters so that both versions report the same thing.
    swap: dict = {}
    current = _number(directory, "memory.swap.current")
    if current is not None:
        swap["usage"] = current + usage.get("usage", 0)

    limit = _number(directory, "memory.swap.max")
    if limit is not None:
        memory_limit = usage.get("limit", MAX_UINT64)
        unlimited = limit == MAX_UINT64 or memory_limit == MAX_UINT64
        swap["limit"] = MAX_UINT64 if unlimited else limit + memory_limit

    events = _keyed(directory, "memory.swap.events")
    if "fail" in events:
        swap["failcnt"] = events["fail"]
    return swap


def _pids(directory: str | None) -> dict:
    pids: dict = {}
    _put(pids, "current", _number(directory, "pids.current"))
    limit = _number(directory, "pids.max")
    # runc reports an unlimited pids.max as 0.
    if limit is not None:
        pids["limit"] = 0 if limit == MAX_UINT64 else limit
    return pids


def _v1_blkio(directory: str | None) -> dict:
    if directory is None:
        return {}

    # Like runc, take the first scheduler that has counters: CFQ, then BFQ, then the
    # throttle layer, which counts every I/O.
    for prefix in _V1_BLKIO_PREFIXES:
        service_bytes = _blkio_entries(directory, f"{prefix}io_service_bytes_recursive")
        if service_bytes:
            return {
                "ioServiceBytesRecursive": service_bytes,
                "ioServicedRecursive": _blkio_entries(directory, f"{prefix}io_serviced_recursive"),
            }
    return {}


def _blkio_entries(directory: str, name: str) -> list[dict]:
    content = files.read_optional(os.path.join(directory, name))
    entries = []
    for line in (content or "").splitlines():
        fields = line.split()
        # Lines are "major:minor Op value"; the last line is "Total value".
        if len(fields) != 3 or ":" not in fields[0]:
            continue
        major, _, minor = fields[0].partition(":")
        entries.append({"major": int(major), "minor": int(minor), "op": fields[1],
                        "value": int(fields[2])})
    return entries


def _v2_io(directory: str) -> dict:
    content = files.read_optional(os.path.join(directory, "io.stat"))
    blkio: dict = {}
    for line in (content or "").splitlines():
        device, *pairs = line.split()
        major, _, minor = device.partition(":")
        values = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        for key, group, op in _V2_IO_KEYS:
            if key in values:
                entry = {"major": int(major), "minor": int(minor), "op": op,
                         "value": int(values[key])}
                blkio.setdefault(group, []).append(entry)
    return blkio


def _hugetlb(directory: str | None, usage_name: str, max_name: str | None) -> dict:
    if directory is None or not os.path.isdir(directory):
        return {}

    sizes = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            parts = entry.name.split(".")
            if parts[0] == "hugetlb" and len(parts) >= 3 and not parts[1].isdigit():
                sizes.add(parts[1])

    result = {}
    for size in sorted(sizes):
        entry: dict = {}
        _put(entry, "usage", _number(directory, f"hugetlb.{size}.{usage_name}"))
        if max_name is not None:
            _put(entry, "max", _number(directory, f"hugetlb.{size}.{max_name}"))
            _put(entry, "failcnt", _number(directory, f"hugetlb.{size}.failcnt"))
        else:
            events = _keyed(directory, f"hugetlb.{size}.events")
            _put(entry, "failcnt", events.get("max"))
        if entry:
            result[size] = entry
    return result
