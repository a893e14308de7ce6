//! Input records. A processor sees [`Record`]s that borrow their bytes from
//! the batch buffer the host passed in (no copy per record); tests and
//! benchmarks build batches from [`OwnedRecord`]s with [`Batch::encode`].
//!
//! Guarantee: [`Batch::for_each_record`] checks every span and header key of
//! the batch before handing out a single record, so a processor never sees
//! out-of-range or non-UTF-8 data, whatever the host sent.

/// A header of an output record (owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Vec<u8>,
}

/// A header of an input record, borrowed from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRef<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
}

impl HeaderRef<'_> {
    pub fn to_owned(&self) -> Header {
        Header {
            key: self.key.to_string(),
            value: self.value.to_vec(),
        }
    }
}

/// One input log record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Source partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Producer timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [HeaderRef<'a>],
}

impl<'a> Record<'a> {
    /// The value as UTF-8 text, if it is.
    pub fn value_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.value).ok()
    }

    /// The first header with this key.
    pub fn header(&self, key: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|h| h.key == key).map(|h| h.value)
    }
}

/// An input record that owns its bytes (for tests and benchmarks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnedRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<Header>,
}

impl OwnedRecord {
    /// A record with just a value.
    pub fn with_value(offset: i64, value: impl Into<Vec<u8>>) -> Self {
        OwnedRecord {
            offset,
            value: value.into(),
            ..OwnedRecord::default()
        }
    }
}

/// Bytes `[offset, offset + len)` of a batch's data buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub offset: u32,
    pub len: u32,
}

/// Where one record's parts are in a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordMeta {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Span>,
    pub value: Span,
    pub first_header: u32,
    pub header_count: u32,
}

/// Where one header's key and value are in a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeaderMeta {
    pub key: Span,
    pub value: Span,
}

/// A batch of records packed into one buffer, as the WIT `record-batch`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub data: Vec<u8>,
    pub records: Vec<RecordMeta>,
    pub headers: Vec<HeaderMeta>,
}

fn push_span(data: &mut Vec<u8>, bytes: &[u8]) -> Span {
    let span = Span {
        offset: data.len() as u32,
        len: bytes.len() as u32,
    };
    data.extend_from_slice(bytes);
    span
}

impl Batch {
    /// Pack owned records into one batch.
    pub fn encode(records: &[OwnedRecord]) -> Batch {
        let mut batch = Batch::default();
        for record in records {
            let key = record.key.as_deref().map(|k| push_span(&mut batch.data, k));
            let value = push_span(&mut batch.data, &record.value);
            let first_header = batch.headers.len() as u32;
            for header in &record.headers {
                let key = push_span(&mut batch.data, header.key.as_bytes());
                let value = push_span(&mut batch.data, &header.value);
                batch.headers.push(HeaderMeta { key, value });
            }
            batch.records.push(RecordMeta {
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key,
                value,
                first_header,
                header_count: record.headers.len() as u32,
            });
        }
        batch
    }

