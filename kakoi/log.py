"""Logging that costs nothing until it is used.

The logging module takes about 3 ms to import, a fifth of a container start, so the
run path calls these functions, which import it only when debug output is on or a
warning is written.
"""

enabled = False


def enable_debug() -> None:
    """Send debug messages of every kakoi module to stderr."""
    global enabled
    import logging

    logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    enabled = True


def debug(message: str, *args, name: str = "kakoi") -> None:
    if enabled:
        import logging

        logging.getLogger(name).debug(message, *args)


def warning(message: str, *args, name: str = "kakoi") -> None:
    import logging

    logging.getLogger(name).warning(message, *args)
