#!/bin/sh
# Time `kakoi run --rm busybox true` against `runc run` and `podman run --rm` of the same image,
# in one hyperfine call, or (with `profile`) show where the time of one `kakoi run` goes.
#
# Usage, as root after scripts/install.sh:
#   bench/run-bench.sh            time the three commands, write bench/results/<UTC timestamp>/
#   bench/run-bench.sh profile    print the slowest imports and a cProfile of one `kakoi run`
#
# Environment:
#   RUNS=40        timed runs per command (hyperfine --runs)
#   WARMUP=5       untimed warm-up runs per command (hyperfine --warmup)
#   PODMAN_STORAGE_DRIVER=overlay   storage driver of the private podman store (overlay or vfs)
#
# Everything the script creates (image archives, the kakoi and podman stores, the runc bundle and
# state, cgroups named kakoi-bench-podman* and kakoi-test-bench-runc*) is removed on exit.
set -eu

mode=${1:-time}
case "$mode" in
    time | profile) ;;
    *)
        echo "run-bench.sh: invalid mode '$mode': give no argument for timing, or 'profile'" >&2
        exit 2
        ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-40}
warmup=${WARMUP:-5}
podman_driver=${PODMAN_STORAGE_DRIVER:-overlay}

# `runc run` without --keep deletes the container before it returns, so one id serves every run
# and hyperfine can start runc directly, without a wrapper shell that picks a new id.
runc_id=kakoi-bench
runc_cgroup=kakoi-test-bench-runc
podman_cgroup=kakoi-bench-podman

python=$repo/.venv/bin/python
kakoi=$(command -v kakoi || echo "$repo/.venv/bin/kakoi")

work=""
podman_runroot=""

fail() {
    echo "run-bench.sh: $*" >&2
    exit 1
}

check_prerequisites() {
    [ "$(id -u)" = 0 ] || fail "must run as root: containers need namespaces and cgroups"
    [ -x "$python" ] || fail "missing $python: run scripts/install.sh first"
    [ -x "$kakoi" ] || fail "missing kakoi at $kakoi: run scripts/install.sh first"
    if [ "$mode" = time ]; then
        for tool in hyperfine runc podman; do
            command -v "$tool" >/dev/null || fail "missing $tool: run scripts/install.sh first"
        done
    fi
}

# Remove only what this script made. Each step tolerates a missing or half-made piece, because
# the trap also runs after a failure in the middle of the setup.
cleanup() {
    set +e
    if [ -n "$work" ] && [ -d "$work/runc-state" ]; then
        runc --root "$work/runc-state" delete --force "$runc_id" >/dev/null 2>&1
    fi
    if [ -n "$podman_runroot" ] && [ -d "$work/podman-root" ]; then
        run_podman rm --all --force >/dev/null 2>&1
        run_podman rmi --all --force >/dev/null 2>&1
    fi
    for dir in "$work" "$podman_runroot"; do
        [ -n "$dir" ] || continue
        unmount_under "$dir"
        rm -rf "$dir"
    done
    remove_cgroups "$podman_cgroup"
    remove_cgroups "$runc_cgroup"
}

# Unmount every mount point at or below $1, deepest first.
unmount_under() {
    awk -v dir="$1" '$5 == dir || index($5, dir "/") == 1 { print $5 }' /proc/self/mountinfo |
        sort -r |
        while read -r target; do
            umount "$target" 2>/dev/null || umount -l "$target"
        done
}

