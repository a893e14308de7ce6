//! Pipeline failover time: two `logstream host` processes, the real SQLite
//! store and a real broker (tansu, sqlite storage), one passthrough unit fed
//! about 1,000 records/s. Each trial kills the leading host with kill -9 at
//! a random moment (and restarts it as the passive); we measure from the
//! kill to the first output the new leader produces (the output's
//! CreateTime, stamped by the producer on this same machine).
//!
//! Run: `scripts/build-plugins.sh && cargo bench -p logstream-host --bench pipeline_failover`
//! Env: `TRIALS` (default 20).

#[path = "../tests/common/broker.rs"]
mod broker;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream_host::pipeline::kafka::{self, Outgoing, OutputProducer, PartitionReader};
use logstream_host::probe::{pid_of, unix_micros};
use logstream_host::store::election::read_leader;
use logstream_host::store::{transact, RetryPolicy, SqliteStore};

/// Pause between input records: about 1,000 records/s.
const INPUT_INTERVAL: Duration = Duration::from_millis(1);
/// Liveness bound of one trial.
const TRIAL_BOUND: Duration = Duration::from_secs(60);

fn spawn_host(id: &str, store: &str, brokers: &str, dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args([
            "host",
            "--host-id",
            id,
            "--brokers",
            brokers,
            "--store",
            store,
        ])
        .args(["--checkpoint-interval-ms", "200"])
        .env("LOGSTREAM_LOG", "warn")
        .env("LOGSTREAM_CACHE_DIR", dir.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn leader(store: &SqliteStore) -> Option<(u64, u32)> {
    transact(store, &RetryPolicy::default(), |txn| {
        read_leader(txn, "pt/0")
    })
    .unwrap()
    .filter(|r| !r.released)
    .and_then(|r| Some((r.epoch, pid_of(&r.holder)?)))
}

fn main() {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let broker = broker::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.db");
    let store_url = format!("sqlite:{}", store_path.display());
    kafka::ensure_topics(&broker.address, &[("in", 1), ("out", 1)]).unwrap();
    let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/plugin/passthrough.wasm");
    let deployed = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .arg("deploy")
        .arg(&plugin)
        .args([
            "--name", "pt", "--input", "in", "--output", "out", "--store", &store_url,
        ])
        .status()
        .unwrap();
    assert!(deployed.success());
    let store = SqliteStore::open(&store_path).unwrap();
    let mut hosts = vec![
        (
            "a",
            spawn_host("a", &store_url, &broker.address, dir.path()),
        ),
        (
            "b",
            spawn_host("b", &store_url, &broker.address, dir.path()),
        ),
    ];

    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (stop, brokers) = (stop.clone(), broker.address.clone());
        std::thread::spawn(move || {
            let producer = OutputProducer::open(&brokers).unwrap();
            let value = [b'x'; 180];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let record = Outgoing {
                    topic: "in",
                    partition: 0,
                    key: None,
                    value: &value,
                    headers: &[],
                    id: None,
                };
                producer.send(&record).unwrap();
                sent += 1;
                if sent.is_multiple_of(10) {
                    producer.flush().unwrap();
                }
                std::thread::sleep(INPUT_INTERVAL);
            }
            producer.flush().unwrap();
        })
    };

    let outputs = PartitionReader::open(&broker.address, "out", 0, Some(0)).unwrap();
    let mut jitter = 0x2545_f491_4f6c_dd1du64;
    let mut failovers_ms = Vec::new();
    for trial in 0..trials {
        let deadline = Instant::now() + TRIAL_BOUND;
        let (epoch, pid) = loop {
            if let Some(current) = leader(&store) {
                break current;
            }
            assert!(Instant::now() < deadline, "no leader");
            std::thread::sleep(Duration::from_millis(10));
        };
        // Let the leader run a while, then kill it at a random moment.
        jitter ^= jitter << 13;
        jitter ^= jitter >> 7;
        jitter ^= jitter << 17;
        let settle = Instant::now() + Duration::from_millis(1000 + jitter % 1000);
        while Instant::now() < settle {
            outputs
                .poll_batch(10_000, 64 << 20, Duration::from_millis(50), Duration::ZERO)
                .unwrap();
        }
        let killed_at_ms = (unix_micros() / 1000) as i64;
        let index = hosts
            .iter()
            .position(|(_, child)| child.id() == pid)
            .expect("the leader is one of ours");
        let (id, mut child) = hosts.remove(index);
        child.kill().unwrap();
        child.wait().unwrap();
        hosts.push((id, spawn_host(id, &store_url, &broker.address, dir.path())));
        let first_output_ms = loop {
            assert!(
                Instant::now() < deadline,
                "no output after the kill in trial {trial}"
            );
            let batch = outputs
                .poll_batch(10_000, 64 << 20, Duration::from_millis(50), Duration::ZERO)
                .unwrap();
            if let Some(record) = batch.iter().find(|r| r.timestamp_ms > killed_at_ms) {
                break record.timestamp_ms;
            }
        };
        let ms = (first_output_ms - killed_at_ms) as f64;
        let new_epoch = leader(&store).map_or(0, |(e, _)| e);
        eprintln!(
            "trial {trial}: epoch {epoch} -> {new_epoch}: first output {ms:.0} ms after kill -9"
        );
        failovers_ms.push(ms);
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    for (_, mut child) in hosts {
        let _ = child.kill();
        let _ = child.wait();
    }
    failovers_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| failovers_ms[((failovers_ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "pipeline failover, kill -9 of the leading host -> first output of the new leader, {trials} trials, lease 500 ms, heartbeat 100 ms, margin 100 ms, checkpoint every 200 ms, ~1,000 records/s:"
    );
    println!(
        "  p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms; beyond the 500 ms lease: p50 {:.0} ms, p99 {:.0} ms",
        pct(0.5),
        pct(0.99),
        failovers_ms[0],
        failovers_ms[failovers_ms.len() - 1],
        pct(0.5) - 500.0,
        pct(0.99) - 500.0
    );
}
