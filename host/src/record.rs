//! The host's own input record, and its packing into the WIT `record-batch`
//! (every key, value and header of a batch in one buffer, so a batch enters
//! a component with one allocation and one copy).

use crate::wasm::bindings::{Header, HeaderSpan, LogRecord as WitRecord, RecordBatch, Span};

/// One input log record, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogRecord {
    pub partition: i32,
    pub offset: i64,
    /// Producer timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<Header>,
}

impl LogRecord {
    /// Bytes this record occupies in key, value and headers.
    pub fn payload_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.len())
                .sum::<usize>()
    }
}

/// Largest packed batch: spans are 32-bit.
pub const MAX_PACKED_BATCH_BYTES: usize = u32::MAX as usize;

/// Why records cannot be packed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a batch of {bytes} bytes exceeds the {MAX_PACKED_BATCH_BYTES}-byte limit of one call")]
pub struct BatchTooLarge {
    pub bytes: usize,
}

/// Pack records into one WIT batch.
pub fn pack_batch(records: &[LogRecord]) -> Result<RecordBatch, BatchTooLarge> {
    let bytes: usize = records.iter().map(LogRecord::payload_bytes).sum();
    if bytes > MAX_PACKED_BATCH_BYTES {
        return Err(BatchTooLarge { bytes });
    }
    let mut data = Vec::with_capacity(bytes);
    let mut push = |bytes: &[u8]| {
        let span = Span {
            offset: data.len() as u32,
            len: bytes.len() as u32,
        };
        data.extend_from_slice(bytes);
        span
    };
    let mut headers = Vec::new();
    let mut packed = Vec::with_capacity(records.len());
    for record in records {
        let key = record.key.as_deref().map(&mut push);
        let value = push(&record.value);
        let first_header = headers.len() as u32;
        for header in &record.headers {
            headers.push(HeaderSpan {
                key: push(header.key.as_bytes()),
                value: push(&header.value),
            });
        }
        packed.push(WitRecord {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key,
            value,
            first_header,
            header_count: record.headers.len() as u32,
        });
    }
    Ok(RecordBatch {
        data,
        records: packed,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_every_part_at_its_span() {
        let records = vec![
            LogRecord {
                key: Some(b"k".to_vec()),
                value: b"value".to_vec(),
                headers: vec![Header {
                    key: "h".into(),
                    value: b"x".to_vec(),
                }],
                ..LogRecord::default()
            },
            LogRecord {
                offset: 1,
                value: b"v2".to_vec(),
                ..LogRecord::default()
            },
        ];
        let batch = pack_batch(&records).unwrap();
        let slice = |s: Span| &batch.data[s.offset as usize..(s.offset + s.len) as usize];
        assert_eq!(slice(batch.records[0].key.unwrap()), b"k");
        assert_eq!(slice(batch.records[0].value), b"value");
        assert_eq!(slice(batch.headers[0].key), b"h");
        assert_eq!(slice(batch.headers[0].value), b"x");
        assert_eq!(
            (batch.records[1].first_header, batch.records[1].header_count),
            (1, 0)
        );
        assert_eq!(slice(batch.records[1].value), b"v2");
    }
}
