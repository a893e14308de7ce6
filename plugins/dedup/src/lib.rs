//! `dedup`: drops repeated log lines, remembering the last K distinct keys.
//!
//! The key of a record is `(service, hash)`:
//! - `service` is the `service` field of the value when the value is a JSON
//!   object and that field is a string, `"unknown"` otherwise;
//! - `hash` is the 64-bit FNV-1a hash of the `message` field (its unescaped
//!   UTF-8 text) when that field is a string, and of the whole value
//!   otherwise (not JSON, not an object, no `message`, or a non-string one).
//!   So the plain-text line `boom` and `{"message":"boom"}` share a key.
//!
//! A record whose key is in the window is dropped (no output, no rejection).
//! Any other record is emitted unchanged (key, value and headers) and its key
//! enters the window; when the window then holds more than K keys, the oldest
//! one leaves it. So the window is the K most recently *emitted* keys, in the
//! order they were first emitted; a dropped duplicate does not refresh its
//! key. Nothing is ever rejected.
//!
//! Configuration: empty (meaning `window=100000`) or `window=K` with `K >= 1`.
//! Restoring a snapshot taken with a larger window and continuing with a
//! smaller K evicts the oldest keys before the next record is looked up.
//!
//! Guarantees: outputs depend only on the sequence of input records, never on
//! batch boundaries or on where the host snapshots and restores; the window
//! is kept in insertion order (`VecDeque`) plus an ordered set (`BTreeSet`),
//! and a snapshot stores only the ordered keys (the set is rebuilt on
//! restore), so it stays compact and two instances in the same state take
//! byte-identical snapshots.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use logstream_sdk::config::Settings;
use logstream_sdk::json::StrField as Field;
use logstream_sdk::{Emitter, Output, Processor, Record, Reject};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Window size used when the configuration is empty.
pub const DEFAULT_WINDOW: usize = 100_000;

/// Service of records that have none.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// A deduplication key: service and FNV-1a hash of the message.
pub type Key = (String, u64);

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

/// The deduplication key of a record value.
pub fn key_of(value: &[u8]) -> Key {
    match serde_json::from_slice::<Fields>(value) {
        Ok(fields) => {
            let service = match fields.service {
                Field::Str(s) => s.into_owned(),
                Field::Other => UNKNOWN_SERVICE.to_owned(),
            };
            let hash = match &fields.message {
                Field::Str(m) => fnv1a64(m.as_bytes()),
                Field::Other => fnv1a64(value),
            };
            (service, hash)
        }
        Err(_) => (UNKNOWN_SERVICE.to_owned(), fnv1a64(value)),
    }
}

/// The processor: its configuration only (the window size K).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedup {
    window: usize,
}

impl Dedup {
    /// The window size K.
    pub fn window(&self) -> usize {
        self.window
    }
}

/// The keys of the last emitted records: `order` oldest first, `members`
/// the same keys for lookup. Serialised as `order` alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    order: VecDeque<Key>,
    members: BTreeSet<Key>,
}

impl Window {
    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.members.contains(key)
    }

    /// The keys, oldest first.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &Key> {
        self.order.iter()
    }

    /// Evict the oldest keys until at most `capacity` remain.
    fn shrink_to(&mut self, capacity: usize) {
        while self.order.len() > capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.members.remove(&oldest);
            }
        }
    }

    /// Add a key that is not in the window, keeping at most `capacity`.
    fn push(&mut self, key: Key, capacity: usize) {
        debug_assert!(!self.members.contains(&key));
        self.members.insert(key.clone());
        self.order.push_back(key);
        self.shrink_to(capacity);
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.order.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let order = VecDeque::<Key>::deserialize(deserializer)?;
        let mut members = BTreeSet::new();
        for key in &order {
            if !members.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "the window holds the key ({:?}, {:#018x}) twice",
                    key.0, key.1
                )));
            }
        }
        Ok(Window { order, members })
    }
}

