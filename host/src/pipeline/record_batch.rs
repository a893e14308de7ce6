//! Encoding of one Kafka record batch (format v2, uncompressed) with a
//! producer id, epoch and base sequence: what the fenced producer sends.
//!
//! Written here rather than with `kafka-protocol`'s encoder because that
//! one keeps a record's headers in a map, which would merge headers with
//! the same key; Kafka allows repeated keys and a processor's outputs (and
//! the dead letters, which carry the input's headers) must reach the topic
//! exactly as produced. `kafka-protocol`'s decoder checks this encoder in
//! the tests.
//!
//! Guarantees: the batch is well formed (lengths, zig-zag varints, CRC-32C
//! over attributes..end), carries the given producer identity, and its
//! records keep their order, keys, values and headers byte for byte.

use anyhow::{Context, Result};

/// Who produces a batch, for the broker's idempotence and fencing checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub id: i64,
    pub epoch: i16,
}

/// One record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// In order, keys may repeat.
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: i64,
}

impl BatchRecord {
    /// Bytes this record adds to a batch, roughly (for request sizing).
    pub fn approximate_size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum();
        self.key.as_ref().map_or(0, Vec::len) + self.value.len() + headers + 24
    }
}

/// Size of the batch header before the records.
const BATCH_HEADER_BYTES: usize = 61;
/// Offset of the attributes field, where the CRC's coverage starts.
const CRC_START: usize = 21;
/// Record batch format version ("magic").
const MAGIC_V2: i8 = 2;

/// Encode `records` (at least one) as one batch starting at `base_sequence`.
pub fn encode(
    records: &[BatchRecord],
    producer: ProducerIdentity,
    base_sequence: i32,
) -> Result<Vec<u8>> {
    anyhow::ensure!(!records.is_empty(), "a record batch needs a record");
    let base_timestamp = records.iter().map(|r| r.timestamp_ms).min().unwrap_or(0);
    let max_timestamp = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    let count = i32::try_from(records.len()).context("too many records for one batch")?;

    let mut out = Vec::with_capacity(
        BATCH_HEADER_BYTES
            + records
                .iter()
                .map(BatchRecord::approximate_size)
                .sum::<usize>(),
    );
    out.extend_from_slice(&0i64.to_be_bytes()); // base offset (the broker assigns)
    out.extend_from_slice(&0i32.to_be_bytes()); // batch length, below
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes()); // CRC, below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes: plain, create time
    out.extend_from_slice(&(count - 1).to_be_bytes()); // last offset delta
    out.extend_from_slice(&base_timestamp.to_be_bytes());
    out.extend_from_slice(&max_timestamp.to_be_bytes());
    out.extend_from_slice(&producer.id.to_be_bytes());
    out.extend_from_slice(&producer.epoch.to_be_bytes());
    out.extend_from_slice(&base_sequence.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    debug_assert_eq!(out.len(), BATCH_HEADER_BYTES);

    let mut record_bytes = Vec::new();
    for (delta, record) in records.iter().enumerate() {
        record_bytes.clear();
        record_bytes.push(0); // record attributes
        put_varlong(&mut record_bytes, record.timestamp_ms - base_timestamp);
        put_varlong(&mut record_bytes, delta as i64);
        match &record.key {
            Some(key) => put_bytes(&mut record_bytes, key)?,
            None => put_varlong(&mut record_bytes, -1),
        }
        put_bytes(&mut record_bytes, &record.value)?;
        put_varlong(&mut record_bytes, record.headers.len() as i64);
        for (key, value) in &record.headers {
            put_bytes(&mut record_bytes, key.as_bytes())?;
            put_bytes(&mut record_bytes, value)?;
        }
        put_varlong(&mut out, record_bytes.len() as i64);
        out.extend_from_slice(&record_bytes);
    }

    let batch_length = i32::try_from(out.len() - 12).context("a record batch over 2 GiB")?;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let length = i32::try_from(bytes.len()).context("a key, value or header over 2 GiB")?;
    put_varlong(out, i64::from(length));
    out.extend_from_slice(bytes);
    Ok(())
}

/// Zig-zag variable-length integer, as Kafka's records use.
fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8 & 0x7f) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::records::RecordBatchDecoder;
    use proptest::prelude::*;

    fn record(key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])], ts: i64) -> BatchRecord {
        BatchRecord {
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            timestamp_ms: ts,
        }
    }

    #[test]
    fn a_batch_decodes_with_its_identity_sequence_and_records() {
        let producer = ProducerIdentity { id: 7, epoch: 3 };
        let records = vec![
            record(Some(b"k"), b"first", &[("logstream-id", b"p/0/5/0")], 1_000),
            record(None, b"", &[], 1_003),
            record(
                Some(b""),
                &[0xff, 0x00, 0xfe],
                &[("a", b"1"), ("b", b"")],
                999,
            ),
        ];
        let encoded = encode(&records, producer, 42).unwrap();
        let mut buf = Bytes::from(encoded);
        let set = RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 3);
        for (delta, (got, want)) in set.records.iter().zip(&records).enumerate() {
            assert_eq!(got.producer_id, 7);
            assert_eq!(got.producer_epoch, 3);
            assert_eq!(got.sequence, 42 + delta as i32);
            assert_eq!(got.offset, delta as i64);
            assert_eq!(got.timestamp, want.timestamp_ms);
            assert_eq!(got.key.as_deref(), want.key.as_deref());
            assert_eq!(got.value.as_deref(), Some(&want.value[..]));
            let headers: Vec<(String, Vec<u8>)> = got
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_deref().unwrap_or_default().to_vec()))
                .collect();
            assert_eq!(headers, want.headers);
            assert!(!got.transactional && !got.control);
        }
    }

    #[test]
    fn repeated_header_keys_are_all_encoded() {
        let encoded = encode(
            &[record(None, b"v", &[("k", b"1"), ("k", b"2")], 0)],
            ProducerIdentity { id: 1, epoch: 0 },
            0,
        )
        .unwrap();
        // Both headers are on the wire, in order (the decoder's map would
        // keep only one, so look at the bytes).
        let tail = &encoded[encoded.len() - 8..];
        assert_eq!(tail, &[2, b'k', 2, b'1', 2, b'k', 2, b'2']);
    }

    proptest! {
        #[test]
        fn any_records_round_trip_through_kafka_protocols_decoder(
            values in proptest::collection::vec(
                (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                 proptest::collection::vec(any::<u8>(), 0..300),
                 0i64..10_000_000),
                1..20),
            sequence in 0i32..1_000_000,
        ) {
            let records: Vec<BatchRecord> = values
                .iter()
                .enumerate()
                .map(|(i, (key, value, ts))| BatchRecord {
                    key: key.clone(),
                    value: value.clone(),
                    headers: vec![(format!("h{i}"), value.clone())],
                    timestamp_ms: *ts,
                })
                .collect();
            let encoded = encode(&records, ProducerIdentity { id: 99, epoch: 1 }, sequence).unwrap();
            let set = RecordBatchDecoder::decode(&mut Bytes::from(encoded)).unwrap();
            prop_assert_eq!(set.records.len(), records.len());
            for (got, want) in set.records.iter().zip(&records) {
                prop_assert_eq!(got.key.as_deref(), want.key.as_deref());
                prop_assert_eq!(got.value.as_deref(), Some(&want.value[..]));
                prop_assert_eq!(got.timestamp, want.timestamp_ms);
            }
        }
    }
}
