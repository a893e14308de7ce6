#!/usr/bin/env bash
# The main job: a host pair failing over. Installs what it needs (the
# wasm32-wasip2 target, the tansu broker), builds the host and the plugins,
# then runs host/examples/failover_demo.rs: a real broker, two
# `logstream host` processes on the embedded SQLite store, level-counter
# over a stream of realistic log lines, kill -9 of the active mid-stream,
# and a report with the check that nothing was lost or duplicated.
# Env: RECORDS (default 200000), RATE (records/s, default 20000), KILL_AT
# (percent of the stream, default 40).
#
#   scripts/demo.sh --nodes   each host on a simulated machine of its own (a
#                             network namespace with separate links to the
#                             store and to the broker), the store a
#                             three-member etcd cluster; at KILL_AT every
#                             link of the active's machine is cut instead of
#                             a kill -9, until the other host leads every
#                             unit and 2 s more, then healed: the old active
#                             rejoins as the passive. Same report and check.
#                             Needs root; installs etcd-server and iproute2
#                             (scripts/install-deps.sh --test).
set -euo pipefail
cd "$(dirname "$0")/.."

variant=()
case ${1:-} in
    "") ;;
    --nodes) variant=(--nodes) ;;
    *)
        echo "usage: scripts/demo.sh [--nodes]" >&2
        exit 2
        ;;
esac

# A line per stage with the time since the start, and cargo's own progress
# under it: on a fresh machine the first run builds for minutes, and no
# minute of it is silent.
started=$SECONDS
stage() { printf '[demo %02d:%02d] %s\n' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)) "$*" >&2; }

stage "Rust target wasm32-wasip2 and system packages"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
if ((${#variant[@]})); then
    scripts/install-deps.sh --test
else
    scripts/install-deps.sh
fi
stage "broker: tansu (built once into ~/.cargo/bin, ~10 minutes on 2 cores)"
scripts/install-tansu.sh
export TANSU="${TANSU:-$HOME/.cargo/bin/tansu}"
stage "processor components (wasm32-wasip2)"
scripts/build-plugins.sh
stage "the host and the demo (release; a few minutes the first time)"
cargo build --release -p logstream-host --bin logstream --example failover_demo
stage "the demo"
exec target/release/examples/failover_demo "${variant[@]}"
