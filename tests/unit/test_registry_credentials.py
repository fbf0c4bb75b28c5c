"""Credential files: Docker's config.json written with mode 0600, auth.json read."""

import base64
import json
import os
import stat

import pytest

from kakoi.registry import credentials
from kakoi.registry.errors import RegistryError


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    directory = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return directory


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_store_creates_file_0600(config_dir):
    path = credentials.store("127.0.0.1:5000", "alice", "pw:with:colons")
    assert path == str(config_dir / "config.json")
    assert mode_of(path) == 0o600
    with open(path) as stream:
        data = json.load(stream)
    expected = base64.b64encode(b"alice:pw:with:colons").decode()
    assert data == {"auths": {"127.0.0.1:5000": {"auth": expected}}}


def test_store_keeps_other_keys_and_narrows_mode(config_dir):
    config_dir.mkdir()
    path = config_dir / "config.json"
    path.write_text(json.dumps({"auths": {"other:1": {"auth": "eDp5"}}, "psFormat": "x"}))
    os.chmod(path, 0o644)
    credentials.store("127.0.0.1:5000", "alice", "pw")
    data = json.loads(path.read_text())
    assert data["psFormat"] == "x"
    assert set(data["auths"]) == {"other:1", "127.0.0.1:5000"}
    assert mode_of(path) == 0o600


def test_lookup_round_trip(config_dir):
    credentials.store("127.0.0.1:5000", "alice", "pw:x")
    assert credentials.lookup("127.0.0.1:5000") == ("alice", "pw:x")
    assert credentials.lookup("127.0.0.1:5001") is None


def test_docker_hub_key(config_dir):
    credentials.store("docker.io", "alice", "pw")
    data = json.loads((config_dir / "config.json").read_text())
    assert list(data["auths"]) == ["https://index.docker.io/v1/"]
    assert credentials.lookup("docker.io") == ("alice", "pw")


def test_url_keys_match(config_dir):
    config_dir.mkdir()
    token = base64.b64encode(b"bob:pw").decode()
    (config_dir / "config.json").write_text(
        json.dumps({"auths": {"https://reg.test:5000/v1/": {"auth": token}}}))
    assert credentials.lookup("reg.test:5000") == ("bob", "pw")


def test_remove_entry(config_dir):
    credentials.store("127.0.0.1:5000", "alice", "pw")
    assert credentials.remove("127.0.0.1:5000")
    assert credentials.lookup("127.0.0.1:5000") is None
    assert not credentials.remove("127.0.0.1:5000")
    assert mode_of(config_dir / "config.json") == 0o600


def test_auth_json_read(config_dir, tmp_path, monkeypatch):
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    token = base64.b64encode(b"carol:pw").decode()
    (runtime / "containers" / "auth.json").write_text(
        json.dumps({"auths": {"reg.test": {"auth": token}}}))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert credentials.lookup("reg.test") == ("carol", "pw")


def test_registry_auth_file_read(config_dir, tmp_path, monkeypatch):
    auth_file = tmp_path / "auth.json"
    token = base64.b64encode(b"dave:pw").decode()
    auth_file.write_text(json.dumps({"auths": {"reg.test": {"auth": token}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    assert credentials.lookup("reg.test") == ("dave", "pw")


def test_invalid_auth_entry(config_dir):
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({"auths": {"r": {"auth": "!!"}}}))
    with pytest.raises(RegistryError, match="invalid auth entry for r"):
        credentials.lookup("r")


def test_invalid_json(config_dir):
    config_dir.mkdir()
    (config_dir / "config.json").write_text("{")
    with pytest.raises(RegistryError, match="cannot read credentials file"):
        credentials.lookup("r")
