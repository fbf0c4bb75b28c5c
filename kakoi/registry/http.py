"""HTTP/1.1 for the registry client, over the standard library's socket and ssl only.

httpx took about 90 ms to import, more than a whole `skopeo copy` of a small image, and the
registry client uses little of it: one request at a time per connection, no HTTP/2, no
cookies, no content coding. This module keeps idle connections per host for reuse (all the
blobs of an image come from one registry), frames bodies by Content-Length or chunked
encoding, and streams them to the caller.

Proxies come from the environment as Go programs (Docker, Podman) read them: HTTP_PROXY,
HTTPS_PROXY and NO_PROXY, uppercase first, then lowercase; ALL_PROXY, which curl reads, is
the fallback for both schemes. Like Docker and Podman, a loopback address never goes through
a proxy. Only http:// proxies are supported;
HTTPS goes through them with CONNECT.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from base64 import b64encode
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from kakoi import jsontext

_MAX_LINE = 65536
# Responses read whole (pings, tokens, upload responses, errors) are small. A server that
# sends more is broken or hostile, and must not fill the memory.
MAX_READ_BODY = 4 << 20
_MAX_INTERIM = 20
_MAX_HEADERS = 200
_MAX_IDLE_PER_HOST = 8
_READ_SIZE = 65536
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
            307: "Temporary Redirect", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 416: "Range Not Satisfiable",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}


def is_number(text: str) -> bool:
    """Return True for ASCII digits only: str.isdigit also accepts "²", which int() rejects."""
    return text.isascii() and text.isdigit()


class TransportError(Exception):
    """A failed exchange: the connection, TLS, a timeout or the message framing failed."""


class ConnectError(TransportError):
    """A connection, TLS handshake or proxy tunnel that could not be set up."""


class ProxyError(ConnectError):
    """A proxy that cannot be reached, or that rejected the tunnel to the registry."""


class ReadError(TransportError):
    """A connection that failed while the request was sent or the response read."""


class Timeout(TransportError):
    """A server that did not respond within the timeout."""


class RemoteProtocolError(TransportError):
    """A response that is not valid HTTP/1.1, or that ends before its declared length."""


class InvalidProxy(ValueError):
    """A proxy variable in the environment that cannot be used."""


class ResponseTooLarge(Exception):
    """A response read whole (not streamed) is larger than the limit for such responses."""


class URL(str):
    """A URL string with the parts that callers and tests read."""

    @property
    def _parts(self):
        return urlsplit(self)

    @property
    def scheme(self) -> str:
        return self._parts.scheme

    @property
    def host(self) -> str:
        return self._parts.hostname or ""

    @property
    def path(self) -> str:
        return self._parts.path or "/"

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self._parts.query, keep_blank_values=True))


class Headers:
    """Case-insensitive headers, where a repeated header reads as its values joined by ", "."""

    __slots__ = ("_values", "_names")

    def __init__(self, items=None):
        self._values: dict[str, str] = {}
        self._names: dict[str, str] = {}
        if isinstance(items, Headers):
            self._values, self._names = dict(items._values), dict(items._names)
            return
        for name, value in (items.items() if isinstance(items, dict) else items or ()):
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        key = name.lower()
        if key in self._values:
            self._values[key] += ", " + value
        else:
            self._values[key] = value
            self._names[key] = name

    def get(self, name: str, default=None):
        return self._values.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def items(self) -> list[tuple[str, str]]:
        return [(self._names[key], value) for key, value in self._values.items()]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


class Request:
    """A request to send: method, absolute URL, headers and an optional body."""

    __slots__ = ("method", "url", "headers", "content")

    def __init__(self, method: str, url: str, headers=None, content: bytes | None = None,
                 params: dict | None = None):
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params, doseq=True)
        self.method = method
        self.url = URL(url)
        self.headers = Headers(headers)
        self.content = content if content is not None else b""


class _BytesBody:
    """The body of a response built in memory, or streamed from an iterable of chunks."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._pending = b""

    def read(self, limit: int) -> bytes:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._pending = bytes(chunk)
        data, self._pending = self._pending[:limit], self._pending[limit:]
        return data

    def close(self) -> None:
        self._chunks = iter(())


class Response:
    """A status, headers and a body that is read once, in chunks or whole.

    Built by the connection pool with a network body, or directly (by tests and fakes) with
    `content`, `json` or `stream` (an iterable of byte chunks).
    """

    def __init__(self, status_code: int, headers=None, content: bytes | None = None, *,
                 json=None, stream=None, reason_phrase: str | None = None,
                 request: Request | None = None):
        headers = headers if isinstance(headers, Headers) else Headers(headers)
        if json is not None:
            content = jsontext.dumps(json).encode()
            if "Content-Type" not in headers:
                headers.add("Content-Type", "application/json")
        self.status_code = status_code
        self.reason_phrase = reason_phrase if reason_phrase is not None else \
            _REASONS.get(status_code, "")
        self.headers = headers
        self.request = request
        self._body = stream if hasattr(stream, "read") else _BytesBody(
            stream if stream is not None else [content or b""])
        self._content: bytes | None = None

    def iter_bytes(self, chunk_size: int = _READ_SIZE):
        """Yield the body in chunks of at most `chunk_size` bytes."""
        if self._content is not None:
            for start in range(0, len(self._content), chunk_size):
                yield self._content[start:start + chunk_size]
            return
        while chunk := self._body.read(chunk_size):
            yield chunk

    # Requests ask for no content coding, so the raw bytes are the body's bytes.
    iter_raw = iter_bytes

    def read(self, limit: int | None = None, deadline: float | None = None) -> bytes:
        """Return the whole body; ResponseTooLarge when it exceeds `limit` bytes.

        With `deadline` (time.monotonic), a body that is still arriving then raises Timeout.
        """
        if self._content is None:
            chunks, size = [], 0
            for chunk in self.iter_bytes(1 << 20):
                size += len(chunk)
                if limit is not None and size > limit:
                    self._body.close()
                    raise ResponseTooLarge(f"the response is larger than {limit} bytes")
                if deadline is not None and time.monotonic() > deadline:
                    self._body.close()
                    raise Timeout("the response body did not arrive in time")
                chunks.append(chunk)
            self._content = b"".join(chunks)
            self._body.close()
        return self._content

    @property
    def content(self) -> bytes:
        return self.read()

    def json(self):
        return jsontext.loads(self.read())

    def close(self) -> None:
        self._body.close()

    def __repr__(self) -> str:
        return f"<Response {self.status_code} {self.reason_phrase}>"


