"""The installed launchers keep slow modules off the short commands' path.

Engines run kakoi-runtime's state, start, kill and delete several times per container,
so their start-up time is the runtime's speed. re, enum and json each cost milliseconds
to import in a fresh interpreter; these tests fail when a change brings one back.
"""

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / ".venv" / "bin" / "kakoi-runtime"
SLOW_MODULES = {"re", "enum", "json", "argparse", "logging", "site", "subprocess"}


def imported_modules(*args: str) -> set[str]:
    """Run the launcher under -X importtime and return the names of the modules it imported."""
    launcher = RUNTIME.read_text().splitlines()[0]
    if not launcher.startswith("#!") or "-IS" not in launcher:
        pytest.skip("the venv has pip's launcher: run scripts/install.sh")
    interpreter = launcher[2:].split()[0]
    result = subprocess.run([interpreter, "-IS", "-X", "importtime", str(RUNTIME), *args],
                            capture_output=True, text=True, timeout=30)
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "kakoi.cli.runtime" in names, result.stderr
    return names


@pytest.mark.parametrize("command", ["state", "start", "delete", "kill"])
def test_short_runtime_commands_import_no_slow_module(tmp_path, command):
    names = imported_modules("--root", str(tmp_path), command, "absent")
    assert not names & SLOW_MODULES, sorted(names & SLOW_MODULES)


def test_runtime_state_of_an_unknown_container_fails_cleanly(tmp_path):
    result = subprocess.run([str(RUNTIME), "--root", str(tmp_path), "state", "absent"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == "kakoi-runtime: container absent does not exist\n"


# Each of these cost a pull 2 to 90 ms of imports that its work does not need: an HTTP
# library, dataclasses (which loads inspect and ast), typing, tempfile (shutil, random),
# concurrent.futures (logging), and locale (argparse's lookup of message catalogs).
PULL_SLOW_MODULES = {"httpx", "httpcore", "dataclasses", "inspect", "typing", "tempfile",
                     "concurrent.futures", "logging", "locale"}


def test_pull_path_imports_no_slow_module():
    launcher = (REPO / ".venv" / "bin" / "kakoi").read_text().splitlines()
    if not launcher[0].startswith("#!") or "-IS" not in launcher[0]:
        pytest.skip("the venv has pip's launcher: run scripts/install.sh")
    paths = next(line for line in launcher if line.startswith("sys.path"))
    program = (f"import sys\n{paths}\n"
               "from kakoi.cli.main import parse\n"
               "parse(['pull', '-q', '127.0.0.1:5000/a:1'])\n"
               "import kakoi.registry.pull, kakoi.image.layer, kakoi.image.store\n"
               "from kakoi.registry import blob, http, client\n")
    result = subprocess.run([launcher[0][2:].split()[0], "-IS", "-X", "importtime", "-c",
                             program], capture_output=True, text=True, timeout=30)
    names = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    assert "kakoi.registry.pull" in names, result.stderr
    assert not names & PULL_SLOW_MODULES, sorted(names & PULL_SLOW_MODULES)
