#!/usr/bin/env bash
# The test command: build the components, then run every test of the
# workspace against them (host tests run the real `logstream` binary).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-plugins.sh
cargo test --workspace --all-targets "$@"
