"""Blob uploads of `kakoi push` against a scripted registry: sessions, chunks, Range, mounts.

A fake transport replaces the network, because docker-registry cannot be made to keep
only part of a chunk, answer 416, or give relative and absolute Locations on demand; the e2e
tests push to real registries.
"""

import hashlib

import pytest

from kakoi.registry.client import RegistryClient
from kakoi.registry.config import RegistrySettings
from kakoi.registry.errors import RegistryError
from kakoi.registry.http import Request
from kakoi.registry.push import BlobUpload, QuietProgress, _range_end

from fake_http import FakeTransport, Response

HOST = "r.test"


class UploadRegistry:
    """One repository's blob uploads, with knobs for the behaviours under test."""

    def __init__(self, absolute_location=False, keep_at_most=None, fail_patch_once=False,
                 single_post=False, mountable=()):
        self.absolute_location = absolute_location
        self.keep_at_most = keep_at_most
        self.fail_patch_once = fail_patch_once
        self.single_post = single_post
        self.mountable = set(mountable)
        self.sessions: dict[str, bytearray] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[Request] = []

    def location(self, session: str) -> str:
        path = f"/v2/repo/blobs/uploads/{session}?_state=s"
        return f"http://{HOST}{path}" if self.absolute_location else path

    def handler(self, request: Request) -> Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v2/":
            return Response(200)
        if request.method == "HEAD":
            return Response(200 if path.rsplit("/", 1)[1] in self.blobs else 404)
        if request.method == "POST":
            return self.post(request)
        session = path.rsplit("/", 1)[1]
        if session not in self.sessions:
            return Response(404)
        if request.method == "PATCH":
            return self.patch(request, session)
        if request.method == "GET":
            return Response(204, headers=self.range_headers(session))
        if request.method == "PUT":
            data = bytes(self.sessions.pop(session)) + request.content
            digest = request.url.params["digest"]
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                return Response(400, json={"errors": [{"code": "DIGEST_INVALID"}]})
            self.blobs[digest] = data
            return Response(201, headers={"Docker-Content-Digest": digest})
        return Response(405)

    def post(self, request: Request) -> Response:
        mount = request.url.params.get("mount")
        if mount and request.url.params.get("from") in self.mountable:
            self.blobs[mount] = b"mounted"
            return Response(201)
        digest = request.url.params.get("digest")
        if digest and self.single_post:
            self.blobs[digest] = request.content
            return Response(201)
        session = f"s{len(self.sessions) + len(self.blobs)}"
        self.sessions[session] = bytearray()
        return Response(202, headers={"Location": self.location(session),
                                            "Range": "0-0"})

    def patch(self, request: Request, session: str) -> Response:
        held = self.sessions[session]
        start = int(request.headers["Content-Range"].split("-")[0])
        if start != len(held):
            return Response(416, headers=self.range_headers(session))
        if self.fail_patch_once:
            self.fail_patch_once = False
            held += request.content[:len(request.content) // 2]
            return Response(500)
        data = request.content
        if self.keep_at_most is not None:
            data = data[:self.keep_at_most]
        held += data
        return Response(202, headers=self.range_headers(session))

    def range_headers(self, session: str) -> dict:
        held = len(self.sessions[session])
        return {"Location": self.location(session), "Range": f"0-{max(held - 1, 0)}"}

    def methods(self) -> list[str]:
        return [r.method for r in self.requests if r.url.path != "/v2/"]


def upload(registry: UploadRegistry, tmp_path, data: bytes, chunk_size: int,
           mount_from=()) -> tuple[str, BlobUpload]:
    path = tmp_path / "blob"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    client = RegistryClient(HOST, RegistrySettings(HOST), None,
                            transport=FakeTransport(registry.handler),
                            sleep=lambda seconds: None)
    job = BlobUpload(client, "repo", digest, len(data), str(path), list(mount_from),
                     QuietProgress(), chunk_size)
    try:
        return job.run(), job
    finally:
        client.close()


@pytest.mark.parametrize("absolute", [False, True])
def test_chunked_upload_follows_location(tmp_path, absolute):
    registry = UploadRegistry(absolute_location=absolute)
    data = bytes(range(256)) * 40
    outcome, job = upload(registry, tmp_path, data, chunk_size=1000)
    assert outcome == "pushed"
    assert job.chunks == 11
    assert registry.blobs[job.digest] == data
    assert registry.methods() == ["HEAD", "POST"] + ["PATCH"] * 11 + ["PUT"]


def test_chunked_upload_resends_lost_bytes(tmp_path):
    registry = UploadRegistry(keep_at_most=300)
    data = bytes(range(256)) * 8
    outcome, job = upload(registry, tmp_path, data, chunk_size=1000)
    assert outcome == "pushed"
    assert registry.blobs[job.digest] == data
    ranges = [r.headers["Content-Range"] for r in registry.requests if r.method == "PATCH"]
    assert ranges[:3] == ["0-999", "300-1299", "600-1599"]


def test_failed_chunk_resumes_from_the_registry_offset(tmp_path):
    registry = UploadRegistry(fail_patch_once=True)
    data = bytes(range(256)) * 10
    outcome, job = upload(registry, tmp_path, data, chunk_size=1000)
    assert outcome == "pushed"
    assert registry.blobs[job.digest] == data
    assert "GET" in registry.methods()


def test_small_blob_goes_up_in_one_put(tmp_path):
    registry = UploadRegistry()
    outcome, job = upload(registry, tmp_path, b"config", chunk_size=1000)
    assert outcome == "pushed"
    assert registry.methods() == ["HEAD", "POST", "PUT"]
    assert job.chunks == 0


def test_small_blob_in_a_single_post(tmp_path):
    registry = UploadRegistry(single_post=True)
    outcome, job = upload(registry, tmp_path, b"config", chunk_size=1000)
    assert outcome == "pushed"
    assert registry.methods() == ["HEAD", "POST"]
    assert registry.blobs[job.digest] == b"config"


def test_present_blob_is_skipped(tmp_path):
    registry = UploadRegistry()
    data = b"layer"
    registry.blobs["sha256:" + hashlib.sha256(data).hexdigest()] = data
    outcome, _ = upload(registry, tmp_path, data, chunk_size=1000)
    assert outcome == "exists"
    assert registry.methods() == ["HEAD"]


def test_mount_then_upload_in_the_mount_session(tmp_path):
    registry = UploadRegistry()
    data = b"x" * 5000
    outcome, job = upload(registry, tmp_path, data, chunk_size=100000, mount_from=["other"])
    assert outcome == "pushed"
    # The 202 of the mount opened the session that the blob then went up in.
    assert registry.methods() == ["HEAD", "POST", "PUT"]
    assert registry.blobs[job.digest] == data


def test_mount_from_another_repository(tmp_path):
    registry = UploadRegistry(mountable=["other"])
    outcome, _ = upload(registry, tmp_path, b"layer", chunk_size=1000, mount_from=["other"])
    assert outcome == "mounted"
    post = [r for r in registry.requests if r.method == "POST"][0]
    assert post.url.params["from"] == "other"


def test_short_store_blob_is_an_error(tmp_path):
    registry = UploadRegistry()
    path = tmp_path / "blob"
    path.write_bytes(b"abc")
    client = RegistryClient(HOST, RegistrySettings(HOST), None,
                            transport=FakeTransport(registry.handler))
    job = BlobUpload(client, "repo", "sha256:" + "0" * 64, 10, str(path), [], QuietProgress())
    with pytest.raises(RegistryError, match="shorter than 10 bytes"):
        job.run()
    client.close()


def test_range_end():
    assert _range_end("0-99") == 99
    assert _range_end("bytes=0-5") == 5
    assert _range_end(None) is None
    assert _range_end("garbage") is None
