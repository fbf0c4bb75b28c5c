#!/bin/sh
# Run the whole test suite. Tests marked root need root and a container-capable kernel.
set -eu
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q "$@"
