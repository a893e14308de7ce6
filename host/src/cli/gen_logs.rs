//! `logstream gen-logs`: write realistic sample log records as JSON lines in
//! the `run-local` input format.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::sample_logs::SampleLogs;

#[derive(Debug, Args)]
pub struct GenLogsArgs {
    /// How many records to write.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,

    /// Spread records round-robin over this many partitions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,

    /// Seed; the same seed gives the same records.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Output file [default: stdout].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: GenLogsArgs) -> Result<ExitCode> {
    let sink: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    for record in SampleLogs::new(args.seed, args.partitions).take(args.count as usize) {
        let line = serde_json::json!({
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp_ms,
            "value": String::from_utf8(record.value).expect("sample values are UTF-8"),
        });
        writeln!(out, "{line}")?;
    }
    out.flush().context("writing records")?;
    Ok(ExitCode::SUCCESS)
}
