#!/usr/bin/env bash
# Build the JavaScript processor components (plugins/sdk-js/examples/*/app.js)
# with componentize-js into target/wasm32-wasip2/js/<name>.wasm, installing
# the pinned toolchain (plugins/sdk-js/package.json + package-lock.json, with
# `npm ci`) first when it is missing or differs. The tools live outside the
# checkout (default ~/.cache/logstream/js-tools, env LOGSTREAM_JS_TOOLS), as
# the Python SDK's virtual environment does.
#
#   scripts/build-js-plugins.sh [EXAMPLE ...]    (default: all of them)
set -euo pipefail
cd "$(dirname "$0")/.."

sdk=plugins/sdk-js
tools=${LOGSTREAM_JS_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/logstream/js-tools}
cjs=$tools/node_modules/.bin/componentize-js

if ! cmp -s "$sdk/package-lock.json" "$tools/package-lock.json" || [ ! -x "$cjs" ]; then
    command -v npm >/dev/null || { echo "build-js-plugins: needs node (>= 20) and npm" >&2; exit 1; }
    echo "installing $sdk/package.json (componentize-js $(sed -n 's/.*"@bytecodealliance\/componentize-js": "\(.*\)".*/\1/p' "$sdk/package.json")) into $tools" >&2
    mkdir -p "$tools"
    cp "$sdk/package.json" "$sdk/package-lock.json" "$tools/"
    (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

out=target/wasm32-wasip2/js
mkdir -p "$out"
if [ $# -eq 0 ]; then
    set -- $(cd "$sdk/examples" && ls)
fi
for example in "$@"; do
    # http and fetch-event would import wasi:http, which no processor may use.
    "$cjs" "$sdk/examples/$example/app.js" --wit wit --world-name log-processor \
        --disable http fetch-event -o "$out/$example.wasm" >&2
    echo "componentize-js: $example -> $out/$example.wasm ($(stat -c %s "$out/$example.wasm") bytes)"
done
