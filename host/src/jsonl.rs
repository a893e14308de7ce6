//! The JSON-lines record format of `logstream run-local`, for input files and
//! printed outputs.
//!
//! Input, one object per line (only `value` or `value_base64` is required):
//!
//! ```json
//! {"partition": 0, "offset": 17, "timestamp_ms": 1700000000000,
//!  "key": "host-1", "value": "{\"level\":\"info\"}",
//!  "headers": [{"key": "trace-id", "value": "abc"}]}
//! ```
//!
//! - `partition` defaults to 0; `offset` defaults to one past the previous
//!   record of the same partition (0 for the first); offsets must increase
//!   within a partition; `timestamp_ms` defaults to 0.
//! - `key`, `value` and header values are UTF-8 strings; binary data goes in
//!   `key_base64`, `value_base64` or a header's `value_base64` instead.
//!
//! Output lines carry the source record's `partition` and `offset`, the
//! output's `index` among that record's outputs — together the output's
//! deterministic id — then `topic` (when the processor chose one), `key`,
//! `value` and `headers` in the same encoding. A rejected record prints as
//! `{"partition":…,"offset":…,"rejected":"reason"}`, and a record the
//! processor failed on as `{"partition":…,"offset":…,"failed":"error"}`.

use std::collections::HashMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::record::LogRecord;
use crate::wasm::bindings::{Header, OutputRecord};

/// Largest input line accepted: 16 MiB.
pub const MAX_LINE_BYTES: usize = 16 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    partition: Option<i32>,
    offset: Option<i64>,
    timestamp_ms: Option<i64>,
    key: Option<String>,
    key_base64: Option<String>,
    value: Option<String>,
    value_base64: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderLine>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderLine {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

/// Why an input line is not a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("line {line}: {reason}")]
    Invalid { line: usize, reason: String },
}

/// Turns input lines into records, assigning default offsets.
#[derive(Debug, Default)]
pub struct RecordReader {
    next_offset: HashMap<i32, i64>,
    line: usize,
}

