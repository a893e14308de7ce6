#!/usr/bin/env bash
# Build every processor component (examples and test components) for
# wasm32-wasip2 into target/wasm32-wasip2/plugin/*.wasm, adding the Rust
# target first if it is missing.
#
#   scripts/build-plugins.sh            the Rust components
#   scripts/build-plugins.sh --python   also the Python examples
#                                       (scripts/build-python-plugins.sh:
#                                       componentize-py from PyPI, pinned)
set -euo pipefail
cd "$(dirname "$0")/.."

python=false
case ${1:-} in
    "") ;;
    --python) python=true ;;
    *) echo "usage: scripts/build-plugins.sh [--python]" >&2; exit 2 ;;
esac

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
