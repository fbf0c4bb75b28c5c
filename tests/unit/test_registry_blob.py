"""Blob downloads against a fake transport: verification, resume with Range, truncation.

A fake transport replaces the registry, because a real one cannot be made to cut a
response short or serve wrong bytes on demand.
"""

import gzip
import hashlib
import os

import pytest
import zstandard

from kakoi.errors import DigestMismatchError
from kakoi.registry.blob import BlobDownload, LayerDecoder, partial_path
from kakoi.registry.client import RegistryClient
from kakoi.registry.config import RegistrySettings
from kakoi.registry.errors import RegistryError

from fake_http import FakeTransport, Response

TAR = os.urandom(200_000) + b"\0" * 100_000
GZIPPED = gzip.compress(TAR)
DIFF_ID = "sha256:" + hashlib.sha256(TAR).hexdigest()


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BlobServer:
    """Serves one blob; `cut` ends the first responses early, `ranges` honours Range."""

    def __init__(self, data, cut=(), ranges=True, served=None):
        self.data = data
        self.served = data if served is None else served
        self.cut = list(cut)
        self.ranges = ranges
        self.requests = []

    def __call__(self, request):
        self.requests.append(request)
        if request.url.path == "/v2/":
            return Response(200)
        start = 0
        header = request.headers.get("Range")
        status, headers = 200, {}
        if header and self.ranges:
            start = int(header.split("=")[1].rstrip("-"))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(self.served) - 1}/{len(self.served)}"
        body = self.served[start:]
        if self.cut:
            body = body[:self.cut.pop(0)]
        # A stream, as from the network: a response built with content= counts as read.
        return Response(status, stream=[body], headers=headers)


@pytest.fixture
def dirs(tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "blobs").mkdir()
    return tmp_path


def download(dirs, server, data, compression="gzip", attempts=4):
    client = RegistryClient("r.test", RegistrySettings("r.test"), None,
                            transport=FakeTransport(server), sleep=lambda s: None,
                            max_attempts=attempts)
    digest = digest_of(data)
    job = BlobDownload(client, "a", digest, len(data), compression, str(dirs / "tmp"),
                       str(dirs / "blobs" / digest.split(":")[1]))
    return job, job.run()


def test_gzip_blob_verified(dirs):
    job, diff_id = download(dirs, BlobServer(GZIPPED), GZIPPED)
    assert diff_id == DIFF_ID
    with open(job.blob_path, "rb") as blob:
        assert blob.read() == GZIPPED
    assert os.listdir(dirs / "tmp") == []


def test_zstd_and_plain_diff_ids(dirs):
    zstd = zstandard.ZstdCompressor().compress(TAR)
    assert download(dirs, BlobServer(zstd), zstd, "zstd")[1] == DIFF_ID
    assert download(dirs, BlobServer(TAR), TAR, "none")[1] == DIFF_ID


def test_multi_member_gzip(dirs):
    data = gzip.compress(TAR[:1000]) + gzip.compress(TAR[1000:])
    assert download(dirs, BlobServer(data), data)[1] == DIFF_ID


def test_interrupted_download_resumes_with_range(dirs):
    server = BlobServer(GZIPPED, cut=[50_000, 70_000])
    job, diff_id = download(dirs, server, GZIPPED)
    assert diff_id == DIFF_ID
    ranges = [r.headers.get("Range") for r in server.requests if r.url.path != "/v2/"]
    assert ranges == [None, "bytes=50000-", "bytes=120000-"]


def test_partial_file_from_earlier_run_resumed(dirs):
    digest = digest_of(GZIPPED)
    with open(partial_path(str(dirs / "tmp"), digest), "wb") as partial:
        partial.write(GZIPPED[:12345])
    server = BlobServer(GZIPPED)
    assert download(dirs, server, GZIPPED)[1] == DIFF_ID
    assert server.requests[-1].headers["Range"] == "bytes=12345-"


def test_range_ignored_restarts(dirs):
    server = BlobServer(GZIPPED, cut=[40_000], ranges=False)
    assert download(dirs, server, GZIPPED)[1] == DIFF_ID


def test_truncated_blob_fails_and_keeps_partial(dirs):
    server = BlobServer(GZIPPED, cut=[1000, 1000, 1000])
    with pytest.raises(RegistryError, match="truncated: received 3000 of"):
        download(dirs, server, GZIPPED, attempts=3)
    assert os.listdir(dirs / "blobs") == []
    partial = partial_path(str(dirs / "tmp"), digest_of(GZIPPED))
    assert os.path.getsize(partial) == 3000


def test_wrong_content_rejected(dirs):
    served = os.urandom(len(TAR))
    with pytest.raises(DigestMismatchError, match="hashes to"):
        download(dirs, BlobServer(TAR, served=served), TAR, "none")
    assert os.listdir(dirs / "blobs") == []
    assert os.listdir(dirs / "tmp") == []


def test_damaged_gzip_rejected(dirs):
    damaged = bytearray(GZIPPED)
    damaged[-6] ^= 0xFF  # the CRC-32 in the gzip trailer
    with pytest.raises(DigestMismatchError, match="blob sha256:.* of a: invalid gzip data"):
        download(dirs, BlobServer(GZIPPED, served=bytes(damaged)), GZIPPED)
    assert os.listdir(dirs / "blobs") == []
    assert os.listdir(dirs / "tmp") == []


def test_oversized_content_rejected(dirs):
    server = BlobServer(GZIPPED, served=GZIPPED + b"extra")
    with pytest.raises(DigestMismatchError, match="larger than"):
        download(dirs, server, GZIPPED)
    assert os.listdir(dirs / "blobs") == []


def test_blob_present_skipped(dirs):
    digest = digest_of(GZIPPED)
    (dirs / "blobs" / digest.split(":")[1]).write_bytes(GZIPPED)
    server = BlobServer(GZIPPED)
    assert download(dirs, server, GZIPPED)[1] is None
    assert server.requests == []


def test_decoder_detects_truncated_gzip():
    decoder = LayerDecoder("gzip")
    decoder.feed(GZIPPED[:-100])
    with pytest.raises(DigestMismatchError, match="ends early"):
        decoder.finish("layer")


def test_decoder_rejects_bad_gzip():
    decoder = LayerDecoder("gzip")
    with pytest.raises(DigestMismatchError, match="invalid gzip data"):
        decoder.feed(b"\x1f\x8b\x08\x00garbage-garbage-garbage")


def test_failed_download_leaves_no_empty_partial_file(dirs):
    server = BlobServer(GZIPPED, cut=[0, 0])

    with pytest.raises(RegistryError, match="truncated"):
        download(dirs, server, GZIPPED, attempts=2)

    assert os.listdir(dirs / "tmp") == []
