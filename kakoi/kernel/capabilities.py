"""Linux capabilities by name, and applying the five capability sets to this process."""

from kakoi.errors import InvalidArgument
from kakoi.kernel import libc

# Numbers from <linux/capability.h>, in order.
NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
NUMBERS = {name: number for number, name in enumerate(NAMES)}


def last_cap() -> int:
    """Return the highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as file:
            return int(file.read())
    except OSError:
        return len(NAMES) - 1


def normalize(name: str) -> str:
    """Return the canonical CAP_ name for "chown", "CAP_CHOWN" or "cap_chown"."""
    upper = name.strip().upper()
    canonical = upper if upper.startswith("CAP_") else "CAP_" + upper
    if canonical not in NUMBERS:
        raise InvalidArgument(f"unknown capability {name!r}: use a name such as CAP_NET_ADMIN")
    return canonical


def mask(names: list[str] | None) -> int:
    result = 0
    for name in names or ():
        result |= 1 << NUMBERS[normalize(name)]
    return result


def bounding_set() -> list[str]:
    """Return the capabilities in this process's bounding set, by name."""
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("CapBnd:"):
                bits = int(line.split()[1], 16)
                return [name for number, name in enumerate(NAMES) if bits >> number & 1]
    return []


def drop_bounding(keep: int) -> None:
    """Drop every capability not in keep from the bounding set (needs CAP_SETPCAP)."""
    for number in range(last_cap() + 1):
        if keep >> number & 1:
            continue
        if libc.prctl(libc.PR_CAPBSET_READ, number) == 1:
            libc.prctl(libc.PR_CAPBSET_DROP, number)


def set_ambient(ambient: int) -> None:
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    for number in range(last_cap() + 1):
        if ambient >> number & 1:
            libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, number)
