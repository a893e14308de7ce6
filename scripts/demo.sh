#!/usr/bin/env bash
# The main job: a host pair failing over. Installs what it needs (the
# wasm32-wasip2 target, the tansu broker), builds the host and the plugins,
# then runs host/examples/failover_demo.rs: a real broker, two
# `logstream host` processes on the embedded SQLite store, level-counter
# over a stream of realistic log lines, kill -9 of the active mid-stream,
# and a report with the check that nothing was lost or duplicated.
# Env: RECORDS (default 200000), RATE (records/s, default 20000), KILL_AT
# (percent of the stream, default 40).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
scripts/install-deps.sh
scripts/install-tansu.sh
export TANSU="${TANSU:-$HOME/.cargo/bin/tansu}"
echo "building the host and the plugins (release)..."
scripts/build-plugins.sh >/dev/null
cargo build --release -q -p logstream-host --bin logstream --example failover_demo
exec target/release/examples/failover_demo
