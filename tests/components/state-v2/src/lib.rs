//! `state-v2`: a processor whose state format is version 2 and that has no
//! migration from any other version (the SDK's default `migrate` refuses).
//! It counts records and echoes each as `v2 n=<records seen>:<value>`.
//!
//! It exists to be deployed over a processor whose checkpoints hold state
//! version 1 (every other component here): `logstream deploy` must refuse it
//! with the reason, and the running version must keep running
//! (`host/tests/checkpoint_faults.rs`).

use logstream_sdk::{Emitter, Processor, Record, Reject};

pub struct StateV2;

impl Processor for StateV2 {
    type State = u64;

    const STATE_VERSION: u32 = 2;

    fn configure(_config: &str) -> Result<Self, String> {
        Ok(StateV2)
    }

    fn process(
        &mut self,
        seen: &mut u64,
        record: &Record,
        out: &mut Emitter,
    ) -> Result<(), Reject> {
        *seen += 1;
        let value = record.value_str().unwrap_or("");
        out.emit_value(format!("v2 n={seen}:{value}"));
        Ok(())
    }
}

logstream_sdk::export_processor!(StateV2);