impl RecordReader {
    /// Parse the next line (1-based line numbers appear in errors). Blank
    /// lines give `None`.
    pub fn parse_line(&mut self, text: &str) -> Result<Option<LogRecord>, InputError> {
        self.line += 1;
        let line = self.line;
        let invalid = |reason: String| InputError::Invalid { line, reason };
        if text.trim().is_empty() {
            return Ok(None);
        }
        if text.len() > MAX_LINE_BYTES {
            return Err(invalid(format!(
                "the line is longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        let input: InputLine = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let partition = input.partition.unwrap_or(0);
        if partition < 0 {
            return Err(invalid(format!("partition {partition} is negative")));
        }
        let expected = self.next_offset.get(&partition).copied().unwrap_or(0);
        let offset = input.offset.unwrap_or(expected);
        if offset < expected {
            return Err(invalid(format!(
                "offset {offset} of partition {partition} does not increase (the next offset must be at least {expected})"
            )));
        }
        self.next_offset.insert(partition, offset + 1);
        let key = text_or_base64("key", input.key, input.key_base64).map_err(invalid)?;
        let value = text_or_base64("value", input.value, input.value_base64)
            .map_err(invalid)?
            .ok_or_else(|| invalid("the record has neither `value` nor `value_base64`".into()))?;
        let headers = input
            .headers
            .into_iter()
            .map(|h| {
                let value =
                    text_or_base64("header value", h.value, h.value_base64)?.unwrap_or_default();
                Ok(Header { key: h.key, value })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(invalid)?;
        Ok(Some(LogRecord {
            partition,
            offset,
            timestamp_ms: input.timestamp_ms.unwrap_or(0),
            key,
            value,
            headers,
        }))
    }
}

fn text_or_base64(
    what: &str,
    text: Option<String>,
    base64: Option<String>,
) -> Result<Option<Vec<u8>>, String> {
    match (text, base64) {
        (Some(_), Some(_)) => Err(format!("the {what} is given both as text and as base64")),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Some)
            .map_err(|e| format!("the base64 {what} does not decode: {e}")),
        (None, None) => Ok(None),
    }
}

#[derive(Serialize)]
struct OutputLine<'a> {
    partition: i32,
    offset: i64,
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    headers: Vec<HeaderLine>,
}

/// Text when the bytes are UTF-8, else base64: (text, base64).
fn encode_bytes(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// One output as a JSON line (without the newline).
pub fn output_line(source: &LogRecord, index: u32, output: &OutputRecord) -> String {
    let (key, key_base64) = match &output.key {
        Some(key) => encode_bytes(key),
        None => (None, None),
    };
    let (value, value_base64) = encode_bytes(&output.value);
    let headers = output
        .headers
        .iter()
        .map(|h| {
            let (value, value_base64) = encode_bytes(&h.value);
            HeaderLine {
                key: h.key.clone(),
                value,
                value_base64,
            }
        })
        .collect();
    let line = OutputLine {
        partition: source.partition,
        offset: source.offset,
        index,
        topic: output.topic.as_deref(),
        key,
        key_base64,
        value,
        value_base64,
        headers,
    };
    serde_json::to_string(&line).expect("plain data always serialises")
}

/// A rejected or failed record as a JSON line.
pub fn refusal_line(source: &LogRecord, kind: Refusal, reason: &str) -> String {
    #[derive(Serialize)]
    struct RefusalLine<'a> {
        partition: i32,
        offset: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        rejected: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        failed: Option<&'a str>,
    }
    let line = RefusalLine {
        partition: source.partition,
        offset: source.offset,
        rejected: (kind == Refusal::Rejected).then_some(reason),
        failed: (kind == Refusal::Failed).then_some(reason),
    };
    serde_json::to_string(&line).expect("plain data always serialises")
}

/// Why a record produced no outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The processor rejected it.
    Rejected,
    /// The processor failed on it (trap, limit).
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_offsets() {
        let mut reader = RecordReader::default();
        let a = reader.parse_line(r#"{"value":"a"}"#).unwrap().unwrap();
        let b = reader
            .parse_line(r#"{"value":"b","partition":1}"#)
            .unwrap()
            .unwrap();
        let c = reader.parse_line(r#"{"value":"c"}"#).unwrap().unwrap();
        assert_eq!((a.partition, a.offset), (0, 0));
        assert_eq!((b.partition, b.offset), (1, 0));
        assert_eq!((c.partition, c.offset), (0, 1));
        assert!(reader.parse_line("   ").unwrap().is_none());
    }

    #[test]
    fn errors_name_the_line_and_problem() {
        let mut reader = RecordReader::default();
        reader.parse_line(r#"{"value":"a","offset":5}"#).unwrap();
        let err = reader
            .parse_line(r#"{"value":"b","offset":5}"#)
            .unwrap_err();
        assert!(err.to_string().starts_with("line 2: offset 5"), "{err}");
        let err = reader.parse_line(r#"{"key":"k"}"#).unwrap_err();
        assert!(err.to_string().contains("neither `value`"), "{err}");
        let err = reader
            .parse_line(r#"{"value":"x","colour":1}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = reader.parse_line(r#"{"value_base64":"!!"}"#).unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }

    #[test]
    fn binary_round_trips_through_base64() {
        let mut reader = RecordReader::default();
        let record = reader
            .parse_line(r#"{"value_base64":"/w==","headers":[{"key":"h","value":"v"}]}"#)
            .unwrap()
            .unwrap();
        assert_eq!(record.value, vec![0xff]);
        let output = OutputRecord {
            input_index: 0,
            topic: None,
            key: None,
            value: record.value.clone(),
            headers: record.headers.clone(),
        };
        assert_eq!(
            output_line(&record, 0, &output),
            r#"{"partition":0,"offset":0,"index":0,"value_base64":"/w==","headers":[{"key":"h","value":"v"}]}"#
        );
    }
}
