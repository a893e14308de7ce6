//! `misbehave`: a processor built to test the host's isolation. It echoes
//! each record as `n=<records seen>:<value>` (so the tests can see that state
//! survived a rebuild) unless the value is a command:
//!
//! | value               | what it does                                        |
//! |---------------------|-----------------------------------------------------|
//! | `trap`              | panics (a wasm trap)                                |
//! | `loop`              | spins forever                                       |
//! | `bomb`              | allocates memory until it runs out                  |
//! | `big-output`        | emits one 2 MiB output                              |
//! | `open-file PATH`    | tries to read PATH; rejects with the error          |
//! | `open-socket ADDR`  | tries to connect to ADDR; rejects with the error    |
//! | `env`               | emits the number of environment variables           |
//! | `clock`             | emits the wall-clock time in seconds                |
//!
//! Success at reaching a file or socket is emitted as `ESCAPED: …`, which the
//! tests treat as a failure of the sandbox.

use std::io::Read;

use logstream_sdk::{Emitter, Processor, Record, Reject};

pub struct Misbehave;

impl Processor for Misbehave {
    type State = u64;

    fn configure(_config: &str) -> Result<Self, String> {
        Ok(Misbehave)
    }

    fn process(
        &mut self,
        seen: &mut u64,
        record: &Record,
        out: &mut Emitter,
    ) -> Result<(), Reject> {
        *seen += 1;
        let value = record.value_str().unwrap_or("");
        let (command, argument) = value.split_once(' ').unwrap_or((value, ""));
        match command {
            "trap" => panic!("poison record at offset {}", record.offset),
            "loop" => {
                let mut spins = 0u64;
                loop {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xa5; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "big-output" => out.emit_value(vec![b'x'; 2 << 20]),
            "open-file" => {
                let mut contents = String::new();
                std::fs::File::open(argument)
                    .and_then(|mut file| file.read_to_string(&mut contents))
                    .map_err(|e| Reject::new(format!("open-file {argument}: {e}")))?;
                out.emit_value(format!(
                    "ESCAPED: read {} bytes of {argument}",
                    contents.len()
                ));
            }
            "open-socket" => {
                std::net::TcpStream::connect(argument)
                    .map_err(|e| Reject::new(format!("open-socket {argument}: {e}")))?;
                out.emit_value(format!("ESCAPED: connected to {argument}"));
            }
            "env" => out.emit_value(format!("env={}", std::env::vars_os().count())),
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                out.emit_value(format!("clock={now}"));
            }
            _ => out.emit_value(format!("n={seen}:{value}")),
        }
        Ok(())
    }
}

logstream_sdk::export_processor!(Misbehave);
