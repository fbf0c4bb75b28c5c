"""Image references as Docker reads them: `busybox`, `ghcr.io/a/b:1.0`, `x@sha256:...`.

The grammar follows the distribution project's reference package: a name made of an optional
domain and lowercase path components, an optional tag and an optional digest. Names on Docker
Hub are normalized: `busybox` becomes `docker.io/library/busybox:latest`.
"""

from __future__ import annotations

import re

from kakoi.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ANY_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_FULL_HEX_ID = re.compile(r"[0-9a-f]{64}")


class Reference:
    """A parsed, normalized image reference; immutable and hashable.

    A plain class, not a dataclass: importing dataclasses costs about 5 ms, which
    `kakoi run` would pay to parse its image argument.
    """

    __slots__ = ("domain", "path", "tag", "digest")

    def __init__(self, domain: str, path: str, tag: str | None = None,
                 digest: str | None = None):
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "digest", digest)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: Reference is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: Reference is immutable")

    def _values(self) -> tuple:
        return (self.domain, self.path, self.tag, self.digest)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return (f"Reference(domain={self.domain!r}, path={self.path!r}, tag={self.tag!r}, "
                f"digest={self.digest!r})")

    @property
    def name(self) -> str:
        """The repository with its domain, e.g. `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    def familiar_name(self) -> str:
        """Return the repository as Docker prints it, e.g. `busybox`."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        prefix = OFFICIAL_NAMESPACE + "/"
        if self.path.startswith(prefix) and "/" not in self.path[len(prefix):]:
            return self.path[len(prefix):]
        return self.path

    def familiar(self) -> str:
        """Return the short form that Docker prints, e.g. `busybox:latest`."""
        return self.familiar_name() + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, None)

    def _suffix(self) -> str:
        text = ""
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text

    def __str__(self) -> str:
        return self.name + self._suffix()


def _invalid(text: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid reference format: {why} in {text!r}; expected [DOMAIN/]NAME[:TAG][@sha256:HEX]"
    )


def _split_digest(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    remainder, digest = text.split("@", 1)
    if _DIGEST.fullmatch(digest):
        return remainder, digest
    if _ANY_DIGEST.fullmatch(digest):
        raise _invalid(text, f"unsupported digest {digest!r} (only sha256 with 64 lowercase hex)")
    raise _invalid(text, f"invalid digest {digest!r}")


def _split_tag(text: str, remainder: str) -> tuple[str, str | None]:
    # A colon after the last slash starts a tag; a colon before it belongs to a port.
    colon = remainder.rfind(":")
    if colon == -1 or "/" in remainder[colon:]:
        return remainder, None
    tag = remainder[colon + 1:]
    if not _TAG.fullmatch(tag):
        raise _invalid(text, f"invalid tag {tag!r}")
    return remainder[:colon], tag


def _split_domain(name: str) -> tuple[str, str]:
    slash = name.find("/")
    first = name[:slash] if slash != -1 else ""
    looks_like_domain = ("." in first or ":" in first or first == "localhost" or
                         first != first.lower())
    if slash == -1 or not looks_like_domain:
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, name[slash + 1:]
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    return domain, path


def _check_name(text: str, domain: str, path: str) -> None:
    if not _DOMAIN.fullmatch(domain):
        raise _invalid(text, f"invalid domain {domain!r}")
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if _PATH_COMPONENT.fullmatch(component.lower()):
            raise _invalid(text, "repository name must be lowercase")
        raise _invalid(text, f"invalid name component {component!r}")
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise _invalid(text, f"repository name longer than {MAX_NAME_LENGTH} characters")


def parse(text: str, default_tag: bool = True) -> Reference:
    """Parse and normalize `text`; add the tag `latest` when neither tag nor digest is given.

    Raises InvalidArgument with `invalid reference format: ...` for anything Docker rejects.
    """
    if not text:
        raise _invalid(text, "empty reference")
    if _FULL_HEX_ID.fullmatch(text):
        raise _invalid(text, "a 64-character hex string is an image id, not a repository name")

    remainder, digest = _split_digest(text)
    name, tag = _split_tag(text, remainder)
    if not name:
        raise _invalid(text, "missing repository name")

    domain, path = _split_domain(name)
    _check_name(text, domain, path)
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)
