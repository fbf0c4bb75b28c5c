#!/bin/sh
# Time `kakoi pull` against `skopeo copy` and `podman pull` from a loopback registry, with
# `tar -xzf` of the image's layer blobs as the reference, in one hyperfine call.
#
# Usage, as root after scripts/install.sh (the Debian fixture image must be built, see
# tests/registry_fixtures.py):
#   bench/run-pull-bench.sh     write bench/results/pull-<UTC timestamp>/
#
# Environment:
#   RUNS=10        timed runs per command (hyperfine --runs)
#   WARMUP=2       untimed warm-up runs per command (hyperfine --warmup)
#   KAKOI          the kakoi to time (default .venv/bin/kakoi)
#   BIG_MB=256     size of the third image's single layer of random data, in MiB
#
# A docker-registry runs on 127.0.0.1 with a free port and gets three images from skopeo.
# debian is a minbase (one 48 MB layer of 6,600 files), layered has four layers (one of 5,000
# small files), and big has one layer with one file of BIG_MB MiB of random data (gzip level
# 0). On big the fixed start-up costs fade, so the transfer and decompression rates show. Every run pulls into a fresh destination: the --prepare
# command moves the previous one aside (deleting many files right before a timed run slows
# the next run's file creation on this disk). Everything is removed on exit.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-10}
warmup=${WARMUP:-2}
kakoi=${KAKOI:-$repo/.venv/bin/kakoi}
images=${IMAGES:-$repo/tests/fixtures/out}
work=""
registry_pid=""

fail() {
    echo "run-pull-bench.sh: $*" >&2
    exit 1
}

check_prerequisites() {
    [ "$(id -u)" = 0 ] || fail "must run as root: podman and kakoi use root stores"
    [ -x "$kakoi" ] || fail "missing $kakoi: run scripts/install.sh first"
    for tool in hyperfine skopeo podman docker-registry tar; do
        command -v "$tool" >/dev/null || fail "missing $tool: run scripts/install.sh first"
    done
    for name in debian-bookworm layered; do
        [ -f "$images/$name-oci.tar" ] || fail "missing $images/$name-oci.tar: build it" \
            "with scripts/build-fixture-images.py --out $images"
    done
}

cleanup() {
    set +e
    [ -n "$registry_pid" ] && kill "$registry_pid" && wait "$registry_pid" 2>/dev/null
    [ -n "$work" ] && rm -rf "$work"
}

