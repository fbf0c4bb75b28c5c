"""Real registries and fixture images for the distribution client tests (a pytest plugin).

Fixtures (session-scoped unless noted):
  registry_plain         Debian's docker-registry (distribution 2.8) over HTTP, no auth
  registry_tls_htpasswd  the same over TLS with a test CA and htpasswd (bcrypt) basic auth
  registry_token         the same over HTTP with bearer token auth from tests/fixtures/token_server.py
  token_server           registry_token's token server (function scope: resets `reject` after a test)
  fixture_images         the busybox, layered and Debian OCI archives (scripts/build-fixture-images.py)
  skopeo                 a Skopeo runner with a private configuration: push(), inspect(), run()

Each registry runs on 127.0.0.1 with a port that the kernel picked, with its config, storage and
log in a temporary directory, and is stopped and its directory removed at the end of the session,
also when a test fails. When a test that used a registry fails, the tail of the registry's log
is added to the report.

The `skopeo` fixture and push_with_skopeo() run skopeo with a private policy, registries.conf,
auth file, HOME and TMPDIR, so the host's configuration can send no request elsewhere.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BUILD_SCRIPT = REPO / "scripts" / "build-fixture-images.py"
# The Debian image takes about a minute to build, so it is kept across sessions here
# (git-ignored); KAKOI_FIXTURE_CACHE moves it.
IMAGE_CACHE = Path(os.environ.get("KAKOI_FIXTURE_CACHE", FIXTURES / "out"))
REGISTRY_BINARY = "docker-registry"
START_TIMEOUT = 20.0
TEST_USER = "tester"
TEST_PASSWORD = "secret"

sys.path.insert(0, str(FIXTURES))
from token_server import TokenServer  # noqa: E402


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_fixture_images", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks the module up by name while the script's classes are created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Paths that the root of the layered image contains, and paths that its whiteouts remove,
# after all its layers are applied in order.
_BUILD = _load_build_script()
LAYERED_PRESENT: tuple[str, ...] = _BUILD.LAYERED_PRESENT
LAYERED_ABSENT: tuple[str, ...] = _BUILD.LAYERED_ABSENT


@dataclass(eq=False)
class Registry:
    """A running registry: `url` is host:port, as image references and skopeo use it."""

    url: str
    scheme: str
    directory: Path
    process: subprocess.Popen
    log_file: Path
    ca_file: Path | None = None
    cert_dir: Path | None = None
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.url}"

    @property
    def creds(self) -> str | None:
        return None if self.username is None else f"{self.username}:{self.password}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return None if self.ca_file is None else ssl.create_default_context(cafile=self.ca_file)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def free_port() -> int:
    """Return a port that the kernel gave out on 127.0.0.1 and that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    # An empty ProxyHandler keeps http_proxy and friends from sending loopback requests away.
    handlers = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def probe_v2(base_url: str, context: ssl.SSLContext | None = None) -> int | None:
    """Return the status of GET /v2/, or None while the server does not accept connections."""
    try:
        with _opener(context).open(base_url + "/v2/", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return None


# --- registry processes ----------------------------------------------------------------------

def _config_yaml(directory: Path, port: int, auth: str = "", tls: str = "") -> str:
    # JSON-style strings for paths, so that no temporary path needs YAML quoting rules.
    return f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: "{directory / 'storage'}"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {secrets.token_hex(16)}
{tls}{auth}"""


def start_registry(started: "Started", directory: Path, scheme: str, auth: str = "",
                    tls: str = "", context: ssl.SSLContext | None = None,
                    attempts: int = 3) -> Registry:
    """Start docker-registry with a config in directory.

    A new port is tried when another process took the free port before the registry bound it.
    """
    if shutil.which(REGISTRY_BINARY) is None:
        pytest.skip("docker-registry is missing: run scripts/install.sh")
    for attempt in range(attempts):
        port = free_port()
        config = directory / "config.yml"
        config.write_text(_config_yaml(directory, port, auth, tls))
        log_file = directory / f"registry-{attempt}.log"
        with open(log_file, "wb") as log:
            process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        registry = Registry(f"127.0.0.1:{port}", scheme, directory, process, log_file)
        if _wait_ready(registry, context):
            started.registries.append(registry)
            _RUNNING.append(registry)
            return registry
        _stop_process(process)
        if "address already in use" not in log_file.read_text(errors="replace"):
            break
    raise RuntimeError(f"registry in {directory} failed to start: GET /v2/ timed out after "
                       f"{START_TIMEOUT:.0f}s or the process exited, log tail:\n"
                       f"{registry.log_tail()}")


def _wait_ready(registry: Registry, context: ssl.SSLContext | None) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            return False
        if probe_v2(registry.base_url, context) in (200, 401):
            return True
        time.sleep(0.05)
    return False


def _stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Started:
    """What a registry fixture started: its teardown stops the registries, then the token servers."""

    registries: list[Registry] = field(default_factory=list)
    token_servers: list[TokenServer] = field(default_factory=list)


_RUNNING: list[Registry] = []


def run_registry(prefix: str, start) -> Iterator[Registry]:
    """Yield start(directory, started) and then stop what it started and remove directory."""
    directory = Path(tempfile.mkdtemp(prefix=f"kakoi-{prefix}-"))
    started = Started()
    try:
        yield start(directory, started)
    finally:
        for registry in started.registries:
            _stop_process(registry.process)
            if registry in _RUNNING:
                _RUNNING.remove(registry)
        for server in started.token_servers:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# --- certificates and credentials ------------------------------------------------------------

def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """Make a test CA and a server certificate signed by it for 127.0.0.1 and localhost.

    The certificate also names registry.test, for clients that reach it through a test proxy.

    Return (ca.crt, server.crt, server.key).
    """
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=kakoi test CA", "-keyout", str(ca_key), "-out", str(ca_crt))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", str(key), "-out", str(csr))
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:registry.test\n"
                          "extendedKeyUsage = serverAuth\n"
                          "basicConstraints = CA:FALSE\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(extensions),
             "-out", str(crt))
    return ca_crt, crt, key


def make_htpasswd(path: Path, username: str, password: str) -> None:
    """Write a bcrypt htpasswd file, the only hash distribution accepts."""
    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd is missing: install apache2-utils (scripts/install.sh)")
    line = subprocess.run(["htpasswd", "-Bbn", username, password], check=True,
                          capture_output=True, text=True).stdout.strip()
    path.write_text(line + "\n")


def _cert_dir(directory: Path, ca_file: Path) -> Path:
    """Return a directory with the CA as ca.crt, the layout skopeo's --cert-dir reads."""
    cert_dir = directory / "certs.d"
    cert_dir.mkdir()
    shutil.copy(ca_file, cert_dir / "ca.crt")
    return cert_dir


# --- the fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def registry_plain():
    """A registry over plain HTTP without auth."""
    def start(directory: Path, started: Started) -> Registry:
        return start_registry(started, directory, "http")

    yield from run_registry("registry-plain", start)


@pytest.fixture(scope="session")
def registry_tls_htpasswd():
    """A registry over TLS (ca_file, cert_dir) with basic auth for username and password."""
    def start(directory: Path, started: Started) -> Registry:
        ca_file, cert, key = make_tls_files(directory)
        htpasswd = directory / "htpasswd"
        make_htpasswd(htpasswd, TEST_USER, TEST_PASSWORD)
        tls = (f'  tls:\n    certificate: "{cert}"\n    key: "{key}"\n')
        auth = (f'auth:\n  htpasswd:\n    realm: kakoi-test\n    path: "{htpasswd}"\n')
        context = ssl.create_default_context(cafile=ca_file)
        registry = start_registry(started, directory, "https", auth, tls, context)
        registry.ca_file = ca_file
        registry.cert_dir = _cert_dir(directory, ca_file)
        registry.username, registry.password = TEST_USER, TEST_PASSWORD
        return registry

    yield from run_registry("registry-tls", start)


@pytest.fixture(scope="session")
def registry_token():
    """A registry over HTTP with bearer token auth; `token_server` issues the tokens."""
    def start(directory: Path, started: Started) -> Registry:
        key_dir = directory / "token"
        key_dir.mkdir()
        server = TokenServer(key_dir, username=TEST_USER, password=TEST_PASSWORD).start()
        started.token_servers.append(server)
        auth = (f"auth:\n  token:\n"
                f'    realm: "{server.realm}"\n'
                f'    service: "{server.service}"\n'
                f'    issuer: "{server.issuer}"\n'
                f'    rootcertbundle: "{server.cert_file}"\n')
        registry = start_registry(started, directory, "http", auth)
        registry.token_server = server
        registry.username, registry.password = TEST_USER, TEST_PASSWORD
        return registry

    yield from run_registry("registry-token", start)


@pytest.fixture
def token_server(registry_token) -> TokenServer:
    """The token server of registry_token, reset to accept requests after each test."""
    server = registry_token.token_server
    yield server
    server.reject = False
    server.expires_in = 60


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Registry) and value in _RUNNING:
            report.sections.append((f"registry {value.url} log", value.log_tail()))


