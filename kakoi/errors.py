"""The exception tree shared by every layer.

Each error carries the exit code that the command line returns for it, following
Docker: 125 when kakoi itself fails, 126 when the command cannot be invoked, 127
when the command is not found.
"""


class KakoiError(Exception):
    """Base of every error that kakoi reports to the user as one line."""

    exit_code = 125


class InvalidArgument(KakoiError, ValueError):
    """A value given by the user (flag, reference, size) does not parse or is out of range."""


class InvalidSpecError(KakoiError, ValueError):
    """An OCI runtime config.json is malformed or asks for something inconsistent."""


class NotSupportedError(KakoiError):
    """A feature that this host or this build of kakoi cannot provide."""


class KernelError(KakoiError, OSError):
    """A system call failed; carries errno, the operation and the path."""

    def __init__(self, errno_: int, operation: str, path: str = ""):
        import os

        self.operation = operation
        detail = f"{operation} {path}".strip()
        super().__init__(errno_, f"{detail}: {os.strerror(errno_)}")

    def __str__(self) -> str:
        return self.strerror


class CgroupError(KakoiError):
    """Creating, configuring or removing a cgroup failed."""


class ImageError(KakoiError):
    """An image, archive or blob is invalid or cannot be stored."""


class ImageNotFound(ImageError):
    """No image in the store matches the reference."""


class ImageInUse(ImageError):
    """The image is used by a container and cannot be removed without --force."""


class DigestMismatchError(ImageError):
    """Content does not hash to the digest that names it."""


class LayerEscapeError(ImageError):
    """A layer entry would be written outside the layer root."""


class BuildError(KakoiError):
    """A Dockerfile is invalid or a build step failed.

    With a line number the message starts with `FILENAME:LINE: `; without one it is used as is,
    and line stays None.
    """

    def __init__(self, message: str, line: int | None = None, filename: str = "Dockerfile"):
        self.message = message
        self.line = line
        self.filename = filename
        super().__init__(f"{filename}:{line}: {message}" if line is not None else message)


class ContainerError(KakoiError):
    """A container cannot be created, found or removed."""


class CommandNotFound(KakoiError):
    """The container's command does not exist in its root filesystem."""

    exit_code = 127


class CommandNotExecutable(KakoiError):
    """The container's command exists but cannot be executed."""

    exit_code = 126
