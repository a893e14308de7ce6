#!/usr/bin/env bash
# Build the Python processor components (plugins/sdk-python/examples/*) with
# componentize-py into target/wasm32-wasip2/python/<name>.wasm, installing the
# pinned toolchain (plugins/sdk-python/requirements.txt) into a virtual
# environment first when it is missing. The environment lives outside the
# checkout (default ~/.cache/logstream/py-venv, env LOGSTREAM_PY_VENV), so a
# fresh clone reuses it, as ~/.cargo/bin keeps the broker.
#
#   scripts/build-python-plugins.sh [EXAMPLE ...]    (default: all of them)
set -euo pipefail
cd "$(dirname "$0")/.."

sdk=plugins/sdk-python
venv=${LOGSTREAM_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/logstream/py-venv}
pin=$(grep -E '^componentize-py==' "$sdk/requirements.txt")

if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py ${pin#componentize-py==}"; then
    echo "installing $pin into $venv" >&2
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" || {
        echo "build-python-plugins: python3 cannot make a virtual environment; install python3-venv (scripts/install-deps.sh --test does)" >&2
        exit 1
    }
    "$venv/bin/pip" install --quiet -r "$sdk/requirements.txt"
fi

out=target/wasm32-wasip2/python
mkdir -p "$out"
if [ $# -eq 0 ]; then
    set -- $(cd "$sdk/examples" && ls)
fi
for example in "$@"; do
    echo "componentize-py: $example (about 10 s)" >&2
    "$venv/bin/componentize-py" -d wit -w log-processor componentize \
        -p "$sdk/examples/$example" -p "$sdk" app -o "$out/$example.wasm" >/dev/null
done
ls -l "$out"/*.wasm >&2
