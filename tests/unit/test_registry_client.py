"""The registry HTTP client against a fake transport: retries, auth, redirects, errors.

A fake transport (tests/unit/fake_http.py) stands in for the network here; the e2e tests use real registries.
"""

import json

import pytest

from kakoi.registry import manifest
from kakoi.registry.client import RegistryClient, backoff_delay
from kakoi.registry.config import RegistrySettings
from kakoi.registry.errors import (AuthenticationError, ManifestError, NotFoundError,
                                   RegistryError)
from kakoi.registry.http import ProxyError, RemoteProtocolError

from fake_http import ConnectError, FakeTransport, Response

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": manifest.MEDIA_OCI_MANIFEST,
                       "config": {}, "layers": []}).encode()


class Fake:
    """A scripted registry: `routes` maps a path to a list of responses, used in order."""

    def __init__(self, routes):
        self.routes = {path: list(answers) for path, answers in routes.items()}
        self.requests = []
        self.sleeps = []

    def handler(self, request):
        self.requests.append(request)
        answers = self.routes.get(request.url.path)
        if not answers:
            return Response(404, json={"errors": [{"code": "NAME_UNKNOWN",
                                                         "message": "unknown"}]})
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    def client(self, host="r.test", insecure=False, credentials=None, **options):
        return RegistryClient(host, RegistrySettings(host, insecure), credentials,
                              transport=FakeTransport(self.handler),
                              sleep=self.sleeps.append, **options)


def ok_manifest(request=None):
    return Response(200, content=MANIFEST,
                          headers={"Content-Type": manifest.MEDIA_OCI_MANIFEST})


