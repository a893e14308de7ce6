#!/usr/bin/env bash
# Runs the Rust and the JavaScript redactor over the same input with
# `logstream run-local` and checks that their outputs are identical, byte for
# byte (rejection reasons included), for every configuration the Rust
# redactor accepts and three batchings; and that both refuse the same bad
# configurations with the same message.
#
#   compare-redactor.sh RUST.wasm JS.wasm [LOGSTREAM]
#
# Input: `gen-logs` output, tests/edge-cases.jsonl (twice, at different batch
# positions), huge values and 3,000 seeded random texts (tests/gen-extra.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rust_wasm=$1 js_wasm=$2 logstream=${3:-logstream}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

"$logstream" gen-logs --count 5000 --seed 7 --partitions 2 --out "$work/gen.jsonl"
python3 "$here/gen-extra.py" 3000 11 > "$work/extra.jsonl"
cat "$work/gen.jsonl" "$here/edge-cases.jsonl" "$work/extra.jsonl" "$here/edge-cases.jsonl" \
    > "$work/input.jsonl"
echo "input: $(wc -l <"$work/input.jsonl") records, $(wc -c <"$work/input.jsonl") bytes"

rate() { sed -n 's/.*(\([0-9]*\) records\/s).*/\1/p' "$1" | tail -1; }

fail=0 passed=0 failed=0
for config in "" "email" "ipv4" "bearer" "email,ipv4" "email,bearer" "ipv4,bearer" \
        " bearer , email " "email,ipv4,bearer,email"; do
    for batch_args in "--batch 1" "--batch 1000" "--batch 13 --snapshot-every 5"; do
        run() {
            # shellcheck disable=SC2086
            "$logstream" run-local "$1" --name redactor --input "$work/input.jsonl" \
                --config "$config" --output out $batch_args >"$2" 2>"$2.err"
        }
        run "$rust_wasm" "$work/rust.out"
        run "$js_wasm" "$work/js.out"
        label="config='$config' $batch_args"
        if cmp -s "$work/rust.out" "$work/js.out"; then
            passed=$((passed + 1))
            echo "same: $label: $(wc -l <"$work/js.out") lines ($(grep -c '"rejected":' "$work/js.out") rejected); records/s js $(rate "$work/js.out.err"), rust $(rate "$work/rust.out.err")"
        else
            failed=$((failed + 1)); fail=1
            echo "DIFFERENT: $label"
            diff "$work/rust.out" "$work/js.out" | head -6 | cut -c1-300 || true
            tail -2 "$work/js.out.err"
        fi
    done
done

# Bad configurations: both refuse (exit 1) with the same message.
printf '%s\n' '{"value":"x"}' > "$work/one.jsonl"
for config in "phone" "email," ",email" "email,,ipv4" "EMAIL" "email ipv4" " , " 'a"b\c'; do
    refuse() {
        if "$logstream" run-local "$1" --name redactor --input "$work/one.jsonl" \
            --config "$config" --output out >/dev/null 2>"$2"; then echo accepted >>"$2"; fi
    }
    refuse "$rust_wasm" "$work/rust.err"
    refuse "$js_wasm" "$work/js.err"
    if cmp -s "$work/rust.err" "$work/js.err" && ! grep -q accepted "$work/js.err"; then
        passed=$((passed + 1))
        echo "same refusal: config='$config': $(tail -1 "$work/js.err")"
    else
        failed=$((failed + 1)); fail=1
        echo "DIFFERENT refusal: config='$config'"; diff "$work/rust.err" "$work/js.err" || true
    fi
done
echo "compare-redactor: $passed passed, $failed failed"
exit $fail