    /// Call `f` with each record in order, after checking the whole batch.
    pub fn for_each_record<E>(
        &self,
        f: impl FnMut(usize, &Record<'_>) -> Result<(), E>,
    ) -> Result<Result<(), E>, String> {
        for_each_record(&self.data, &self.records, &self.headers, f)
    }
}

/// [`Batch::for_each_record`] over borrowed parts.
pub fn for_each_record<E>(
    data: &[u8],
    records: &[RecordMeta],
    headers: &[HeaderMeta],
    mut f: impl FnMut(usize, &Record<'_>) -> Result<(), E>,
) -> Result<Result<(), E>, String> {
    let bytes = |span: Span| -> Result<&[u8], String> {
        let start = span.offset as usize;
        // Checked: on wasm32 `usize` is 32 bits and a hostile span could
        // wrap around.
        let end = start.checked_add(span.len as usize);
        end.and_then(|end| data.get(start..end)).ok_or_else(|| {
            format!(
                "span {}+{} is outside the {}-byte batch",
                span.offset,
                span.len,
                data.len()
            )
        })
    };
    let header_refs = headers
        .iter()
        .map(|h| {
            let key = std::str::from_utf8(bytes(h.key)?)
                .map_err(|_| "a header key is not UTF-8".to_string())?;
            Ok(HeaderRef {
                key,
                value: bytes(h.value)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut views = Vec::with_capacity(records.len());
    for meta in records {
        let first = meta.first_header as usize;
        let headers = first
            .checked_add(meta.header_count as usize)
            .and_then(|end| header_refs.get(first..end))
            .ok_or_else(|| {
                format!(
                    "record at offset {} has headers outside the batch",
                    meta.offset
                )
            })?;
        views.push(Record {
            partition: meta.partition,
            offset: meta.offset,
            timestamp_ms: meta.timestamp_ms,
            key: meta.key.map(bytes).transpose()?,
            value: bytes(meta.value)?,
            headers,
        });
    }
    for (index, record) in views.iter().enumerate() {
        if let Err(error) = f(index, record) {
            return Ok(Err(error));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_view_round_trips() {
        let records = vec![
            OwnedRecord {
                partition: 2,
                offset: 7,
                timestamp_ms: 9,
                key: Some(b"k".to_vec()),
                value: b"v1".to_vec(),
                headers: vec![Header {
                    key: "h".into(),
                    value: b"x".to_vec(),
                }],
            },
            OwnedRecord::with_value(8, "v2"),
        ];
        let batch = Batch::encode(&records);
        let mut seen = Vec::new();
        batch
            .for_each_record(|i, r| {
                seen.push((
                    i,
                    r.partition,
                    r.offset,
                    r.key.map(<[u8]>::to_vec),
                    r.value.to_vec(),
                    r.header("h").map(<[u8]>::to_vec),
                ));
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            seen,
            vec![
                (
                    0,
                    2,
                    7,
                    Some(b"k".to_vec()),
                    b"v1".to_vec(),
                    Some(b"x".to_vec())
                ),
                (1, 0, 8, None, b"v2".to_vec(), None),
            ]
        );
    }

    #[test]
    fn out_of_range_spans_are_refused_before_any_record() {
        let mut batch = Batch::encode(&[
            OwnedRecord::with_value(0, "ok"),
            OwnedRecord::with_value(1, "x"),
        ]);
        batch.records[1].value.len = 1000;
        let mut calls = 0;
        let result = batch.for_each_record(|_, _| {
            calls += 1;
            Ok::<(), ()>(())
        });
        assert!(result.unwrap_err().contains("outside"));
        assert_eq!(calls, 0);
    }

    /// The decoder against hostile batches (issue 6's decoder fuzzing, as a
    /// property; `PROPTEST_CASES` scales it): arbitrary bytes, spans and
    /// header ranges never panic, and a batch is either refused before any
    /// record is visited or every visited record's bytes are the batch's.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn span() -> impl Strategy<Value = Span> {
            // Mostly near the data, sometimes anywhere (wrap-around).
            prop_oneof![
                (0u32..80, 0u32..80).prop_map(|(offset, len)| Span { offset, len }),
                (any::<u32>(), any::<u32>()).prop_map(|(offset, len)| Span { offset, len }),
            ]
        }

        fn record_meta() -> impl Strategy<Value = RecordMeta> {
            (
                any::<i64>(),
                proptest::option::of(span()),
                span(),
                prop_oneof![0u32..8, any::<u32>()],
                prop_oneof![0u32..8, any::<u32>()],
            )
                .prop_map(|(offset, key, value, first_header, header_count)| {
                    RecordMeta {
                        partition: 0,
                        offset,
                        timestamp_ms: 0,
                        key,
                        value,
                        first_header,
                        header_count,
                    }
                })
        }

        proptest! {
            #[test]
            fn hostile_batches_never_panic(
                data in proptest::collection::vec(any::<u8>(), 0..64),
                records in proptest::collection::vec(record_meta(), 0..8),
                headers in proptest::collection::vec(
                    (span(), span()).prop_map(|(key, value)| HeaderMeta { key, value }),
                    0..8,
                ),
            ) {
                let mut visited = 0;
                let outcome = for_each_record(&data, &records, &headers, |_, record| {
                    visited += 1;
                    let inside = |bytes: &[u8]| {
                        let range = data.as_ptr_range();
                        bytes.is_empty()
                            || (range.start <= bytes.as_ptr()
                                && bytes.as_ptr_range().end <= range.end)
                    };
                    prop_assert!(inside(record.value));
                    prop_assert!(record.key.is_none_or(inside));
                    Ok(())
                });
                match outcome {
                    Err(_) => prop_assert_eq!(visited, 0),
                    Ok(result) => {
                        result?;
                        prop_assert_eq!(visited, records.len());
                    }
                }
            }

            #[test]
            fn encoded_batches_decode_to_their_records(
                values in proptest::collection::vec(
                    proptest::collection::vec(any::<u8>(), 0..32), 0..16),
            ) {
                let records: Vec<OwnedRecord> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| OwnedRecord::with_value(i as i64, v.clone()))
                    .collect();
                let batch = Batch::encode(&records);
                let mut seen = Vec::new();
                batch
                    .for_each_record(|_, r| {
                        seen.push(r.value.to_vec());
                        Ok::<(), ()>(())
                    })
                    .unwrap()
                    .unwrap();
                prop_assert_eq!(seen, values);
            }
        }
    }
}
