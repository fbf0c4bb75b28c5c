"""Registry credentials in Docker's config.json and in the containers tools' auth.json.

`kakoi login` writes $DOCKER_CONFIG/config.json, or ~/.docker/config.json, in Docker's format
({"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}) with mode 0600, keeping every
other key of the file. Lookups read that file first, then $REGISTRY_AUTH_FILE and
$XDG_RUNTIME_DIR/containers/auth.json, which use the same "auths" format.

NOTE: credential helpers (credsStore, credHelpers) are not supported; entries stored by a
helper are not found.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

from kakoi.registry.errors import RegistryError

# Docker keeps Docker Hub's credentials under its v1 index URL.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"


def docker_config_path() -> str:
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"),
                                                                ".docker")
    return os.path.join(directory, "config.json")


def auth_file_paths() -> list[str]:
    paths = [docker_config_path()]
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    return paths


def key_for(host: str) -> str:
    """Return the "auths" key of a registry given as a reference's domain."""
    return DOCKER_HUB_KEY if host in ("docker.io", "index.docker.io",
                                      "registry-1.docker.io") else host


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise RegistryError(f"cannot read credentials file {path}: {error}; fix or remove "
                            "it") from None
    if not isinstance(data, dict):
        raise RegistryError(f"invalid credentials file {path}: expected a JSON object")
    return data


def _matches(key: str, expected_key: str) -> bool:
    # Docker also accepts keys written as URLs, such as https://HOST/v1/.
    if key == expected_key:
        return True
    bare = key.split("://", 1)[-1].split("/", 1)[0]
    return bare == expected_key and expected_key != DOCKER_HUB_KEY


def lookup(host: str) -> tuple[str, str] | None:
    """Return (username, password) stored for `host`, or None."""
    expected_key = key_for(host)
    for path in auth_file_paths():
        auths = _read(path).get("auths") or {}
        for key, entry in auths.items():
            if _matches(key, expected_key) and isinstance(entry, dict) and entry.get("auth"):
                return _decode(entry["auth"], path, key)
    return None


def _decode(value: str, path: str, key: str) -> tuple[str, str]:
    try:
        text = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        text = ""
    if ":" not in text:
        raise RegistryError(f"invalid auth entry for {key} in {path}: expected "
                            "base64(user:password); log in again")
    username, password = text.split(":", 1)
    return username, password


def store(host: str, username: str, password: str, path: str | None = None) -> str:
    """Save the credentials of `host` and return the file's path."""
    path = path or docker_config_path()
    data = _read(path)
    auths = data.setdefault("auths", {})
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    auths[key_for(host)] = {"auth": token}
    _write_private(path, data)
    return path


def remove(host: str, path: str | None = None) -> bool:
    """Delete the credentials of `host`; return whether an entry existed."""
    path = path or docker_config_path()
    data = _read(path)
    auths = data.get("auths") or {}
    removed = [key for key in auths if _matches(key, key_for(host))]
    for key in removed:
        del auths[key]
    if removed:
        _write_private(path, data)
    return bool(removed)


def _write_private(path: str, data: dict) -> None:
    """Write `data` to `path` atomically with mode 0600, which also narrows a wider mode."""
    import tempfile

    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".config.json.")
    except OSError as error:
        raise RegistryError(f"cannot write credentials file {path}: {error.strerror}; set "
                            "DOCKER_CONFIG to a writable directory") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent="\t")
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
