"""sha256 digests: validation, hashing while streaming, and layer chain ids.

A digest is the string `sha256:<64 lowercase hex>`, as the OCI image spec writes it.
hashlib is imported inside the hashing functions: loading OpenSSL costs about 3 ms, and
`kakoi run` only validates digests, which it reads from the image index.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

from kakoi.errors import ImageError

ALGORITHM = "sha256"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20


def validate(digest: str) -> str:
    """Return the hex part of `digest`, raising ImageError when it is not a sha256 digest."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ImageError(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex>")
    return digest[len(ALGORITHM) + 1:]


def of_bytes(data: bytes) -> str:
    import hashlib

    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def of_file(stream: BinaryIO) -> tuple[str, int]:
    """Hash `stream` to its end; return the digest and the number of bytes read."""
    import hashlib

    hasher = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return f"{ALGORITHM}:{hasher.hexdigest()}", size


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Compute the chain id of each layer from the config's rootfs.diff_ids.

    ChainID(L0) = DiffID(L0) and ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
    """
    result: list[str] = []
    for diff_id in diff_ids:
        validate(diff_id)
        if not result:
            result.append(diff_id)
        else:
            result.append(of_bytes(f"{result[-1]} {diff_id}".encode()))
    return result


class HashingReader:
    """A read-only stream that hashes and counts every byte read through it."""

    def __init__(self, stream: BinaryIO):
        import hashlib

        self._stream = stream
        self._hasher = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hasher.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read the rest of the stream, so the digest covers all of it."""
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return f"{ALGORITHM}:{self._hasher.hexdigest()}"
