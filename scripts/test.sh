#!/usr/bin/env bash
# The test command: build the components, then run every test of the
# workspace against them (host tests run the real `logstream` binary).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
stage() { printf '[test %02d:%02d] %s\n' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)) "$*" >&2; }
# protoc for the build; etcd and iproute2 for the tests that start an etcd
# cluster and simulated machines; chromium for the web view's browser test.
stage "system packages"
scripts/install-deps.sh --test
stage "processor components (Rust, then Python and JavaScript)"
scripts/build-plugins.sh --python --js
stage "cargo test (the workspace, the host with fail points)"
# Default targets: libraries, binaries, integration and doc tests. The
# benchmarks (harness = false) are compiled by clippy in CI, not run here.
# The host is built with its fault-injection points (`failpoints`, armed only
# by the FAILPOINTS variable) so the crash-only tests can make a unit panic.
cargo test --workspace --features logstream-host/failpoints "$@"
# The docs as a user runs them: every shell block of README.md, docs/*.md and
# the SDK's README marked runnable, in order, against a broker started as the
# docs say and the binaries just built (failpoints stay unarmed); fails on an
# exit status or an expected line missing, and on an unmarked shell block.
stage "the docs' commands"
scripts/docs-test.py
stage "the Python SDK"
# The Python SDK: its unit tests under CPython, and the Python level-counter
# against the Rust one over the same records (run-local, batch 1 / 1000 /
# snapshots), with the binary the tests just built.
plugins/sdk-python/tests/run.sh "${CARGO_TARGET_DIR:-target}/debug/logstream"
stage "the JavaScript SDK"
# The same for JavaScript: its unit tests under Node, and the JS redactor
# against the Rust one.
plugins/sdk-js/tests/run.sh "${CARGO_TARGET_DIR:-target}/debug/logstream"
# The decoders of untrusted bytes (record batches from the host, stored
# checkpoints) fuzzed at a larger case count than the default 256, bounded
# to about a minute on 2 cores; `FUZZ_CASES` scales it.
stage "fuzzing the decoders"
cases=${FUZZ_CASES:-10000}
PROPTEST_CASES=$((cases * 2)) cargo test -p logstream-sdk --lib fuzz
PROPTEST_CASES=$cases cargo test -p logstream-host --features failpoints --lib store::checkpoint::tests::fuzz
PROPTEST_CASES=$cases cargo test -p logstream-host --features failpoints --lib pipeline::record_batch
stage "done"
