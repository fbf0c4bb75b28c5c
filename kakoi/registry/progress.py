"""Pull progress: rich progress bars on a terminal, one line per layer event otherwise."""

from __future__ import annotations

import sys
import threading


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class Quiet:
    """No output at all, for `kakoi pull -q`."""

    def line(self, text: str) -> None:
        pass

    def exists(self, digest: str) -> None:
        pass

    def start(self, digest: str, total: int, completed: int) -> None:
        pass

    def advance(self, digest: str, amount: int) -> None:
        pass

    def done(self, digest: str) -> None:
        pass

    def close(self) -> None:
        pass


class Plain(Quiet):
    """Lines such as Docker prints when its output is not a terminal."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self._started: set[str] = set()
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream, flush=True)

    def exists(self, digest: str) -> None:
        self.line(f"{short(digest)}: Already exists")

    def start(self, digest: str, total: int, completed: int) -> None:
        if digest in self._started:
            self.line(f"{short(digest)}: Resuming at {completed} of {total} bytes")
            return
        self._started.add(digest)
        suffix = f" (resuming at {completed} of {total} bytes)" if completed else ""
        self.line(f"{short(digest)}: Pulling fs layer{suffix}")

    def done(self, digest: str) -> None:
        self.line(f"{short(digest)}: Download complete")


class Bars(Plain):
    """One rich progress bar per layer; rich is imported only when a terminal shows them."""

    def __init__(self, stream=None):
        super().__init__(stream)
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TransferSpeedColumn)

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  DownloadColumn(), TransferSpeedColumn(),
                                  console=Console(file=self.stream))
        self._tasks: dict[str, int] = {}
        self._progress.start()

    def line(self, text: str) -> None:
        self._progress.console.print(text, highlight=False)

    def start(self, digest: str, total: int, completed: int) -> None:
        with self._lock:
            task = self._tasks.get(digest)
            if task is None:
                self._tasks[digest] = self._progress.add_task(short(digest), total=total,
                                                              completed=completed)
            else:
                self._progress.update(task, completed=completed)

    def advance(self, digest: str, amount: int) -> None:
        self._progress.advance(self._tasks[digest], amount)

    def done(self, digest: str) -> None:
        with self._lock:
            task = self._tasks.get(digest)
            if task is not None:
                self._progress.update(task, description=f"{short(digest)} done")

    def close(self) -> None:
        self._progress.stop()


def for_output(quiet: bool, stream=None):
    stream = stream or sys.stdout
    if quiet:
        return Quiet()
    if stream.isatty():
        return Bars(stream)
    return Plain(stream)
