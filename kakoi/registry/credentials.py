"""Registry credentials in Docker's config.json and in the containers tools' auth.json.

`kakoi login` writes $DOCKER_CONFIG/config.json, or ~/.docker/config.json, in Docker's format
({"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}) with mode 0600, keeping every
other key of the file. Lookups read that file first, then $REGISTRY_AUTH_FILE and
$XDG_RUNTIME_DIR/containers/auth.json, which use the same "auths" format.

Credential helpers work as in Docker: a registry named in "credHelpers" ({"HOST": "NAME"}),
or every registry when "credsStore" is set, has its credentials kept by the program
docker-credential-NAME (its `get`, `store` and `erase` commands, JSON on stdin and stdout).
config.json then keeps an empty entry for the registry, as Docker writes it.

NOTE: an identity token (a helper's username "<token>", for OAuth2 refresh tokens) is
rejected with an error: kakoi's token requests send a username and password only.
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
    if not isinstance(data.get("auths", {}), dict):
        raise RegistryError(f"invalid credentials file {path}: \"auths\" must be an object; "
                            "fix or remove it")
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
        data = _read(path)
        helper = _helper_name(data, expected_key, path == docker_config_path())
        if helper is not None:
            found = _helper_get(helper, expected_key, path)
            if found is not None:
                return found
        auths = data.get("auths") or {}
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
    """Save the credentials of `host` and return where: the file's path or the helper."""
    path = path or docker_config_path()
    data = _read(path)
    auths = data.setdefault("auths", {})
    key = key_for(host)
    helper = _helper_name(data, key, path == docker_config_path())
    if helper is not None:
        request = json.dumps({"ServerURL": key, "Username": username, "Secret": password})
        _run_helper(helper, "store", request, path)
        auths[key] = {}
        _write_private(path, data)
        return f"{_program(helper)} (listed in {path})"
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    auths[key] = {"auth": token}
    _write_private(path, data)
    return path


def remove(host: str, path: str | None = None) -> bool:
    """Delete the credentials of `host`; return whether an entry existed."""
    path = path or docker_config_path()
    data = _read(path)
    erased = False
    helper = _helper_name(data, key_for(host), path == docker_config_path())
    if helper is not None:
        erased = _run_helper(helper, "erase", key_for(host), path) is not None
    auths = data.get("auths") or {}
    removed = [key for key in auths if _matches(key, key_for(host))]
    for key in removed:
        del auths[key]
    if removed:
        _write_private(path, data)
    return erased or bool(removed)


# Credential helpers

_NOT_FOUND = "credentials not found in native keychain"


def _program(name: str) -> str:
    return f"docker-credential-{name}"


def _helper_name(data: dict, key: str, default_allowed: bool) -> str | None:
    """Return the helper named for `key` in credHelpers, else credsStore where allowed."""
    helpers = data.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for name_key, name in helpers.items():
            if _matches(name_key, key) and isinstance(name, str) and name:
                return name
    default = data.get("credsStore")
    if default_allowed and isinstance(default, str) and default:
        return default
    return None


def _helper_get(name: str, key: str, path: str) -> tuple[str, str] | None:
    output = _run_helper(name, "get", key, path)
    if output is None:
        return None
    try:
        found = json.loads(output)
        username, secret = found["Username"], found["Secret"]
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"credential helper {_program(name)} returned invalid JSON for "
                            f"{key}; check the helper") from None
    if username == "<token>":
        raise RegistryError(f"credential helper {_program(name)} has an identity token for "
                            f"{key}, which kakoi cannot use; run `kakoi login {key}`")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise RegistryError(f"credential helper {_program(name)} returned invalid JSON for "
                            f"{key}; check the helper")
    if not username:
        return None
    return username, secret


def _run_helper(name: str, command: str, request: str, path: str) -> str | None:
    """Run `docker-credential-NAME command` with `request` on stdin; None when not found."""
    import signal
    import subprocess

    program = _program(name)
    try:
        # A session of its own, so that a timeout stops whatever the helper started too.
        helper = subprocess.Popen([program, command], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True)
    except FileNotFoundError:
        raise RegistryError(f"credential helper {program} not found in PATH; install it or "
                            f"remove \"{name}\" from credsStore or credHelpers in "
                            f"{path}") from None
    except OSError as error:
        raise RegistryError(f"credential helper {program} cannot run: {error.strerror}; check "
                            "that it is an executable program") from None
    try:
        stdout, stderr = helper.communicate(request.encode(), timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(helper.pid, signal.SIGKILL)
        helper.communicate()
        raise RegistryError(f"credential helper {program} {command} did not finish in 60 "
                            "seconds; check the helper") from None
    output = stdout.decode("utf-8", "replace")
    if helper.returncode == 0:
        return output
    message = (output.strip() or stderr.decode("utf-8", "replace").strip()).splitlines()
    if message and _NOT_FOUND in message[0]:
        return None
    detail = message[0][:200] if message else f"exit status {helper.returncode}"
    raise RegistryError(f"credential helper {program} {command} failed: {detail}; check "
                        "the helper")


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