# Remove cgroup directories named $1* at the root of each hierarchy (v1 controllers, the named
# systemd hierarchy, the hybrid unified tree, or a pure v2 root), children first.
remove_cgroups() {
    for top in /sys/fs/cgroup/"$1"* /sys/fs/cgroup/*/"$1"*; do
        [ -d "$top" ] || continue
        find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
}

run_podman() {
    podman --root "$work/podman-root" --runroot "$podman_runroot" \
        --storage-driver "$podman_driver" --cgroup-manager cgroupfs --events-backend none "$@"
}

prepare_kakoi() {
    "$python" "$repo/scripts/build-busybox-image.py" --out "$work/image" >/dev/null
    export KAKOI_ROOT="$work/kakoi-root"

    # Users run kakoi with cached bytecode (pip compiles wheels, Python caches after a first run),
    # so time it that way even where the caller sets PYTHONDONTWRITEBYTECODE. install.sh's
    # launchers run python -I, which ignores both variables and reads kakoi/__pycache__. The
    # variables matter only for pip's launchers, whose cache then goes to the work directory.
    unset PYTHONDONTWRITEBYTECODE
    export PYTHONPYCACHEPREFIX="$work/pycache"
    "$kakoi" load -i "$work/image/busybox-docker.tar" >/dev/null
}

# Build an OCI bundle from the layers of the docker-archive. The busybox image has one layer
# without whiteouts, so plain tar extraction gives the same tree that kakoi unpacks.
prepare_runc() {
    bundle=$work/runc-bundle
    mkdir -p "$bundle/rootfs" "$work/runc-state"
    archive=$work/image/busybox-docker.tar
    layers=$(tar -xOf "$archive" manifest.json |
        "$python" -c 'import json, sys; print("\n".join(json.load(sys.stdin)[0]["Layers"]))')
    for layer in $layers; do
        tar -xOf "$archive" "$layer" | tar -x -C "$bundle/rootfs"
    done

    (cd "$bundle" && runc spec)
    "$python" - "$bundle/config.json" "$runc_cgroup" <<'EOF'
import json, sys
path, cgroup = sys.argv[1], sys.argv[2]
with open(path) as f:
    config = json.load(f)
config["process"]["args"] = ["true"]
config["process"]["terminal"] = False
# An absolute path keeps runc out of the cgroup that the calling shell is in.
config["linux"]["cgroupsPath"] = "/" + cgroup
with open(path, "w") as f:
    json.dump(config, f, indent=2)
EOF
}

prepare_podman() {
    podman_runroot=$(mktemp -d /tmp/kkpodXXXX)
    mkdir -p "$work/podman-root"
    run_podman load --quiet -i "$work/image/busybox-docker.tar" >/dev/null
}

# Keep earlier results: move each older timestamped directory into results/previous/.
new_results_dir() {
    results=$repo/bench/results
    mkdir -p "$results/previous"
    for old in "$results"/2*; do
        [ -d "$old" ] && mv "$old" "$results/previous/"
    done
    out=$results/$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$out"
}

cgroup_layout() {
    if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
        echo "v2"
    elif [ -d /sys/fs/cgroup/unified ] && [ "$(stat -f -c %T /sys/fs/cgroup/unified)" = cgroup2fs ]; then
        echo "hybrid (v1 controllers, v2 tree at /sys/fs/cgroup/unified)"
    else
        echo "v1"
    fi
}

write_versions() {
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
        echo "cpus: $(nproc)"
        echo "kernel: $(uname -r)"
        echo "cgroups: $(cgroup_layout)"
        echo "python: $("$python" --version 2>&1) (launcher: $(head -n 1 "$(readlink -f "$kakoi")"))"
        echo "runc: $(runc --version | head -n 1)"
        echo "podman: $(podman --version) (storage driver $podman_driver)"
        echo "hyperfine: $(hyperfine --version)"
    } >"$out/versions.txt"
}

run_timing() {
    kakoi_command="$kakoi run --rm busybox true"
    runc_command="runc --root $work/runc-state run --bundle $work/runc-bundle $runc_id"
    podman_command="podman --root $work/podman-root --runroot $podman_runroot --storage-driver $podman_driver --cgroup-manager cgroupfs --events-backend none run --rm --runtime runc --network none --cgroup-parent $podman_cgroup --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 busybox true"
    printf '%s\n' "KAKOI_ROOT=$KAKOI_ROOT $kakoi_command" "$runc_command" "$podman_command" \
        >"$out/commands.txt"

    # NOTE: hyperfine 1.15 runs all runs of one command before the next command starts, so the
    # three are not interleaved, and a change in machine load can favour one of them.
    hyperfine -N --warmup "$warmup" --runs "$runs" \
        --export-markdown "$out/results.md" --export-json "$out/results.json" \
        -n "kakoi run --rm busybox true" "$kakoi_command" \
        -n "runc run (busybox true)" "$runc_command" \
        -n "podman run --rm busybox true" "$podman_command"

    "$python" - "$out/results.json" >"$out/medians.txt" <<'EOF'
import json, sys
with open(sys.argv[1]) as f:
    for result in json.load(f)["results"]:
        print(f"median {result['median'] * 1000:6.1f} ms  {result['command']}")
EOF

    echo
    cat "$out/versions.txt"
    echo
    cat "$out/results.md"
    echo
    cat "$out/medians.txt"
    echo
    echo "results: $out"
}

run_profile() {
    # One untimed run fills the bytecode cache, as the warm-up runs do in timing mode.
    "$kakoi" run --rm busybox true
    echo "== python -X importtime: 15 largest cumulative import times (microseconds)"
    "$python" -X importtime "$kakoi" run --rm busybox true 2>&1 >/dev/null |
        grep '^import time:' | grep -v 'self \[us\]' |
        sort -t '|' -k 2 -n -r | head -n 15
    echo
    echo "== cProfile, top 20 by cumulative time"
    "$python" -m cProfile -s cumulative "$kakoi" run --rm busybox true |
        awk '/ncalls/ { table = 1 } table && shown < 21 && NF { print; shown++ } !table && NF'
}

main() {
    check_prerequisites
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    work=$(mktemp -d /tmp/kkbenchXXXX)

    prepare_kakoi
    if [ "$mode" = profile ]; then
        run_profile
        return
    fi

    prepare_runc
    prepare_podman
    new_results_dir
    write_versions
    run_timing
}

main
