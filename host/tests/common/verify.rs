//! Checking a pipeline run against an uninterrupted one: read partitions
//! back, run `logstream run-local` over one input partition, and decode the
//! outputs' ids. Shared by the failover tests and the failover demo
//! (`examples/failover_demo.rs`, which includes this file by path), so it
//! takes the binary and the component as arguments.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use logstream_host::pipeline::kafka::{self, PartitionReader, ID_HEADER};
use logstream_host::record::LogRecord;
use logstream_host::unit_id::OutputId;

/// One output as the check compares it: source offset, index among that
/// record's outputs, value.
pub type OutputRow = (i64, u64, String);

/// Every data record of a partition (fence records left out), up to its
/// high watermark at the call; panics after `bound`.
pub fn read_partition(
    brokers: &str,
    topic: &str,
    partition: i32,
    bound: Duration,
) -> Vec<LogRecord> {
    let mut records = read_partition_raw(brokers, topic, partition, bound);
    // Fence records (one per takeover) are not outputs: consumers skip
    // them, and so do the comparisons with an uninterrupted run.
    records.retain(|record| !kafka::is_fence_record(record));
    records
}

/// Every record of a partition, fence records included, up to its high
/// watermark at the call; panics after `bound`.
pub fn read_partition_raw(
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
    let (mut by_topic, state) = run_local_general(
        logstream,
        component,
        config,
        &[],
        state_in,
        records,
        dir,
        name,
    );
    (by_topic.remove("").unwrap_or_default(), state)
}

/// [`run_local`] of a processor deployed with output topics `outputs` (the
/// first the default): the outputs by the topic they go to, and the final
/// state.
pub fn run_local_routed(
    logstream: &Path,
    component: &Path,
    config: &str,
    outputs: &[&str],
    records: &[LogRecord],
    dir: &Path,
    name: &str,
) -> (BTreeMap<String, Vec<OutputRow>>, Vec<u8>) {
    let (mut by_topic, state) = run_local_general(
        logstream, component, config, outputs, None, records, dir, name,
    );
    if let Some(default) = by_topic.remove("") {
        by_topic
            .entry(outputs[0].to_string())
            .or_default()
            .extend(default);
        by_topic
            .get_mut(outputs[0])
            .unwrap()
            .sort_by_key(|(offset, index, _)| (*offset, *index));
    }
    for topic in outputs {
        by_topic.entry(topic.to_string()).or_default();
    }
    (by_topic, state)
}

/// run-local with `--output` for each of `outputs`; outputs keyed by the
/// topic they name ("" for none).
#[allow(clippy::too_many_arguments)]
fn run_local_general(
    logstream: &Path,
    component: &Path,
    config: &str,
    outputs: &[&str],
    state_in: Option<&Path>,
    records: &[LogRecord],
    dir: &Path,
    name: &str,
) -> (BTreeMap<String, Vec<OutputRow>>, Vec<u8>) {
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
    for topic in outputs {
        command.args(["--output", topic]);
    }
    if let Some(state_in) = state_in {
        command.arg("--state-in").arg(state_in);
    }
    let output = command.output().expect("the logstream binary starts");
    assert!(
        output.status.success(),
        "run-local failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut by_topic: BTreeMap<String, Vec<OutputRow>> = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let v = serde_json::from_str::<serde_json::Value>(line).unwrap();
        if v.get("index").is_none() {
            continue;
        }
        let topic = v.get("topic").and_then(|t| t.as_str()).unwrap_or("");
        by_topic.entry(topic.to_string()).or_default().push((
            v["offset"].as_i64().unwrap(),
            v["index"].as_u64().unwrap(),
            v["value"].as_str().unwrap().to_string(),
        ));
    }
    (by_topic, std::fs::read(state).unwrap())
}

/// The id of a record a host produced; panics on a record without one.
pub fn id_of(record: &LogRecord) -> OutputId {
    let id = record
        .headers
        .iter()
        .find(|h| h.key == ID_HEADER)
        .expect("every output has an id");
    let id = String::from_utf8(id.value.clone()).unwrap();
    OutputId::parse(&id).unwrap_or_else(|| panic!("malformed id {id}"))
}

/// An output partition's records as rows, in topic order, decoding the ids
/// (`DEPLOYMENT/PROCESSOR/PARTITION/OFFSET/INDEX`) of `unit`
/// (`PROCESSOR/PARTITION`); panics on a record without one or of another
/// unit.
pub fn output_rows(records: Vec<LogRecord>, unit: &str) -> Vec<OutputRow> {
    records
        .into_iter()
        .map(|r| {
            let id = id_of(&r);
            assert_eq!(id.unit.name(), unit, "foreign id {id:?}");
            let index = id.index.unwrap_or_else(|| panic!("a dead letter: {id:?}"));
            (
                id.offset,
                u64::from(index),
                String::from_utf8(r.value).unwrap(),
            )
        })
        .collect()
}
