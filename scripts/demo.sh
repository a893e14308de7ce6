#!/usr/bin/env bash
# The main job: build everything, then run each example processor over
# 100,000 realistic records twice -- straight through, and restarting from a
# snapshot in a fresh instance after every batch, as a failover does -- and
# check that outputs and final states are byte-identical.
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-100000}
scripts/build-plugins.sh >/dev/null
cargo build --release -p logstream-host
logstream=target/release/logstream
plugins=target/wasm32-wasip2/plugin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "generating $RECORDS sample log records over 3 partitions"
"$logstream" gen-logs --count "$RECORDS" --partitions 3 --out "$work/input.jsonl"

status=0
for spec in "level_counter every=10000" "redactor " "dedup window=20000" "passthrough "; do
    name=${spec%% *}
    config=${spec#* }
    "$logstream" check "$plugins/$name.wasm" | sed -n '1p;4p'
    for every in 0 1; do
        "$logstream" run-local "$plugins/$name.wasm" --input "$work/input.jsonl" \
            --config "$config" --batch 500 --snapshot-every "$every" \
            --state-out "$work/$name.$every.state" > "$work/$name.$every.out"
    done
    if cmp -s "$work/$name.0.out" "$work/$name.1.out" && cmp -s "$work/$name.0.state" "$work/$name.1.state"; then
        echo "  $name: $(wc -l < "$work/$name.0.out") output lines; identical with a restart after every batch"
    else
        echo "  $name: OUTPUT DIFFERS after snapshot/restore" >&2
        status=1
    fi
    echo
done
exit $status
