"""Run a started container in the foreground: relay signals and the terminal, wait for exit."""

import errno
import fcntl
import os
import selectors
import signal
import struct
import termios

# Signals sent to the runtime that go on to the container's init, as `docker run`
# does with its default --sig-proxy. SIGCHLD and SIGWINCH are handled apart.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGALRM)


def exit_code(status: int) -> int:
    """Map a wait status to a shell-style exit code: 128+N for a signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


class SignalForwarder:
    """Pass the signals that the runtime receives on to the container's init.

    Installed before the container exists, so that a SIGTERM during set-up cannot kill
    the runtime before it has cleaned up; signals that arrive before the init's pid is
    known are held and sent once it is.
    """

    def __init__(self):
        self.pid: int | None = None
        self.pending: list[int] = []
        self.previous = {number: signal.signal(number, self._relay)
                         for number in FORWARDED_SIGNALS}

    def _relay(self, number, frame) -> None:
        if self.pid is None:
            self.pending.append(number)
            return
        try:
            os.kill(self.pid, number)
        except ProcessLookupError:
            pass

    def target(self, pid: int) -> None:
        self.pid = pid
        pending, self.pending = self.pending, []
        for number in pending:
            self._relay(number, None)

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def wait(pid: int, console_fd: int | None = None, interactive: bool = False) -> int:
    """Wait for pid to exit, relaying the terminal if there is one; return its wait status."""
    if console_fd is not None:
        _relay_terminal(console_fd, interactive)
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0


def _relay_terminal(console_fd: int, interactive: bool) -> None:
    """Copy stdin to the pty master and the master to stdout until the pty closes."""
    stdin_is_tty = interactive and os.isatty(0)
    saved_mode = termios.tcgetattr(0) if stdin_is_tty else None

    def resize(number=None, frame=None):
        if os.isatty(1):
            size = fcntl.ioctl(1, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(console_fd, termios.TIOCSWINSZ, size)

    resize()
    previous_winch = signal.signal(signal.SIGWINCH, resize)
    selector = selectors.DefaultSelector()
    try:
        if stdin_is_tty:
            import tty
            tty.setraw(0, termios.TCSANOW)  # TCSAFLUSH would drop typed-ahead input
        selector.register(console_fd, selectors.EVENT_READ)
        if interactive:
            selector.register(0, selectors.EVENT_READ)
        _copy_loop(selector, console_fd)
    finally:
        selector.close()
        signal.signal(signal.SIGWINCH, previous_winch)
        if saved_mode is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved_mode)


def _copy_loop(selector: selectors.BaseSelector, console_fd: int) -> None:
    while True:
        for key, _ in selector.select():
            if key.fd == console_fd:
                try:
                    data = os.read(console_fd, 65536)
                except OSError as error:
                    if error.errno == errno.EIO:  # every slave end is closed
                        return
                    raise
                if not data:
                    return
                _write_all(1, data)
            else:
                data = os.read(0, 65536)
                if not data:
                    selector.unregister(0)
                    # End of input: send the terminal's EOF character, as a user would.
                    _write_all(console_fd, b"\x04")
                    continue
                _write_all(console_fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def terminal_size() -> dict | None:
    """Return the caller's terminal size as the spec's consoleSize, or None."""
    for fd in (1, 0, 2):
        if os.isatty(fd):
            rows, columns, _, _ = struct.unpack(
                "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
            return {"height": rows, "width": columns}
    return None
