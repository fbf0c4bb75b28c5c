#!/bin/sh
# Time `kakoi-runtime` against runc on a busybox `true` bundle, in one hyperfine call: the whole
# `run`, and `create`, `start` and `delete` each on their own.
#
# Usage, as root after scripts/install.sh:
#   bench/run-runtime-bench.sh     write bench/results/runtime-<UTC timestamp>/
#
# Environment:
#   RUNS=40        timed runs per command (hyperfine --runs)
#   WARMUP=5       untimed warm-up runs per command (hyperfine --warmup)
#   KAKOI_RUNTIME  the kakoi-runtime to time (default .venv/bin/kakoi-runtime)
#
# Each step is timed alone. The steps before it go in hyperfine's --prepare command, which
# runs before every timed run and is not timed:
#   run      prepare: delete --force (nothing to delete after a clean run)
#   create   prepare: delete --force of the previous run's container
#   start    prepare: delete --force, then create
#   delete   prepare: delete --force, then run -d, then wait until `state` reports stopped
# Everything the script creates (image, bundles, state roots, the cgroups named
# kakoi-test-bench-rt-*) is removed on exit.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-40}
warmup=${WARMUP:-5}
python=$repo/.venv/bin/python
kakoi_runtime=${KAKOI_RUNTIME:-$repo/.venv/bin/kakoi-runtime}
container_id=kakoi-bench-rt
cgroup_prefix=kakoi-test-bench-rt
work=""

fail() {
    echo "run-runtime-bench.sh: $*" >&2
    exit 1
}

check_prerequisites() {
    [ "$(id -u)" = 0 ] || fail "must run as root: containers need namespaces and cgroups"
    [ -x "$python" ] || fail "missing $python: run scripts/install.sh first"
    [ -x "$kakoi_runtime" ] || fail "missing $kakoi_runtime: run scripts/install.sh first"
    for tool in hyperfine runc; do
        command -v "$tool" >/dev/null || fail "missing $tool: run scripts/install.sh first"
    done
}

# Remove only what this script made; each step tolerates a half-made setup.
cleanup() {
    set +e
    if [ -n "$work" ]; then
        for name in runc kakoi; do
            [ -d "$work/$name-state" ] || continue
            runtime_command "$name" delete --force "$container_id" >/dev/null 2>&1
        done
        rm -rf "$work"
    fi
    for top in /sys/fs/cgroup/"$cgroup_prefix"* /sys/fs/cgroup/*/"$cgroup_prefix"*; do
        [ -d "$top" ] || continue
        find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
}

runtime_binary() {
    if [ "$1" = runc ]; then command -v runc; else echo "$kakoi_runtime"; fi
}

runtime_command() {
    name=$1
    shift
    "$(runtime_binary "$name")" --root "$work/$name-state" "$@"
}

# One bundle per runtime, each with its own cgroupsPath at the hierarchy root, so neither
# runtime lands in the cgroup of the calling shell and a leftover of one cannot block the other.
prepare_bundles() {
    "$python" "$repo/scripts/build-busybox-image.py" --out "$work/image" >/dev/null
    archive=$work/image/busybox-docker.tar
    layers=$(tar -xOf "$archive" manifest.json |
        "$python" -c 'import json, sys; print("\n".join(json.load(sys.stdin)[0]["Layers"]))')
    for name in runc kakoi; do
        bundle=$work/$name-bundle
        mkdir -p "$bundle/rootfs" "$work/$name-state"
        for layer in $layers; do
            tar -xOf "$archive" "$layer" | tar -x -C "$bundle/rootfs"
        done
        (cd "$bundle" && runc spec)
        "$python" - "$bundle/config.json" "/$cgroup_prefix-$name" <<'EOF'
import json, sys
path, cgroup = sys.argv[1], sys.argv[2]
with open(path) as f:
    config = json.load(f)
config["process"]["args"] = ["true"]
config["process"]["terminal"] = False
config["linux"]["cgroupsPath"] = cgroup
with open(path, "w") as f:
    json.dump(config, f, indent=2)
EOF
    done
}

new_results_dir() {
    results=$repo/bench/results
    mkdir -p "$results/previous"
    for old in "$results"/runtime-2*; do
        [ -d "$old" ] && mv "$old" "$results/previous/"
    done
    out=$results/runtime-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$out"
}

write_versions() {
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
        echo "cpus: $(nproc)"
        echo "kernel: $(uname -r)"
        echo "python: $("$python" --version 2>&1) (launcher: $(head -n 1 "$kakoi_runtime"))"
        echo "runc: $(runc --version | head -n 1)"
        echo "hyperfine: $(hyperfine --version)"
    } >"$out/versions.txt"
}

# Print "name<TAB>prepare<TAB>command" for each timed step of one runtime.
steps() {
    name=$1
    binary=$(runtime_binary "$name")
    base="$binary --root $work/$name-state"
    bundle=$work/$name-bundle
    remove="$base delete --force $container_id >/dev/null 2>&1 || true"
    create="$base create --bundle $bundle $container_id"
    wait_stopped="until $base state $container_id | grep -q stopped; do sleep 0.001; done"
    printf '%s\t%s\t%s\n' \
        "$name run" "sh -c '$remove'" "$base run --bundle $bundle $container_id" \
        "$name create" "sh -c '$remove'" "$create" \
        "$name start" "sh -c '$remove; $create'" "$base start $container_id" \
        "$name delete" "sh -c '$remove; $base run -d --bundle $bundle $container_id; $wait_stopped'" \
        "$base delete $container_id"
}

run_timing() {
    # Engines run kakoi-runtime with cached bytecode, because pip compiles a wheel. install.sh's
    # launcher runs python -I, which ignores both variables and reads kakoi/__pycache__; with
    # pip's launcher the cache goes to the work directory, and the warm-up runs fill it.
    unset PYTHONDONTWRITEBYTECODE
    export PYTHONPYCACHEPREFIX="$work/pycache"

    set --
    for name in runc kakoi; do
        steps "$name" >"$work/steps-$name"
    done
    # runc and kakoi alternate step by step, so that a change in load hits both alike.
    for step in run create start delete; do
        for name in runc kakoi; do
            line=$(grep "^$name $step	" "$work/steps-$name")
            label=$(printf '%s' "$line" | cut -f 1)
            prepare=$(printf '%s' "$line" | cut -f 2)
            command=$(printf '%s' "$line" | cut -f 3)
            set -- "$@" --prepare "$prepare" -n "$label" "$command"
        done
    done
    printf '%s\n' "hyperfine -N --warmup $warmup --runs $runs $*" >"$out/commands.txt"

    hyperfine -N --warmup "$warmup" --runs "$runs" \
        --export-markdown "$out/results.md" --export-json "$out/results.json" "$@"

    "$python" - "$out/results.json" >"$out/medians.txt" <<'EOF'
import json, sys
with open(sys.argv[1]) as f:
    results = {r["command"]: r["median"] * 1000 for r in json.load(f)["results"]}
for step in ("run", "create", "start", "delete"):
    runc, kakoi = results[f"runc {step}"], results[f"kakoi {step}"]
    print(f"{step:<7} runc {runc:6.1f} ms  kakoi {kakoi:6.1f} ms  ratio {kakoi / runc:4.2f}")
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

main() {
    check_prerequisites
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    work=$(mktemp -d /tmp/kkrtbenchXXXX)

    prepare_bundles
    new_results_dir
    write_versions
    run_timing
}

main
