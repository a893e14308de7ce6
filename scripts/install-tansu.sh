#!/usr/bin/env bash
# Installs the test and demo broker, tansu, into ~/.cargo/bin unless the
# right version is already there (building it takes ~10 minutes).
set -euo pipefail
TANSU_VERSION=0.6.0
if ! "$HOME/.cargo/bin/tansu" --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; then
    echo "installing tansu $TANSU_VERSION (the Kafka-compatible broker; ~10 minutes, once)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi
