//! End-to-end throughput: records/s from an input topic through a
//! `logstream host` (passthrough processor, checkpoint every second) to the
//! output topic, against a plain rdkafka consume→produce loop over the same
//! broker in the same run.
//!
//! Run: `scripts/build-plugins.sh && cargo bench -p logstream-host --bench pipeline_throughput`
//! Env: `RECORDS` (default 100,000), one partition, 180-byte records.

#[path = "../tests/common/broker.rs"]
mod broker;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use logstream_host::pipeline::kafka::{self, Outgoing, OutputProducer, PartitionReader};
use logstream_host::store::{checkpoint, SqliteStore};

/// Liveness bound of one measurement.
const RUN_BOUND: Duration = Duration::from_secs(600);

fn fill(brokers: &str, topic: &str, records: u64) {
    let producer = OutputProducer::open_streaming(brokers).unwrap();
    let value = [b'x'; 180];
    for i in 0..records {
        let record = Outgoing {
            topic,
            partition: 0,
            key: None,
            value: &value,
            headers: &[],
            id: None,
        };
        producer.send(&record).unwrap();
        if i % 10_000 == 9_999 {
            producer.flush().unwrap();
        }
    }
    producer.flush().unwrap();
}

/// The baseline: consume each record and produce it to another topic, with
/// delivery confirmed per batch, as the host does.
fn plain_loop(brokers: &str, records: u64) -> f64 {
    let reader = PartitionReader::open(brokers, "in", 0, Some(0)).unwrap();
    let producer = OutputProducer::open_streaming(brokers).unwrap();
    let started = Instant::now();
    let mut copied = 0u64;
    while copied < records {
        assert!(started.elapsed() < RUN_BOUND, "the plain loop stalled");
        let batch = reader
            .poll_batch(
                1_000,
                1 << 20,
                Duration::from_millis(100),
                Duration::from_millis(5),
            )
            .unwrap();
        for record in &batch {
            producer
                .send(&Outgoing {
                    topic: "plain-out",
                    partition: 0,
                    key: None,
                    value: &record.value,
                    headers: &[],
                    id: None,
                })
                .unwrap();
        }
        producer.flush().unwrap();
        copied += batch.len() as u64;
    }
    records as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let records: u64 = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let broker = broker::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    kafka::ensure_topics(&broker.address, &[("in", 1), ("out", 1), ("plain-out", 1)]).unwrap();
    fill(&broker.address, "in", records);

    let plain = plain_loop(&broker.address, records);

    let store_path = dir.path().join("store.db");
    let store_url = format!("sqlite:{}", store_path.display());
    let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/plugin/passthrough.wasm");
    let deployed = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .arg("deploy")
        .arg(&plugin)
        .args([
            "--name", "pt", "--input", "in", "--output", "out", "--store", &store_url,
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(deployed.success());
    let store = SqliteStore::open(&store_path).unwrap();
    let started = Instant::now();
    let mut host = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args([
            "host",
            "--host-id",
            "a",
            "--brokers",
            &broker.address,
            "--store",
            &store_url,
        ])
        .args(["--checkpoint-interval-ms", "1000"])
        // Not the default port: a host may already run on this machine.
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("LOGSTREAM_LOG", "warn")
        .env("LOGSTREAM_CACHE_DIR", dir.path().join("cache"))
        .spawn()
        .unwrap();
    // Steady state: from the first output to the last, on the output
    // partition's high watermark (start-up, election and the first
    // checkpoint excluded); then done when the checkpoint covers every
    // record (it lags by up to a second).
    let mut first_output: Option<(Instant, i64)> = None;
    let mut last_output = None;
    let mut done_at = None;
    while done_at.is_none() {
        assert!(started.elapsed() < RUN_BOUND, "the host stalled");
        if last_output.is_none() {
            let (_, produced) = kafka::watermarks(&broker.address, "out", 0).unwrap();
            if produced > 0 && first_output.is_none() {
                first_output = Some((Instant::now(), produced));
            }
            if produced == records as i64 {
                last_output = Some(Instant::now());
            }
        }
        let next = checkpoint::read_current_meta(&store, "pt/0")
            .unwrap()
            .and_then(|m| m.offsets.get(&0).copied());
        if next == Some(records as i64) {
            done_at = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = host.kill();
    let _ = host.wait();
    let (_, produced) = kafka::watermarks(&broker.address, "out", 0).unwrap();
    assert_eq!(
        produced, records as i64,
        "the host produced {produced} outputs for {records} records"
    );
    let hosted = records as f64 / done_at.unwrap().as_secs_f64();
    let (first_at, first_count) = first_output.expect("outputs seen");
    let steady = (records as i64 - first_count) as f64
        / (last_output.expect("all outputs seen") - first_at).as_secs_f64();
    println!("end-to-end, {records} records of 180 bytes, one partition, tansu sqlite storage:");
    println!("  plain consume->produce loop: {plain:.0} records/s");
    println!(
        "  logstream host (passthrough, checkpoint every 1 s), first to last output: {steady:.0} records/s; ratio {:.0} %",
        100.0 * steady / plain
    );
    println!(
        "  logstream host including start-up, election and the last checkpoint: {hosted:.0} records/s; ratio {:.0} %",
        100.0 * hosted / plain
    );
}
