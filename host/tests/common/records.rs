//! Byte-exact comparison of what a host produced with `logstream run-local`
//! over the same input: keys, values and headers as bytes (binary ones go
//! through run-local's `*_base64` fields), and dead letters with their
//! reasons. [`super::verify`] compares text values only; this is for inputs
//! that are not text (hostile-input tests).

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use logstream_host::pipeline::kafka::ID_HEADER;
use logstream_host::pipeline::unit::ERROR_HEADER;
use logstream_host::record::LogRecord;
use logstream_host::unit_id::OutputId;
use serde_json::{json, Value};

/// One header, as bytes.
pub type HeaderBytes = (String, Vec<u8>);

/// One output of a unit, identified by its source offset and index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Emitted {
    pub offset: i64,
    pub index: u64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<HeaderBytes>,
}

/// One dead letter: the source record and why it was refused
/// (`rejected: …` or `failed: …`, the `logstream-error` header).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeadLetter {
    pub offset: i64,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<HeaderBytes>,
}

/// What an uninterrupted `run-local` computed.
pub struct LocalRun {
    pub outputs: Vec<Emitted>,
    /// Records the processor rejected or failed on, as a host dead-letters
    /// them (same source bytes, same reason).
    pub dead_letters: Vec<DeadLetter>,
    pub state: Vec<u8>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode(line: &Value, text: &str, base64: &str) -> Option<Vec<u8>> {
    if let Some(text) = line.get(text).and_then(Value::as_str) {
        return Some(text.as_bytes().to_vec());
    }
    line.get(base64).and_then(Value::as_str).map(|encoded| {
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|e| panic!("bad base64 in {line}: {e}"))
    })
}

fn headers_of(record: &LogRecord) -> Vec<HeaderBytes> {
    record
        .headers
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

/// `logstream run-local` of `component` over `records` (one partition),
/// passing every byte of keys, values and headers; `extra_args` are more
/// run-local options (e.g. the same limits as the host). Files go to `dir`.
pub fn run_local_exact(
    logstream: &Path,
    component: &Path,
    config: &str,
    extra_args: &[&str],
    records: &[LogRecord],
    dir: &Path,
    name: &str,
) -> LocalRun {
    let input = dir.join(format!("{name}.jsonl"));
    let lines: Vec<String> = records
        .iter()
        .map(|r| {
            let mut line = json!({
                "partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp_ms,
                "value_base64": b64(&r.value),
                "headers": r.headers.iter()
                    .map(|h| json!({"key": h.key, "value_base64": b64(&h.value)}))
                    .collect::<Vec<_>>(),
            });
            if let Some(key) = &r.key {
                line["key_base64"] = json!(b64(key));
            }
            line.to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let state = dir.join(format!("{name}.state"));
    let output = Command::new(logstream)
        .env("LOGSTREAM_LOG", "warn")
        .env("LOGSTREAM_CACHE_DIR", dir.join("cache"))
        .arg("run-local")
        .arg(component)
        .arg("--input")
        .arg(&input)
        .args(["--config", config])
        .args(extra_args)
        .arg("--state-out")
        .arg(&state)
        .output()
        .expect("the logstream binary starts");
    assert!(
        output.status.success(),
        "run-local failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let by_offset: std::collections::HashMap<i64, &LogRecord> =
        records.iter().map(|r| (r.offset, r)).collect();
    let mut run = LocalRun {
        outputs: Vec::new(),
        dead_letters: Vec::new(),
        state: std::fs::read(state).unwrap(),
    };
    for text in String::from_utf8(output.stdout).unwrap().lines() {
        let line: Value = serde_json::from_str(text).unwrap();
        let offset = line["offset"].as_i64().unwrap();
        if let Some(index) = line.get("index").and_then(Value::as_u64) {
            let headers = line["headers"]
                .as_array()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            let key = h["key"].as_str().unwrap().to_string();
                            (key, decode(h, "value", "value_base64").unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            run.outputs.push(Emitted {
                offset,
                index,
                key: decode(&line, "key", "key_base64"),
                value: decode(&line, "value", "value_base64").unwrap_or_default(),
                headers,
            });
            continue;
        }
        let reason = match (line.get("rejected"), line.get("failed")) {
            (Some(reason), _) => format!("rejected: {}", reason.as_str().unwrap()),
            (_, Some(error)) => format!("failed: {}", error.as_str().unwrap()),
            _ => panic!("unexpected run-local line {text}"),
        };
        let source = by_offset[&offset];
        run.dead_letters.push(DeadLetter {
            offset,
            reason,
            key: source.key.clone(),
            value: source.value.clone(),
            headers: headers_of(source),
        });
    }
    run
}

/// Split a produced record's `UNIT/OFFSET/SLOT` id (its first
/// `logstream-id` header, which the host puts before any copied from the
/// input) off its other headers.
fn take_id(record: &LogRecord, unit: &str) -> (i64, String, Vec<HeaderBytes>) {
    let mut headers = headers_of(record);
    let at = headers
        .iter()
        .position(|(key, _)| key == ID_HEADER)
        .expect("every record a host produces has an id");
    let id = String::from_utf8(headers.remove(at).1).unwrap();
    let parsed = OutputId::parse(&id).unwrap_or_else(|| panic!("malformed id {id}"));
    assert_eq!(parsed.unit.name(), unit, "foreign id {id}");
    let slot = parsed
        .index
        .map_or_else(|| "dlq".to_string(), |index| index.to_string());
    (parsed.offset, slot, headers)
}

/// An output partition's records as the host produced them for `unit`.
pub fn emitted_by(records: &[LogRecord], unit: &str) -> Vec<Emitted> {
    records
        .iter()
        .map(|r| {
            let (offset, slot, headers) = take_id(r, unit);
            Emitted {
                offset,
                index: slot
                    .parse()
                    .unwrap_or_else(|_| panic!("not an output: {slot}")),
                key: r.key.clone(),
                value: r.value.clone(),
                headers,
            }
        })
        .collect()
}

/// A dead-letter partition's records for `unit`: the reason is the last
/// `logstream-error` header (the host appends it after the source's own
/// headers, which may include one of that name).
pub fn dead_letters_of(records: &[LogRecord], unit: &str) -> Vec<DeadLetter> {
    records
        .iter()
        .map(|r| {
            let (offset, slot, mut headers) = take_id(r, unit);
            assert_eq!(slot, "dlq", "not a dead letter");
            let at = headers
                .iter()
                .rposition(|(key, _)| key == ERROR_HEADER)
                .expect("a dead letter carries its reason");
            let reason = String::from_utf8(headers.remove(at).1).unwrap();
            DeadLetter {
                offset,
                reason,
                key: r.key.clone(),
                value: r.value.clone(),
                headers,
            }
        })
        .collect()
}
