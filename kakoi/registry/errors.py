"""Errors of the registry client, each reported by the command line as one line with exit 125."""

from kakoi.errors import ImageError, KakoiError


class RegistryError(KakoiError):
    """A registry cannot be reached, returns an error, or serves content that is invalid."""


class AuthenticationError(RegistryError):
    """The registry or its token server rejected the credentials."""


class ManifestError(RegistryError, ImageError):
    """A manifest or index cannot be used: wrong media type, too large, or no matching platform."""


class NotFoundError(RegistryError):
    """The repository, tag or digest does not exist in the registry."""
