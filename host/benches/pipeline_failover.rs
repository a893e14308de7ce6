//! Pipeline failover time: two `logstream host` processes, the real SQLite
//! store and a real broker (tansu, sqlite storage), one unit fed about
//! 1,000 records/s. Each trial kills the leading host with kill -9 at a
//! random moment (and restarts it as the passive); we measure from the kill
//! to the first output the new leader produces (the first output whose
//! CreateTime, stamped by the producer on this same machine, is at or after
//! the new leader's claim, its `claimed_at_unix_ms` log field), and the
//! takeover overhead: from that claim to that output.
//!
//! By default the unit runs `passthrough` (no state). With `STATE_BYTES=N`
//! it runs `dedup` with a window of about N bytes of snapshot, filled by
//! unique records before the hosts start, so every checkpoint, standby
//! refresh and takeover carries that much state.
//!
//! Run: `scripts/build-plugins.sh && cargo bench -p logstream-host --bench pipeline_failover`
//! With `STOP=term` the leading host gets SIGTERM instead (graceful
//! handover: final checkpoint, release) and the figure is from the signal
//! to the passive's first output.
//!
//! With `STORE=etcd` the hosts share a three-member etcd cluster instead of
//! the SQLite file. With `STOP=isolate` (etcd only, needs root) each host
//! runs on a simulated machine of its own (a network namespace) and each
//! trial cuts every link of the leader's machine instead of killing it;
//! the links return after the trial and the old leader rejoins as the
//! passive.
//!
//! Env: `TRIALS` (default 20), `STATE_BYTES` (default: none, passthrough),
//! `STOP` (`kill`, default, `term` or `isolate`), `STORE` (`sqlite`,
//! default, or `etcd`).

#[allow(dead_code)]
#[path = "../tests/common/broker.rs"]
mod broker;
#[allow(dead_code)]
#[path = "../tests/common/etcd.rs"]
mod etcd;
#[allow(dead_code)]
#[path = "../tests/common/netns.rs"]
mod netns;
#[path = "../tests/common/tls.rs"]
mod tls;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream_host::pipeline::kafka::{
    self, is_fence_record, Outgoing, OutputProducer, PartitionReader,
};
use logstream_host::probe::{pid_of, unix_micros};
use logstream_host::store::election::read_leader;
use logstream_host::store::{transact, KvStore, RetryPolicy, SqliteStore};

/// Pause between input records: about 1,000 records/s.
const INPUT_INTERVAL: Duration = Duration::from_millis(1);
/// Snapshot bytes per dedup key (`("unknown", u64)` in postcard: length,
/// 7 bytes, varint hash of up to 10 bytes), rounded.
const DEDUP_KEY_BYTES: u64 = 17;
/// Bound on processing the prefilled records before the trials.
const CATCH_UP_BOUND: Duration = Duration::from_secs(600);
/// Liveness bound of one trial.
const TRIAL_BOUND: Duration = Duration::from_secs(60);

/// Where the hosts run: here, or host `a` on node 1 and `b` on node 2.
static NODES: std::sync::OnceLock<netns::Nodes> = std::sync::OnceLock::new();

fn node_of(id: &str) -> u32 {
    if id == "a" {
        1
    } else {
        2
    }
}

fn spawn_host(id: &str, store: &str, brokers: &str, dir: &std::path::Path) -> Child {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_logstream"));
    let mut command = match NODES.get() {
        Some(nodes) => nodes.command(node_of(id), binary),
        None => Command::new(binary),
    };
    command
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
        // Two hosts on one machine: each on a free admin port.
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("LOGSTREAM_LOG", "info")
        .env("LOGSTREAM_CACHE_DIR", dir.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(host_log(dir)))
        .spawn()
        .unwrap()
}

/// A fresh log file per host process; the takeover phases are read back
/// from them at the end.
fn host_log(dir: &std::path::Path) -> std::fs::File {
    static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
    std::fs::File::create(dir.join(format!("host-{n}.log"))).unwrap()
}

/// A 180-byte record value no other call returns.
fn unique_value(n: u64) -> Vec<u8> {
    let mut value = format!("{{\"message\":\"record {n:020}\"}}").into_bytes();
    value.resize(180, b' ');
    value
}

/// One record into partition 0 of `in`.
fn send_input(producer: &OutputProducer, value: &[u8]) {
    producer
        .send(&Outgoing {
            topic: "in",
            partition: 0,
            key: None,
            value,
            headers: &[],
            id: None,
        })
        .unwrap();
}

/// `count` unique records into `in`, so dedup's window starts full.
fn prefill_unique(brokers: &str, count: u64) {
    let producer = OutputProducer::open_streaming(brokers).unwrap();
    for n in 0..count {
        send_input(&producer, &unique_value(n));
    }
    producer.flush().unwrap();
    eprintln!("prefilled {count} unique records");
}

/// `epoch -> claimed_at_unix_ms` from the hosts' `became leader` lines.
fn claims(dir: &std::path::Path) -> std::collections::HashMap<u64, i64> {
    let field = |line: &str, name: &str| -> Option<i64> {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        let digits: String = line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let mut claims = std::collections::HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if let (Some(epoch), Some(at)) =
                    (field(line, "epoch"), field(line, "claimed_at_unix_ms"))
                {
                    claims.insert(epoch as u64, at);
                }
            }
        }
    }
    claims
}

fn leader(store: &dyn KvStore) -> Option<(u64, u32)> {
    transact(store, &RetryPolicy::default(), |txn| {
        read_leader(txn, "pt/0")
    })
    .unwrap()
    .filter(|r| !r.released)
    .and_then(|r| Some((r.epoch, pid_of(&r.holder)?)))
}

/// How each trial stops the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
    Isolate,
}

fn main() {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let stop_kind = match std::env::var("STOP").as_deref() {
        Ok("term") => Stop::Term,
        Ok("kill") | Err(_) => Stop::Kill,
        Ok("isolate") => Stop::Isolate,
        Ok(other) => panic!("STOP is `kill`, `term` or `isolate`, not {other:?}"),
    };
    let on_etcd = match std::env::var("STORE").as_deref() {
        Ok("sqlite") | Err(_) => false,
        Ok("etcd") => true,
        Ok(other) => panic!("STORE is `sqlite` or `etcd`, not {other:?}"),
    };
    assert!(
        stop_kind != Stop::Isolate || on_etcd,
        "STOP=isolate needs STORE=etcd: hosts on separate machines cannot share a SQLite file"
    );
    let (store_ip, broker_ip) = if stop_kind == Stop::Isolate {
        let nodes = netns::Nodes::up(2).unwrap_or_else(|netns::Skip(reason)| {
            panic!("STOP=isolate needs network namespaces: {reason}")
        });
        let ips = (nodes.store_ip().to_string(), nodes.broker_ip().to_string());
        let _ = NODES.set(nodes);
        ips
    } else {
        ("127.0.0.1".to_string(), "127.0.0.1".to_string())
    };
    let broker = broker::Broker::start_on(&broker_ip);
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.db");
    let etcd_cluster = on_etcd.then(|| etcd::EtcdCluster::start_on(&store_ip, 3));
    let store_url = match &etcd_cluster {
        Some(cluster) => cluster.url(),
        None => format!("sqlite:{}", store_path.display()),
    };
    kafka::ensure_topics(&broker.address, &[("in", 1), ("out", 1)]).unwrap();
    let state_bytes: Option<u64> = std::env::var("STATE_BYTES")
        .ok()
        .map(|v| v.parse().expect("STATE_BYTES is a byte count"));
    let mut prefill = 0;
    let (plugin, config) = match state_bytes {
        None => ("passthrough", String::new()),
        Some(bytes) => {
            let window = (bytes / DEDUP_KEY_BYTES).max(1);
            prefill = window + 1_000;
            prefill_unique(&broker.address, prefill);
            ("dedup", format!("window={window}"))
        }
    };
    let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/wasm32-wasip2/plugin/{plugin}.wasm"));
    let deployed = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .arg("deploy")
        .arg(&plugin)
        .args([
            "--name", "pt", "--input", "in", "--output", "out", "--store", &store_url, "--config",
            &config,
        ])
        .status()
        .unwrap();
    assert!(deployed.success());
    let store: Box<dyn KvStore> = match &etcd_cluster {
        Some(_) => etcd::EtcdCluster::open(&store_url),
        None => Box::new(SqliteStore::open(&store_path).unwrap()),
    };
    let store = store.as_ref();
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
            let producer = OutputProducer::open_streaming(&brokers).unwrap();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Unique, so dedup emits each one.
                send_input(&producer, &unique_value(u64::MAX - sent));
                sent += 1;
                if sent.is_multiple_of(10) {
                    producer.flush().unwrap();
                }
                std::thread::sleep(INPUT_INTERVAL);
            }
            producer.flush().unwrap();
        })
    };

    // Trials start in the steady state, once the prefilled backlog is
    // through: failover under a backlog is another measurement.
    let caught_up_by = Instant::now() + CATCH_UP_BOUND;
    while kafka::watermarks(&broker.address, "out", 0).unwrap().1 < prefill as i64 {
        assert!(
            Instant::now() < caught_up_by,
            "the prefill was not processed in time"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let outputs = PartitionReader::open(&broker.address, "out", 0, Some(prefill as i64)).unwrap();
    let mut jitter = 0x2545_f491_4f6c_dd1du64;
    // (signal at, epoch of the new leader) per trial; the figures come
    // from the new leader's claim in its log and the output topic at the
    // end: after SIGTERM the old leader still produces the batch it is in,
    // so "the first output after the signal" need not be the new leader's.
    let mut trials_done = Vec::new();
    for trial in 0..trials {
        let deadline = Instant::now() + TRIAL_BOUND;
        let (epoch, pid) = loop {
            if let Some(current) = leader(store) {
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
        let isolated = match stop_kind {
            Stop::Isolate => {
                let id = hosts[index].0;
                NODES.get().unwrap().cut(node_of(id), netns::Link::All);
                Some(id)
            }
            Stop::Term | Stop::Kill => {
                let (id, mut child) = hosts.remove(index);
                if stop_kind == Stop::Term {
                    let sent = Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status()
                        .unwrap();
                    assert!(sent.success());
                } else {
                    child.kill().unwrap();
                }
                child.wait().unwrap();
                hosts.push((id, spawn_host(id, &store_url, &broker.address, dir.path())));
                None
            }
        };
        let first_output_ms = loop {
            assert!(
                Instant::now() < deadline,
                "no output after the kill in trial {trial}"
            );
            let batch = outputs
                .poll_batch(10_000, 64 << 20, Duration::from_millis(50), Duration::ZERO)
                .unwrap();
            if let Some(record) = batch
                .iter()
                .find(|r| r.timestamp_ms > killed_at_ms && !is_fence_record(r))
            {
                break record.timestamp_ms;
            }
        };
        let new_epoch = loop {
            match leader(store) {
                Some((e, _)) if e > epoch => break e,
                _ => {
                    assert!(Instant::now() < deadline, "no new leader in trial {trial}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        if let Some(id) = isolated {
            // The links return; the old leader rejoins as the passive.
            NODES.get().unwrap().heal(node_of(id), netns::Link::All);
        }
        eprintln!(
            "trial {trial}: epoch {epoch} -> {new_epoch}: an output {} ms after the signal",
            first_output_ms - killed_at_ms
        );
        trials_done.push((killed_at_ms, new_epoch));
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    for (_, mut child) in hosts {
        let _ = child.kill();
        let _ = child.wait();
    }
    if std::env::var_os("SHOW_PHASES").is_some() {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    if line.contains("takeover phase") {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
    let claimed = claims(dir.path());
    let mut output_times: Vec<i64> = {
        let reader = PartitionReader::open(&broker.address, "out", 0, Some(0)).unwrap();
        let (_, high) = kafka::watermarks(&broker.address, "out", 0).unwrap();
        let mut times = Vec::new();
        let mut next = 0;
        while next < high {
            let batch = reader
                .poll_batch(10_000, 64 << 20, Duration::from_secs(1), Duration::ZERO)
                .unwrap();
            next = batch.last().map_or(next, |r| r.offset + 1);
            // Fence records are the new leader's, but not outputs.
            times.extend(
                batch
                    .iter()
                    .filter(|r| !is_fence_record(r))
                    .map(|r| r.timestamp_ms),
            );
        }
        times
    };
    output_times.sort_unstable();
    let first_at_or_after = |at: i64| -> Option<i64> {
        let i = output_times.partition_point(|t| *t < at);
        output_times.get(i).copied()
    };
    let (mut failovers_ms, mut overheads_ms) = (Vec::new(), Vec::new());
    for (signal_ms, epoch) in &trials_done {
        let Some(claim_ms) = claimed.get(epoch) else {
            continue;
        };
        if let Some(first) = first_at_or_after(*claim_ms) {
            failovers_ms.push((first - signal_ms) as f64);
            overheads_ms.push((first - claim_ms) as f64);
        }
    }
    assert!(!failovers_ms.is_empty(), "no claim found in the host logs");
    let pct = |values: &[f64], p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
    failovers_ms.sort_by(f64::total_cmp);
    overheads_ms.sort_by(f64::total_cmp);
    let state = match state_bytes {
        None => "passthrough (no state)".to_string(),
        Some(bytes) => format!("dedup with ~{bytes} bytes of state"),
    };
    println!(
        "pipeline failover on {}, {state}, {} of the leading host, {trials} trials, lease 500 ms, heartbeat 100 ms, margin 100 ms, checkpoint every 200 ms, ~1,000 records/s:",
        if on_etcd { "a three-member etcd cluster" } else { "SQLite" },
        match stop_kind {
            Stop::Term => "SIGTERM",
            Stop::Kill => "kill -9",
            Stop::Isolate => "every network link cut",
        }
    );
    println!(
        "  signal -> first output of the new leader ({} trials): p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms",
        failovers_ms.len(),
        pct(&failovers_ms, 0.5),
        pct(&failovers_ms, 0.99),
        failovers_ms[0],
        failovers_ms[failovers_ms.len() - 1],
    );
    println!(
        "  takeover overhead, claim -> first output: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(&overheads_ms, 0.5),
        pct(&overheads_ms, 0.99),
        overheads_ms[overheads_ms.len() - 1],
    );
}
