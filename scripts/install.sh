#!/bin/sh
# Install kakoi and everything its tests use on Debian 12, as root, then run the main job:
# build a busybox image from the host's busybox-static, load it, and run a container from it.
set -eu
cd "$(dirname "$0")/.."

# Debian packages: the Python that kakoi runs on, busybox-static for the fixture image, and the
# peers that the tests and benchmarks compare against. docker-registry, skopeo, debootstrap,
# apache2-utils (htpasswd) and openssl serve the registry tests and their fixture images;
# ca-certificates gives kakoi's registry client the CAs that verify HTTPS registries.
export DEBIAN_FRONTEND=noninteractive
packages="python3 python3-venv busybox-static runc podman buildah hyperfine uidmap containerd docker-registry skopeo debootstrap apache2-utils openssl ca-certificates"
missing=""
for package in $packages; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing
fi

# Debian's own python3, not one found first on PATH: it starts in a few milliseconds, and the
# start-up time of `kakoi run` is what users feel.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
# A plain path entry (compat mode) instead of an import hook, which costs ~9 ms per start.
.venv/bin/pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
# Launchers that start Python without site and without pip's import of re: ~10 ms less on
# every command, which an engine pays several times per container through kakoi-runtime.
.venv/bin/python scripts/write-launchers.py .venv
# Compile the bytecode now: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise
# compile every module from source on each start, which costs ~30 ms per container.
.venv/bin/python -m compileall -q kakoi
ln -sf "$PWD/.venv/bin/kakoi" /usr/local/bin/kakoi

# The main job on a real image.
.venv/bin/python scripts/build-busybox-image.py --out tests/fixtures/out
kakoi load -i tests/fixtures/out/busybox-docker.tar
kakoi images
kakoi run --rm busybox echo hello from a kakoi container
