"""`kakoi push` to real registries, checked with skopeo and `kakoi pull`.

The registries are Debian's docker-registry from tests/registry_fixtures.py; each test pushes
to repositories of its own, so the session-scoped registries can be shared.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess

import pytest

from registry_fixtures import free_port
from test_pull import Puller, assert_one_line_error, pulled_digest
from test_pull import push as skopeo_copy

pytestmark = [pytest.mark.root, pytest.mark.peer]

PUSHED = re.compile(r"^(\S+): digest: (sha256:[0-9a-f]{64}) size: (\d+)$", re.MULTILINE)


@pytest.fixture
def pusher(tmp_path) -> Puller:
    return Puller(tmp_path / "store", tmp_path / "home")


def pushed(result: subprocess.CompletedProcess) -> tuple[str, str, int]:
    assert result.returncode == 0, result.stderr
    match = PUSHED.search(result.stdout)
    assert match, result.stdout
    return match.group(1), match.group(2), int(match.group(3))


def outcomes(result: subprocess.CompletedProcess) -> dict[str, int]:
    counts = {"exists": 0, "mounted": 0, "pushed": 0}
    for line in result.stdout.splitlines():
        if line.endswith(": Layer already exists"):
            counts["exists"] += 1
        elif ": Mounted from " in line:
            counts["mounted"] += 1
        elif line.endswith(": Pushed"):
            counts["pushed"] += 1
    return counts


def raw_digest(skopeo, registry, repo: str, tag: str) -> str:
    result = skopeo.inspect(registry, repo, tag, creds=registry.creds, raw=True)
    assert result.returncode == 0, result.stderr
    return "sha256:" + hashlib.sha256(result.stdout.encode()).hexdigest()


def inspect(tool: Puller, name: str) -> dict:
    result = tool("inspect", name)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def load(tool: Puller, archive) -> str:
    result = tool("load", "-i", str(archive))
    assert result.returncode == 0, result.stderr
    # An archive without a name loads as `Loaded image ID: sha256:...`.
    return result.stdout.strip().splitlines()[0].rsplit(" ", 1)[1]


# --- plain registry ----------------------------------------------------------------------------

def test_loaded_image_keeps_its_digest(registry_plain, fixture_images, skopeo, pusher,
                                       tmp_path):
    name = load(pusher, fixture_images.busybox)
    result = pusher("push", name, f"{registry_plain.url}/push-loaded/busybox:1")
    tag, digest, size = pushed(result)
    assert tag == "1"

    local = inspect(pusher, name)
    assert local["RepoDigests"][0].split("@")[1] == digest
    assert raw_digest(skopeo, registry_plain, "push-loaded/busybox", "1") == digest
    raw = skopeo.inspect(registry_plain, "push-loaded/busybox", "1", raw=True).stdout
    assert len(raw.encode()) == size
    assert json.loads(raw)["config"]["digest"] == local["Id"]

    # skopeo copies it on; a fresh kakoi store pulls the copy with the same digest.
    skopeo_copy(skopeo, f"docker://{registry_plain.url}/push-loaded/busybox:1",
                registry_plain, "push-loaded/copy:1", "--src-tls-verify=false")
    other = Puller(tmp_path / "other-store", tmp_path / "other-home")
    pulled = other("pull", f"{registry_plain.url}/push-loaded/copy:1")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled_digest(pulled) == digest
    assert inspect(other, f"{registry_plain.url}/push-loaded/copy:1")["Id"] == local["Id"]


def test_pulled_image_keeps_its_digest(registry_plain, fixture_images, skopeo, pusher):
    skopeo_copy(skopeo, f"oci-archive:{fixture_images.layered}", registry_plain,
                "push-pulled/source:1")
    source = f"{registry_plain.url}/push-pulled/source:1"
    digest = pulled_digest(pusher("pull", source))

    _, pushed_digest, _ = pushed(pusher("push", source,
                                        f"{registry_plain.url}/push-pulled/target:2"))
    assert pushed_digest == digest
    assert raw_digest(skopeo, registry_plain, "push-pulled/target", "2") == digest


def test_second_push_skips_every_blob(registry_plain, fixture_images, pusher):
    name = load(pusher, fixture_images.layered)
    target = f"{registry_plain.url}/push-twice/layered:1"
    first = pusher("push", name, target)
    blobs = len(inspect(pusher, name)["RootFS"]["Layers"]) + 1
    assert outcomes(first) == {"exists": 0, "mounted": 0, "pushed": blobs}

    second = pusher("push", name, target)
    assert outcomes(second) == {"exists": blobs, "mounted": 0, "pushed": 0}
    assert pushed(second)[1] == pushed(first)[1]


def test_second_repository_mounts_the_blobs(registry_plain, fixture_images, pusher):
    name = load(pusher, fixture_images.busybox)
    first = f"{registry_plain.url}/push-mount-a/busybox:1"
    assert pusher("tag", name, first).returncode == 0
    # Without DEST the image goes to its own name.
    assert outcomes(pusher("push", first))["pushed"] == 2

    second = pusher("push", first, f"{registry_plain.url}/push-mount-b/busybox:1")
    assert outcomes(second) == {"exists": 0, "mounted": 2, "pushed": 0}
    assert "Mounted from push-mount-a/busybox" in second.stdout


def test_small_chunks_in_process(registry_plain, fixture_images, skopeo, tmp_path,
                                 monkeypatch):
    """A chunk size far below the layer's size sends the layer in many PATCH requests."""
    from kakoi.image.store import Store
    from kakoi.registry import push as pushes

    monkeypatch.setenv("KAKOI_REGISTRIES_CONFIG", str(tmp_path / "none.json"))
    for key in [key for key in __import__("os").environ if "proxy" in key.lower()]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(pushes, "CHUNK_SIZE", 128 << 10)
    store = Store(tmp_path / "store")
    loaded = store.load(fixture_images.busybox)
    record = store.resolve(loaded[0].id)
    result = pushes.push(store, record.id, f"{registry_plain.url}/push-chunks/busybox:1")

    layer = record.layers[0]
    assert result.blobs[layer.digest] == "pushed"
    assert result.chunks[layer.digest] == math.ceil(layer.size / (128 << 10)) > 1
    assert result.digest == record.manifest_digest
    assert raw_digest(skopeo, registry_plain, "push-chunks/busybox", "1") == result.digest


