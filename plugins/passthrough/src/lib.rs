//! `passthrough`: emits each input record's key, value and headers unchanged
//! (config empty or `mode=echo`), or consumes records and emits nothing
//! (`mode=drop`). Stateless. It exists to measure what the runtime itself
//! costs per record: `echo` moves every record in and out of the component,
//! `drop` only in.

use logstream_sdk::config::Settings;
use logstream_sdk::{Emitter, Output, Processor, Record, Reject};

/// What to do with each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Echo,
    Drop,
}

pub struct Passthrough {
    mode: Mode,
}

impl Processor for Passthrough {
    type State = ();

    fn configure(config: &str) -> Result<Self, String> {
        let mut settings = Settings::parse(config, "passthrough")?;
        let mode = match settings.take_str("mode").as_deref() {
            None | Some("echo") => Mode::Echo,
            Some("drop") => Mode::Drop,
            Some(other) => {
                return Err(format!(
                    "passthrough's `mode` is `echo` or `drop`, got {other:?}"
                ))
            }
        };
        settings.finish()?;
        Ok(Passthrough { mode })
    }

    fn process(&mut self, _: &mut (), record: &Record, out: &mut Emitter) -> Result<(), Reject> {
        if self.mode == Mode::Echo {
            out.emit(Output::copy_of(record));
        }
        Ok(())
    }
}

logstream_sdk::export_processor!(Passthrough);

#[cfg(test)]
mod tests {
    use super::*;
    use logstream_sdk::Runtime;

    #[test]
    fn echoes_or_drops() {
        let records = vec![
            logstream_sdk::OwnedRecord::with_value(0, "a"),
            logstream_sdk::OwnedRecord::with_value(1, "b"),
        ];
        let mut echo = Runtime::<Passthrough>::new();
        echo.configure("").unwrap();
        let out = echo.process_batch(&records).unwrap();
        assert_eq!(
            out.outputs,
            vec![(0, Output::new("a")), (1, Output::new("b"))]
        );
        let mut drop = Runtime::<Passthrough>::new();
        drop.configure("mode=drop").unwrap();
        assert!(drop.process_batch(&records).unwrap().outputs.is_empty());
        assert!(Runtime::<Passthrough>::new().configure("mode=x").is_err());
    }
}
