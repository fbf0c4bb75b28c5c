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


# --- credential helpers ------------------------------------------------------------------------

# A helper that keeps its entries in the JSON file $KAKOI_TEST_HELPER_STORE, speaking the
# protocol of Docker's docker-credential-* programs. A stand-in for pass, secretservice and
# the desktop keychains, which do not run here.
HELPER = '''\
import json, os, sys
store_path = os.environ["KAKOI_TEST_HELPER_STORE"]
entries = json.load(open(store_path)) if os.path.exists(store_path) else {}
command, request = sys.argv[1], sys.stdin.read()
if command == "get":
    if request not in entries:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps(entries[request]))
elif command == "store":
    entry = json.loads(request)
    entries[entry["ServerURL"]] = entry
elif command == "erase":
    if entries.pop(request, None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
else:
    print("unknown command", file=sys.stderr)
    sys.exit(2)
json.dump(entries, open(store_path, "w"))
'''


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """Install docker-credential-kakoitest on PATH; return the file where it keeps entries."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "docker-credential-kakoitest"
    program.write_text(f"#!{sys.executable}\n{HELPER}")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    entries = tmp_path / "helper-store.json"
    monkeypatch.setenv("KAKOI_TEST_HELPER_STORE", str(entries))
    return entries


def write_config(config_dir, data):
    config_dir.mkdir(exist_ok=True)
    (config_dir / "config.json").write_text(json.dumps(data))


def test_creds_store_keeps_the_password(config_dir, helper):
    write_config(config_dir, {"credsStore": "kakoitest"})

    where = credentials.store("127.0.0.1:5000", "alice", "secret")

    assert where.startswith("docker-credential-kakoitest")
    saved = json.loads((config_dir / "config.json").read_text())
    assert saved == {"credsStore": "kakoitest", "auths": {"127.0.0.1:5000": {}}}
    assert json.loads(helper.read_text())["127.0.0.1:5000"]["Secret"] == "secret"
    assert credentials.lookup("127.0.0.1:5000") == ("alice", "secret")


def test_cred_helpers_apply_to_their_registry_only(config_dir, helper):
    write_config(config_dir, {"credHelpers": {"r.test:5000": "kakoitest"}})

    credentials.store("r.test:5000", "bob", "helper-kept")
    credentials.store("127.0.0.1:5000", "carol", "file-kept")

    saved = json.loads((config_dir / "config.json").read_text())
    assert saved["auths"]["r.test:5000"] == {}
    assert "auth" in saved["auths"]["127.0.0.1:5000"]
    assert credentials.lookup("r.test:5000") == ("bob", "helper-kept")
    assert credentials.lookup("127.0.0.1:5000") == ("carol", "file-kept")


def test_helper_without_entry_falls_back_to_auths(config_dir, helper):
    token = base64.b64encode(b"dave:from-file").decode()
    write_config(config_dir, {"credsStore": "kakoitest",
                              "auths": {"127.0.0.1:5000": {"auth": token}}})

    assert credentials.lookup("127.0.0.1:5000") == ("dave", "from-file")
    assert credentials.lookup("127.0.0.1:6000") is None


def test_logout_erases_from_the_helper(config_dir, helper):
    write_config(config_dir, {"credsStore": "kakoitest"})
    credentials.store("127.0.0.1:5000", "alice", "secret")

    assert credentials.remove("127.0.0.1:5000") is True

    assert json.loads(helper.read_text()) == {}
    assert credentials.lookup("127.0.0.1:5000") is None
    assert credentials.remove("127.0.0.1:5000") is False


def test_missing_helper_is_named(config_dir, helper):
    write_config(config_dir, {"credsStore": "absent"})

    with pytest.raises(RegistryError, match=r"docker-credential-absent not found in PATH; "
                                            r"install it or remove \"absent\""):
        credentials.lookup("127.0.0.1:5000")


def test_identity_token_is_rejected(config_dir, helper):
    write_config(config_dir, {"credsStore": "kakoitest"})
    helper.write_text(json.dumps({"127.0.0.1:5000": {"Username": "<token>", "Secret": "t"}}))

    with pytest.raises(RegistryError, match="identity token .*kakoi login"):
        credentials.lookup("127.0.0.1:5000")


def test_helper_garbage_is_an_error(config_dir, helper):
    write_config(config_dir, {"credsStore": "kakoitest"})
    helper.write_text(json.dumps({"127.0.0.1:5000": "not an object"}))

    with pytest.raises(RegistryError, match="returned invalid JSON"):
        credentials.lookup("127.0.0.1:5000")


def test_auths_that_are_not_an_object(config_dir):
    write_config(config_dir, {"auths": [1, 2]})

    with pytest.raises(RegistryError, match=r"\"auths\" must be an object"):
        credentials.lookup("127.0.0.1:5000")


def test_helper_that_cannot_run_is_named(config_dir, helper):
    program = helper.parent / "bin" / "docker-credential-kakoitest"
    program.chmod(0o644)
    write_config(config_dir, {"credsStore": "kakoitest"})

    with pytest.raises(RegistryError, match="docker-credential-kakoitest cannot run: "
                                            "Permission denied"):
        credentials.lookup("127.0.0.1:5000")


def test_helper_answer_of_the_wrong_type_is_invalid(config_dir, helper):
    write_config(config_dir, {"credsStore": "kakoitest"})
    helper.write_text(json.dumps({"127.0.0.1:5000": {"Username": 5, "Secret": ["x"]}}))

    with pytest.raises(RegistryError, match="returned invalid JSON"):
        credentials.lookup("127.0.0.1:5000")
