//! The generated WIT bindings and the conversions between them and the SDK's
//! own types. Only compiled for wasm; used by `export_processor!`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "log-processor",
    pub_export_macro: true,
    export_macro_name: "__export_log_processor",
    default_bindings_module: "logstream_sdk::bindings",
});

use crate::{BatchOutput, Header, HeaderMeta, RecordMeta, RuntimeError, Span, StateError};
use logstream::processor::types as wit;

fn to_wit_headers(headers: Vec<Header>) -> Vec<wit::Header> {
    headers
        .into_iter()
        .map(|h| wit::Header {
            key: h.key,
            value: h.value,
        })
        .collect()
}

fn span(span: wit::Span) -> Span {
    Span {
        offset: span.offset,
        len: span.len,
    }
}

/// The record and header tables of a WIT batch in the SDK's types (the
/// data buffer is used as it is).
pub fn from_wit_batch_meta(batch: &wit::RecordBatch) -> (Vec<RecordMeta>, Vec<HeaderMeta>) {
    let records = batch
        .records
        .iter()
        .map(|r| RecordMeta {
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key.map(span),
            value: span(r.value),
            first_header: r.first_header,
            header_count: r.header_count,
        })
        .collect();
    let headers = batch
        .headers
        .iter()
        .map(|h| HeaderMeta {
            key: span(h.key),
            value: span(h.value),
        })
        .collect();
    (records, headers)
}

pub fn to_wit_batch(batch: BatchOutput) -> wit::BatchResult {
    wit::BatchResult {
        outputs: batch
            .outputs
            .into_iter()
            .map(|(input_index, o)| wit::OutputRecord {
                input_index,
                topic: o.topic,
                key: o.key,
                value: o.value,
                headers: to_wit_headers(o.headers),
            })
            .collect(),
        rejections: batch
            .rejections
            .into_iter()
            .map(|(input_index, reason)| wit::Rejection {
                input_index,
                reason,
            })
            .collect(),
    }
}

pub fn to_wit_error(error: RuntimeError) -> wit::ProcessorError {
    match error {
        RuntimeError::InvalidConfig(reason) => wit::ProcessorError::InvalidConfig(reason),
        RuntimeError::State(StateError::Incompatible {
            found,
            expected,
            reason,
        }) => wit::ProcessorError::IncompatibleState(wit::IncompatibleState {
            found,
            expected,
            reason,
        }),
        RuntimeError::State(e @ StateError::Encode(_)) => {
            wit::ProcessorError::Failed(e.to_string())
        }
        RuntimeError::Failed(reason) => wit::ProcessorError::Failed(reason),
    }
}
