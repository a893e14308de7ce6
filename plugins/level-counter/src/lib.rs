//! `level-counter`: counts JSON log records per `(service, level)` and, every
//! N-th accepted record, emits one summary of all counts so far.
//!
//! Each record value must be a JSON object. The service is its `service`
//! field and the level its `level` field (or, when that is absent, `severity`,
//! then `lvl`), lowercased. A missing field, or one that is not a JSON string,
//! counts as `"unknown"`. A value that is not a JSON object is rejected (it
//! goes to the dead-letter topic) and is not counted.
//!
//! Configuration: `key=value` pairs, all optional:
//! - `every=N` (`N >= 1`, default 1000): the summary period;
//! - `alerts=TOPIC`: also forward every accepted record whose level is the
//!   alert level to `TOPIC` — a topic the processor *routes* outputs to, so
//!   it must be deployed with it (`logstream deploy … --output OUT --output
//!   TOPIC`); an undeclared one makes each alert record fail (dead letter);
//! - `alert_level=LEVEL` (default `error`): the level that alerts.
//!
//! Outputs, in this order per record:
//! - with `alerts`, an accepted record at the alert level gets an output to
//!   `TOPIC` with key its service and value the record's value, as is;
//! - when the total number of accepted records reaches a multiple of N,
//!   the record that reached it gets one output to the default output topic
//!   with key `summary` and value
//!
//! ```json
//! {"records":2000,"counts":{"api":{"error":3,"info":12},"db":{"warn":1}}}
//! ```
//!
//! (services and levels in byte order). No other outputs are produced.
//!
//! Guarantees: outputs depend only on the sequence of input records, never on
//! batch boundaries or on where the host snapshots and restores; the state
//! (the total and the counts) lives in ordered collections, so two instances
//! that reached the same state take byte-identical snapshots.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use logstream_sdk::config::Settings;
use logstream_sdk::json::StrField as Field;
use logstream_sdk::{Emitter, Output, Processor, Record, Reject};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Summary period used when the configuration is empty.
pub const DEFAULT_EVERY: u64 = 1000;

/// Key of every summary output.
pub const SUMMARY_KEY: &[u8] = b"summary";

/// Level that alerts when `alerts` is set and `alert_level` is not.
pub const DEFAULT_ALERT_LEVEL: &str = "error";

/// The processor: its configuration only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelCounter {
    every: u64,
    /// Where records at `alert_level` are forwarded, if anywhere.
    alerts: Option<String>,
    alert_level: String,
}

impl LevelCounter {
    /// The summary period N.
    pub fn every(&self) -> u64 {
        self.every
    }
}

/// Everything that changes while records flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Accepted records so far.
    pub records: u64,
    /// Accepted records per service, then per level. Nested (rather than
    /// keyed by a `(service, level)` pair) so a record of a known service
    /// and level is counted by borrowed lookups, without allocating.
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Counts {
    /// The summary JSON for the current state.
    pub fn summary_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Summary<'a> {
            records: u64,
            counts: &'a BTreeMap<String, BTreeMap<String, u64>>,
        }
        serde_json::to_vec(&Summary {
            records: self.records,
            counts: &self.counts,
        })
        .expect("a map of strings to integers always serialises")
    }
}

impl Processor for LevelCounter {
    type State = Counts;

    fn configure(config: &str) -> Result<Self, String> {
        let mut settings = Settings::parse(config, "level-counter")?;
        let every = settings.take_u64("every", DEFAULT_EVERY, 1)?;
        let alerts = settings.take_str("alerts");
        if alerts.as_deref() == Some("") {
            return Err("`alerts` must name a topic".to_string());
        }
        let alert_level = settings
            .take_str("alert_level")
            .map(|level| level.to_lowercase())
            .unwrap_or_else(|| DEFAULT_ALERT_LEVEL.to_string());
        settings.finish()?;
        Ok(LevelCounter {
            every,
            alerts,
            alert_level,
        })
    }

    fn process(
        &mut self,
        state: &mut Counts,
        record: &Record,
        out: &mut Emitter,
    ) -> Result<(), Reject> {
        let fields: Fields = serde_json::from_slice(record.value)
            .map_err(|e| Reject::new(format!("the value is not a JSON object: {e}")))?;
        let service = match fields.service {
            Field::Str(service) => service,
            Field::Other => Cow::Borrowed(UNKNOWN),
        };
        let level = [fields.level, fields.severity, fields.lvl]
            .into_iter()
            .find_map(|f| match f {
                Field::Str(level) => Some(lowercase(level)),
                Field::Other => None,
            })
            .unwrap_or(Cow::Borrowed(UNKNOWN));

        if let Some(topic) = &self.alerts {
            if level == self.alert_level.as_str() {
                out.emit(
                    Output::new(record.value.to_vec())
                        .key(service.as_bytes().to_vec())
                        .topic(topic.clone()),
                );
            }
        }
        let levels = match state.counts.get_mut(service.as_ref()) {
            Some(levels) => levels,
            None => state.counts.entry(service.into_owned()).or_default(),
        };
        match levels.get_mut(level.as_ref()) {
            Some(count) => *count += 1,
            None => {
                levels.insert(level.into_owned(), 1);
            }
        }
        state.records += 1;
        if state.records.is_multiple_of(self.every) {
            out.emit(Output::new(state.summary_json()).key(SUMMARY_KEY));
        }
        Ok(())
    }
}

