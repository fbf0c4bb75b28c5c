#!/bin/sh
# Time `kakoi build` against `buildah build` of the same three-step Dockerfile, cold (--no-cache)
# and warm (every step a cache hit), in one hyperfine call.
#
# Usage, as root after scripts/install.sh:
#   bench/run-build-bench.sh     write bench/results/build-<UTC timestamp>/
#
# Environment:
#   RUNS=10                 timed runs per command (hyperfine --runs)
#   WARMUP=2                untimed warm-up runs per command (hyperfine --warmup); they also
#                           fill both caches before the warm builds are timed
#   BUILDAH_DRIVER=overlay  storage driver of the private buildah store (overlay or vfs)
#   KAKOI                   the kakoi to time (default .venv/bin/kakoi)
#
# Both tools get the busybox fixture image from its archives and never contact a registry:
# buildah runs with --pull-never, --network none and a registries.conf without search
# registries. buildah uses --layers, so that it caches each step as kakoi does, and runc with
# cgroupfs below kakoi-test-bench-buildah. The stores, mounts and cgroups are removed on exit.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-10}
warmup=${WARMUP:-2}
driver=${BUILDAH_DRIVER:-overlay}
kakoi=${KAKOI:-$repo/.venv/bin/kakoi}
kakoi_cgroup=kakoi-test-bench-build
buildah_cgroup=kakoi-test-bench-buildah
work=""

fail() {
    echo "run-build-bench.sh: $*" >&2
    exit 1
}

check_prerequisites() {
    [ "$(id -u)" = 0 ] || fail "must run as root: both builders run containers"
    [ -x "$kakoi" ] || fail "missing $kakoi: run scripts/install.sh first"
    for tool in hyperfine buildah runc; do
        command -v "$tool" >/dev/null || fail "missing $tool: run scripts/install.sh first"
    done
}

remove_cgroups() {
    for directory in /sys/fs/cgroup/*/"$1" /sys/fs/cgroup/"$1"; do
        [ -d "$directory" ] && find "$directory" -depth -type d -exec rmdir {} \;
    done
    return 0
}

cleanup() {
    set +e
    if [ -n "$work" ]; then
        buildah_cmd rm --all >/dev/null 2>&1
        buildah_cmd rmi --all --force >/dev/null 2>&1
        grep -o " $work[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l
        rm -rf "$work"
    fi
    remove_cgroups "$kakoi_cgroup"
    remove_cgroups "$buildah_cgroup"
}

buildah_cmd() {
    buildah --root "$work/buildah/root" --runroot "$work/buildah/run" --storage-driver "$driver" "$@"
}

prepare_stores() {
    "$repo/.venv/bin/python" "$repo/scripts/build-busybox-image.py" --out "$work/image" >/dev/null
    "$kakoi" load -i "$work/image/busybox-docker.tar" >/dev/null
    buildah_cmd pull -q "oci-archive:$work/image/busybox-oci.tar" >/dev/null

    mkdir "$work/context"
    printf 'FROM busybox\nRUN echo built > /built.txt\nCOPY file.txt /file.txt\n' \
        >"$work/context/Dockerfile"
    echo "copied" >"$work/context/file.txt"
}

main() {
    check_prerequisites
    # A short path: buildah's runroot holds sockets whose paths must stay short.
    work=$(mktemp -d /tmp/kkbench-XXXXXX)
    trap cleanup EXIT INT TERM
    mkdir -p "$work/buildah"
    printf 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n' \
        >"$work/registries.conf"
    printf '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\nruntime = "runc"\n' \
        >"$work/containers.conf"
    export CONTAINERS_REGISTRIES_CONF="$work/registries.conf"
    export CONTAINERS_CONF="$work/containers.conf"
    export KAKOI_ROOT="$work/kakoi" KAKOI_CGROUP_PARENT="$kakoi_cgroup"
    prepare_stores

    results=$repo/bench/results/build-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$results"
    buildah_build="buildah --root $work/buildah/root --runroot $work/buildah/run"
    buildah_build="$buildah_build --storage-driver $driver build --layers -q --isolation oci"
    buildah_build="$buildah_build --runtime runc --network none --pull-never"
    buildah_build="$buildah_build --cgroup-parent /$buildah_cgroup -t bench"
    kakoi_build="$kakoi build -q -t bench"
    context=$work/context

    hyperfine --runs "$runs" --warmup "$warmup" -N \
        --export-json "$results/hyperfine.json" --export-markdown "$results/hyperfine.md" \
        -n "kakoi build (warm)" "$kakoi_build $context" \
        -n "buildah build --layers (warm)" "$buildah_build $context" \
        -n "kakoi build --no-cache" "$kakoi_build --no-cache $context" \
        -n "buildah build --layers --no-cache" "$buildah_build --no-cache $context"
    echo "results in $results"
}

main