def test_backoff_doubles_and_caps():
    assert [backoff_delay(n) for n in (1, 2, 3, 4, 10)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert backoff_delay(1, "3") == 3.0
    assert backoff_delay(1, "3600") == 8.0


def test_retries_5xx_then_succeeds():
    fake = Fake({"/v2/": [Response(200)],
                 "/v2/a/manifests/t": [Response(503), Response(502), ok_manifest()]})
    body, media_type, _ = fake.client().get_manifest("a", "t")
    assert body == MANIFEST
    assert media_type == manifest.MEDIA_OCI_MANIFEST
    assert fake.sleeps == [0.5, 1.0]


def test_retry_after_on_429():
    fake = Fake({"/v2/": [Response(200)],
                 "/v2/a/manifests/t": [Response(429, headers={"Retry-After": "2"}),
                                       ok_manifest()]})
    fake.client().get_manifest("a", "t")
    assert fake.sleeps == [2.0]


def test_retries_are_capped():
    fake = Fake({"/v2/": [Response(200)], "/v2/a/manifests/t": [Response(500)]})
    with pytest.raises(RegistryError, match="HTTP 500"):
        fake.client(max_attempts=3).get_manifest("a", "t")
    assert len([r for r in fake.requests if r.url.path == "/v2/a/manifests/t"]) == 3
    assert fake.sleeps == [0.5, 1.0]


def test_connection_error_retried():
    fake = Fake({"/v2/": [ConnectError("refused"), Response(200)],
                 "/v2/a/manifests/t": [ok_manifest()]})
    fake.client().get_manifest("a", "t")
    assert fake.sleeps == [0.5]


def test_connection_error_gives_up():
    fake = Fake({"/v2/": [ConnectError("connection refused")]})
    with pytest.raises(RegistryError, match="cannot reach registry r.test.*4 attempts"):
        fake.client().get_manifest("a", "t")


def test_refused_first_connection_fails_at_once():
    refused = ConnectError("connecting to r.test:443 failed: Connection refused")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    fake = Fake({"/v2/": [refused]})

    with pytest.raises(RegistryError, match="refused after 1 attempt; check that the registry"):
        fake.client().get_manifest("a", "t")
    assert fake.sleeps == []


def test_insecure_falls_back_to_http():
    def v2(request):
        if request.url.scheme == "https":
            raise ConnectError("wrong version number")
        return Response(200)

    fake = Fake({"/v2/": [v2], "/v2/a/manifests/t": [ok_manifest()]})
    client = fake.client(insecure=True)
    client.get_manifest("a", "t")
    assert client.base == "http://r.test"
    assert fake.sleeps == []


def test_secure_registry_never_uses_http():
    fake = Fake({"/v2/": [ConnectError("refused")]})
    with pytest.raises(RegistryError):
        fake.client(max_attempts=2).ping()
    assert {r.url.scheme for r in fake.requests} == {"https"}


def token_route(tokens):
    def answer(request):
        tokens.append(request)
        return Response(200, json={"token": f"tok{len(tokens)}", "expires_in": 300})
    return answer


BEARER = {"WWW-Authenticate": 'Bearer realm="https://auth.test/token",service="reg"'}


def test_bearer_token_fetched_and_retried():
    tokens = []

    def manifest_route(request):
        if request.headers.get("Authorization") != "Bearer tok1":
            return Response(401, headers=BEARER)
        return ok_manifest()

    fake = Fake({"/v2/": [Response(401, headers=BEARER)], "/token": [token_route(tokens)],
                 "/v2/a/manifests/t": [manifest_route]})
    fake.client(credentials=("u", "p")).get_manifest("a", "t")
    assert len(tokens) == 1
    assert tokens[0].url.params["scope"] == "repository:a:pull"
    assert tokens[0].url.params["service"] == "reg"
    assert tokens[0].headers["Authorization"].startswith("Basic ")


def test_expired_token_retried_once_then_rejected():
    tokens = []
    fake = Fake({"/v2/": [Response(401, headers=BEARER)], "/token": [token_route(tokens)],
                 "/v2/a/manifests/t": [Response(401, headers=BEARER)]})
    with pytest.raises(AuthenticationError, match="run `kakoi login r.test`"):
        fake.client().get_manifest("a", "t")
    assert len(tokens) == 2


def test_token_server_rejects_credentials():
    fake = Fake({"/v2/": [Response(401, headers=BEARER)],
                 "/token": [Response(401)]})
    with pytest.raises(AuthenticationError, match="rejected the credentials of user 'u'"):
        fake.client(credentials=("u", "p")).check_login()


def test_basic_wrong_password():
    basic = {"WWW-Authenticate": 'Basic realm="r"'}
    fake = Fake({"/v2/": [Response(401, headers=basic)]})
    with pytest.raises(AuthenticationError) as caught:
        fake.client(credentials=("u", "wrong")).check_login()
    assert "wrong" not in str(caught.value)


@pytest.mark.parametrize("location, scheme, host", [
    ("https://cdn.test/x?sig=1", "https", "cdn.test"),
    ("http://r.test/x", "http", "r.test"),
], ids=["other host", "same host over http"])
def test_redirect_drops_authorization(location, scheme, host):
    blob_path = "/v2/a/blobs/sha256:" + "b" * 64
    basic = {"WWW-Authenticate": 'Basic realm="r"'}
    fake = Fake({"/v2/": [Response(401, headers=basic)],
                 blob_path: [Response(307, headers={"Location": location})],
                 "/x": [Response(200, content=b"data")]})

    response = fake.client(credentials=("u", "p")).open_blob("a", "sha256:" + "b" * 64)

    assert response.read() == b"data"
    registry_request, redirected = fake.requests[-2:]
    assert registry_request.headers["Authorization"].startswith("Basic ")
    assert (redirected.url.scheme, redirected.url.host) == (scheme, host)
    assert "Authorization" not in redirected.headers


def test_not_found_carries_error_code():
    fake = Fake({"/v2/": [Response(200)],
                 "/v2/a/manifests/t": [Response(404, json={"errors": [
                     {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})]})
    with pytest.raises(NotFoundError, match="MANIFEST_UNKNOWN: manifest unknown"):
        fake.client().get_manifest("a", "t")


def test_oversized_manifest_rejected():
    big = Response(200, headers={"Content-Length": str(manifest.MAX_MANIFEST_SIZE + 1),
                                       "Content-Type": manifest.MEDIA_OCI_MANIFEST},
                         content=b" " * (manifest.MAX_MANIFEST_SIZE + 1))
    fake = Fake({"/v2/": [Response(200)], "/v2/a/manifests/t": [big]})
    with pytest.raises(ManifestError, match="4 MiB"):
        fake.client().get_manifest("a", "t")


def test_accept_header_lists_types():
    fake = Fake({"/v2/": [Response(200)], "/v2/a/manifests/t": [ok_manifest()]})
    fake.client().get_manifest("a", "t")
    accept = fake.requests[-1].headers["Accept"]
    for media_type in (manifest.MEDIA_OCI_INDEX, manifest.MEDIA_OCI_MANIFEST,
                       manifest.MEDIA_DOCKER_LIST, manifest.MEDIA_DOCKER_MANIFEST):
        assert media_type in accept


def test_invalid_redirect_url_is_a_registry_error():
    blob_path = "/v2/a/blobs/sha256:" + "b" * 64
    fake = Fake({"/v2/": [Response(200)],
                 blob_path: [Response(307, headers={"Location": "http://[::1/x"})]})

    with pytest.raises(RegistryError, match="sent an invalid URL"):
        fake.client().open_blob("a", "sha256:" + "b" * 64)


def test_endless_ping_body_is_refused():
    def endless():
        while True:
            yield b"x" * 65536

    fake = Fake({"/v2/": [lambda request: Response(200, stream=endless())]})

    with pytest.raises(RegistryError, match="larger than 4194304 bytes for https://r.test/v2/"):
        fake.client().ping()


def test_retry_after_in_other_digits_is_ignored():
    assert backoff_delay(2, "\u00b3") == 1.0


def test_invalid_response_is_named_as_such():
    fake = Fake({"/v2/": [RemoteProtocolError("invalid status line b'SSH-2.0'")]})

    with pytest.raises(RegistryError, match=r"registry r.test sent an invalid response to "
                                            r"https://r.test/v2/: invalid status line .* "
                                            r"\(4 attempts\); check that it is an OCI registry"):
        fake.client().ping()


def test_proxy_refusing_the_tunnel_is_not_retried():
    fake = Fake({"/v2/": [ProxyError("proxy p.test:3128 (HTTPS_PROXY) responded 407")]})

    with pytest.raises(RegistryError, match=r"through the proxy: proxy p.test:3128 .* 407; "
                                            r"check HTTPS_PROXY, HTTP_PROXY and NO_PROXY"):
        fake.client().ping()
    assert fake.sleeps == []


def test_token_server_redirect_is_followed_without_credentials_elsewhere():
    tokens = []

    def manifest_route(request):
        if request.headers.get("Authorization") != "Bearer tok1":
            return Response(401, headers=BEARER)
        return ok_manifest()

    moved = Response(302, headers={"Location": "https://tokens.test/issue?scope=x"})
    fake = Fake({"/v2/": [Response(401, headers=BEARER)], "/token": [moved],
                 "/issue": [token_route(tokens)], "/v2/a/manifests/t": [manifest_route]})

    fake.client(credentials=("u", "p")).get_manifest("a", "t")

    assert tokens[0].url.host == "tokens.test"
    assert "Authorization" not in tokens[0].headers


@pytest.mark.parametrize("realm", ["http://[::1", "ftp://auth.test/token", "/token",
                                   "https://auth.test:99999/token"])
def test_invalid_realm_is_named_without_retries(realm):
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'}
    fake = Fake({"/v2/": [Response(401, headers=challenge)]})

    with pytest.raises(RegistryError, match="Bearer challenge with the invalid realm"):
        fake.client(credentials=("u", "p")).get_manifest("a", "t")
    assert fake.sleeps == []


def test_redirect_without_location_is_named():
    fake = Fake({"/v2/": [Response(200)], "/v2/a/manifests/t": [Response(307)]})

    with pytest.raises(RegistryError, match="redirected /v2/a/manifests/t without a Location"):
        fake.client().get_manifest("a", "t")
