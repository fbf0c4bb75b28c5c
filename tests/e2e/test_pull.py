"""`kakoi pull`, `login` and `logout` against real registries and, for bad content, fakes.

The registries are Debian's docker-registry from tests/registry_fixtures.py, filled with skopeo.
Corrupt, truncated, oversized and unknown content comes from small http.server fakes in this
file, because docker-registry verifies what it stores and cannot be made to serve it.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import Kakoi
from registry_fixtures import free_port

BUSYBOX_LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


# --- helpers ---------------------------------------------------------------------------------

class Puller(Kakoi):
    """`kakoi` with a private store, credentials file and registry settings."""

    def __init__(self, root: Path, home: Path, registries: dict | None = None):
        super().__init__(root)
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.settings = home / "registries.json"
        self.settings.write_text(json.dumps({"registries": registries or {}}))
        for key in list(self.env):
            if "proxy" in key.lower() or key in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
                del self.env[key]
        self.env.update(DOCKER_CONFIG=str(home / "docker"), HOME=str(home),
                        KAKOI_REGISTRIES_CONFIG=str(self.settings))

    @property
    def docker_config(self) -> Path:
        return self.home / "docker" / "config.json"

    def set_registries(self, registries: dict) -> None:
        self.settings.write_text(json.dumps({"registries": registries}))


@pytest.fixture
def puller(tmp_path) -> Puller:
    return Puller(tmp_path / "store", tmp_path / "home")


def store_snapshot(root: Path) -> dict[str, bytes]:
    """Return the store's files outside tmp/ with their content (the lock file aside)."""
    snapshot = {}
    if not root.exists():
        return snapshot
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in ("tmp", "images.lock") or not path.is_file():
            continue
        snapshot[str(relative)] = path.read_bytes()
    return snapshot


def damage_layer_blob(root: Path) -> tuple[Path, str]:
    """Flip a byte in the middle of the first layer blob of the only image in the store."""
    index = json.loads((root / "images.json").read_text())
    layer_digest = next(iter(index["images"].values()))["layers"][0]["digest"]
    blob = root / "blobs" / "sha256" / layer_digest.removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    return blob, layer_digest


def assert_one_line_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode == 125, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def pulled_digest(result: subprocess.CompletedProcess) -> str:
    match = re.search(r"^Digest: (sha256:[0-9a-f]{64})$", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return match.group(1)


def push(skopeo, source: str, registry, target: str, *extra: str) -> None:
    """Copy `source` (any skopeo transport) to registry/target without TLS checks."""
    creds = [f"--dest-creds={registry.creds}"] if registry.creds else []
    tls = ([f"--dest-cert-dir={registry.cert_dir}"] if registry.cert_dir else
           ["--dest-tls-verify=false"])
    result = skopeo.run("copy", "--quiet", *tls, *creds, *extra, source,
                        f"docker://{registry.url}/{target}")
    assert result.returncode == 0, result.stderr


# --- OCI layouts built in the tests ----------------------------------------------------------

def _blob(directory: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (directory / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (directory / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _read_layout(archive: Path) -> tuple[dict, bytes, list[tuple[dict, bytes]], dict]:
    """Return the first image of an OCI archive: manifest, config and layers with data."""
    with tarfile.open(archive) as tar:
        def read(name):
            return tar.extractfile(name).read()
        index = json.loads(read("index.json"))
        manifest = json.loads(read("blobs/sha256/" + index["manifests"][0]["digest"][7:]))
        config = read("blobs/sha256/" + manifest["config"]["digest"][7:])
        layers = [(layer, read("blobs/sha256/" + layer["digest"][7:]))
                  for layer in manifest["layers"]]
    return manifest, config, layers, index


def _write_manifest(directory: Path, config: bytes, layers: list[tuple[dict, bytes]]) -> dict:
    config_descriptor = dict(_blob(directory, config),
                             mediaType="application/vnd.oci.image.config.v1+json")
    layer_descriptors = [dict(_blob(directory, data), mediaType=layer["mediaType"])
                         for layer, data in layers]
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor,
                "layers": layer_descriptors}
    return dict(_blob(directory, json.dumps(manifest).encode()), mediaType=OCI_MANIFEST)


def build_multi_platform_layout(busybox: Path, directory: Path) -> str:
    """Write an OCI layout whose index has busybox for linux/amd64 and a relabelled linux/arm64.

    Returns the layout's reference name for skopeo's oci: transport.
    """
    _, config_bytes, layers, _ = _read_layout(busybox)
    config = json.loads(config_bytes)
    amd64 = _write_manifest(directory, json.dumps(dict(config, architecture="amd64")).encode(),
                            layers)
    arm64 = _write_manifest(directory, json.dumps(dict(config, architecture="arm64",
                                                       variant="v8")).encode(), layers)
    amd64["platform"] = {"os": "linux", "architecture": "amd64"}
    arm64["platform"] = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd64, arm64]}
    index_descriptor = dict(_blob(directory, json.dumps(index).encode()), mediaType=OCI_INDEX,
                            annotations={"org.opencontainers.image.ref.name": "multi"})
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "manifests": [index_descriptor]}))
    return "multi"


