"""Registry authentication: challenge parsing, token requests, caching and expiry."""

import pytest

from kakoi.registry import auth
from kakoi.registry.errors import AuthenticationError, RegistryError


def test_challenge_bearer_parameters():
    challenge = auth.parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:library/busybox:pull,push"')
    assert challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.example/token",
                                "service": "registry.example",
                                "scope": "repository:library/busybox:pull,push"}


def test_challenge_basic_and_unquoted():
    challenge = auth.parse_challenge("Basic realm=kakoi-test")
    assert challenge.scheme == "basic"
    assert challenge.params == {"realm": "kakoi-test"}


def test_challenge_spaces_escapes_and_error():
    challenge = auth.parse_challenge(
        'bearer  realm = "https://a/t" , error="insufficient_scope", note="say \\"hi\\""')
    assert challenge.scheme == "bearer"
    assert challenge.params["realm"] == "https://a/t"
    assert challenge.params["error"] == "insufficient_scope"
    assert challenge.params["note"] == 'say "hi"'


def test_challenge_empty_header():
    assert auth.parse_challenge("") is None
    assert auth.parse_challenge("   ") is None


class FakeTokenServer:
    """Records token requests and returns numbered tokens."""

    def __init__(self, expires_in=300, issued_at=None):
        self.requests = []
        self.expires_in = expires_in
        self.issued_at = issued_at

    def __call__(self, realm, params, basic):
        self.requests.append((realm, dict(params), basic))
        answer = {"token": f"token-{len(self.requests)}"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        if self.issued_at is not None:
            answer["issued_at"] = self.issued_at
        return answer


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def bearer(authenticator):
    authenticator.update('Bearer realm="https://auth.test/token",service="svc"', None)
    return authenticator


def test_token_cached_per_scope():
    server = FakeTokenServer()
    authenticator = bearer(auth.Authenticator("r.test", None, server, Clock()))
    assert authenticator.header("repository:a:pull") == "Bearer token-1"
    assert authenticator.header("repository:a:pull") == "Bearer token-1"
    assert authenticator.header("repository:b:pull") == "Bearer token-2"
    assert [r[1]["scope"] for r in server.requests] == ["repository:a:pull",
                                                        "repository:b:pull"]
    assert server.requests[0][1]["service"] == "svc"


def test_token_refreshed_after_expiry():
    server = FakeTokenServer(expires_in=60)
    clock = Clock()
    authenticator = bearer(auth.Authenticator("r.test", None, server, clock))
    assert authenticator.header("repository:a:pull") == "Bearer token-1"
    clock.now += 60 - auth.EXPIRY_MARGIN - 1
    assert authenticator.header("repository:a:pull") == "Bearer token-1"
    clock.now += 2
    assert authenticator.header("repository:a:pull") == "Bearer token-2"


def test_token_without_expires_in_lives_60_seconds():
    server = FakeTokenServer(expires_in=None)
    clock = Clock()
    authenticator = bearer(auth.Authenticator("r.test", None, server, clock))
    authenticator.header("repository:a:pull")
    clock.now += auth.DEFAULT_TOKEN_LIFETIME - auth.EXPIRY_MARGIN + 1
    assert authenticator.header("repository:a:pull") == "Bearer token-2"


def test_token_issued_at_in_past_shortens_life():
    response = {"token": "t", "expires_in": 100, "issued_at": "1970-01-12T13:46:00Z"}
    token = auth.parse_token_response(response, now=1_000_000.0)
    assert token.expires == 1_000_000.0 - 40 + 100


def test_token_issued_at_in_future_ignored():
    response = {"token": "t", "expires_in": 100, "issued_at": "2100-01-01T00:00:00Z"}
    assert auth.parse_token_response(response, now=1000.0).expires == 1100.0


def test_token_sends_basic_credentials():
    server = FakeTokenServer()
    authenticator = bearer(auth.Authenticator("r.test", ("user", "pw"), server, Clock()))
    authenticator.header("repository:a:pull")
    assert server.requests[0][2] == auth.basic_header("user", "pw")


def test_access_token_field_accepted():
    assert auth.parse_token_response({"access_token": "x"}, now=0).value == "x"


def test_token_response_without_token_rejected():
    with pytest.raises(RegistryError, match="no token"):
        auth.parse_token_response({"expires_in": 5}, now=0)


def test_update_drops_rejected_token():
    server = FakeTokenServer()
    authenticator = bearer(auth.Authenticator("r.test", None, server, Clock()))
    authenticator.header("repository:a:pull")
    assert authenticator.update('Bearer realm="https://auth.test/token",service="svc",'
                                'error="invalid_token"', "repository:a:pull")
    assert authenticator.header("repository:a:pull") == "Bearer token-2"


def test_basic_challenge_retried_once():
    authenticator = auth.Authenticator("r.test", ("u", "p"), FakeTokenServer(), Clock())
    assert authenticator.update('Basic realm="x"', None)
    assert authenticator.header(None) == auth.basic_header("u", "p")
    assert not authenticator.update('Basic realm="x"', None)


def test_unsupported_scheme_rejected():
    authenticator = auth.Authenticator("r.test", None, FakeTokenServer(), Clock())
    authenticator.update('Negotiate abc', None)
    with pytest.raises(RegistryError, match="unsupported authentication scheme 'negotiate'"):
        authenticator.header(None)


def test_rejected_message_names_user_not_password():
    error = auth.rejected("r.test:5000", ("alice", "hunter2"))
    assert isinstance(error, AuthenticationError)
    assert "alice" in str(error)
    assert "hunter2" not in str(error)
