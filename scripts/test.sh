#!/usr/bin/env bash
# The test command: build the components, then run every test of the
# workspace against them (host tests run the real `logstream` binary).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-plugins.sh
# Default targets: libraries, binaries, integration and doc tests. The
# benchmarks (harness = false) are compiled by clippy in CI, not run here.
cargo test --workspace "$@"
