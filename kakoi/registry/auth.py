"""Registry authentication: WWW-Authenticate challenges, basic auth and cached bearer tokens.

A registry rejects an unauthorized request with 401 and a challenge. `Basic` means the credentials go with every request.
`Bearer realm=...,service=...,scope=...` means a token is fetched from the realm for each scope
(such as repository:library/busybox:pull), cached until it expires, and sent as
`Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import base64
import re
import threading
import time

from kakoi.registry.errors import AuthenticationError, RegistryError

# Tokens without expires_in live 60 seconds, the default of the Docker token specification.
DEFAULT_TOKEN_LIFETIME = 60
# A token is renewed this many seconds before it expires, so it does not expire in flight.
EXPIRY_MARGIN = 10

_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


class Challenge:
    """One parsed WWW-Authenticate challenge: its scheme in lowercase and its parameters."""

    __slots__ = ("scheme", "params")

    def __init__(self, scheme: str, params: dict[str, str]):
        self.scheme = scheme
        self.params = params

    def __repr__(self) -> str:
        return f"Challenge({self.scheme!r}, {self.params!r})"


def parse_challenge(header: str) -> Challenge | None:
    """Parse `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.

    Returns None for an empty header. Quoted values may contain commas and escaped quotes.
    """
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {}
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if not match or match.end() == position:
            break
        value = match.group(2)
        value = re.sub(r"\\(.)", r"\1", value) if value is not None else match.group(3)
        params[match.group(1).lower()] = value
        position = match.end()
    return Challenge(scheme.lower(), params)


def basic_header(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


class Token:
    __slots__ = ("value", "expires")

    def __init__(self, value: str, expires: float):
        self.value = value
        self.expires = expires


def parse_token_response(data: object, now: float) -> Token:
    """Parse a token server's JSON response: token or access_token, expires_in, issued_at."""
    if not isinstance(data, dict):
        raise RegistryError("the token server returned no JSON object; check the registry's "
                            "auth realm")
    value = data.get("token") or data.get("access_token")
    if not isinstance(value, str) or not value:
        raise RegistryError("the token server returned no token; check the registry's auth "
                            "realm")
    lifetime = data.get("expires_in")
    if not isinstance(lifetime, (int, float)) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    issued = _parse_time(data.get("issued_at"))
    # issued_at is the server's clock; it is trusted only when it is not in the future.
    start = issued if issued is not None and issued <= now else now
    return Token(value, start + lifetime)


def _parse_time(text: object) -> float | None:
    import calendar

    if not isinstance(text, str) or len(text) < 19:
        return None
    try:
        return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


class Authenticator:
    """Authorization headers for one registry host, with a token cache keyed by scope.

    `fetch_token(realm, params, basic)` performs the token request and returns the parsed
    JSON; the client supplies it so that this class does no I/O of its own.
    """

    def __init__(self, host: str, credentials: tuple[str, str] | None, fetch_token,
                 clock=time.time):
        self.host = host
        self.credentials = credentials
        self._fetch_token = fetch_token
        self._clock = clock
        self.challenge: Challenge | None = None
        self._tokens: dict[tuple[str, str, str], Token] = {}
        self._lock = threading.Lock()

    def header(self, scope: str | None) -> str | None:
        """Return the Authorization header for a request in `scope`, or None if none is due."""
        challenge = self.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return basic_header(*self.credentials) if self.credentials else None
        if challenge.scheme != "bearer":
            raise RegistryError(f"registry {self.host} asks for unsupported authentication "
                                f"scheme {challenge.scheme!r}; kakoi supports Basic and Bearer")
        return f"Bearer {self._token(challenge, scope)}"

    def _token(self, challenge: Challenge, scope: str | None) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.host} sent a Bearer challenge without a realm")
        if not _is_http_url(realm):
            raise RegistryError(f"registry {self.host} sent a Bearer challenge with the invalid "
                                f"realm {realm[:100]!r}; check the registry's auth "
                                "configuration")
        service = challenge.params.get("service", "")
        scope = scope or challenge.params.get("scope", "")
        key = (realm, service, scope)
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.expires - EXPIRY_MARGIN > self._clock():
                return token.value
            params = {name: value for name, value in (("service", service), ("scope", scope))
                      if value}
            basic = basic_header(*self.credentials) if self.credentials else None
            token = parse_token_response(self._fetch_token(realm, params, basic), self._clock())
            self._tokens[key] = token
            return token.value

    def update(self, header: str | None, scope: str | None) -> bool:
        """Take a new challenge from a 401 response and drop the rejected token.

        Returns whether a retry with new authorization can succeed.
        """
        challenge = parse_challenge(header or "")
        if challenge is None:
            return False
        previous = self.challenge
        self.challenge = challenge
        if challenge.scheme == "bearer":
            realm = challenge.params.get("realm", "")
            service = challenge.params.get("service", "")
            scope = scope or challenge.params.get("scope", "")
            with self._lock:
                self._tokens.pop((realm, service, scope), None)
            return True
        # Basic credentials that were already sent will not be accepted on a second try.
        return previous is None or previous.scheme != "basic"


def rejected(host: str, credentials: tuple[str, str] | None) -> AuthenticationError:
    if credentials:
        return AuthenticationError(f"authentication to {host} failed: the registry rejected "
                                   f"the credentials of user {credentials[0]!r}; run `kakoi "
                                   f"login {host}` again")
    return AuthenticationError(f"authentication to {host} required: run `kakoi login {host}`")


def _is_http_url(text: str) -> bool:
    """Return True for an absolute http or https URL with a host and a valid port."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        # .port raises ValueError for a port that is not a number in 0..65535.
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        return False