free_port() {
    "$repo/.venv/bin/python" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_registry() {
    port=$(free_port)
    registry=127.0.0.1:$port
    cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: "$work/registry"
http:
  addr: $registry
EOF
    # docker-registry reads REGISTRY_* variables as settings, so skopeo's auth file stays out.
    env -u REGISTRY_AUTH_FILE docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
    registry_pid=$!
    tries=0
    until curl -sf --noproxy '*' "http://$registry/v2/" >/dev/null; do
        tries=$((tries + 1))
        [ $tries -lt 100 ] || fail "registry did not start: $(tail -5 "$work/registry.log")"
        sleep 0.1
    done
}

# skopeo, podman and kakoi with private configuration: nothing goes past loopback.
setup_tools() {
    printf '{"default": [{"type": "insecureAcceptAnything"}]}\n' >"$work/policy.json"
    printf 'unqualified-search-registries = []\n' >"$work/registries.conf"
    printf '{"registries": {}}\n' >"$work/kakoi-registries.json"
    mkdir -p "$work/home" "$work/tmp" "$work/old"
    export HOME="$work/home" TMPDIR="$work/tmp" XDG_RUNTIME_DIR="$work/home"
    export CONTAINERS_REGISTRIES_CONF="$work/registries.conf"
    export REGISTRY_AUTH_FILE="$work/home/auth.json"
    export KAKOI_REGISTRIES_CONFIG="$work/kakoi-registries.json" DOCKER_CONFIG="$work/home"
    unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY || true
    echo '{}' >"$REGISTRY_AUTH_FILE"
}

# An OCI layout of one gzip layer (level 0, as random data does not compress) holding one
# file of BIG_MB MiB of random bytes.
build_big_image() {
    "$repo/.venv/bin/python" - "$work/big-layout" "${BIG_MB:-256}" <<'EOF'
import hashlib, io, json, os, sys, tarfile
from pathlib import Path

from isal import igzip

layout, megabytes = Path(sys.argv[1]), int(sys.argv[2])
(layout / "blobs" / "sha256").mkdir(parents=True)


def blob(data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}


payload = os.urandom(megabytes << 20)
tar_buffer = io.BytesIO()
with tarfile.open(fileobj=tar_buffer, mode="w") as tar:
    info = tarfile.TarInfo("random.bin")
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
tar_bytes = tar_buffer.getvalue()
config = {"architecture": "amd64", "os": "linux", "config": {},
          "rootfs": {"type": "layers",
                     "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]}}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": blob(json.dumps(config).encode(),
                           "application/vnd.oci.image.config.v1+json"),
            "layers": [blob(igzip.compress(tar_bytes, compresslevel=0),
                            "application/vnd.oci.image.layer.v1.tar+gzip")]}
descriptor = blob(json.dumps(manifest).encode(), manifest["mediaType"])
descriptor["annotations"] = {"org.opencontainers.image.ref.name": "big"}
(layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
(layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
EOF
}

fill_registry() {
    build_big_image
    for name in debian layered big; do
        source=oci-archive:$images/$name-oci.tar
        [ "$name" = debian ] && source=oci-archive:$images/debian-bookworm-oci.tar
        [ "$name" = big ] && source=oci:$work/big-layout:big
        skopeo --policy "$work/policy.json" copy --quiet --dest-tls-verify=false \
            "$source" "docker://$registry/bench/$name:1"
        # Every layer blob, numbered bottom first, for the tar -xzf reference.
        mkdir -p "$work/$name-layers"
        number=10
        for digest in $(skopeo --policy "$work/policy.json" inspect --raw --tls-verify=false \
            "docker://$registry/bench/$name:1" | "$repo/.venv/bin/python" -c '
import json, sys
print("\n".join(layer["digest"] for layer in json.load(sys.stdin)["layers"]))'); do
            hex=${digest#sha256:}
            cp "$work/registry/docker/registry/v2/blobs/sha256/$(echo "$hex" | cut -c1-2)/$hex/data" \
                "$work/$name-layers/$number.tar.gz"
            number=$((number + 1))
        done
    done
}

new_results_dir() {
    results=$repo/bench/results
    mkdir -p "$results/previous"
    for old in "$results"/pull-2*; do
        [ -d "$old" ] && mv "$old" "$results/previous/"
    done
    out=$results/pull-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$out"
    {
        echo "kernel: $(uname -r)"
        echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
        echo "cpus: $(nproc)"
        echo "hyperfine: $(hyperfine --version)"
        echo "skopeo: $(skopeo --version)"
        echo "podman: $(podman --version)"
        echo "kakoi: $(git -C "$repo" rev-parse --short HEAD) (+ working tree)"
    } >"$out/machine.txt"
}


# Fifteen commands (five per image), alternating tools, so that the disk's state affects them
# alike. Each pair does the same work: `kakoi pull --unpack false` and `skopeo copy` store
# verified blobs only, while `kakoi pull` and `podman pull` also unpack every layer, as
# `tar -xzf` of each layer blob in turn does.
run_bench() {
    podman_options="--root $work/dest/podman --runroot $work/dest/podman-run"
    podman_options="$podman_options --storage-driver vfs"
    set --
    for image in debian layered big; do
        ref=$registry/bench/$image:1
        set -- "$@" \
            --prepare "$aside" -n "kakoi pull $image" \
            "env KAKOI_ROOT=$work/dest/kakoi $kakoi pull -q $ref" \
            --prepare "$aside" -n "kakoi pull --unpack false $image" \
            "env KAKOI_ROOT=$work/dest/kakoi $kakoi pull -q --unpack false $ref" \
            --prepare "$aside" -n "skopeo copy $image" \
            "skopeo --policy $work/policy.json copy --quiet --src-tls-verify=false docker://$ref oci:$work/dest/oci" \
            --prepare "$aside" -n "podman pull $image" \
            "podman $podman_options pull -q --tls-verify=false $ref" \
            --prepare "$aside" -n "tar -xzf $image layers" \
            "sh -c 'for layer in $work/$image-layers/*; do tar -xzf \$layer -C $work/dest; done'"
    done
    printf '%s\n' "hyperfine --warmup $warmup --runs $runs $*" >"$out/commands.txt"
    hyperfine --warmup "$warmup" --runs "$runs" \
        --export-markdown "$out/results.md" --export-json "$out/results.json" "$@"
}

check_prerequisites
work=$(mktemp -d /tmp/kakoi-pull-bench-XXXXXX)
trap cleanup EXIT INT TERM
aside="mv $work/dest $work/old/\$(date +%s%N) 2>/dev/null; mkdir -p $work/dest"
setup_tools
start_registry
fill_registry
new_results_dir
run_bench
echo "results in $out"
