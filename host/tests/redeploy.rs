//! A new version deployed mid-stream (issue 5): the active hands over
//! through a final checkpoint, the new version restores it, and the outputs
//! equal an uninterrupted run of the old version up to that checkpoint
//! followed by the new version from it. Real binary, real broker (tansu),
//! SQLite store, two hosts.
//!
//! The "new version" here is the same component with another config
//! (`every=100` → `every=37`): a new spec version, which hosts roll out the
//! same way as a new module, and whose outputs differ visibly from the old.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::hosts::Hosts;
use common::verify;
use common::{logstream, plugin, run, stderr};
use logstream_host::pipeline::kafka;
use logstream_host::store::checkpoint;
use logstream_host::store::election::read_leader;
use logstream_host::store::{transact, RetryPolicy, SqliteStore};

/// Bound on every wait of the test.
const RUN_BOUND: Duration = Duration::from_secs(300);
const OLD_CONFIG: &str = "every=100";
const NEW_CONFIG: &str = "every=37";
/// Records before and after the redeploy.
const BEFORE: u64 = 3_000;
const AFTER: u64 = 2_000;

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + RUN_BOUND;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Epoch of the unit's current, unreleased leader.
fn leader_epoch(store: &SqliteStore) -> Option<u64> {
    transact(store, &RetryPolicy::default(), |txn| {
        read_leader(txn, "lc/0")
    })
    .unwrap()
    .filter(|r| !r.released)
    .map(|r| r.epoch)
}

fn next_offset(store: &SqliteStore) -> Option<i64> {
    checkpoint::read_current_meta(store, "lc/0")
        .unwrap()
        .and_then(|m| m.offsets.get(&0).copied())
}

fn deploy(store_url: &str, config: &str) {
    let out = run(logstream()
        .arg("deploy")
        .arg(plugin("level_counter"))
        .args([
            "--name", "lc", "--input", "logs", "--output", "lc-out", "--config", config, "--store",
            store_url,
        ]));
    assert!(out.status.success(), "deploy {config}: {}", stderr(&out));
}

fn produce(brokers: &str, count: u64, seed: u64) {
    let out = run(logstream().args([
        "gen-logs",
        "--count",
        &count.to_string(),
        "--partitions",
        "1",
        "--seed",
        &seed.to_string(),
        "--topic",
        "logs",
        "--brokers",
        brokers,
    ]));
    assert!(out.status.success(), "gen-logs: {}", stderr(&out));
}

#[test]
fn a_redeploy_mid_stream_continues_from_the_handover_checkpoint() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.db");
    let store_url = format!("sqlite:{}", store_path.display());
    kafka::ensure_topics(&broker.address, &[("logs", 1), ("lc-out", 1)]).unwrap();
    deploy(&store_url, OLD_CONFIG);
    let store = SqliteStore::open(&store_path).unwrap();
    let mut hosts = Hosts::new(
        PathBuf::from(env!("CARGO_BIN_EXE_logstream")),
        store_url.clone(),
        broker.address.clone(),
        dir.path().to_path_buf(),
    );
    hosts.extra_args = vec!["--checkpoint-interval-ms".into(), "200".into()];
    hosts.start("a");
    wait_until("a leader for lc/0", || leader_epoch(&store).is_some());
    hosts.start("b");

    produce(&broker.address, BEFORE, 1);
    wait_until("the old version to checkpoint the first records", || {
        next_offset(&store) == Some(BEFORE as i64)
    });
    let old_epoch = leader_epoch(&store).expect("a leader");

    // The redeploy: every host stops the old version's unit (the active
    // hands over through a final checkpoint) and starts the new one.
    deploy(&store_url, NEW_CONFIG);
    wait_until("the new version to lead lc/0", || {
        leader_epoch(&store).is_some_and(|epoch| epoch > old_epoch)
    });
    produce(&broker.address, AFTER, 2);
    wait_until("the new version to checkpoint every record", || {
        next_offset(&store) == Some((BEFORE + AFTER) as i64)
    });
    hosts.stop_all();

    let input = verify::read_partition(&broker.address, "logs", 0, RUN_BOUND);
    assert_eq!(input.len() as u64, BEFORE + AFTER);
    let logstream_bin = Path::new(env!("CARGO_BIN_EXE_logstream"));
    let component = plugin("level_counter");
    let (mut want, _) = verify::run_local(
        logstream_bin,
        &component,
        OLD_CONFIG,
        &input[..BEFORE as usize],
        dir.path(),
        "old",
    );
    let (after, want_state) = verify::run_local_from(
        logstream_bin,
        &component,
        NEW_CONFIG,
        Some(&dir.path().join("old.state")),
        &input[BEFORE as usize..],
        dir.path(),
        "new",
    );
    want.extend(after);
    let got = verify::output_rows(
        verify::read_partition(&broker.address, "lc-out", 0, RUN_BOUND),
        "lc/0",
    );
    assert_eq!(got.len(), want.len(), "output count");
    assert_eq!(got, want, "outputs across the redeploy");
    let state = checkpoint::read_current(&store, "lc/0")
        .unwrap()
        .expect("a checkpoint")
        .state;
    assert_eq!(state, want_state, "final state");
}