impl Processor for Dedup {
    type State = Window;

    fn configure(config: &str) -> Result<Self, String> {
        let mut settings = Settings::parse(config, "dedup")?;
        let window = settings.take_u64("window", DEFAULT_WINDOW as u64, 1)?;
        settings.finish()?;
        let window =
            usize::try_from(window).map_err(|_| format!("`window` {window} is too large"))?;
        Ok(Dedup { window })
    }

    fn process(
        &mut self,
        state: &mut Window,
        record: &Record,
        out: &mut Emitter,
    ) -> Result<(), Reject> {
        let key = key_of(record.value);
        state.shrink_to(self.window);
        if state.contains(&key) {
            return Ok(());
        }
        out.emit(Output::copy_of(record));
        state.push(key, self.window);
        Ok(())
    }
}

/// The `service` and `message` fields of a JSON object; other fields are
/// skipped without being allocated. When a key repeats, the last one wins.
#[derive(Debug, Default)]
struct Fields<'de> {
    service: Field<'de>,
    message: Field<'de>,
}

enum FieldName {
    Service,
    Message,
    Other,
}

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;

        impl Visitor<'_> for NameVisitor {
            type Value = FieldName;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldName, E> {
                Ok(match v {
                    "service" => FieldName::Service,
                    "message" => FieldName::Message,
                    _ => FieldName::Other,
                })
            }
        }

        deserializer.deserialize_identifier(NameVisitor)
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
                while let Some(name) = map.next_key::<FieldName>()? {
                    match name {
                        FieldName::Service => fields.service = map.next_value()?,
                        FieldName::Message => fields.message = map.next_value()?,
                        FieldName::Other => {
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
    use logstream_sdk::{snapshot, BatchOutput, Header, Runtime, RuntimeError, StateError};

    fn runtime(config: &str) -> Runtime<Dedup> {
        let mut rt = Runtime::new();
        rt.configure(config).unwrap();
        rt
    }

    fn record(offset: i64, value: &str) -> OwnedRecord {
        OwnedRecord {
            partition: 0,
            offset,
            timestamp_ms: 1_700_000_000_000 + offset,
            key: Some(format!("k{offset}").into_bytes()),
            value: value.as_bytes().to_vec(),
            headers: vec![Header {
                key: "h".into(),
                value: offset.to_le_bytes().to_vec(),
            }],
        }
    }

    fn records(values: &[&str]) -> Vec<OwnedRecord> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| record(i as i64, v))
            .collect()
    }

    /// Indices of the emitted records.
    fn emitted(out: &BatchOutput) -> Vec<u32> {
        out.outputs.iter().map(|(i, _)| *i).collect()
    }

    fn run_in_batches(
        rt: &mut Runtime<Dedup>,
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

    /// A stream with many repeats: about 40 distinct keys over 3 services
    /// and plain-text lines, in a scrambled order.
    fn stream(n: usize) -> Vec<OwnedRecord> {
        (0..n)
            .map(|i| {
                let seed = (i * 7919) % 97;
                let value = match seed % 5 {
                    0 => format!("plain line {}", seed % 7),
                    _ => format!(
                        r#"{{"service":"svc{}","message":"event {}","seq":{i}}}"#,
                        seed % 3,
                        seed % 11
                    ),
                };
                record(i as i64, &value)
            })
            .collect()
    }

    #[test]
    fn fnv1a64_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn keys() {
        assert_eq!(
            key_of(br#"{"service":"api","message":"boom","ts":1}"#),
            ("api".into(), fnv1a64(b"boom"))
        );
        // The message is unescaped before hashing.
        assert_eq!(
            key_of(br#"{"message":"caf\u00e9 \"x\"","service":"api"}"#),
            ("api".into(), fnv1a64("café \"x\"".as_bytes()))
        );
        let no_message = br#"{"service":"api","msg":"boom"}"#;
        assert_eq!(key_of(no_message), ("api".into(), fnv1a64(no_message)));
        let numeric = br#"{"service":7,"message":42}"#;
        assert_eq!(key_of(numeric), ("unknown".into(), fnv1a64(numeric)));
        assert_eq!(
            key_of(b"not json"),
            ("unknown".into(), fnv1a64(b"not json"))
        );
        assert_eq!(key_of(b"[1,2]"), ("unknown".into(), fnv1a64(b"[1,2]")));
        assert_eq!(
            key_of(&[0xff, 0x00]),
            ("unknown".into(), fnv1a64(&[0xff, 0x00]))
        );
        // A plain-text line and a JSON line without a service that carries
        // the same text as its message share a key.
        assert_eq!(key_of(br#"{"message":"boom"}"#), key_of(b"boom"));
    }

    #[test]
    fn config() {
        assert_eq!(Dedup::configure("").unwrap().window(), DEFAULT_WINDOW);
        assert_eq!(Dedup::configure(" window = 5 ").unwrap().window(), 5);
        assert_eq!(Dedup::configure("window=1").unwrap().window(), 1);
        for bad in [
            "window=0",
            "window=",
            "window=-1",
            "window=x",
            "window",
            "every=5",
            "window=5,x=1",
        ] {
            let err = Dedup::configure(bad).unwrap_err();
            assert!(!err.is_empty() && !err.contains('\n'), "{bad}: {err}");
        }
        let mut rt = Runtime::<Dedup>::new();
        assert!(matches!(
            rt.configure("window=0"),
            Err(RuntimeError::InvalidConfig(_))
        ));
    }

    #[test]
    fn repeats_are_dropped_and_the_rest_emitted_unchanged() {
        let input = records(&[
            r#"{"service":"api","message":"boom","ts":1}"#,
            r#"{"service":"api","message":"boom","ts":2}"#,
            r#"{"service":"db","message":"boom","ts":3}"#,
            r#"{"message":"boom"}"#,
            "boom!",
            "boom!",
            r#"{"service":"api","message":"ok"}"#,
            r#"{"ts":4,"message":"boom","service":"api"}"#,
        ]);
        let mut rt = runtime("");
        let out = rt.process_batch(&input).unwrap();
        assert!(out.rejections.is_empty());
        assert_eq!(emitted(&out), vec![0, 2, 3, 4, 6]);
        for (i, output) in &out.outputs {
            let record = &input[*i as usize];
            assert_eq!(output.key, record.key);
            assert_eq!(output.value, record.value);
            assert_eq!(output.headers, record.headers);
            assert_eq!(output.topic, None);
        }
        assert_eq!(rt.state().len(), 5);
    }

    #[test]
    fn the_window_forgets_the_oldest_emitted_key() {
        let msg = |m: &str| format!(r#"{{"service":"s","message":"{m}"}}"#);
        let (a, b, c) = (msg("a"), msg("b"), msg("c"));
        let input = records(&[&a, &b, &a, &c, &a, &b, &b, &c]);
        let mut rt = runtime("window=2");
        let out = rt.process_batch(&input).unwrap();
        // a b | a dropped | c evicts a | a evicts b | b evicts c | b dropped | c evicts a
        assert_eq!(emitted(&out), vec![0, 1, 3, 4, 5, 7]);
        let keys: Vec<&Key> = rt.state().keys().collect();
        assert_eq!(
            keys,
            vec![
                &("s".to_string(), fnv1a64(b"b")),
                &("s".to_string(), fnv1a64(b"c"))
            ]
        );

        let mut one = runtime("window=1");
        let out = one.process_batch(&records(&[&a, &a, &b, &a, &a])).unwrap();
        assert_eq!(emitted(&out), vec![0, 2, 3]);
    }

    #[test]
    fn restoring_into_a_smaller_window_evicts_before_lookup() {
        let line = |i: i64| record(i, &format!("line {i}"));
        let mut big = runtime("window=10");
        big.process_batch(&(0..10).map(line).collect::<Vec<_>>())
            .unwrap();
        let snap = big.snapshot().unwrap();
        let mut small = runtime("window=3");
        small.restore(&snap).unwrap();
        assert_eq!(small.state().len(), 10);
        // Lines 0..=6 are evicted first, 7..=9 stay in the window.
        let out = small.process_batch(&[9, 8, 7, 6, 9].map(line)).unwrap();
        assert_eq!(emitted(&out), vec![3]);
        assert_eq!(small.state().len(), 3);
    }

    #[test]
    fn outputs_identical_when_the_input_is_split_into_different_batch_sizes() {
        let input = stream(600);
        let mut reference = runtime("window=25");
        let expected = run_in_batches(&mut reference, &input, &[600]);
        assert!(expected.outputs.len() > 50 && expected.outputs.len() < 550);
        for sizes in [&[1][..], &[3], &[25], &[128], &[1, 9, 2, 200]] {
            let mut rt = runtime("window=25");
            let got = run_in_batches(&mut rt, &input, sizes);
            assert_eq!(got, expected, "batch sizes {sizes:?}");
            assert_eq!(rt.snapshot().unwrap(), reference.snapshot().unwrap());
        }
    }

    #[test]
    fn snapshot_restore_mid_stream_gives_identical_output() {
        let input = stream(500);
        for config in ["window=1", "window=30", ""] {
            let mut whole = runtime(config);
            let expected = run_in_batches(&mut whole, &input, &[500]);
            for cut in [0, 1, 77, 250, 499, 500] {
                let mut first = runtime(config);
                let mut got = run_in_batches(&mut first, &input[..cut], &[16]);
                let snap = first.snapshot().unwrap();
                drop(first);
                let mut second = runtime(config);
                second.restore(&snap).unwrap();
                assert_eq!(second.snapshot().unwrap(), snap);
                let tail = run_in_batches(&mut second, &input[cut..], &[31]);
                let base = cut as u32;
                got.outputs
                    .extend(tail.outputs.into_iter().map(|(i, o)| (i + base, o)));
                got.rejections
                    .extend(tail.rejections.into_iter().map(|(i, r)| (i + base, r)));
                assert_eq!(got, expected, "{config:?} cut at {cut}");
                assert_eq!(second.snapshot().unwrap(), whole.snapshot().unwrap());
                assert_eq!(second.state(), whole.state());
            }
        }
    }

    /// A processor whose state is the bare key list, to compare encodings.
    struct OrderOnly;
    impl Processor for OrderOnly {
        type State = VecDeque<Key>;
        fn configure(_: &str) -> Result<Self, String> {
            Ok(OrderOnly)
        }
        fn process(
            &mut self,
            _: &mut Self::State,
            _: &Record,
            _: &mut Emitter,
        ) -> Result<(), Reject> {
            Ok(())
        }
    }

    #[test]
    fn snapshot_stores_only_the_ordered_keys() {
        let mut rt = runtime("window=1000");
        rt.process_batch(&stream(300)).unwrap();
        let state = rt.state();
        assert!(state.len() > 10);
        let snap = rt.snapshot().unwrap();
        assert_eq!(snap, snapshot::encode::<OrderOnly>(&state.order).unwrap());
        let restored = snapshot::decode::<Dedup>(&snap).unwrap();
        assert_eq!(&restored, state);
    }

    #[test]
    fn a_snapshot_with_a_repeated_key_is_refused() {
        let key: Key = ("s".into(), 1);
        let order = VecDeque::from(vec![key.clone(), ("t".into(), 2), key]);
        let bytes = snapshot::encode::<OrderOnly>(&order).unwrap();
        let mut rt = runtime("");
        match rt.restore(&bytes) {
            // postcard drops the custom message ("holds the key twice").
            Err(RuntimeError::State(StateError::Incompatible { reason, .. })) => {
                assert!(reason.contains("does not decode"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(rt.state().is_empty());
    }
}

logstream_sdk::export_processor!(Dedup);
