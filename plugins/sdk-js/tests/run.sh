#!/usr/bin/env bash
# The JavaScript SDK's tests: build the JS redactor, run the SDK's unit tests
# under Node (node:test, no dependencies; the WIT import host-log is mapped to
# tests/host-stub.mjs), then the component-level comparison of the JS and
# Rust redactors. Needs the Rust redactor (RUST_REDACTOR, default
# target/wasm32-wasip2/plugin/redactor.wasm from scripts/build-plugins.sh) and
# a `logstream` binary (default target/debug/logstream).
#
#   plugins/sdk-js/tests/run.sh [LOGSTREAM]
set -euo pipefail
cd "$(dirname "$0")/../../.."
logstream=${1:-target/debug/logstream}
rust_redactor=${RUST_REDACTOR:-target/wasm32-wasip2/plugin/redactor.wasm}

scripts/build-js-plugins.sh redactor
node --import ./plugins/sdk-js/tests/register.mjs --test plugins/sdk-js/tests/test_sdk.mjs
"$logstream" check target/wasm32-wasip2/js/redactor.wasm
plugins/sdk-js/tests/compare-redactor.sh "$rust_redactor" target/wasm32-wasip2/js/redactor.wasm "$logstream"