def test_large_layer_goes_up_in_chunks(registry_plain, fixture_images, skopeo, pusher):
    name = load(pusher, fixture_images.debian)
    result = pusher("push", name, f"{registry_plain.url}/push-debian/minbase:1",
                    timeout=300)
    _, digest, _ = pushed(result)
    assert raw_digest(skopeo, registry_plain, "push-debian/minbase", "1") == digest
    assert digest == inspect(pusher, name)["Descriptor"]["digest"]


# --- authentication ----------------------------------------------------------------------------

def test_tls_push_needs_login(registry_tls_htpasswd, fixture_images, skopeo, pusher):
    registry = registry_tls_htpasswd
    pusher.set_registries({registry.url: {"ca_dir": str(registry.cert_dir)}})
    name = load(pusher, fixture_images.busybox)
    target = f"{registry.url}/push-tls/busybox:1"

    anonymous = pusher("push", name, target)
    assert_one_line_error(anonymous, r"authentication to .* required: run `kakoi login")

    login = pusher("login", "-u", registry.username, "--password-stdin", registry.url,
                   input=registry.password + "\n")
    assert login.returncode == 0, login.stderr
    _, digest, _ = pushed(pusher("push", name, target))
    assert raw_digest(skopeo, registry, "push-tls/busybox", "1") == digest


def test_token_push_asks_for_push_scopes(registry_token, token_server, fixture_images, skopeo,
                                         pusher):
    registry = registry_token
    name = load(pusher, fixture_images.busybox)
    login = pusher("login", "-u", registry.username, "--password-stdin", registry.url,
                   input=registry.password)
    assert login.returncode == 0, login.stderr

    first = f"{registry.url}/push-token-a/busybox:1"
    assert pusher("tag", name, first).returncode == 0
    before = len(token_server.requests)
    _, digest, _ = pushed(pusher("push", first))
    assert raw_digest(skopeo, registry, "push-token-a/busybox", "1") == digest
    scopes = {scope for request in token_server.requests[before:] for scope in request.scopes}
    assert "repository:push-token-a/busybox:pull,push" in scopes

    before = len(token_server.requests)
    second = pusher("push", first, f"{registry.url}/push-token-b/busybox:1")
    assert outcomes(second)["mounted"] == 2
    scopes = {scope for request in token_server.requests[before:] for scope in request.scopes}
    assert {"repository:push-token-b/busybox:pull,push",
            "repository:push-token-a/busybox:pull"} <= scopes


# --- bad input ---------------------------------------------------------------------------------

def test_unknown_image(registry_plain, pusher):
    result = pusher("push", "no-such-image:1", f"{registry_plain.url}/push-bad/x:1")
    assert_one_line_error(result, r"no such image: no-such-image:1")


def test_registry_down(fixture_images, pusher):
    name = load(pusher, fixture_images.busybox)
    result = pusher("push", name, f"127.0.0.1:{free_port()}/push-down/busybox:1")
    assert_one_line_error(result, r"cannot reach registry 127\.0\.0\.1:\d+")


def test_malformed_reference(fixture_images, pusher):
    name = load(pusher, fixture_images.busybox)
    result = pusher("push", name, "127.0.0.1:5000/UPPER//x")
    assert_one_line_error(result, r"invalid reference format")


def test_digest_destination(fixture_images, pusher):
    name = load(pusher, fixture_images.busybox)
    result = pusher("push", name, "127.0.0.1:5000/x@sha256:" + "0" * 64)
    assert_one_line_error(result, r"invalid push destination .* has a digest")


def test_no_destination_for_an_id(fixture_images, pusher):
    name = load(pusher, fixture_images.busybox)
    image_id = inspect(pusher, name)["Id"]
    result = pusher("push", image_id)
    assert_one_line_error(result, r"cannot push .* without a destination")
