#!/usr/bin/env bash
# Starts a Kafka-compatible broker for trying LogStream on one machine:
# tansu 0.6.0 (scripts/install-tansu.sh) with sqlite storage, as the tests
# run it (host/tests/common/broker.rs). Returns once the broker answers and
# leaves it running in the background; its data, log and pid are in DIR.
#
#   scripts/start-broker.sh [ADDRESS [DIR]]   # default 127.0.0.1:9092 ./tansu-data
#   kill "$(cat tansu-data/tansu.pid)"        # stops it
#
# By hand it is:
#   tansu broker --listener-url tcp://ADDRESS --advertised-listener-url tcp://ADDRESS \
#       --storage-engine sqlite://tansu.db &
#   # once it answers:
#   sqlite3 tansu.db 'CREATE INDEX IF NOT EXISTS logstream_header_topition_offset
#                     ON header (topition, offset_id)'
# The index matters: tansu 0.6.0's schema has none on the header table and
# looks up every fetched record's headers, so without it every fetch scans
# all headers ever stored and reads crawl past ~100,000 records.
set -euo pipefail
address=${1:-127.0.0.1:9092}
dir=${2:-tansu-data}
tansu=${TANSU:-$HOME/.cargo/bin/tansu}
[ -x "$tansu" ] || tansu=$(command -v tansu) || {
    echo "no tansu binary: run scripts/install-tansu.sh (or set TANSU)" >&2
    exit 1
}
host=${address%:*}
port=${address##*:}
answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }
if answers; then
    echo "something already listens on $address: stop it or pass another ADDRESS" >&2
    exit 1
fi

mkdir -p "$dir"
cd "$dir"
# tansu resolves the sqlite path relative to its working directory.
"$tansu" broker --listener-url "tcp://$address" --advertised-listener-url "tcp://$address" \
    --storage-engine sqlite://tansu.db </dev/null >>tansu.log 2>&1 &
pid=$!
echo "$pid" >tansu.pid

# Up to 30 s to answer; the schema exists by then.
for ((tries = 0; ; tries++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "tansu exited at start; the end of $dir/tansu.log:" >&2
        tail -n 20 tansu.log >&2
        exit 1
    fi
    answers && break
    if ((tries >= 300)); then
        echo "tansu did not answer on $address within 30 s (pid $pid; log $dir/tansu.log)" >&2
        exit 1
    fi
    sleep 0.1
done
python3 - <<'EOF'
import sqlite3
connection = sqlite3.connect("tansu.db", timeout=10)
connection.execute(
    "CREATE INDEX IF NOT EXISTS logstream_header_topition_offset ON header (topition, offset_id)"
)
connection.commit()
EOF
echo "tansu on $address (pid $pid; data and log in $dir)"
