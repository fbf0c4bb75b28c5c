"""kakoi's HTTP/1.1 client against real sockets on 127.0.0.1: framing, reuse, errors, proxies.

Each server here is a thread that responds with scripted bytes, because a registry cannot be
made to cut a body short, close an idle connection or send a malformed status line on demand.
The proxy tests use the name registry.test, which the test proxy maps to its own loopback
server, so no request leaves the machine.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading

import pytest

import registry_fixtures
from kakoi.registry import http
from kakoi.registry.client import _load_system_cas


class Server:
    """A loopback TCP server that runs `serve(conn, reader)` for each connection it accepts."""

    def __init__(self, serve, tls: ssl.SSLContext | None = None):
        self.serve = serve
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.open: list[socket.socket] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                self.open.append(conn)
            self.serve(conn, conn.makefile("rb"), self)
        except OSError:
            pass
        finally:
            conn.close()

    def read_request(self, reader) -> bytes | None:
        """Read one request head and its Content-Length body; None when the client left."""
        head = b""
        while True:
            line = reader.readline()
            if not line:
                return None
            head += line
            if line == b"\r\n":
                break
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = reader.read(length) if length else b""
        self.requests.append(head + body)
        return head + body

    def close(self) -> None:
        # shutdown wakes the accept() blocked in the other thread; close alone does not.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for conn in self.open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for thread in self.threads:
            thread.join(5)
        self.accepting.join(5)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"


@pytest.fixture
def servers():
    started: list[Server] = []

    def start(serve, tls=None) -> Server:
        server = Server(serve, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def client():
    clients: list[http.Client] = []

    def make(context=None, read_timeout=10.0, proxies=None) -> http.Client:
        pool = http.ConnectionPool(context, 5.0, read_timeout, proxies)
        clients.append(http.Client(context, read_timeout=read_timeout, transport=pool))
        return clients[-1]

    yield make
    for opened in clients:
        opened.close()


def keep_alive(body: bytes, extra: bytes = b""):
    """Respond to every request on the connection with `body` and a Content-Length."""
    def serve(conn, reader, server):
        while server.read_request(reader) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
                         % (len(body), extra, body))
    return serve


def test_requests_reuse_one_connection(servers, client):
    server = servers(keep_alive(b"hello"))
    pooled = client()

    assert pooled.get(server.url + "/a").read() == b"hello"
    assert pooled.get(server.url + "/b", params={"scope": ["x", "y"]}).read() == b"hello"

    assert server.connections == 1
    assert server.requests[1].startswith(b"GET /b?scope=x&scope=y HTTP/1.1\r\n")
    assert b"Host: 127.0.0.1:%d\r\n" % server.port in server.requests[0]


def test_post_sends_its_body_and_length(servers, client):
    server = servers(keep_alive(b""))
    pooled = client()

    response = pooled.send(pooled.build_request("POST", server.url + "/up", content=b"abc"))
    empty = pooled.send(pooled.build_request("PUT", server.url + "/put"))

    assert response.status_code == 200
    assert empty.status_code == 200
    assert server.requests[0].endswith(b"Content-Length: 3\r\n\r\nabc")
    assert b"Content-Length: 0\r\n" in server.requests[1]


def test_chunked_body_with_extensions_and_trailers(servers, client):
    def serve(conn, reader, server):
        server.read_request(reader)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
        keep_alive(b"again")(conn, reader, server)

    server = servers(serve)
    pooled = client()

    assert pooled.get(server.url).read() == b"hello world"
    assert pooled.get(server.url).read() == b"again"
    assert server.connections == 1


def test_streamed_body_arrives_in_chunks(servers, client):
    body = os.urandom(300_000)
    server = servers(keep_alive(body))
    response = client().send(http.Request("GET", server.url), stream=True)

    chunks = list(response.iter_bytes(65536))

    assert b"".join(chunks) == body
    assert max(len(chunk) for chunk in chunks) <= 65536


def test_head_has_no_body_and_keeps_the_connection(servers, client):
    def serve(conn, reader, server):
        while server.read_request(reader) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")

    server = servers(serve)
    pooled = client()

    for _ in range(2):
        response = pooled.send(pooled.build_request("HEAD", server.url + "/blob"))
        assert response.status_code == 200
        assert response.read() == b""
        assert response.headers["content-length"] == "1234"
    assert server.connections == 1


def test_body_cut_short_is_a_protocol_error(servers, client):
    def serve(conn, reader, server):
        server.read_request(reader)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)

    server = servers(serve)
    response = client().send(http.Request("GET", server.url), stream=True)

    with pytest.raises(http.RemoteProtocolError, match="60 bytes before the end"):
        response.read()


def test_idle_connection_closed_by_the_server_is_replaced(servers, client):
    def serve(conn, reader, server):
        server.read_request(reader)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = servers(serve)
    pooled = client()

    assert pooled.get(server.url).read() == b"ok"
    assert pooled.get(server.url).read() == b"ok"
    assert server.connections == 2


def test_connection_close_is_honoured(servers, client):
    server = servers(keep_alive(b"ok", b"Connection: close\r\n"))
    pooled = client()

    assert pooled.get(server.url).read() == b"ok"
    assert pooled.get(server.url).read() == b"ok"
    assert server.connections == 2


def test_body_until_close_without_length(servers, client):
    def serve(conn, reader, server):
        server.read_request(reader)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nall of it")

    server = servers(serve)

    assert client().get(server.url).read() == b"all of it"


def test_repeated_headers_are_joined(servers, client):
    def serve(conn, reader, server):
        server.read_request(reader)
        conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=a\r\n"
                     b"www-authenticate: Bearer realm=b\r\nContent-Length: 0\r\n\r\n")

    server = servers(serve)
    response = client().get(server.url)

    assert response.status_code == 401
    assert response.reason_phrase == "Unauthorized"
    assert response.headers.get("WWW-Authenticate") == "Basic realm=a, Bearer realm=b"


@pytest.mark.parametrize("answer, message", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "invalid status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "invalid header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
    (b"HTTP/1.1 200 OK\r\n", "inside the headers"),
    (b"", "without a response"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * 30, "more than 20 interim"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", "invalid Content-Length"),
])
def test_malformed_responses_are_protocol_errors(servers, client, answer, message):
    def serve(conn, reader, server):
        server.read_request(reader)
        conn.sendall(answer)

    server = servers(serve)

    with pytest.raises(http.RemoteProtocolError, match=message):
        client().get(server.url).read()


def test_silent_server_times_out(servers, client):
    release = threading.Event()

    def serve(conn, reader, server):
        server.read_request(reader)
        release.wait(10)

    server = servers(serve)
    try:
        with pytest.raises(http.Timeout):
            client(read_timeout=0.2).get(server.url)
    finally:
        release.set()


def test_refused_connection_is_a_connect_error(client):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]

    with pytest.raises(http.ConnectError, match="refused"):
        client().get(f"http://127.0.0.1:{port}/v2/")


def test_header_with_a_line_break_is_refused(servers, client):
    server = servers(keep_alive(b""))

    with pytest.raises(http.RemoteProtocolError, match="line break"):
        client().get(server.url, headers={"Authorization": "Bearer a\r\nX-Injected: 1"})
    assert server.requests == []


# --- TLS and the system CA directory --------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    ca, cert, key = registry_fixtures.make_tls_files(directory)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    return ca, server_context


def test_hashed_ca_directory_verifies_the_server(servers, client, tls_files, tmp_path,
                                                 monkeypatch):
    ca, server_context = tls_files
    subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(ca)],
                                  check=True, capture_output=True, text=True).stdout.strip()
    (tmp_path / f"{subject_hash}.0").symlink_to(ca)
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _load_system_cas(context)
    server = servers(keep_alive(b"secure"), tls=server_context)

    assert client(context).get(server.url).read() == b"secure"


def test_unknown_ca_fails_verification(servers, client, tls_files):
    _, server_context = tls_files
    server = servers(keep_alive(b"secure"), tls=server_context)

    with pytest.raises(http.ConnectError) as failure:
        client(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)).get(server.url)
    assert isinstance(failure.value.__cause__, ssl.SSLCertVerificationError)


# --- proxies ---------------------------------------------------------------------------------

def test_proxy_settings_follow_go_rules():
    settings = http.ProxySettings({"HTTPS_PROXY": "proxy.test:3128",
                                   "https_proxy": "http://ignored.test:1",
                                   "http_proxy": "http://user:p%40ss@web.test:8080",
                                   "NO_PROXY": "internal.test, .corp.test, 10.0.0.0/8, "
                                               "ported.test:5000"})

    assert repr(settings.for_url("https", "registry.test", 443)) == "proxy.test:3128"
    assert settings.for_url("http", "registry.test", 80).authorization == \
        "Basic dXNlcjpwQHNz"
    for host, port in [("internal.test", 443), ("a.internal.test", 443), ("x.corp.test", 443),
                       ("10.1.2.3", 443), ("ported.test", 5000), ("127.0.0.1", 443),
                       ("localhost", 443), ("::1", 443)]:
        assert settings.for_url("https", host, port) is None, host
    assert settings.for_url("https", "ported.test", 443) is not None
    assert settings.for_url("https", "notinternal.test", 443) is not None


def test_all_proxy_and_star_bypass():
    assert http.ProxySettings({"all_proxy": "http://p.test:1"}).for_url("https", "r.test", 443)
    assert http.ProxySettings({"ALL_PROXY": "http://p.test:1", "no_proxy": "*"}).for_url(
        "https", "r.test", 443) is None


@pytest.mark.parametrize("value, message", [
    ("socks5://p.test:1080", "scheme socks5 is not supported"),
    ("http://p.test:port", "invalid port"),
    ("http://:3128", "no proxy host"),
])
def test_unusable_proxy_is_invalid(value, message):
    with pytest.raises(http.InvalidProxy, match=message):
        http.ProxySettings({"HTTPS_PROXY": value})


def test_http_proxy_gets_absolute_form(servers, client):
    def serve(conn, reader, server):
        while server.read_request(reader) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nproxied")

    proxy = servers(serve)
    settings = http.ProxySettings({"HTTP_PROXY": f"http://u:pw@127.0.0.1:{proxy.port}"})
    pooled = client(proxies=settings)

    assert pooled.get("http://registry.test:5000/v2/").read() == b"proxied"
    assert proxy.requests[0].startswith(b"GET http://registry.test:5000/v2/ HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic dTpwdw==\r\n" in proxy.requests[0]


def test_https_tunnels_through_connect(servers, client, tls_files):
    ca, server_context = tls_files
    origin = servers(keep_alive(b"through the tunnel"), tls=server_context)

    def tunnel(conn, reader, server):
        server.read_request(reader)
        upstream = socket.create_connection(("127.0.0.1", origin.port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        relay = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
        relay.start()
        _pipe(conn, upstream)
        relay.join(5)
        upstream.close()

    proxy = servers(tunnel)
    context = ssl.create_default_context(cafile=str(ca))
    settings = http.ProxySettings({"HTTPS_PROXY": f"127.0.0.1:{proxy.port}"})

    assert client(context, proxies=settings).get("https://registry.test/v2/").read() == \
        b"through the tunnel"
    assert proxy.requests[0].startswith(b"CONNECT registry.test:443 HTTP/1.1\r\n")


def test_proxy_rejecting_connect_is_named(servers, client):
    def reject(conn, reader, server):
        server.read_request(reader)
        conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")

    proxy = servers(reject)
    settings = http.ProxySettings({"HTTPS_PROXY": f"127.0.0.1:{proxy.port}"})

    with pytest.raises(http.ConnectError, match=r"responded 407 .* CONNECT registry.test:443"):
        client(ssl.create_default_context(), proxies=settings).get("https://registry.test/")


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def test_reused_connection_reset_before_the_response_is_retried(servers, client):
    # The server reads the second request, then resets the connection without a response, as
    # a server does that closes an idle connection just as the request arrives.
    def serve(conn, reader, server):
        server.read_request(reader)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if server.connections == 1:
            server.read_request(reader)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")

    server = servers(serve)
    pooled = client()

    assert pooled.get(server.url).read() == b"ok"
    assert pooled.get(server.url).read() == b"ok"
    assert server.connections == 2


def test_invalid_url_is_a_connect_error(client):
    with pytest.raises(http.ConnectError, match="Invalid IPv6 URL"):
        client().get("http://[::1/v2/")


def test_stalled_body_gives_what_arrived_before_the_timeout(servers, client):
    release = threading.Event()

    def serve(conn, reader, server):
        server.read_request(reader)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        release.wait(10)

    server = servers(serve)
    try:
        response = client(read_timeout=0.3).send(http.Request("GET", server.url), stream=True)
        chunks = response.iter_bytes(65536)
        assert next(chunks) == b"x" * 40
        with pytest.raises(http.Timeout):
            next(chunks)
    finally:
        release.set()


def test_unparsable_proxy_is_invalid():
    with pytest.raises(http.InvalidProxy, match="Invalid IPv6 URL"):
        http.ProxySettings({"HTTPS_PROXY": "http://[::1"})


def test_abort_wakes_a_read_of_a_stalled_server(servers, client):
    release = threading.Event()

    def serve(conn, reader, server):
        server.read_request(reader)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        release.wait(30)

    server = servers(serve)
    pooled = client(read_timeout=30)
    response = pooled.send(http.Request("GET", server.url), stream=True)
    failures = []

    def read_all():
        try:
            response.read()
        except http.TransportError as error:
            failures.append(error)

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        pooled.abort()
        reader.join(10)
        assert not reader.is_alive()
        assert isinstance(failures[0], http.TransportError)
        with pytest.raises(http.ConnectError, match="interrupted"):
            pooled.get(server.url)
    finally:
        release.set()
        reader.join(30)


@pytest.mark.parametrize("head, message", [
    (b"HTTP/1.1 200 OK\r\nX-Slow: ", "headers did not arrive in time"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", "body did not arrive in time"),
], ids=["headers", "body read whole"])
def test_trickling_response_times_out(servers, client, head, message):
    release = threading.Event()

    def serve(conn, reader, server):
        server.read_request(reader)
        conn.sendall(head)
        # One byte at a time, each well within the read timeout, never ending the response.
        while not release.wait(0.05):
            conn.sendall(b"a")

    server = servers(serve)
    try:
        with pytest.raises(http.Timeout, match=message):
            client(read_timeout=0.5).get(server.url)
    finally:
        release.set()
