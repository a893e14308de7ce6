//! Election failover time across real processes: three `logstream
//! probe-election` contenders on one store (SQLite, or a three-member etcd
//! cluster with `STORE=etcd`); the leader is killed with
//! kill -9 at a random moment; we measure from the kill to the first fenced
//! write of the new leader (as recorded in the store's probe log).
//!
//! Run: `cargo bench -p logstream-host --bench election_failover`
//! Env: `TRIALS` (default 25), `LEASE_MS`/`HEARTBEAT_MS`/`MARGIN_MS`
//! (default 500/100/100, the host defaults), `STORE` (`sqlite`, the
//! default, or `etcd`).

#[allow(dead_code)]
#[path = "../tests/common/etcd.rs"]
mod etcd;
#[path = "../tests/common/probes.rs"]
mod probes;
#[path = "../tests/common/tls.rs"]
mod tls;

use std::time::Duration;

use logstream_host::probe::{read_probe_log, unix_micros};
use probes::{wait_until, Cluster};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let trials = env_or("TRIALS", 25) as usize;
    let timing = [
        env_or("LEASE_MS", 500),
        env_or("HEARTBEAT_MS", 100),
        env_or("MARGIN_MS", 100),
    ];
    let store_kind = std::env::var("STORE").unwrap_or_else(|_| "sqlite".into());
    let mut cluster = match store_kind.as_str() {
        "sqlite" => Cluster::new(timing),
        "etcd" => Cluster::on_etcd(timing),
        other => panic!("STORE={other:?}: use sqlite or etcd"),
    };
    for host in ["a", "b", "c"] {
        cluster.start(host);
    }
    let store = cluster.store();
    // A fixed-seed jitter so the kill lands at varied points of the heartbeat cycle.
    let mut jitter = 0x2545_f491_4f6c_dd1du64;
    let mut failovers_ms = Vec::with_capacity(trials);
    let (mut record, mut host) = cluster.wait_for_leader_above(0);
    for trial in 0..trials {
        wait_until("the leader's first write", || {
            read_probe_log(&*store, "probe")
                .unwrap()
                .iter()
                .any(|e| e.epoch == record.epoch)
        });
        jitter ^= jitter << 13;
        jitter ^= jitter >> 7;
        jitter ^= jitter << 17;
        std::thread::sleep(Duration::from_millis(jitter % timing[0]));
        let killed_at = unix_micros();
        cluster.kill9(&host);
        cluster.start(&host);
        let previous = record.epoch;
        (record, host) = cluster.wait_for_leader_above(previous);
        let mut first_write = None;
        wait_until("the new leader's first write", || {
            first_write = read_probe_log(&*store, "probe")
                .unwrap()
                .into_iter()
                .find(|e| e.epoch == record.epoch)
                .map(|e| e.written_at_us);
            first_write.is_some()
        });
        let ms = (first_write.unwrap().saturating_sub(killed_at)) as f64 / 1000.0;
        eprintln!(
            "trial {trial}: epoch {previous} -> {}: {ms:.1} ms",
            record.epoch
        );
        failovers_ms.push(ms);
    }
    cluster.stop();
    failovers_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| failovers_ms[((failovers_ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "election failover on {store_kind}, kill -9 -> new leader's first fenced write, {trials} trials, lease {} ms, heartbeat {} ms, margin {} ms:",
        timing[0], timing[1], timing[2]
    );
    println!(
        "  p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms; overhead beyond the lease p50 {:.0} ms, p99 {:.0} ms",
        pct(0.5),
        pct(0.99),
        failovers_ms[0],
        failovers_ms[failovers_ms.len() - 1],
        pct(0.5) - timing[0] as f64,
        pct(0.99) - timing[0] as f64,
    );
}