# --- fixture images --------------------------------------------------------------------------

@dataclass
class FixtureImages:
    """The OCI archives of the fixture images; `debian` is built on first use."""

    busybox: Path
    layered: Path
    cache: Path

    @property
    def debian(self) -> Path:
        path = self.cache / "debian-bookworm-oci.tar"
        if not path.exists():
            if os.geteuid() != 0:
                pytest.skip("building the Debian image needs root (debootstrap)")
            if shutil.which("debootstrap") is None:
                pytest.skip("debootstrap is missing: run scripts/install.sh")
            build_images(self.cache, "debian")
        return path

    def all(self) -> dict[str, Path]:
        return {"busybox": self.busybox, "layered": self.layered, "debian": self.debian}


def build_images(out: Path, only: str) -> None:
    """Run scripts/build-fixture-images.py for the images in only; a lock serializes runs."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--out", str(out),
                                 "--only", only], capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise RuntimeError(f"building the {only} fixture image failed with "
                           f"{result.returncode}:\n{tail}")


@pytest.fixture(scope="session")
def fixture_images() -> FixtureImages:
    """Build busybox and layered afresh (under a second); reuse the cached Debian image."""
    if not Path("/bin/busybox").exists():
        pytest.skip("/bin/busybox is missing: install Debian's busybox-static")
    with tempfile.TemporaryDirectory(prefix="kakoi-fixture-images-") as tmp:
        out = Path(tmp)
        build_images(out, "busybox,layered")
        yield FixtureImages(out / "busybox-oci.tar", out / "layered-oci.tar", IMAGE_CACHE)


# --- skopeo ----------------------------------------------------------------------------------

POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}\n'


class Skopeo:
    """Runs skopeo with a private policy, registries.conf, auth file, HOME and TMPDIR in home."""

    def __init__(self, home: Path):
        if shutil.which("skopeo") is None:
            pytest.skip("skopeo is missing: run scripts/install.sh")
        self.home = home
        (home / "policy.json").write_text(POLICY)
        (home / "registries.conf").write_text("unqualified-search-registries = []\n")
        (home / "auth.json").write_text("{}\n")
        (home / "tmp").mkdir(exist_ok=True)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
        env.update(TMPDIR=str(self.home / "tmp"), HOME=str(self.home),
                   XDG_RUNTIME_DIR=str(self.home),
                   REGISTRY_AUTH_FILE=str(self.home / "auth.json"),
                   CONTAINERS_REGISTRIES_CONF=str(self.home / "registries.conf"))
        command = ["skopeo", "--policy", str(self.home / "policy.json"), *args]
        return subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=timeout)

    def push(self, archive: Path, registry: Registry, repo: str, tag: str,
             creds: str | None = None, tls_verify: bool = True) -> subprocess.CompletedProcess:
        """Copy an OCI archive to registry as repo:tag; raise with skopeo's stderr on failure."""
        args = ["copy", "--quiet", *tls_options(registry, "dest", tls_verify)]
        if creds is not None:
            args.append(f"--dest-creds={creds}")
        args += [f"oci-archive:{archive}", f"docker://{registry.url}/{repo}:{tag}"]
        result = self.run(*args)
        if result.returncode != 0:
            raise AssertionError(f"skopeo copy of {archive.name} to {registry.url}/{repo}:{tag} "
                                 f"failed with {result.returncode}: {result.stderr.strip()}")
        return result

    def inspect(self, registry: Registry, repo: str, tag: str, creds: str | None = None,
                raw: bool = False) -> subprocess.CompletedProcess:
        """Run `skopeo inspect` (the manifest itself with raw) on repo:tag; do not raise."""
        args = ["inspect", *tls_options(registry, "", True)]
        if creds is not None:
            args.append(f"--creds={creds}")
        if raw:
            args.append("--raw")
        return self.run(*args, f"docker://{registry.url}/{repo}:{tag}")


def tls_options(registry: Registry, direction: str, tls_verify: bool = True) -> list[str]:
    """Return skopeo's TLS options for registry; direction is "src", "dest" or "" (inspect).

    A TLS registry is verified against its test CA unless tls_verify is false. A plain HTTP
    registry always needs tls-verify=false, which is also what lets skopeo speak HTTP.
    """
    prefix = f"--{direction}-" if direction else "--"
    if registry.cert_dir is not None and tls_verify:
        return [f"{prefix}cert-dir={registry.cert_dir}"]
    return [f"{prefix}tls-verify=false"]


@pytest.fixture(scope="session")
def skopeo() -> Skopeo:
    """skopeo with a private configuration, for putting fixture images into the registries."""
    with tempfile.TemporaryDirectory(prefix="kakoi-skopeo-") as home:
        yield Skopeo(Path(home))


def push_with_skopeo(archive: Path, registry: Registry, repo: str, tag: str,
                     creds: str | None = None, tls_verify: bool = True) -> None:
    """Copy an OCI archive to registry as repo:tag with a throwaway skopeo configuration."""
    with tempfile.TemporaryDirectory(prefix="kakoi-skopeo-") as home:
        Skopeo(Path(home)).push(archive, registry, repo, tag, creds, tls_verify)
