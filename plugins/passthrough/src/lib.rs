//! `passthrough`: emits each input record's key, value and headers unchanged.
//! Stateless. It exists to measure what the runtime itself costs per record.

use logstream_sdk::{Emitter, Output, Processor, Record, Reject};

pub struct Passthrough;

impl Processor for Passthrough {
    type State = ();

    fn configure(config: &str) -> Result<Self, String> {
        if config.trim().is_empty() {
            Ok(Passthrough)
        } else {
            Err(format!(
                "passthrough takes no configuration, got {config:?}"
            ))
        }
    }

    fn process(&mut self, _: &mut (), record: &Record, out: &mut Emitter) -> Result<(), Reject> {
        out.emit(Output {
            topic: None,
            key: record.key.clone(),
            value: record.value.clone(),
            headers: record.headers.clone(),
        });
        Ok(())
    }
}

logstream_sdk::export_processor!(Passthrough);