class _Connection:
    """One socket to a server (or through a proxy), with a buffered reader on it."""

    def __init__(self, sock: socket.socket, key: tuple, opened: set | None = None):
        self.sock = sock
        self.key = key
        # The pool's set of open connections, which abort() shuts down.
        self._opened = opened if opened is not None else set()
        self._opened.add(self)
        self.file = sock.makefile("rb", buffering=_READ_SIZE)
        # Whether any byte of the current response arrived: a reused connection that fails
        # before one does was closed by the server while idle, so the request is sent again.
        self.received = False
        # When the response headers must have arrived (time.monotonic), or None.
        self.deadline: float | None = None

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise Timeout("timed out sending the request") from None
        except OSError as error:
            raise ReadError(f"sending the request failed: {error}") from error

    def readline(self) -> bytes:
        """Return the next line, with at most one read of the socket between deadline checks.

        BufferedReader.readline would wait for the whole line, however slowly its bytes came,
        so a server sending one byte a second could hold a request for hours.
        """
        parts, size = [], 0
        while size <= _MAX_LINE:
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise Timeout("the response headers did not arrive in time")
            try:
                buffered = self.file.peek(1)
            except socket.timeout:
                raise Timeout("timed out waiting for the response") from None
            except OSError as error:
                raise ReadError(f"reading the response failed: {error}") from error
            if not buffered:
                break
            newline = buffered.find(b"\n")
            take = len(buffered) if newline < 0 else newline + 1
            parts.append(self.file.read(take))
            size += take
            if newline >= 0:
                break
        if size > _MAX_LINE:
            raise RemoteProtocolError("a response line is longer than 64 KiB")
        line = b"".join(parts)
        self.received = self.received or bool(line)
        return line

    def read(self, size: int) -> bytes:
        """Return `size` bytes of the body, fewer only where the server closed."""
        return self._read_body(self.file.read, size)

    def read_some(self, size: int) -> bytes:
        """Return what has arrived of the body, at most `size` bytes, waiting for some."""
        return self._read_body(self.file.read1, size)

    @staticmethod
    def _read_body(read, size: int) -> bytes:
        try:
            return read(size)
        except socket.timeout:
            raise Timeout("timed out reading the response body") from None
        except OSError as error:
            raise ReadError(f"reading the response body failed: {error}") from error

    def is_idle_and_open(self) -> bool:
        """Return True when nothing waits to be read, so the server neither closed nor wrote."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        self._opened.discard(self)
        try:
            self.file.close()
        finally:
            self.sock.close()


class _NetworkBody:
    """A response body on a connection, which goes back to the pool once the body is read.

    `length` None with `chunked` false means the body ends when the server closes.
    """

    def __init__(self, pool: "ConnectionPool", conn: _Connection, length: int | None,
                 chunked: bool, keep_alive: bool):
        self._pool = pool
        self._conn: _Connection | None = conn
        self._remaining = length
        self._chunked = chunked
        self._chunk_left = 0
        self._keep_alive = keep_alive and (chunked or length is not None)
        if length == 0 and not chunked:
            self._finish()

    def read(self, limit: int) -> bytes:
        if self._conn is None:
            return b""
        try:
            if self._chunked:
                return self._read_chunked(limit)
            if self._remaining is None:
                return self._read_until_close(limit)
            return self._read_length(limit)
        except TransportError:
            self.close()
            raise

    def _read_length(self, limit: int) -> bytes:
        # What has arrived, not a full `limit`: a server that stalls mid-body then times out
        # after the caller has stored the bytes before the stall, so a resume starts there.
        data = self._conn.read_some(min(limit, self._remaining))
        if not data:
            raise RemoteProtocolError(f"the server closed the connection {self._remaining} "
                                      "bytes before the end of the body")
        self._remaining -= len(data)
        if self._remaining == 0:
            self._finish()
        return data

    def _read_until_close(self, limit: int) -> bytes:
        data = self._conn.read_some(limit)
        if not data:
            self._finish()
        return data

    def _read_chunked(self, limit: int) -> bytes:
        if self._chunk_left == 0:
            size = self._chunk_size()
            if size == 0:
                self._skip_trailers()
                self._finish()
                return b""
            self._chunk_left = size
        data = self._conn.read_some(min(limit, self._chunk_left))
        if not data:
            raise RemoteProtocolError("the server closed the connection inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._conn.readline() not in (b"\r\n", b"\n"):
            raise RemoteProtocolError("a chunk of the body is not followed by CRLF")
        return data

    def _chunk_size(self) -> int:
        line = self._conn.readline()
        text = line.split(b";", 1)[0].strip()
        if not text or len(text) > 16 or text.strip(b"0123456789abcdefABCDEF"):
            raise RemoteProtocolError(f"invalid chunk size line {line[:40]!r}")
        return int(text, 16)

    def _skip_trailers(self) -> None:
        for _ in range(_MAX_HEADERS):
            line = self._conn.readline()
            if line in (b"\r\n", b"\n"):
                return
            if not line:
                raise RemoteProtocolError("the server closed the connection in the trailers")
        raise RemoteProtocolError(f"more than {_MAX_HEADERS} trailer lines")

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if self._keep_alive:
            self._pool.release(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection unless the body was read to its end."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _Proxy:
    """An http:// proxy: where to connect, and the Proxy-Authorization header, if any."""

    __slots__ = ("host", "port", "authorization", "variable")

    def __init__(self, value: str, variable: str):
        if "://" not in value:
            value = "http://" + value
        try:
            parts = urlsplit(value)
        except ValueError as error:
            raise InvalidProxy(f"{variable}={value}: {error}; give http://host:port") from None
        if parts.scheme != "http":
            raise InvalidProxy(f"{variable}={value}: the proxy scheme {parts.scheme} is not "
                               "supported; give an http:// proxy")
        try:
            port = parts.port or 80
        except ValueError:
            raise InvalidProxy(f"{variable}={value}: invalid port; give host:port") from None
        if not parts.hostname:
            raise InvalidProxy(f"{variable}={value}: no proxy host; give http://host:port")
        self.host = parts.hostname
        self.port = port
        self.variable = variable
        self.authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = "Basic " + b64encode(pair.encode()).decode()

    def __repr__(self) -> str:
        return f"{self.host}:{self.port}"


def _environment_value(names: tuple[str, ...], environ) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


class ProxySettings:
    """The proxies for http and https URLs, and the hosts that bypass them, from environ.

    Names are read as Go reads them (Docker, Podman): HTTP_PROXY before http_proxy.
    """

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        self.proxies: dict[str, _Proxy | None] = {}
        for scheme in ("http", "https"):
            found = _environment_value((f"{scheme.upper()}_PROXY", f"{scheme}_proxy",
                                        "ALL_PROXY", "all_proxy"), environ)
            self.proxies[scheme] = _Proxy(found[1], found[0]) if found else None
        bypass = _environment_value(("NO_PROXY", "no_proxy"), environ)
        self.bypass = [entry.strip().lower() for entry in (bypass[1] if bypass else "").split(",")
                       if entry.strip()]

    def for_url(self, scheme: str, host: str, port: int) -> _Proxy | None:
        proxy = self.proxies.get(scheme)
        if proxy is None or is_loopback_host(host) or self._bypassed(host.lower(), port):
            return None
        return proxy

    def _bypassed(self, host: str, port: int) -> bool:
        for entry in self.bypass:
            if entry == "*":
                return True
            name, entry_port = _split_port(entry)
            if entry_port is not None and entry_port != port:
                continue
            if "/" in name:
                if _in_network(host, name):
                    return True
                continue
            name = name.lstrip("*").lstrip(".")
            if host == name or host.endswith("." + name):
                return True
        return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        return address, int(rest[1:]) if is_number(rest[1:]) else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if is_number(port) else None
    return entry, None


