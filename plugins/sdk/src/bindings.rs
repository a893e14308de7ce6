//! The generated WIT bindings and the conversions between them and the SDK's
//! own types. Only compiled for wasm; used by `export_processor!`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "log-processor",
    pub_export_macro: true,
    export_macro_name: "__export_log_processor",
    default_bindings_module: "logstream_sdk::bindings",
});

use crate::{BatchOutput, Header, Record, RuntimeError, StateError};
use logstream::processor::types as wit;

fn from_wit_headers(headers: Vec<wit::Header>) -> Vec<Header> {
    headers
        .into_iter()
        .map(|h| Header {
            key: h.key,
            value: h.value,
        })
        .collect()
}

fn to_wit_headers(headers: Vec<Header>) -> Vec<wit::Header> {
    headers
        .into_iter()
        .map(|h| wit::Header {
            key: h.key,
            value: h.value,
        })
        .collect()
}

pub fn from_wit_records(records: Vec<wit::LogRecord>) -> Vec<Record> {
    records
        .into_iter()
        .map(|r| Record {
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: from_wit_headers(r.headers),
        })
        .collect()
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
