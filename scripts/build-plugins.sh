#!/usr/bin/env bash
# Build every processor component (examples and test components) for
# wasm32-wasip2 into target/wasm32-wasip2/plugin/*.wasm, adding the Rust
# target first if it is missing.
#
#   scripts/build-plugins.sh            the Rust components
#   scripts/build-plugins.sh --python   also the Python examples
#                                       (scripts/build-python-plugins.sh:
#                                       componentize-py from PyPI, pinned)
#   scripts/build-plugins.sh --js       also the JavaScript examples
#                                       (scripts/build-js-plugins.sh:
#                                       componentize-js from npm, pinned)
# (--python --js builds both.)
set -euo pipefail
cd "$(dirname "$0")/.."

python=false js=false
for arg in "$@"; do
    case $arg in
        --python) python=true ;;
        --js) js=true ;;
        *) echo "usage: scripts/build-plugins.sh [--python] [--js]" >&2; exit 2 ;;
    esac
done

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "adding the wasm32-wasip2 Rust target" >&2
    rustup target add wasm32-wasip2
fi

COMPONENTS=(passthrough level-counter redactor dedup misbehave other-world state-v2)
args=()
for component in "${COMPONENTS[@]}"; do
    args+=(-p "$component")
done
cargo build --profile plugin --target wasm32-wasip2 "${args[@]}"
ls -l target/wasm32-wasip2/plugin/*.wasm >&2
if $python; then
    scripts/build-python-plugins.sh
fi
if $js; then
    scripts/build-js-plugins.sh
fi
