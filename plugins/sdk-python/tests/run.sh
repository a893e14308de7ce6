#!/usr/bin/env bash
# The Python SDK's tests: unit tests under the build machine's CPython
# (against generated bindings), then the component-level comparison of the
# Python and Rust level-counters. Needs the Rust plugins built
# (scripts/build-plugins.sh) and a `logstream` binary (default target/debug).
#
#   plugins/sdk-python/tests/run.sh [LOGSTREAM]
set -euo pipefail
cd "$(dirname "$0")/../../.."
logstream=${1:-target/debug/logstream}
venv=${LOGSTREAM_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/logstream/py-venv}

scripts/build-python-plugins.sh level_counter
bindings=$(mktemp -d); trap 'rm -rf "$bindings"' EXIT
"$venv/bin/componentize-py" -d wit -w log-processor bindings "$bindings" >/dev/null
PYTHONDONTWRITEBYTECODE=1 \
PYTHONPATH="$bindings:plugins/sdk-python:plugins/sdk-python/examples/level_counter" \
    "$venv/bin/python" -m unittest -v plugins/sdk-python/tests/test_sdk.py
plugins/sdk-python/tests/compare-level-counter.sh \
    target/wasm32-wasip2/plugin/level_counter.wasm \
    target/wasm32-wasip2/python/level_counter.wasm "$logstream"