def build_zstd_layout(busybox: Path, directory: Path) -> str:
    """Write an OCI layout of busybox with its layer recompressed with zstd.

    skopeo 1.9 reuses the gzip blob that the registry already has instead of recompressing.
    """
    import zstandard

    _, config, layers, _ = _read_layout(busybox)
    recompressed = [({"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd"},
                     zstandard.ZstdCompressor().compress(gzip.decompress(data)))
                    for _, data in layers]
    manifest = _write_manifest(directory, config, recompressed)
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "zstd"}
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                      "manifests": [manifest]}))
    return "zstd"


def build_big_layout(directory: Path, megabytes: int) -> str:
    """Write an OCI layout of one gzip layer holding `megabytes` MB of random data."""
    from isal import igzip

    payload = os.urandom(megabytes << 20)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("random.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = buffer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    layer = igzip.compress(tar_bytes, compresslevel=0)
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    manifest = _write_manifest(directory, json.dumps(config).encode(),
                               [({"mediaType": BUSYBOX_LAYER_MEDIA}, layer)])
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "big"}
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                      "manifests": [manifest]}))
    return "big"


# --- pulls from a plain registry -------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_images(registry_plain, fixture_images, skopeo, tmp_path_factory):
    """registry_plain with busybox (OCI and Docker schema 2), layered, and a two-platform index."""
    busybox = f"oci-archive:{fixture_images.busybox}"
    push(skopeo, busybox, registry_plain, "library/busybox:latest")
    push(skopeo, busybox, registry_plain, "docker/busybox:v2s2", "--format", "v2s2")
    zstd_layout = tmp_path_factory.mktemp("zstd-layout")
    push(skopeo, f"oci:{zstd_layout}:{build_zstd_layout(fixture_images.busybox, zstd_layout)}",
         registry_plain, "zstd/busybox:1")
    push(skopeo, f"oci-archive:{fixture_images.layered}", registry_plain, "layered:1")
    layout = tmp_path_factory.mktemp("multi-layout")
    name = build_multi_platform_layout(fixture_images.busybox, layout)
    push(skopeo, f"oci:{layout}:{name}", registry_plain, "multi:1", "--all")
    return registry_plain


@pytest.mark.root
@pytest.mark.peer
def test_pull_then_run(plain_images, kakoi, tmp_path):
    puller = Puller(tmp_path / "store", tmp_path / "home")
    ref = f"{plain_images.url}/library/busybox:latest"
    result = puller("pull", ref)
    assert result.returncode == 0, result.stderr
    assert f"Status: Downloaded newer image for {ref}" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == ref
    run = puller("run", "--rm", ref, "echo", "ok")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "ok\n"


