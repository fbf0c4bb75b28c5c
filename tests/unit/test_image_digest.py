"""Blob digest verification and layer chain ids."""

import hashlib
import io

import pytest

from kakoi.errors import DigestMismatchError, ImageError
from kakoi.image import digest as digests
from kakoi.image.store import Store


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_chain_ids_follow_image_spec():
    a, b, c = sha(b"a"), sha(b"b"), sha(b"c")
    chain_b = sha(f"{a} {b}".encode())

    assert digests.chain_ids([a, b, c]) == [a, chain_b, sha(f"{chain_b} {c}".encode())]


def test_chain_ids_empty():
    assert digests.chain_ids([]) == []


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, 7])
def test_validate_rejects_invalid_digest(bad):
    with pytest.raises(ImageError, match="invalid digest"):
        digests.validate(bad)


def test_write_blob_verifies_digest(tmp_path):
    store = Store(tmp_path / "store")
    data = b"content"

    digest, size, created = store.write_blob(io.BytesIO(data), sha(data))

    assert digest == sha(data)
    assert size == len(data)
    assert created
    assert store.blob_path(digest).read_bytes() == data


def test_write_blob_existing_is_not_new(tmp_path):
    store = Store(tmp_path / "store")
    store.write_blob(io.BytesIO(b"x"))

    _, _, created = store.write_blob(io.BytesIO(b"x"))

    assert not created


def test_write_blob_mismatch_leaves_nothing(tmp_path):
    store = Store(tmp_path / "store")
    store.ensure_layout()

    with pytest.raises(DigestMismatchError, match="hashes to"):
        store.write_blob(io.BytesIO(b"content"), sha(b"other"))

    assert list(store.blobs_dir.iterdir()) == []
    assert list(store.tmp_dir.iterdir()) == []
