"""HTTP access to one registry host over the OCI distribution API.

The client finds the scheme with a ping of /v2/ (HTTPS, then plain HTTP for insecure
registries), handles authentication challenges, retries 429, 5xx and connection errors with
exponential backoff, and follows blob redirects without sending the registry's Authorization
header to another host. The HTTP/1.1 client is kakoi's own (kakoi.registry.http).
"""

from __future__ import annotations

from contextlib import closing

import os
import threading
import time
from urllib.parse import urljoin, urlsplit

from kakoi import jsontext, log
from kakoi.registry import auth as auths
from kakoi.registry import http
from kakoi.registry import manifest as manifests
from kakoi.registry.config import RegistrySettings
from kakoi.registry.errors import ManifestError, NotFoundError, RegistryError
from kakoi.registry.http import is_number as _is_number

MAX_ATTEMPTS = 4
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_CONNECT_TIMEOUT = 10.0
_READ_TIMEOUT = 60.0
_USER_AGENT = "kakoi/0.1"


def backoff_delay(attempt: int, retry_after: str | None = None) -> float:
    """Return the wait before retry number `attempt` (1-based), honouring Retry-After seconds."""
    if retry_after and _is_number(retry_after.strip()):
        return min(float(retry_after.strip()), BACKOFF_MAX)
    return min(BACKOFF_BASE * (2 ** (attempt - 1)), BACKOFF_MAX)


def _is_tls_error(error: Exception) -> bool:
    import ssl

    seen = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(error) or "SSL" in str(error)


def _is_certificate_error(error: Exception) -> bool:
    import ssl

    seen = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(error)


def _error_text(response: http.Response) -> str:
    """Return `CODE: message` from a registry's JSON error body, or the HTTP status."""
    try:
        body = b"".join(chunk for _, chunk in zip(range(4), response.iter_bytes(16384)))
        errors = jsontext.loads(body).get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors
                 if isinstance(e, dict)]
    except (ValueError, AttributeError, RecursionError, http.TransportError):
        parts = []
    return "; ".join(parts) or f"HTTP {response.status_code} {response.reason_phrase}"


def _load_system_cas(context) -> None:
    """Give `context` the system's CA certificates, read at the handshake where possible.

    Loading the bundle file parses every CA (about 27 ms for Debian's 140), on every command
    that speaks HTTPS or only tries it. A hashed CA directory (Debian's /etc/ssl/certs) is
    instead searched by OpenSSL for the one issuer that a handshake needs. SSL_CERT_FILE and
    SSL_CERT_DIR are honoured as OpenSSL honours them. Without any (no ca-certificates
    package), verification fails with an error that names where to put a CA.
    """
    import ssl

    paths = ssl.get_default_verify_paths()
    hashed_dir = bool(paths.capath) and _is_hashed_ca_dir(paths.capath)
    loaded = False
    # Many hosts set SSL_CERT_FILE to the system bundle itself: its CAs are the directory's.
    if os.environ.get(paths.openssl_cafile_env) and paths.cafile and not (
            hashed_dir and _same_file(paths.cafile, paths.openssl_cafile)):
        context.load_verify_locations(cafile=paths.cafile)
        loaded = True
    if hashed_dir:
        context.load_verify_locations(capath=paths.capath)
        loaded = True
    if not loaded and paths.cafile:
        context.load_verify_locations(cafile=paths.cafile)


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _is_hashed_ca_dir(path: str) -> bool:
    """Return True when `path` contains OpenSSL's subject-hash links (NNNNNNNN.0) of c_rehash."""
    try:
        with os.scandir(path) as entries:
            return any(len(entry.name) == 10 and entry.name.endswith(".0") for entry in entries)
    except OSError:
        return False


