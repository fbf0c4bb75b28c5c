"""Registry settings: the file's location, insecure and loopback defaults, mirrors, CA dirs."""

import json

import pytest

from kakoi.registry import config
from kakoi.registry.errors import RegistryError


def test_env_overrides_path(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    monkeypatch.setenv("KAKOI_REGISTRIES_CONFIG", str(path))
    assert config.config_path() == str(path)


def test_missing_file_means_defaults(tmp_path):
    assert config.load(str(tmp_path / "missing.json")) == {}


def test_invalid_file_rejected(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"registries": []}')
    with pytest.raises(RegistryError, match="invalid registry settings"):
        config.load(str(path))


def test_remote_registry_is_secure():
    settings = config.settings_for("reg.example:5000", {})
    assert not settings.insecure
    assert not settings.allow_http


def test_loopback_allows_http_but_verifies_tls():
    for host in ("127.0.0.1:5000", "localhost:5000", "[::1]:5000"):
        settings = config.settings_for(host, {})
        assert settings.allow_http, host
        assert not settings.insecure, host


def test_name_starting_with_127_is_not_loopback():
    settings = config.settings_for("127.example.com:5000", {})

    assert not settings.allow_http


def test_loopback_http_can_be_turned_off():
    settings = config.settings_for("127.0.0.1:5000", {"127.0.0.1:5000": {"insecure": False}})
    assert not settings.allow_http


def test_insecure_and_mirrors(tmp_path):
    registries = {"reg.example": {"insecure": True, "mirrors": ["m1:5000/", "m2"],
                                  "ca_dir": str(tmp_path)}}
    settings = config.settings_for("reg.example", registries)
    assert settings.insecure
    assert settings.allow_http
    assert settings.mirrors == ["m1:5000", "m2"]
    assert settings.ca_dirs[0] == str(tmp_path)
    assert "/etc/docker/certs.d/reg.example" in settings.ca_dirs
    assert "/etc/containers/certs.d/reg.example" in settings.ca_dirs


def test_ca_files_found(tmp_path):
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "client.key").write_text("x")
    settings = config.settings_for("reg.example", {"reg.example": {"ca_dir": str(tmp_path)}})
    assert settings.ca_files() == [str(tmp_path / "ca.crt")]


def test_invalid_mirrors_rejected():
    with pytest.raises(RegistryError, match="invalid mirrors"):
        config.settings_for("r", {"r": {"mirrors": "m1"}})


def test_docker_hub_api_host():
    assert config.api_host("docker.io") == "registry-1.docker.io"
    assert config.api_host("127.0.0.1:5000") == "127.0.0.1:5000"
