"""Per-registry settings: plain HTTP, mirrors and CA certificates.

The settings file is JSON:

    {"registries": {"HOST[:PORT]": {"insecure": true,
                                    "mirrors": ["mirror.example:5000"],
                                    "ca_dir": "/etc/kakoi/certs.d/HOST:PORT"}}}

It is read from $KAKOI_REGISTRIES_CONFIG when set, else from ~/.config/kakoi/registries.json
when that file exists, else from /etc/kakoi/registries.json. A missing file means defaults.

`insecure` allows plain HTTP and unverified TLS for that registry. As in Docker, registries on
loopback addresses (127.0.0.0/8, ::1, localhost) may use plain HTTP without being listed, but
unlike Docker their HTTPS certificates are still verified; `"insecure": false` turns off
plain HTTP for them too. `mirrors`
are hosts tried in order before the registry itself when pulling. CA certificates (*.crt) are
read from `ca_dir` and from /etc/docker/certs.d/HOST:PORT and /etc/containers/certs.d/HOST:PORT.
"""

from __future__ import annotations

import json
import os

from kakoi.registry.errors import RegistryError

SYSTEM_CONFIG = "/etc/kakoi/registries.json"
DEFAULT_CERT_DIRS = ("/etc/docker/certs.d", "/etc/containers/certs.d")
DOCKER_HUB_HOST = "registry-1.docker.io"


class RegistrySettings:
    """The settings of one registry host."""

    def __init__(self, host: str, insecure: bool = False, mirrors: list[str] | None = None,
                 ca_dirs: list[str] | None = None, allow_http: bool | None = None):
        self.host = host
        self.insecure = insecure
        # Loopback registries may speak plain HTTP, but their certificates are still verified
        # when they speak HTTPS, unless `insecure` is set.
        self.allow_http = insecure if allow_http is None else allow_http
        self.mirrors = mirrors or []
        self.ca_dirs = ca_dirs or []

    def ca_files(self) -> list[str]:
        """Return the CA certificate files found in this registry's certificate directories."""
        found = []
        for directory in self.ca_dirs:
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            found += [os.path.join(directory, name) for name in names if name.endswith(".crt")]
        return found


def config_path() -> str:
    override = os.environ.get("KAKOI_REGISTRIES_CONFIG")
    if override:
        return override
    user = os.path.join(os.path.expanduser("~"), ".config", "kakoi", "registries.json")
    return user if os.path.exists(user) else SYSTEM_CONFIG


def load(path: str | None = None) -> dict[str, dict]:
    """Return the `registries` mapping of the settings file, or {} when it does not exist."""
    path = path or config_path()
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise RegistryError(f"cannot read registry settings {path}: {error}; fix the file or "
                            "point KAKOI_REGISTRIES_CONFIG at another one") from None
    registries = data.get("registries", {}) if isinstance(data, dict) else None
    if not isinstance(registries, dict):
        raise RegistryError(f"invalid registry settings {path}: expected "
                            '{"registries": {"HOST[:PORT]": {...}}}')
    return registries


def is_loopback(host: str) -> bool:
    """Return True for HOST[:PORT] naming localhost, 127.0.0.0/8 or ::1."""
    from kakoi.registry.http import is_loopback_host

    if host.startswith("["):
        hostname = host[1:].partition("]")[0]
    else:
        hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return is_loopback_host(hostname)


def settings_for(host: str, registries: dict[str, dict] | None = None) -> RegistrySettings:
    """Return the settings of `host` (HOST[:PORT] as the reference spells it)."""
    registries = load() if registries is None else registries
    entry = registries.get(host) or {}
    if not isinstance(entry, dict):
        raise RegistryError(f"invalid registry settings for {host}: expected an object")
    mirrors = entry.get("mirrors") or []
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        raise RegistryError(f"invalid mirrors for {host}: expected a list of HOST[:PORT]")
    ca_dirs = [entry["ca_dir"]] if entry.get("ca_dir") else []
    ca_dirs += [os.path.join(base, host) for base in DEFAULT_CERT_DIRS]
    insecure = bool(entry.get("insecure", False))
    allow_http = insecure or ("insecure" not in entry and is_loopback(host))
    return RegistrySettings(host, insecure, [m.rstrip("/") for m in mirrors], ca_dirs,
                            allow_http)


def api_host(domain: str) -> str:
    """Return the host that serves the API of a reference's domain (Docker Hub's is apart)."""
    return DOCKER_HUB_HOST if domain == "docker.io" else domain