class RegistryClient:
    """Requests to one registry host; safe to share between threads once pinged."""

    def __init__(self, host: str, settings: RegistrySettings,
                 credentials: tuple[str, str] | None = None,
                 transport=None, sleep=time.sleep,
                 max_attempts: int = MAX_ATTEMPTS, clock=time.time):
        self.host = host
        self.settings = settings
        self.credentials = credentials
        self.max_attempts = max_attempts
        self._transport = transport
        self._sleep = sleep
        self._clients: dict[bool, http.Client] = {}
        # Layer transfers share one client from several threads; the first request of
        # each finds the scheme, which must happen once, or a client leaks per thread.
        self._lock = threading.Lock()
        self._ping_lock = threading.Lock()
        self.base: str | None = None
        self.verify = True
        self.auth = auths.Authenticator(host, credentials, self._fetch_token, clock)
        self.aborted = False

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def abort(self) -> None:
        """Stop every transfer of this client at once (Ctrl-C): no retry, no wait."""
        self.aborted = True
        for client in list(self._clients.values()):
            client.abort()

    def _client(self, verify: bool) -> http.Client:
        with self._lock:
            return self._client_locked(verify)

    def _client_locked(self, verify: bool) -> http.Client:
        client = self._clients.get(verify)
        if client is None:
            context = None
            if self._transport is None:
                context = self._ssl_context() if verify else http.unverified_context()
            try:
                client = http.Client(context, _CONNECT_TIMEOUT, _READ_TIMEOUT,
                                     {"User-Agent": _USER_AGENT}, self._transport)
            except http.InvalidProxy as error:
                raise RegistryError(f"cannot use the proxy setting {error}") from None
            self._clients[verify] = client
        return client

    def _ssl_context(self):
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _load_system_cas(context)
        for path in self.settings.ca_files():
            try:
                context.load_verify_locations(path)
            except (OSError, ssl.SSLError) as error:
                raise RegistryError(f"cannot load CA certificate {path} for {self.host}: "
                                    f"{error}; replace it with a PEM certificate") from None
        return context

    # Ping and scheme

    def ping(self) -> None:
        """Find the scheme, check that /v2/ responds, and take its authentication challenge."""
        if self.base is not None:
            return
        with self._ping_lock:
            if self.base is None:
                self._ping()

    def _ping(self) -> None:
        schemes = [("https", not self.settings.insecure)]
        if self.settings.allow_http:
            schemes.append(("http", False))
        last: Exception | None = None
        for number, (scheme, verify) in enumerate(schemes, 1):
            base = f"{scheme}://{self.host}"
            # The HTTPS probe of an insecure registry gets one attempt: plain HTTP follows.
            attempts = 1 if number < len(schemes) else self.max_attempts
            try:
                response = self._with_retries(lambda: self._client(verify).get(base + "/v2/"),
                                              f"{base}/v2/", attempts)
            except RegistryError as error:
                # A certificate that fails verification is reported, not bypassed with HTTP.
                if getattr(error, "certificate", False):
                    raise
                # Close the failed probe's client now: its half-open TLS connection would
                # otherwise linger until garbage collection.
                failed = self._clients.pop(verify, None)
                if failed is not None:
                    failed.close()
                last = error
                continue
            self.base, self.verify = base, verify
            if response.status_code == 401:
                self.auth.update(response.headers.get("WWW-Authenticate"), None)
            elif response.status_code >= 400 and response.status_code != 404:
                raise RegistryError(f"registry {self.host} returned {_error_text(response)} "
                                    "for /v2/; check that it is an OCI registry")
            return
        raise last  # type: ignore[misc]

    def _with_retries(self, send, label: str, attempts: int | None = None) -> http.Response:
        """Call `send` until it returns a response that is not 429 or 5xx, up to the limit."""
        attempts = attempts or self.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                response = send()
            except http.ResponseTooLarge:
                raise RegistryError(f"registry {self.host} sent a response larger than "
                                    f"{http.MAX_READ_BODY} bytes for {label}; check that it is "
                                    "an OCI registry") from None
            except http.TransportError as error:
                if self.aborted:
                    raise
                if _is_tls_error(error) and not isinstance(error, http.RemoteProtocolError):
                    raise self._tls_error(error) from None
                # Nothing listens at the address of a registry not yet reached: retrying
                # only delays the error (by 3.5 s), as a wrong port is the usual cause.
                if self.base is None and isinstance(error.__cause__, ConnectionRefusedError):
                    raise self._connection_error(label, error, attempt) from None
                # A proxy that rejects the tunnel responds the same way to every attempt.
                if isinstance(error, http.ProxyError):
                    raise self._connection_error(label, error, attempt) from None
                if attempt == attempts:
                    raise self._connection_error(label, error, attempts) from None
                delay = backoff_delay(attempt)
                log.debug("%s failed (%s); retrying in %.1fs", label, error, delay)
                self._sleep(delay)
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if attempt == attempts:
                    return response
                delay = backoff_delay(attempt, response.headers.get("Retry-After"))
                log.debug("%s returned %d; retrying in %.1fs", label, response.status_code,
                          delay)
                response.close()
                self._sleep(delay)
                continue
            return response
        raise AssertionError("unreachable")

    def _tls_error(self, error: Exception) -> RegistryError:
        reason = str(error).split("] ")[-1].strip() or "certificate verification failed"
        failure = RegistryError(
            f"TLS connection to registry {self.host} failed: {reason}; put its CA certificate "
            f"in /etc/docker/certs.d/{self.host}/ca.crt or in the ca_dir of {self.host} in the "
            "registries.json settings, or mark the registry insecure there")
        failure.certificate = _is_certificate_error(error)
        return failure

    def transport_failure(self, label: str, error: Exception) -> RegistryError:
        """Describe a body that failed while it was read, outside the request's retries."""
        return self._connection_error(label, error, 1)

    def _connection_error(self, label: str, error: Exception, attempts: int) -> RegistryError:
        """Describe a request that got no complete response; `transport` marks the error."""
        detail = str(error) or type(error).__name__
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        if isinstance(error, http.ProxyError):
            message = (f"cannot reach registry {self.host} through the proxy: {detail}; check "
                       "HTTPS_PROXY, HTTP_PROXY and NO_PROXY")
        elif isinstance(error, http.RemoteProtocolError):
            message = (f"registry {self.host} sent an invalid response to {label}: {detail} "
                       f"({tries}); check that it is an OCI registry")
        elif isinstance(error, http.Timeout):
            message = (f"registry {self.host} did not respond to {label} in time: {detail} "
                       f"({tries}); check the registry and the network")
        else:
            message = (f"cannot reach registry {self.host} ({label}): {detail} after {tries}; "
                       "check that the registry runs and that the address is right")
        failure = RegistryError(message)
        failure.transport = True
        return failure

    # Requests with authentication and redirects

    def send(self, method: str, path: str, scope: str | None, headers: dict | None = None,
             stream: bool = False) -> http.Response:
        """Send a request to the registry and return the final response.

        The response is streamed when `stream` is set; the caller must close it. 401 is retried
        once after a new token, 429, 5xx and connection errors up to `max_attempts` times.
        """
        self.ping()
        url = self.base + path
        auth_retried = False
        redirects = 0
        while True:
            same_host = self._same_origin(url)
            request_headers = dict(headers or {})
            authorization = self.auth.header(scope) if same_host else None
            if authorization:
                request_headers["Authorization"] = authorization
            client = self._client(self.verify if same_host else True)
            request = client.build_request(method, url, headers=request_headers)
            response = self._with_retries(lambda: client.send(request, stream=stream), url)
            if response.status_code == 401 and same_host and not auth_retried:
                auth_retried = True
                header = response.headers.get("WWW-Authenticate")
                response.close()
                if self.auth.update(header, scope):
                    continue
                raise auths.rejected(self.host, self.credentials)
            if response.status_code == 401 and same_host:
                response.close()
                raise auths.rejected(self.host, self.credentials)
            if response.status_code in _REDIRECTS and "Location" not in response.headers:
                response.close()
                raise RegistryError(f"registry {self.host} redirected {path} without a Location "
                                    "header; check the registry")
            if response.status_code in _REDIRECTS:
                redirects += 1
                location = response.headers["Location"]
                response.close()
                if redirects > MAX_REDIRECTS:
                    raise RegistryError(f"registry {self.host} redirected {path} more than "
                                        f"{MAX_REDIRECTS} times; check the registry's storage")
                url = self.join(url, location)
                continue
            return response

    def join(self, base: str, target: str) -> str:
        """Resolve a Location or path against `base`, as a browser would."""
        try:
            return urljoin(base, target)
        except ValueError:
            raise RegistryError(f"registry {self.host} sent an invalid URL {target[:200]!r}; "
                                "check the registry") from None

    def _same_origin(self, url: str) -> bool:
        """Return True when `url` has the registry's scheme, host and port.

        Credentials go only there: never to another host, and never over plain HTTP after
        the registry spoke HTTPS.
        """
        try:
            target = urlsplit(url)
        except ValueError:
            raise RegistryError(f"registry {self.host} sent an invalid URL {url[:200]!r}; "
                                "check the registry") from None
        base = urlsplit(self.base)
        return (target.scheme, target.netloc) == (base.scheme, base.netloc)

    def request(self, method: str, target: str, scope, headers: dict | None = None,
                content: bytes | None = None, attempts: int | None = None) -> http.Response:
        """Send a request with an optional body to a path or URL and return the read response.

        `target` may be a path or a Location header, relative or absolute, as upload sessions
        give them. Redirects are not followed. 401 is retried once after a new token; 429, 5xx
        and connection errors up to `attempts` times, so give 1 for a request that must not
        be sent twice, such as a PATCH that appends to an upload. `scope` may be a tuple of
        scopes, which the token request sends as repeated scope parameters.
        """
        self.ping()
        url = self.join(self.base + "/", target)
        same_host = self._same_origin(url)
        client = self._client(self.verify if same_host else True)
        for auth_try in range(2):
            request_headers = dict(headers or {})
            authorization = self.auth.header(scope) if same_host else None
            if authorization:
                request_headers["Authorization"] = authorization
            request = client.build_request(method, url, headers=request_headers,
                                           content=content)
            response = self._with_retries(lambda: client.send(request), url, attempts)
            if response.status_code != 401 or not same_host:
                return response
            if auth_try or not self.auth.update(response.headers.get("WWW-Authenticate"),
                                                scope):
                raise auths.rejected(self.host, self.credentials)
        raise AssertionError("unreachable")

    def _fetch_token(self, realm: str, params: dict, basic: str | None) -> object:
        headers = {"Authorization": basic} if basic else {}
        verify = self.verify or not realm.startswith("https:")
        client = self._client(verify)
        response = self._with_retries(
            lambda: client.get(realm, params=params, headers=headers), realm)
        response = self._follow_token_redirects(response, realm, headers)
        if response.status_code in (401, 403):
            raise auths.rejected(self.host, self.credentials)
        if response.status_code != 200:
            raise RegistryError(f"token server {realm} returned {_error_text(response)}; "
                                "check the registry's auth configuration")
        try:
            return response.json()
        except ValueError:
            raise RegistryError(f"token server {realm} returned invalid JSON; check the "
                                "registry's auth configuration") from None

    def _follow_token_redirects(self, response: http.Response, realm: str,
                                headers: dict) -> http.Response:
        """Follow the token server's redirects; the credentials go to its own origin only."""
        realm_origin = urlsplit(realm)[:2]
        for _ in range(MAX_REDIRECTS):
            if response.status_code not in _REDIRECTS or "Location" not in response.headers:
                return response
            url = self.join(str(response.request.url), response.headers["Location"])
            same_origin = urlsplit(url)[:2] == realm_origin
            client = self._client(self.verify if same_origin else True)
            request_headers = headers if same_origin else {}
            response = self._with_retries(lambda: client.get(url, headers=request_headers), url)
        raise RegistryError(f"token server {realm} redirected more than {MAX_REDIRECTS} times; "
                            "check the registry's auth configuration")

    # Distribution API

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str | None]:
        """Return the manifest body, its media type and the Docker-Content-Digest header."""
        scope = f"repository:{repository}:pull"
        response = self.send("GET", f"/v2/{repository}/manifests/{reference}", scope,
                             {"Accept": manifests.ACCEPT}, stream=True)
        with closing(response):
            self.check_status(response, f"{repository}:{reference}" if ":" not in reference
                              else f"{repository}@{reference}")
            length = response.headers.get("Content-Length")
            manifests.check_size(int(length) if length and _is_number(length) else None,
                                 "manifest")
            body = bytearray()
            try:
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > manifests.MAX_MANIFEST_SIZE:
                        manifests.check_size(len(body), "manifest")
            except http.TransportError as error:
                raise self.transport_failure(f"manifest {repository}:{reference}", error) \
                    from None
        content_type = response.headers.get("Content-Type")
        media_type = manifests.media_type_of(bytes(body), content_type)
        return bytes(body), media_type, response.headers.get("Docker-Content-Digest")

    def open_blob(self, repository: str, digest: str, offset: int = 0) -> http.Response:
        """Start a streamed blob download, from `offset` with a Range request when it is > 0."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.send("GET", f"/v2/{repository}/blobs/{digest}",
                             f"repository:{repository}:pull", headers, stream=True)
        if response.status_code not in (200, 206, 416):
            with closing(response):
                self.check_status(response, f"blob {digest} of {repository}")
        return response

    def check_status(self, response: http.Response, label: str) -> None:
        if response.status_code < 400:
            return
        text = _error_text(response)
        if response.status_code == 404:
            raise NotFoundError(f"{label} not found in registry {self.host}: {text}; check "
                                "the repository, tag or digest")
        if response.status_code == 403:
            raise RegistryError(f"access to {label} denied by registry {self.host}: {text}; "
                                "check your permissions or log in as another user")
        raise RegistryError(f"registry {self.host} failed on {label}: {text}")

    def check_login(self) -> None:
        """Verify the credentials against /v2/; raise AuthenticationError when rejected."""
        self.ping()
        if self.auth.challenge is None:
            return
        if self.auth.challenge.scheme == "bearer":
            # A token for no scope proves the credentials, as `docker login` checks them.
            self.auth.header(None)
        response = self.send("GET", "/v2/", None)
        if response.status_code >= 400:
            self.check_status(response, "/v2/")


def check_digest(body: bytes, expected: str, label: str) -> str:
    """Return the sha256 digest of `body`, raising ManifestError when it is not `expected`."""
    from kakoi.image import digest as digests
    from kakoi.errors import DigestMismatchError

    actual = digests.of_bytes(body)
    if expected is not None and expected.startswith("sha256:") and actual != expected:
        raise DigestMismatchError(f"{label} hashes to {actual}, not {expected}; the registry "
                                  "served wrong content, try again or check the registry")
    return actual


__all__ = ["RegistryClient", "ManifestError", "backoff_delay", "check_digest"]
