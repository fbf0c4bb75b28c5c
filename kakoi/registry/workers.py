"""Run the transfers of one pull or push in a few threads, stopping at the first failure.

concurrent.futures would do, but importing it loads logging (about 5 ms) on every pull. The
transfers spend their time in socket reads, hashing, decompression and file writes, which
release the GIL, so threads suffice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_all(tasks: list[Callable[[], object]], workers: int, name: str,
            on_interrupt: Callable[[], None] | None = None) -> list:
    """Run every task in up to `workers` threads and return their results in task order.

    After a failure no further task starts; the running ones finish, then the failure of the
    earliest failed task is raised. An interrupt of the caller (Ctrl-C) calls `on_interrupt`,
    which should make the running tasks fail soon, then waits for them, so none is left
    writing while the caller cleans up.
    """
    results: list = [None] * len(tasks)
    failures: dict[int, BaseException] = {}
    pending = iter(range(len(tasks)))
    lock = threading.Lock()
    stopped = False

    def work() -> None:
        while True:
            with lock:
                index = None if stopped or failures else next(pending, None)
            if index is None:
                return
            try:
                results[index] = tasks[index]()
            except BaseException as error:
                with lock:
                    failures[index] = error

    threads = [threading.Thread(target=work, name=f"{name}-{number}", daemon=True)
               for number in range(min(workers, len(tasks)))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        with lock:
            stopped = True
        if on_interrupt is not None:
            on_interrupt()
        for thread in threads:
            thread.join()
        raise
    if failures:
        raise failures[min(failures)]
    return results
