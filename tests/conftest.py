"""Shared fixtures: the busybox image archives built from the host's busybox-static."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["registry_fixtures"]


@pytest.fixture(scope="session")
def busybox_archives(tmp_path_factory) -> dict[str, Path]:
    """Build the busybox image from the host's busybox-static; skip where it is missing."""
    if not Path("/bin/busybox").exists():
        pytest.skip("/bin/busybox is missing: install Debian's busybox-static")
    out = tmp_path_factory.mktemp("busybox-image")
    subprocess.run([sys.executable, str(REPO / "scripts" / "build-busybox-image.py"),
                    "--out", str(out)], check=True, capture_output=True)
    return {"docker-archive": out / "busybox-docker.tar", "oci-archive": out / "busybox-oci.tar"}
