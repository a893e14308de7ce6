//! Checking a pipeline run against an uninterrupted one: read partitions
//! back, run `logstream run-local` over one input partition, and decode the
//! outputs' ids. Shared by the failover tests and the failover demo
//! (`examples/failover_demo.rs`, which includes this file by path), so it
//! takes the binary and the component as arguments.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use logstream_host::pipeline::kafka::{self, PartitionReader, ID_HEADER};
use logstream_host::record::LogRecord;

/// One output as the check compares it: source offset, index among that
/// record's outputs, value.
pub type OutputRow = (i64, u64, String);

/// Every record of a partition, up to its high watermark at the call;
/// panics after `bound`.
pub fn read_partition(
    brokers: &str,
    topic: &str,
    partition: i32,
    bound: Duration,
) -> Vec<LogRecord> {
    let (_, high) = kafka::watermarks(brokers, topic, partition).unwrap();
    let reader = PartitionReader::open(brokers, topic, partition, Some(0)).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + bound;
    while records.last().map_or(0, |r: &LogRecord| r.offset + 1) < high {
        assert!(
            Instant::now() < deadline,
            "reading {topic}/{partition} timed out"
        );
        records.extend(
            reader
                .poll_batch(
                    10_000,
                    64 << 20,
                    Duration::from_secs(1),
                    Duration::from_millis(10),
                )
                .unwrap(),
        );
    }
    records
}

/// `logstream run-local` of `component` over one partition's records: the
/// outputs and the final state of an uninterrupted run. Files go to `dir`.
pub fn run_local(
    logstream: &Path,
    component: &Path,
    config: &str,
    records: &[LogRecord],
    dir: &Path,
    name: &str,
) -> (Vec<OutputRow>, Vec<u8>) {
    run_local_from(logstream, component, config, None, records, dir, name)
}

/// [`run_local`] starting from a state file (`--state-in`) when given.
pub fn run_local_from(
    logstream: &Path,
    component: &Path,
    config: &str,
    state_in: Option<&Path>,
    records: &[LogRecord],
    dir: &Path,
    name: &str,
) -> (Vec<OutputRow>, Vec<u8>) {
    let input = dir.join(format!("{name}.jsonl"));
    let lines: Vec<String> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp_ms,
                "value": String::from_utf8(r.value.clone()).unwrap(),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let state = dir.join(format!("{name}.state"));
    let mut command = Command::new(logstream);
    command
        .env("LOGSTREAM_LOG", "warn")
        .env("LOGSTREAM_CACHE_DIR", dir.join("cache"))
        .arg("run-local")
        .arg(component)
        .arg("--input")
        .arg(&input)
        .args(["--config", config, "--state-out"])
        .arg(&state);
    if let Some(state_in) = state_in {
        command.arg("--state-in").arg(state_in);
    }
    let output = command.output().expect("the logstream binary starts");
    assert!(
        output.status.success(),
        "run-local failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let outputs = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("index").is_some())
        .map(|v| {
            (
                v["offset"].as_i64().unwrap(),
                v["index"].as_u64().unwrap(),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (outputs, std::fs::read(state).unwrap())
}

/// An output partition's records as rows, in topic order, decoding the ids
/// `UNIT/OFFSET/INDEX` of `unit`; panics on a record without one.
pub fn output_rows(records: Vec<LogRecord>, unit: &str) -> Vec<OutputRow> {
    records
        .into_iter()
        .map(|r| {
            let id = r
                .headers
                .iter()
                .find(|h| h.key == ID_HEADER)
                .expect("every output has an id");
            let id = String::from_utf8(id.value.clone()).unwrap();
            let rest = id
                .strip_prefix(&format!("{unit}/"))
                .unwrap_or_else(|| panic!("foreign id {id}"));
            let (offset, index) = rest.split_once('/').unwrap();
            (
                offset.parse().unwrap(),
                index.parse().unwrap(),
                String::from_utf8(r.value).unwrap(),
            )
        })
        .collect()
}