def _in_network(host: str, network: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """Return True for localhost, an IPv4 literal in 127.0.0.0/8, or ::1.

    A name such as 127.example.com is not an address, so it is not loopback.
    """
    if host in ("localhost", "::1"):
        return True
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(is_number(part) for part in parts)


class ConnectionPool:
    """Sends requests on connections kept per (scheme, host, port, proxy), one at a time each.

    Safe to share between threads: each request takes a connection of its own.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None, connect_timeout: float,
                 read_timeout: float, proxies: ProxySettings | None = None):
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._proxies = proxies or ProxySettings({})
        self._idle: dict[tuple, list[_Connection]] = {}
        self._opened: set[_Connection] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._aborted = False

    def handle(self, request: Request) -> Response:
        """Send the request and return the response with its body still on the connection."""
        scheme, host, port, target, authority = _address(request.url)
        proxy = self._proxies.for_url(scheme, host, port)
        if proxy is not None and scheme == "http":
            target = request.url
        head = _request_head(request, target, authority, proxy if scheme == "http" else None)

        for attempt in (1, 2):
            conn, reused = self._acquire((scheme, host, port, proxy))
            conn.received = False
            try:
                conn.send(head)
                if request.content:
                    conn.send(request.content)
                conn.deadline = time.monotonic() + self._read_timeout
                status, reason, headers, keep_alive = _read_head(conn)
                conn.deadline = None
            except TransportError:
                conn.close()
                # The server closed this idle connection meanwhile, so send once more on a new one.
                if reused and not conn.received and attempt == 1:
                    continue
                raise
            break

        body = _body_for(self, conn, request.method, status, headers, keep_alive)
        return Response(status, headers, stream=body, reason_phrase=reason, request=request)

    def release(self, conn: _Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(conn.key, [])
            if not self._closed and len(idle) < _MAX_IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    def abort(self) -> None:
        """Make every transfer in progress fail now, and every later request at once.

        A thread blocked in a read of a stalled server would wait for the read timeout.
        Shutting the socket down wakes it with an error.
        """
        self._aborted = True
        for conn in list(self._opened):
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _acquire(self, key: tuple) -> tuple[_Connection, bool]:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                return self._open(key), False
            if conn.is_idle_and_open():
                return conn, True
            conn.close()

    def _open(self, key: tuple) -> _Connection:
        if self._aborted:
            raise ConnectError("the transfer was interrupted")
        scheme, host, port, proxy = key
        address = (proxy.host, proxy.port) if proxy else (host, port)
        where = f"proxy {proxy} ({proxy.variable})" if proxy else f"{host}:{port}"
        try:
            sock = socket.create_connection(address, timeout=self._connect_timeout)
        except socket.timeout:
            raise Timeout(f"connecting to {where} timed out") from None
        except OSError as error:
            failure = ProxyError if proxy else ConnectError
            raise failure(f"connecting to {where} failed: {error}") from error
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if proxy is not None and scheme == "https":
                _tunnel(sock, host, port, proxy)
            if scheme == "https":
                # An ASCII name as bytes skips ssl's IDNA encoding and its import (about 2 ms).
                name = host.encode() if host.isascii() else host
                sock = self._ssl_context.wrap_socket(sock, server_hostname=name)
            sock.settimeout(self._read_timeout)
        except TransportError:
            sock.close()
            raise
        except socket.timeout:
            sock.close()
            raise Timeout(f"the TLS handshake with {host}:{port} timed out") from None
        except OSError as error:
            sock.close()
            raise ConnectError(str(error)) from error
        return _Connection(sock, key, self._opened)


def _address(url: str) -> tuple[str, str, int, str, str]:
    """Return scheme, host, port, request target and Host header value of an absolute URL."""
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise ConnectError(f"cannot send a request to {url[:200]!r}: {error}") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConnectError(f"cannot send a request to {url}: only http and https URLs are "
                           "supported")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ConnectError(f"cannot send a request to {url}: invalid port") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, target, parts.netloc.rpartition("@")[2]


def _request_head(request: Request, target: str, authority: str, proxy: _Proxy | None) -> bytes:
    lines = [f"{request.method} {target} HTTP/1.1", f"Host: {authority}",
             "Accept-Encoding: identity"]
    for name, value in request.headers.items():
        if "\r" in value or "\n" in value:
            raise RemoteProtocolError(f"the value of header {name} contains a line break")
        lines.append(f"{name}: {value}")
    if request.content or request.method in ("POST", "PUT", "PATCH"):
        if "Content-Length" not in request.headers:
            lines.append(f"Content-Length: {len(request.content)}")
    if proxy is not None and proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_head(conn: _Connection) -> tuple[int, str, Headers, bool]:
    """Read the status line and headers, skipping interim 1xx responses."""
    for _ in range(_MAX_INTERIM + 1):
        line = conn.readline()
        if not line:
            raise RemoteProtocolError("the server closed the connection without a response")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not is_number(code):
            raise RemoteProtocolError(f"invalid status line {line[:80]!r}")
        headers = _read_headers(conn)
        status = int(code)
        if 100 <= status < 200 and status != 101:
            continue
        keep_alive = version == "HTTP/1.1" and \
            "close" not in headers.get("Connection", "").lower()
        return status, reason, headers, keep_alive
    raise RemoteProtocolError(f"more than {_MAX_INTERIM} interim 1xx responses")


def _read_headers(conn: _Connection) -> Headers:
    headers = Headers()
    for _ in range(_MAX_HEADERS):
        line = conn.readline()
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise RemoteProtocolError("the server closed the connection inside the headers")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise RemoteProtocolError(f"invalid header line {line[:80]!r}")
        headers.add(name, value.strip())
    raise RemoteProtocolError(f"more than {_MAX_HEADERS} response headers")


def _body_for(pool: ConnectionPool, conn: _Connection, method: str, status: int,
              headers: Headers, keep_alive: bool) -> _NetworkBody:
    if method == "HEAD" or status in (204, 304):
        return _NetworkBody(pool, conn, 0, False, keep_alive)
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return _NetworkBody(pool, conn, None, True, keep_alive)
    length = headers.get("Content-Length")
    if length is None:
        return _NetworkBody(pool, conn, None, False, False)
    if not is_number(length):
        conn.close()
        raise RemoteProtocolError(f"invalid Content-Length {length[:40]!r}")
    return _NetworkBody(pool, conn, int(length), False, keep_alive)


def _tunnel(sock: socket.socket, host: str, port: int, proxy: _Proxy) -> None:
    """Ask the proxy for a tunnel to host:port, over which TLS then runs."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    # The proxy sends nothing after its response until the TLS client speaks first, so the
    # buffered reader cannot take bytes that belong to the tunnel.
    conn = _Connection(sock, ())
    conn.deadline = time.monotonic() + (sock.gettimeout() or 60.0)
    status, reason, _, _ = _read_head(conn)
    conn.file.close()
    if status != 200:
        raise ProxyError(f"proxy {proxy} ({proxy.variable}) responded {status} {reason} to "
                         f"CONNECT {authority}")


class Client:
    """Requests through one transport (the connection pool, or a fake in tests)."""

    def __init__(self, ssl_context: ssl.SSLContext | None, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, headers: dict | None = None, transport=None):
        self._headers = dict(headers or {})
        self._read_timeout = read_timeout
        self._transport = transport or ConnectionPool(ssl_context, connect_timeout,
                                                      read_timeout, ProxySettings())

    def build_request(self, method: str, url: str, headers: dict | None = None,
                      content: bytes | None = None, params: dict | None = None) -> Request:
        merged = dict(self._headers)
        merged.update(headers or {})
        return Request(method, url, merged, content, params)

    def send(self, request: Request, stream: bool = False) -> Response:
        """Return the response; its body is read here unless `stream` is set."""
        response = self._transport.handle(request)
        if response.request is None:
            response.request = request
        if not stream:
            try:
                response.read(MAX_READ_BODY, time.monotonic() + self._read_timeout)
            except BaseException:
                response.close()
                raise
        return response

    def get(self, url: str, params: dict | None = None, headers: dict | None = None) -> Response:
        return self.send(self.build_request("GET", url, headers, params=params))

    def close(self) -> None:
        close = getattr(self._transport, "close", None)
        if close is not None:
            close()

    def abort(self) -> None:
        abort = getattr(self._transport, "abort", None)
        if abort is not None:
            abort()


def unverified_context() -> ssl.SSLContext:
    """Return a TLS context that checks no certificate, for registries marked insecure."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