const UNKNOWN: &str = "unknown";

/// `text` in lower case, allocating only when it has upper-case letters.
fn lowercase(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.chars().any(char::is_uppercase) {
        Cow::Owned(text.to_lowercase())
    } else {
        text
    }
}

/// The fields of a log line that matter here; everything else is skipped
/// without being allocated. When a key repeats, the last occurrence wins.
#[derive(Debug, Default)]
struct Fields<'de> {
    service: Field<'de>,
    level: Field<'de>,
    severity: Field<'de>,
    lvl: Field<'de>,
}

enum Key {
    Service,
    Level,
    Severity,
    Lvl,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "service" => Key::Service,
                    "level" => Key::Level,
                    "severity" => Key::Severity,
                    "lvl" => Key::Lvl,
                    _ => Key::Other,
                })
            }
        }

        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;

        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Fields::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Service => fields.service = map.next_value()?,
                        Key::Level => fields.level = map.next_value()?,
                        Key::Severity => fields.severity = map.next_value()?,
                        Key::Lvl => fields.lvl = map.next_value()?,
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(fields)
            }
        }

        deserializer.deserialize_map(FieldsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logstream_sdk::OwnedRecord;
    use logstream_sdk::{BatchOutput, Runtime, RuntimeError};
    use serde_json::{json, Value};

    fn runtime(config: &str) -> Runtime<LevelCounter> {
        let mut rt = Runtime::new();
        rt.configure(config).unwrap();
        rt
    }

    fn records(values: &[&str]) -> Vec<OwnedRecord> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| OwnedRecord::with_value(i as i64, v.as_bytes()))
            .collect()
    }

    /// Runs `input` through `rt` in batches of the given sizes (cycled) and
    /// returns the outputs and rejections with indices into `input`.
    fn run_in_batches(
        rt: &mut Runtime<LevelCounter>,
        input: &[OwnedRecord],
        sizes: &[usize],
    ) -> BatchOutput {
        let mut all = BatchOutput::default();
        let mut start = 0;
        for &size in sizes.iter().cycle() {
            if start >= input.len() {
                break;
            }
            let end = (start + size).min(input.len());
            let batch = rt.process_batch(&input[start..end]).unwrap();
            let base = start as u32;
            all.outputs
                .extend(batch.outputs.into_iter().map(|(i, o)| (i + base, o)));
            all.rejections
                .extend(batch.rejections.into_iter().map(|(i, r)| (i + base, r)));
            start = end;
        }
        all
    }

    /// A mixed stream: several services and levels, aliases, a few bad lines.
    fn stream(n: usize) -> Vec<OwnedRecord> {
        let services = ["api", "db", "auth", "édge"];
        let levels = ["INFO", "warn", "Error", "debug"];
        (0..n)
            .map(|i| {
                let value = match i % 11 {
                    7 => "not json at all".to_string(),
                    3 => json!({"service": services[i % 4], "severity": levels[i % 3]}).to_string(),
                    5 => json!({"lvl": levels[(i / 5) % 4], "msg": "no service"}).to_string(),
                    _ => json!({"service": services[i % 4], "level": levels[i % 4], "n": i})
                        .to_string(),
                };
                OwnedRecord::with_value(i as i64, value)
            })
            .collect()
    }

    fn summary(output: &Output) -> Value {
        assert_eq!(output.key.as_deref(), Some(SUMMARY_KEY));
        assert_eq!(output.topic, None);
        assert!(output.headers.is_empty());
        serde_json::from_slice(&output.value).unwrap()
    }

    #[test]
    fn config_default_every_and_errors() {
        assert_eq!(LevelCounter::configure("").unwrap().every(), 1000);
        assert_eq!(LevelCounter::configure("  ").unwrap().every(), 1000);
        assert_eq!(LevelCounter::configure("every=1").unwrap().every(), 1);
        assert_eq!(LevelCounter::configure(" every = 25 ").unwrap().every(), 25);
        for bad in [
            "every=0",
            "every=",
            "every=-3",
            "every=1.5",
            "every=x",
            "every",
            "window=5",
            "every=5,x=1",
        ] {
            let err = LevelCounter::configure(bad).unwrap_err();
            assert!(!err.is_empty() && !err.contains('\n'), "{bad}: {err}");
            assert_eq!(err.matches(". ").count(), 0, "one sentence: {err}");
        }
        assert!(LevelCounter::configure("every=0")
            .unwrap_err()
            .contains("at least 1"));
        assert!(LevelCounter::configure("window=5")
            .unwrap_err()
            .contains("window"));
        let mut rt = Runtime::<LevelCounter>::new();
        assert!(matches!(
            rt.configure("every=0"),
            Err(RuntimeError::InvalidConfig(_))
        ));
    }

    #[test]
    fn counts_per_service_and_level_with_aliases_and_defaults() {
        let mut rt = runtime("every=7");
        let input = records(&[
            r#"{"service":"api","level":"INFO"}"#,
            r#"{"service":"api","level":"info","msg":"x"}"#,
            r#"{"service":"api","severity":"Error"}"#,
            r#"{"service":"db","lvl":"warn"}"#,
            r#"{"level":"info"}"#,
            r#"{"service":"db"}"#,
            r#"{"service":42,"level":["info"],"severity":"DEBUG"}"#,
        ]);
        let out = rt.process_batch(&input).unwrap();
        assert!(out.rejections.is_empty());
        assert_eq!(out.outputs.len(), 1);
        assert_eq!(out.outputs[0].0, 6);
        assert_eq!(
            summary(&out.outputs[0].1),
            json!({
                "records": 7,
                "counts": {
                    "api": {"error": 1, "info": 2},
                    "db": {"unknown": 1, "warn": 1},
                    "unknown": {"debug": 1, "info": 1}
                }
            })
        );
    }

    #[test]
    fn level_takes_precedence_over_aliases() {
        let mut rt = runtime("every=1");
        let out = rt
            .process_batch(&records(&[
                r#"{"lvl":"c","severity":"b","level":"a","service":"s"}"#,
                r#"{"lvl":"c","severity":"b","level":null,"service":"s"}"#,
                r#"{"lvl":"c","service":"s"}"#,
            ]))
            .unwrap();
        let last = summary(&out.outputs[2].1);
        assert_eq!(last["counts"]["s"], json!({"a": 1, "b": 1, "c": 1}));
    }

    #[test]
    fn summary_is_compact_json_in_byte_order() {
        let mut rt = runtime("every=3");
        let out = rt
            .process_batch(&records(&[
                r#"{"service":"b","level":"warn"}"#,
                r#"{"service":"a","level":"info"}"#,
                r#"{"service":"b","level":"error"}"#,
            ]))
            .unwrap();
        assert_eq!(
            String::from_utf8(out.outputs[0].1.value.clone()).unwrap(),
            r#"{"records":3,"counts":{"a":{"info":1},"b":{"error":1,"warn":1}}}"#
        );
    }

    #[test]
    fn escaped_strings_are_unescaped_before_counting() {
        let mut rt = runtime("every=2");
        let out = rt
            .process_batch(&records(&[
                r#"{"service":"a\"b","level":"\u0049NFO"}"#,
                r#"{"service":"a\"b","level":"info"}"#,
            ]))
            .unwrap();
        assert_eq!(
            summary(&out.outputs[0].1)["counts"],
            json!({"a\"b": {"info": 2}})
        );
    }

    #[test]
    fn invalid_values_are_rejected_and_not_counted() {
        let mut rt = runtime("every=2");
        let input = records(&[
            r#"{"service":"api","level":"info"}"#,
            "plain text",
            "[1,2]",
            r#""a string""#,
            "",
            r#"{"service":"api""#,
            r#"{"service":"api"} trailing"#,
            r#"{"service":"api","level":"info"}"#,
        ]);
        let mut bad = input[1].clone();
        bad.value = vec![0xff, b'{', b'}'];
        let mut input = input;
        input.push(bad);
        let out = rt.process_batch(&input).unwrap();
        let rejected: Vec<u32> = out.rejections.iter().map(|(i, _)| *i).collect();
        assert_eq!(rejected, vec![1, 2, 3, 4, 5, 6, 8]);
        for (_, reason) in &out.rejections {
            assert!(
                reason.starts_with("the value is not a JSON object"),
                "{reason}"
            );
        }
        assert_eq!(out.outputs.len(), 1);
        assert_eq!(out.outputs[0].0, 7);
        assert_eq!(summary(&out.outputs[0].1)["records"], 2);
        assert_eq!(rt.state().records, 2);
    }

    #[test]
    fn emits_every_nth_accepted_record() {
        let input = stream(200);
        let mut rt = runtime("every=10");
        let out = run_in_batches(&mut rt, &input, &[200]);
        let accepted = input.len() - out.rejections.len();
        assert_eq!(out.outputs.len(), accepted / 10);
        for (k, (_, output)) in out.outputs.iter().enumerate() {
            assert_eq!(summary(output)["records"], 10 * (k as u64 + 1));
        }
        let total: u64 = rt.state().counts.values().flat_map(BTreeMap::values).sum();
        assert_eq!(total, rt.state().records);
        assert_eq!(rt.state().records as usize, accepted);
    }

    #[test]
    fn alerts_forward_records_at_the_alert_level_to_their_topic() {
        let input = records(&[
            r#"{"service":"api","level":"ERROR","msg":"a"}"#,
            r#"{"service":"db","level":"info"}"#,
            r#"{"service":"db","level":"error"}"#,
            r#"{"service":"db","level":"warn"}"#,
        ]);
        let mut rt = runtime("every=2,alerts=alerts");
        let out = run_in_batches(&mut rt, &input, &[4]);
        /// (input index, topic, key, value) of an output.
        type Routed<'a> = (u32, Option<&'a str>, Option<&'a [u8]>, &'a [u8]);
        let routed: Vec<Routed> = out
            .outputs
            .iter()
            .map(|(i, o)| (*i, o.topic.as_deref(), o.key.as_deref(), &o.value[..]))
            .collect();
        assert_eq!(
            routed,
            vec![
                (
                    0,
                    Some("alerts"),
                    Some(&b"api"[..]),
                    input[0].value.as_slice()
                ),
                (
                    1,
                    None,
                    Some(SUMMARY_KEY),
                    out.outputs[1].1.value.as_slice()
                ),
                (
                    2,
                    Some("alerts"),
                    Some(&b"db"[..]),
                    input[2].value.as_slice()
                ),
                (
                    3,
                    None,
                    Some(SUMMARY_KEY),
                    out.outputs[3].1.value.as_slice()
                ),
            ]
        );
        let mut warn = runtime("alerts=pager,alert_level=WARN");
        let out = run_in_batches(&mut warn, &input, &[1]);
        assert_eq!(out.outputs.len(), 1);
        assert_eq!(out.outputs[0].0, 3);
        assert!(LevelCounter::configure("alerts=").is_err());
    }

    #[test]
    fn outputs_identical_when_the_input_is_split_into_different_batch_sizes() {
        let input = stream(500);
        let mut reference = runtime("every=13");
        let expected = run_in_batches(&mut reference, &input, &[500]);
        assert!(expected.outputs.len() > 10);
        for sizes in [&[1][..], &[2], &[7], &[13], &[64], &[1, 5, 2, 100, 3]] {
            let mut rt = runtime("every=13");
            let got = run_in_batches(&mut rt, &input, sizes);
            assert_eq!(got, expected, "batch sizes {sizes:?}");
            assert_eq!(rt.snapshot().unwrap(), reference.snapshot().unwrap());
        }
    }

    #[test]
    fn snapshot_restore_mid_stream_gives_identical_output() {
        let input = stream(400);
        let mut whole = runtime("every=9");
        let expected = run_in_batches(&mut whole, &input, &[400]);
        for cut in [0, 1, 9, 150, 399, 400] {
            let mut first = runtime("every=9");
            let mut got = run_in_batches(&mut first, &input[..cut], &[17]);
            let snap = first.snapshot().unwrap();
            drop(first);
            let mut second = runtime("every=9");
            second.restore(&snap).unwrap();
            let tail = run_in_batches(&mut second, &input[cut..], &[23]);
            let base = cut as u32;
            got.outputs
                .extend(tail.outputs.into_iter().map(|(i, o)| (i + base, o)));
            got.rejections
                .extend(tail.rejections.into_iter().map(|(i, r)| (i + base, r)));
            assert_eq!(got, expected, "cut at {cut}");
            assert_eq!(
                second.snapshot().unwrap(),
                whole.snapshot().unwrap(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn snapshots_are_byte_identical_for_the_same_state_reached_differently() {
        // The same multiset of records in a different order gives the same
        // counts, hence the same snapshot bytes.
        let input = stream(120);
        let mut forward = runtime("");
        forward.process_batch(&input).unwrap();
        let mut reversed: Vec<OwnedRecord> = input.clone();
        reversed.reverse();
        let mut backward = runtime("");
        backward.process_batch(&reversed).unwrap();
        assert_eq!(forward.state(), backward.state());
        assert_eq!(forward.snapshot().unwrap(), backward.snapshot().unwrap());
    }

    #[test]
    fn garbage_snapshot_is_refused_and_state_kept() {
        let mut rt = runtime("every=1");
        rt.process_batch(&records(&[r#"{"service":"a"}"#])).unwrap();
        assert!(matches!(rt.restore(b"junk"), Err(RuntimeError::State(_))));
        assert_eq!(rt.state().records, 1);
    }
}

logstream_sdk::export_processor!(LevelCounter);
