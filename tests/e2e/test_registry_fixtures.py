"""Checks that the registry fixtures are real: skopeo pushes the fixture images and reads them back.

The plain registry stores all three fixture images. The TLS registry rejects anonymous clients
and accepts tester's password. The token registry sends clients to the token server, which
grants tester the requested scope and rejects wrong passwords.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from pathlib import Path

import pytest
from registry_fixtures import Registry, probe_v2, run_registry, start_registry

pytestmark = pytest.mark.peer


def archive_manifest(archive: Path) -> dict:
    """Return the image manifest inside an OCI archive."""
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        return json.load(tar.extractfile(f"blobs/sha256/{digest}"))


def get(registry: Registry, path: str, headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None) -> tuple[int, Message, bytes]:
    """Send GET to the registry without any proxy; return status, headers and body."""
    handlers = [urllib.request.ProxyHandler({})]
    context = context or registry.ssl_context()
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(registry.base_url + path, headers=headers or {})
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def basic(username: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


# --- plain registry --------------------------------------------------------------------------

@pytest.mark.parametrize("image", [
    "busybox",
    "layered",
    pytest.param("debian", marks=pytest.mark.root),
])
def test_plain_push_and_inspect(registry_plain, fixture_images, skopeo, image):
    archive = getattr(fixture_images, image)
    skopeo.push(archive, registry_plain, f"fixtures/{image}", "v1")

    result = skopeo.inspect(registry_plain, f"fixtures/{image}", "v1", raw=True)
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)
    expected = archive_manifest(archive)
    assert [layer["digest"] for layer in pushed["layers"]] == \
        [layer["digest"] for layer in expected["layers"]]
    assert pushed["config"]["digest"] == expected["config"]["digest"]


def test_plain_layered_has_four_layers(registry_plain, fixture_images, skopeo):
    skopeo.push(fixture_images.layered, registry_plain, "fixtures/layered", "count")

    result = skopeo.inspect(registry_plain, "fixtures/layered", "count")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["Layers"]) == 4


def test_plain_allows_anonymous(registry_plain):
    status, _, body = get(registry_plain, "/v2/")
    assert status == 200
    assert json.loads(body) == {}


def test_run_registry_cleans_up():
    def start(directory, started):
        return start_registry(started, directory, "http")

    fixture = run_registry("registry-cleanup", start)
    registry = next(fixture)
    assert probe_v2(registry.base_url) == 200
    fixture.close()

    assert registry.process.poll() is not None
    assert not registry.directory.exists()
    assert probe_v2(registry.base_url) is None


# --- TLS with htpasswd -----------------------------------------------------------------------

def test_tls_rejects_anonymous(registry_tls_htpasswd, fixture_images, skopeo):
    status, headers, _ = get(registry_tls_htpasswd, "/v2/")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")

    with pytest.raises(AssertionError, match="unauthorized|authentication required"):
        skopeo.push(fixture_images.busybox, registry_tls_htpasswd, "private/busybox", "v1")


def test_tls_accepts_tester(registry_tls_htpasswd, fixture_images, skopeo):
    registry = registry_tls_htpasswd
    skopeo.push(fixture_images.busybox, registry, "private/busybox", "v1", creds=registry.creds)

    result = skopeo.inspect(registry, "private/busybox", "v1", creds=registry.creds)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Name"] == f"{registry.url}/private/busybox"


def test_tls_rejects_wrong_password(registry_tls_htpasswd, fixture_images, skopeo):
    registry = registry_tls_htpasswd
    status, _, _ = get(registry, "/v2/", basic(registry.username, "wrong"))
    assert status == 401

    result = skopeo.inspect(registry, "private/busybox", "v1", creds=f"{registry.username}:wrong")
    assert result.returncode != 0
    assert "unauthorized" in result.stderr.lower()


def test_tls_basic_auth_over_urllib(registry_tls_htpasswd):
    registry = registry_tls_htpasswd
    status, _, _ = get(registry, "/v2/", basic(registry.username, registry.password))
    assert status == 200


def test_tls_certificate_needs_the_ca(registry_tls_htpasswd):
    system_trust = ssl.create_default_context()
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(registry_tls_htpasswd, "/v2/", context=system_trust)


@pytest.mark.parametrize("server_name", ["127.0.0.1", "localhost"])
def test_tls_certificate_names(registry_tls_htpasswd, server_name):
    registry = registry_tls_htpasswd
    host, port = registry.url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with registry.ssl_context().wrap_socket(raw, server_hostname=server_name) as tls:
            assert tls.version() is not None


# --- bearer token ----------------------------------------------------------------------------

def test_token_challenge_names_the_server(registry_token):
    status, headers, _ = get(registry_token, "/v2/")
    assert status == 401

    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="{registry_token.token_server.realm}"' in challenge
    assert f'service="{registry_token.token_server.service}"' in challenge


def test_token_push_and_inspect(registry_token, token_server, fixture_images, skopeo):
    registry = registry_token
    skopeo.push(fixture_images.busybox, registry, "team/busybox", "v1", creds=registry.creds)

    result = skopeo.inspect(registry, "team/busybox", "v1", creds=registry.creds)
    assert result.returncode == 0, result.stderr
    granted = [request for request in token_server.requests if request.granted]
    assert any(request.account == "tester" and "repository:team/busybox:pull,push"
               in request.scopes for request in granted)


def test_token_rejects_wrong_password(registry_token, token_server, skopeo):
    result = skopeo.inspect(registry_token, "team/busybox", "v1", creds="tester:wrong")
    assert result.returncode != 0
    assert "401" in result.stderr or "unauthorized" in result.stderr.lower()
    assert token_server.requests[-1].account == "tester"
    assert not token_server.requests[-1].granted


def test_token_server_reject_switch(registry_token, token_server, fixture_images, skopeo):
    token_server.reject = True
    with pytest.raises(AssertionError, match="401|unauthorized|authentication required"):
        skopeo.push(fixture_images.busybox, registry_token, "team/refused", "v1",
                    creds=registry_token.creds)


def fetch_token(registry: Registry, scope: str) -> dict:
    server = registry.token_server
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    query = urllib.parse.urlencode({"service": server.service, "scope": scope})
    request = urllib.request.Request(f"{server.realm}?{query}",
                                     headers=basic(registry.username, registry.password))
    with opener.open(request, timeout=10) as response:
        return json.load(response)


def test_token_grants_only_the_scope(registry_token, fixture_images, skopeo):
    registry = registry_token
    skopeo.push(fixture_images.busybox, registry, "team/scoped", "v1", creds=registry.creds)
    body = fetch_token(registry, "repository:team/scoped:pull")
    assert body["expires_in"] == 60
    bearer = {"Authorization": f"Bearer {body['token']}",
              "Accept": "application/vnd.oci.image.manifest.v1+json"}

    status, _, _ = get(registry, "/v2/team/scoped/manifests/v1", bearer)
    assert status == 200

    status, _, _ = get(registry, "/v2/team/other/manifests/v1", bearer)
    assert status == 401


def test_token_anonymous_gets_no_access(registry_token):
    server = registry_token.token_server
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    query = urllib.parse.urlencode({"service": server.service,
                                    "scope": "repository:team/busybox:pull"})
    with opener.open(f"{server.realm}?{query}", timeout=10) as response:
        token = json.load(response)["token"]

    status, _, _ = get(registry_token, "/v2/team/busybox/manifests/v1",
                       {"Authorization": f"Bearer {token}"})
    assert status == 401
