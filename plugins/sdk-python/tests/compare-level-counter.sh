#!/usr/bin/env bash
# Runs the Rust and the Python level-counter over the same input with
# `logstream run-local` and checks that their outputs are identical (outputs
# byte for byte; rejections by record, not by reason text, which differs).
#
#   compare-level-counter.sh RUST.wasm PY.wasm [LOGSTREAM]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rust_wasm=$1 py_wasm=$2 logstream=${3:-logstream}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

"$logstream" gen-logs --count 5000 --seed 7 --partitions 2 --out "$work/gen.jsonl"
# The edge cases three times over, so that summaries fall on them too.
cat "$work/gen.jsonl" "$here/edge-cases.jsonl" "$here/edge-cases.jsonl" \
    "$here/edge-cases.jsonl" > "$work/input.jsonl"

normalise() {
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    d = json.loads(line)
    if "rejected" in d:
        d["rejected"] = d["rejected"].split(":")[0]
    print(json.dumps(d, sort_keys=True))' "$1"
}

fail=0 passed=0 failed=0
for config in "" "every=1" "every=7,alerts=alerts" "alerts=pager,alert_level=WARN,every=3"; do
    for batch_args in "--batch 1" "--batch 1000" "--batch 13 --snapshot-every 5"; do
        run() {
            # shellcheck disable=SC2086
            "$logstream" run-local "$1" --name level-counter --input "$work/input.jsonl" \
                --config "$config" --output out --output alerts --output pager $batch_args \
                >"$2" 2>"$2.err"
        }
        run "$rust_wasm" "$work/rust.out"
        run "$py_wasm" "$work/py.out"
        label="config='$config' $batch_args"
        if cmp -s <(normalise "$work/rust.out") <(normalise "$work/py.out"); then
            passed=$((passed + 1))
            echo "same: $label: $(wc -l <"$work/py.out") lines ($(grep -c "^{[^{]*\"rejected\":" "$work/py.out") rejected); python: $(tail -1 "$work/py.out.err")"
        else
            failed=$((failed + 1))
            echo "DIFFERENT: $label"
            diff <(normalise "$work/rust.out") <(normalise "$work/py.out") | head -6 | cut -c1-300 || true
            fail=1
        fi
    done
done
echo "compare-level-counter: $passed passed, $failed failed"
exit $fail
