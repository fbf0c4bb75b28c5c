"""kakoi-runtime's state files and signal names, without a container."""

import signal

import pytest

from kakoi.errors import ContainerError, InvalidArgument
from kakoi.runtime import lifecycle
from kakoi.runtime import state as states


def test_state_longest_id(tmp_path):
    directory = states.reserve(str(tmp_path), "x" * 255)
    assert directory == str(tmp_path / ("x" * 255))


def test_state_round_trip(tmp_path):
    directory = states.reserve(str(tmp_path), "box")
    record = {"id": "box", "pid": 1234, "spec": {"process": {"args": ["sh", "-c", "é"]}},
              "annotations": {"k": "v"}, "cgroup_path": None}
    states.write(directory, record)
    loaded = states.load(str(tmp_path), "box")
    assert loaded.pop("_dir") == directory
    assert loaded == record


def test_state_taken_or_missing_id(tmp_path):
    states.reserve(str(tmp_path), "box")
    with pytest.raises(ContainerError, match="already exists"):
        states.reserve(str(tmp_path), "box")
    with pytest.raises(states.InvalidState, match="still being created"):
        states.load(str(tmp_path), "box")
    with pytest.raises(ContainerError, match="does not exist"):
        states.load(str(tmp_path), "other")


@pytest.mark.parametrize("content", [b"", b"\x00garbage", b"{not marshal"])
def test_state_unreadable_file(tmp_path, content):
    directory = states.reserve(str(tmp_path), "box")
    (tmp_path / "box" / states.STATE_FILE).write_bytes(content)
    with pytest.raises(states.UnreadableState, match="delete --force"):
        states.load(str(tmp_path), "box")
    with pytest.raises(states.UnreadableState):
        lifecycle.delete(str(tmp_path), "box")
    lifecycle.delete(str(tmp_path), "box", force=True)
    assert not (tmp_path / "box").exists()
    assert directory == str(tmp_path / "box")


@pytest.mark.parametrize("text, number", [
    ("KILL", signal.SIGKILL), ("SIGKILL", signal.SIGKILL), ("sigterm", signal.SIGTERM),
    ("9", 9), (" 15 ", 15), ("hup", signal.SIGHUP), ("RTMIN", signal.SIGRTMIN),
    ("RTMIN+3", signal.SIGRTMIN + 3), ("SIGRTMAX-1", signal.SIGRTMAX - 1),
    ("WINCH", signal.SIGWINCH), ("IOT", signal.SIGABRT), ("0", 0),
])
def test_parse_signal(text, number):
    assert lifecycle.parse_signal(text) == number


@pytest.mark.parametrize("text", ["", "00", "65", "-1", "NOPE", "SIG_DFL", "SIG_IGN", "DFL",
                                  "RTMIN+x", "KILL9", "1.5", "TERM extra"])
def test_parse_signal_rejects(text):
    with pytest.raises(InvalidArgument, match="invalid signal"):
        lifecycle.parse_signal(text)


@pytest.mark.parametrize("container_id", ["", ".", "..", "a/b", "a b", "x\n", "é", "a:b",
                                          "x" * 256])
def test_invalid_ids(tmp_path, container_id):
    with pytest.raises(InvalidArgument, match="invalid container id"):
        states.reserve(str(tmp_path), container_id)