@pytest.mark.root
@pytest.mark.peer
def test_pull_without_unpack_then_run(plain_images, puller):
    ref = f"{plain_images.url}/layered:1"
    pulled = puller("pull", "--unpack", "false", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert not list((puller.root / "layers").iterdir())
    compressed_size = json.loads(puller("inspect", ref, check=True).stdout)[0]["Size"]

    run = puller("run", "--rm", "--pull", "never", ref, "sh", "-c", "find /many -type f | wc -l")
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == 5000
    assert len(list((puller.root / "layers").iterdir())) == 4
    unpacked_size = json.loads(puller("inspect", ref, check=True).stdout)[0]["Size"]
    assert unpacked_size > compressed_size
    again = puller("run", "--rm", "--pull", "never", ref, "true")
    assert again.returncode == 0, again.stderr


@pytest.mark.root
@pytest.mark.peer
def test_pull_without_unpack_damaged_blob(plain_images, puller):
    ref = f"{plain_images.url}/library/busybox:latest"
    puller("pull", "-q", "--unpack", "false", ref, check=True)
    blob, layer_digest = damage_layer_blob(puller.root)

    run = puller("run", "--rm", "--pull", "never", ref, "true")
    assert_one_line_error(run, rf"layer {layer_digest} in the store is damaged .* and was "
                               r"removed; pull the image again")
    assert run.returncode == 125
    assert not blob.exists()
    assert not list((puller.root / "layers").iterdir())

    puller("pull", "-q", ref, check=True)
    again = puller("run", "--rm", "--pull", "never", ref, "echo", "ok")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "ok\n"


@pytest.mark.root
@pytest.mark.peer
def test_pull_repairs_damaged_blob_of_unpacked_layer(plain_images, puller):
    ref = f"{plain_images.url}/library/busybox:latest"
    puller("pull", "-q", ref, check=True)
    blob, layer_digest = damage_layer_blob(puller.root)

    again = puller("pull", ref)
    assert again.returncode == 0, again.stderr
    assert "is damaged" in again.stderr
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer_digest.removeprefix("sha256:")


@pytest.mark.root
@pytest.mark.peer
def test_pull_again_is_up_to_date(plain_images, puller):
    ref = f"{plain_images.url}/library/busybox"
    first = puller("pull", ref, check=True)
    second = puller("pull", ref, check=True)
    assert pulled_digest(first) == pulled_digest(second)
    assert "Already exists" in second.stdout
    assert f"Status: Image is up to date for {ref}:latest" in second.stdout


@pytest.mark.root
@pytest.mark.peer
def test_pull_by_digest(plain_images, kakoi, tmp_path):
    first = Puller(tmp_path / "one", tmp_path / "home")
    digest = pulled_digest(first("pull", f"{plain_images.url}/library/busybox", check=True))
    puller = Puller(tmp_path / "two", tmp_path / "home")
    ref = f"{plain_images.url}/library/busybox@{digest}"
    result = puller("pull", ref)
    assert result.returncode == 0, result.stderr
    assert pulled_digest(result) == digest
    run = puller("run", "--rm", ref, "echo", "ok")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "ok\n"


@pytest.mark.root
@pytest.mark.peer
def test_pull_docker_schema2_and_layers(plain_images, puller):
    schema2 = puller("pull", f"{plain_images.url}/docker/busybox:v2s2")
    assert schema2.returncode == 0, schema2.stderr
    layered = puller("pull", f"{plain_images.url}/layered:1")
    assert layered.returncode == 0, layered.stderr
    inspect = json.loads(puller("inspect", f"{plain_images.url}/layered:1", check=True).stdout)
    assert len(inspect[0]["RootFS"]["Layers"]) == 4
    assert inspect[0]["RepoDigests"] == [f"{plain_images.url}/layered@{pulled_digest(layered)}"]


@pytest.mark.root
@pytest.mark.peer
def test_pull_zstd_layer_then_run(plain_images, kakoi, tmp_path):
    puller = Puller(tmp_path / "store", tmp_path / "home")
    ref = f"{plain_images.url}/zstd/busybox:1"
    result = puller("pull", ref)
    assert result.returncode == 0, result.stderr
    inspect = json.loads(puller("inspect", ref, check=True).stdout)[0]
    assert inspect["Descriptor"]["mediaType"] == OCI_MANIFEST
    manifest = (puller.root / "blobs" / "sha256" / pulled_digest(result)[7:]).read_text()
    assert "tar+zstd" in manifest
    run = puller("run", "--rm", ref, "echo", "ok")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "ok\n"


@pytest.mark.root
@pytest.mark.peer
def test_pull_through_mirror(plain_images, puller):
    down = f"127.0.0.1:{free_port()}"
    puller.set_registries({down: {"mirrors": [plain_images.url]}})
    result = puller("pull", f"{down}/library/busybox:latest")
    assert result.returncode == 0, result.stderr
    images = puller("images", check=True).stdout
    assert f"{down}/library/busybox " in images


@pytest.mark.root
@pytest.mark.peer
def test_pull_index_selects_platform(plain_images, puller):
    ref = f"{plain_images.url}/multi:1"
    result = puller("pull", ref)
    assert result.returncode == 0, result.stderr
    inspect = json.loads(puller("inspect", ref, check=True).stdout)[0]
    assert inspect["Architecture"] == "amd64"
    # The repo digest is the index's, as printed, and NAME@INDEX-DIGEST finds the image.
    index_digest = next(line.split()[1] for line in result.stdout.splitlines()
                        if line.startswith("Digest:"))
    assert f"{plain_images.url}/multi@{index_digest}" in inspect["RepoDigests"]
    by_digest = json.loads(puller("inspect", f"{plain_images.url}/multi@{index_digest}",
                                  check=True).stdout)[0]
    assert by_digest["Id"] == inspect["Id"]

    arm = puller("pull", "--platform", "linux/arm64", ref)
    assert arm.returncode == 0, arm.stderr
    inspect = json.loads(puller("inspect", ref, check=True).stdout)[0]
    assert inspect["Architecture"] == "arm64"
    assert inspect["Variant"] == "v8"


@pytest.mark.root
@pytest.mark.peer
def test_pull_unknown_platform(plain_images, puller):
    result = puller("pull", "--platform", "linux/s390x", f"{plain_images.url}/multi:1")
    assert_one_line_error(result, r"no manifest for platform linux/s390x .*linux/amd64, "
                                  r"linux/arm64/v8")
    assert store_snapshot(puller.root) == {}


@pytest.mark.peer
def test_pull_missing_tag(plain_images, puller):
    result = puller("pull", f"{plain_images.url}/library/busybox:nope")
    assert_one_line_error(result, r"not found in registry .*MANIFEST_UNKNOWN")
    assert store_snapshot(puller.root) == {}


@pytest.mark.peer
def test_pull_missing_repository(plain_images, puller):
    result = puller("pull", f"{plain_images.url}/no/such/repo")
    assert_one_line_error(result, r"not found in registry .*(NAME|MANIFEST)_UNKNOWN")


def test_pull_registry_down(puller):
    result = puller("pull", f"127.0.0.1:{free_port()}/library/busybox")
    assert_one_line_error(result, r"cannot reach registry 127\.0\.0\.1:\d+ .*refused")
    assert store_snapshot(puller.root) == {}


# --- TLS and basic auth ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_images(registry_tls_htpasswd, fixture_images, skopeo):
    push(skopeo, f"oci-archive:{fixture_images.busybox}", registry_tls_htpasswd, "busybox:1")
    return registry_tls_htpasswd


def test_login_wrong_password(tls_images, puller):
    puller.set_registries({tls_images.url: {"ca_dir": str(tls_images.cert_dir)}})
    result = puller("login", "-u", tls_images.username, "--password-stdin", tls_images.url,
                    input="wrong-password\n")
    assert_one_line_error(result, r"authentication to .* failed")
    assert "wrong-password" not in result.stderr + result.stdout
    assert not puller.docker_config.exists()


@pytest.mark.root
@pytest.mark.peer
def test_login_pull_logout(tls_images, puller):
    puller.set_registries({tls_images.url: {"ca_dir": str(tls_images.cert_dir)}})
    ref = f"{tls_images.url}/busybox:1"
    anonymous = puller("pull", ref)
    assert_one_line_error(anonymous, r"authentication to .* required: run `kakoi login")

    login = puller("login", "-u", tls_images.username, "--password-stdin", tls_images.url,
                   input=tls_images.password + "\n")
    assert login.returncode == 0, login.stderr
    assert "Login Succeeded" in login.stdout
    assert stat.S_IMODE(puller.docker_config.stat().st_mode) == 0o600
    assert tls_images.url in json.loads(puller.docker_config.read_text())["auths"]

    pulled = puller("pull", ref)
    assert pulled.returncode == 0, pulled.stderr

    logout = puller("logout", tls_images.url)
    assert logout.returncode == 0, logout.stderr
    assert json.loads(puller.docker_config.read_text())["auths"] == {}


# A credential helper that keeps its entries in a JSON file, as docker-credential-pass or
# -secretservice keep them in their stores, which do not run here.
FILE_HELPER = """\
import json, os, sys
path = os.environ["KAKOI_TEST_HELPER_STORE"]
entries = json.load(open(path)) if os.path.exists(path) else {}
command, request = sys.argv[1], sys.stdin.read()
if command == "store":
    entries[json.loads(request)["ServerURL"]] = json.loads(request)
elif request in entries and command == "get":
    print(json.dumps(entries[request]))
elif request in entries and command == "erase":
    del entries[request]
else:
    print("credentials not found in native keychain")
    sys.exit(1)
json.dump(entries, open(path, "w"))
"""


@pytest.mark.root
@pytest.mark.peer
def test_login_pull_logout_with_creds_store(tls_images, puller, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "docker-credential-kakoitest"
    program.write_text(f"#!{sys.executable}\n{FILE_HELPER}")
    program.chmod(0o755)
    helper_store = tmp_path / "helper-store.json"
    puller.env.update(PATH=f"{bin_dir}:{puller.env['PATH']}",
                      KAKOI_TEST_HELPER_STORE=str(helper_store))
    puller.docker_config.parent.mkdir(parents=True)
    puller.docker_config.write_text(json.dumps({"credsStore": "kakoitest"}))
    puller.set_registries({tls_images.url: {"ca_dir": str(tls_images.cert_dir)}})

    login = puller("login", "-u", tls_images.username, "--password-stdin", tls_images.url,
                   input=tls_images.password + "\n")
    assert login.returncode == 0, login.stderr
    assert json.loads(puller.docker_config.read_text())["auths"] == {tls_images.url: {}}
    assert json.loads(helper_store.read_text())[tls_images.url]["Secret"] == tls_images.password

    pulled = puller("pull", f"{tls_images.url}/busybox:1")
    assert pulled.returncode == 0, pulled.stderr

    logout = puller("logout", tls_images.url)
    assert logout.returncode == 0, logout.stderr
    assert json.loads(helper_store.read_text()) == {}


def test_tls_untrusted_certificate(tls_images, puller):
    result = puller("pull", f"{tls_images.url}/busybox:1")
    assert_one_line_error(result, rf"TLS connection to registry {re.escape(tls_images.url)} "
                                  r"failed: .*certificate.*ca_dir.*insecure")


# --- bearer tokens ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_images(registry_token, fixture_images, skopeo):
    push(skopeo, f"oci-archive:{fixture_images.busybox}", registry_token, "busybox:1")
    return registry_token


@pytest.mark.root
@pytest.mark.peer
def test_token_auth_pull(token_images, token_server, puller):
    ref = f"{token_images.url}/busybox:1"
    assert_one_line_error(puller("pull", ref), r"authentication to .* required")
    login = puller("login", "-u", token_images.username, "--password-stdin", token_images.url,
                   input=token_images.password)
    assert login.returncode == 0, login.stderr
    before = len(token_server.requests)
    pulled = puller("pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    scopes = [scope for request in token_server.requests[before:] for scope in request.scopes]
    assert "repository:busybox:pull" in scopes
    # One token serves the manifest, the config and the layer.
    assert len(token_server.requests) - before == 1


def test_token_wrong_password(token_images, puller):
    result = puller("login", "-u", token_images.username, "--password-stdin", token_images.url,
                    input="nope")
    assert_one_line_error(result, r"authentication to .* failed")
    assert not puller.docker_config.exists()


# --- a throttling proxy: kill -9 in the middle of a pull, then resume ------------------------

class ThrottlingProxy:
    """Forwards GET and HEAD to a registry, sending blob bodies at `rate` bytes per second."""

    def __init__(self, upstream: str, rate: int):
        self.upstream = upstream
        self.rate = rate
        self.ranges: list[str | None] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.do_GET(body=False)

            def do_GET(self, body=True):
                proxy.forward(self, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def forward(self, handler, body: bool) -> None:
        headers = {key: value for key, value in handler.headers.items()
                   if key.lower() in ("accept", "range", "authorization")}
        if "/blobs/" in handler.path:
            self.ranges.append(handler.headers.get("Range"))
        request = urllib.request.Request(self.upstream + handler.path, headers=headers,
                                         method=handler.command)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            response = opener.open(request, timeout=30)
        except urllib.error.HTTPError as error:
            response = error
        with response:
            handler.send_response(response.status)
            for key, value in response.headers.items():
                if key.lower() not in ("connection", "transfer-encoding", "date", "server"):
                    handler.send_header(key, value)
            handler.end_headers()
            if not body:
                return
            slow = "/blobs/" in handler.path
            try:
                while chunk := response.read(64 << 10):
                    handler.wfile.write(chunk)
                    if slow:
                        time.sleep(len(chunk) / self.rate)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.root
@pytest.mark.peer
def test_kill_during_pull_then_resume(registry_plain, skopeo, puller, tmp_path):
    layout = tmp_path / "big-layout"
    name = build_big_layout(layout, 24)
    push(skopeo, f"oci:{layout}:{name}", registry_plain, "big:1")

    with ThrottlingProxy(registry_plain.base_url, rate=4 << 20) as proxy:
        ref = f"{proxy.url}/big:1"
        process = puller.popen("pull", ref, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            partial = wait_for_partial(puller.root / "tmp", min_size=4 << 20, timeout=30)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        size_at_kill = partial.stat().st_size
        assert not list((puller.root / "blobs" / "sha256").glob("*"))

        result = puller("pull", ref, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "resuming at" in result.stdout
        resumed = [r for r in proxy.ranges if r]
        assert resumed, proxy.ranges
        assert int(resumed[-1].split("=")[1].rstrip("-")) >= size_at_kill

    images = puller("images", check=True).stdout.strip().splitlines()
    assert len([line for line in images if line.startswith(f"{proxy.url}/big ")]) == 1
    assert not list((puller.root / "tmp").glob("pull-*"))


def wait_for_partial(tmp: Path, min_size: int, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in tmp.glob("pull-*.partial") if tmp.exists() else []:
            if path.stat().st_size >= min_size:
                return path
        time.sleep(0.05)
    raise AssertionError(f"no partial download of {min_size} bytes in {tmp} after {timeout}s")


# --- a fake registry that serves bad content -------------------------------------------------

class FakeRegistry:
    """Serves fixed manifests and blobs by path; `truncate` cuts blob bodies after N bytes.

    A fake, because docker-registry verifies content on push and cannot serve bad bytes.
    """

    def __init__(self):
        self.routes: dict[str, tuple[str, bytes]] = {"/v2/": ("application/json", b"{}")}
        self.truncate: int | None = None
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                route = fake.routes.get(self.path.split("?")[0])
                if route is None:
                    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}'
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                media_type, body = route
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fake.truncate is not None and "/blobs/" in self.path:
                    self.wfile.write(body[:fake.truncate])
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def blob(self, data: bytes, served: bytes | None = None) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.routes[f"/v2/img/blobs/{digest}"] = ("application/octet-stream",
                                                  data if served is None else served)
        return {"digest": digest, "size": len(data)}

    def image(self, layer: bytes, served_layer: bytes | None = None, extra: dict | None = None,
              media_type: str = OCI_MANIFEST, diff_id: str | None = None) -> None:
        if diff_id is None:
            diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": [diff_id]}})
        manifest = {"schemaVersion": 2, "mediaType": media_type,
                    "config": dict(self.blob(config.encode()),
                                   mediaType="application/vnd.oci.image.config.v1+json"),
                    "layers": [dict(self.blob(layer, served_layer),
                                    mediaType=BUSYBOX_LAYER_MEDIA)]}
        manifest.update(extra or {})
        self.routes["/v2/img/manifests/1"] = (media_type, json.dumps(manifest).encode())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def small_layer() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        data = os.urandom(100_000)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue())


def test_fake_digest_mismatch(puller):
    layer = small_layer()
    wrong = bytearray(layer)
    wrong[len(wrong) // 2] ^= 0xFF
    with FakeRegistry() as fake:
        fake.image(layer, served_layer=bytes(wrong))
        result = puller("pull", f"{fake.url}/img:1")
    assert_one_line_error(result, r"blob sha256:[0-9a-f]{64} of img.*(hashes to|invalid gzip)")
    assert store_snapshot(puller.root) == {}
    assert not list((puller.root / "tmp").glob("*"))


WRONG_DIFF_ID = "sha256:" + "ab" * 32


def test_fake_diff_id_mismatch(puller):
    with FakeRegistry() as fake:
        fake.image(small_layer(), diff_id=WRONG_DIFF_ID)
        result = puller("pull", f"{fake.url}/img:1")
    assert_one_line_error(result, rf"uncompresses to sha256:[0-9a-f]{{64}}, but the config's "
                                  rf"diff_id is {WRONG_DIFF_ID}")
    assert store_snapshot(puller.root) == {}


@pytest.mark.root
def test_fake_diff_id_checked_at_run(puller):
    with FakeRegistry() as fake:
        fake.image(small_layer(), diff_id=WRONG_DIFF_ID)
        pulled = puller("pull", "--unpack", "false", f"{fake.url}/img:1")
    assert pulled.returncode == 0, pulled.stderr
    before = store_snapshot(puller.root)

    run = puller("run", "--rm", "--pull", "never", f"{fake.url}/img:1", "true")
    assert_one_line_error(run, rf"hashes to sha256:[0-9a-f]{{64}}, but the config's "
                               rf"diff_id is {WRONG_DIFF_ID}")
    assert run.returncode == 125
    assert store_snapshot(puller.root) == before
    assert not list((puller.root / "layers").iterdir())


def damaged_gzip_layer() -> bytes:
    """A layer whose gzip data is damaged inside its deflate stream, as a registry may serve it."""
    layer = bytearray(small_layer())
    layer[len(layer) // 2] ^= 0xFF
    return bytes(layer)


@pytest.mark.root
def test_fake_damaged_gzip_found_at_run(puller):
    layer = damaged_gzip_layer()
    with FakeRegistry() as fake:
        fake.image(layer, diff_id=WRONG_DIFF_ID)
        default = puller("pull", f"{fake.url}/img:1")
        assert_one_line_error(default, r"invalid gzip data")
        assert store_snapshot(puller.root) == {}
        pulled = puller("pull", "--unpack", "false", f"{fake.url}/img:1")
    assert pulled.returncode == 0, pulled.stderr
    before = store_snapshot(puller.root)

    run = puller("run", "--rm", "--pull", "never", f"{fake.url}/img:1", "true")
    assert_one_line_error(run, r"layer sha256:[0-9a-f]{64} is damaged: invalid gzip data")
    assert store_snapshot(puller.root) == before
    saved = puller("save", "-o", str(puller.root.parent / "out.tar"), f"{fake.url}/img:1")
    assert_one_line_error(saved, r"layer sha256:[0-9a-f]{64} is damaged: invalid gzip data")


def test_fake_truncated_blob(puller):
    layer = small_layer()
    with FakeRegistry() as fake:
        fake.image(layer)
        fake.truncate = 1000
        result = puller("pull", f"{fake.url}/img:1", timeout=60)
    assert_one_line_error(result, r"blob sha256:[0-9a-f]{64} of img is truncated")
    assert store_snapshot(puller.root) == {}


def test_fake_manifest_too_large(puller):
    with FakeRegistry() as fake:
        fake.image(small_layer(), extra={"annotations": {"padding": "x" * (5 << 20)}})
        result = puller("pull", f"{fake.url}/img:1")
    assert_one_line_error(result, r"manifest is \d+ bytes, more than the limit .*4 MiB")
    assert store_snapshot(puller.root) == {}


def test_fake_unknown_media_type(puller):
    with FakeRegistry() as fake:
        fake.image(small_layer(), media_type="application/vnd.example.thing+json")
        result = puller("pull", f"{fake.url}/img:1")
    assert_one_line_error(result, r"unsupported manifest media type "
                                  r"'application/vnd.example.thing\+json'")
    assert store_snapshot(puller.root) == {}


def test_fake_schema1_rejected(puller):
    with FakeRegistry() as fake:
        body = json.dumps({"schemaVersion": 1, "name": "img", "tag": "1", "fsLayers": []})
        fake.routes["/v2/img/manifests/1"] = (
            "application/vnd.docker.distribution.manifest.v1+prettyjws", body.encode())
        result = puller("pull", f"{fake.url}/img:1")
    assert_one_line_error(result, r"schema 1 manifest")
