"""The messages between the runtime (parent) and the container's init process (child).

Both ends hold one half of an AF_UNIX SOCK_SEQPACKET pair; each message is one JSON
object, and a file descriptor may ride along (SCM_RIGHTS).

    parent                                   init (PID 1 in the new pid namespace)
      |  fork ------------------------------->  unshare, mounts up to the cgroup mount
      |  move init into its cgroup
      |  {"type": "joined"} ---------------->   unshare the cgroup namespace, rest of the
      |                                         mounts, pivot_root
      |  <------------------ {"type": "console"} + pty master fd   (only with a terminal)
      |  <------------------ {"type": "ready"}   set-up done, waiting to exec
      |  {"type": "start"} ----------------->   rlimits, user, capabilities, exec
      |  <------------------ EOF                 exec succeeded (the socket is close-on-exec)
      |  <------------------ {"type": "error"}  any step failed; init exits

The parent never trusts more than the JSON fields it reads: once init has entered
the container's namespaces, what it sends is untrusted input.
"""

import array
import socket

from kakoi import jsontext

_MAX_MESSAGE = 65536


def pair() -> tuple[socket.socket, socket.socket]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return parent, child


def send(sock: socket.socket, message: dict, fd: int | None = None) -> None:
    data = jsontext.dumps(message).encode()
    if fd is None:
        sock.sendall(data)
    else:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def receive(sock: socket.socket) -> tuple[dict | None, int | None]:
    """Return the next message and the fd sent with it; (None, None) at end of stream."""
    fds = array.array("i")
    data, ancillary, _, _ = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(fds.itemsize))
    received_fd = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            received_fd = fds[0] if fds else None
    if not data:
        return None, received_fd
    message = jsontext.loads(data)
    if not isinstance(message, dict):
        raise ValueError("init sent a message that is not a JSON object")
    return message, received_fd
