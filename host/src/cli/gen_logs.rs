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
    #[arg(long, conflicts_with = "topic")]
    pub out: Option<PathBuf>,

    /// Produce the records to this Kafka topic instead (created with
    /// `--partitions` partitions if missing); each record goes to its partition.
    #[arg(long, requires = "brokers")]
    pub topic: Option<String>,

    /// Kafka bootstrap servers, with `--topic`.
    #[arg(long, env = "LOGSTREAM_BROKERS")]
    pub brokers: Option<String>,
}

pub fn run(args: GenLogsArgs) -> Result<ExitCode> {
    if let (Some(topic), Some(brokers)) = (&args.topic, &args.brokers) {
        return produce(&args, topic, brokers);
    }
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

/// Records produced between progress lines on stderr.
const PROGRESS_EVERY_RECORDS: u64 = 50_000;

fn produce(args: &GenLogsArgs, topic: &str, brokers: &str) -> Result<ExitCode> {
    use crate::pipeline::kafka::{ensure_topics, Outgoing, OutputProducer};
    ensure_topics(brokers, &[(topic, args.partitions)])?;
    let producer = OutputProducer::open_streaming(brokers)?;
    let mut produced = 0u64;
    for record in SampleLogs::new(args.seed, args.partitions).take(args.count as usize) {
        producer.send(&Outgoing {
            topic,
            partition: record.partition,
            key: None,
            value: &record.value,
            headers: &[],
            id: None,
        })?;
        produced += 1;
        if produced.is_multiple_of(PROGRESS_EVERY_RECORDS) {
            producer.flush()?;
            eprintln!("produced {produced} of {} records to {topic}", args.count);
        }
    }
    producer.flush()?;
    eprintln!("produced {produced} records to {topic}");
    Ok(ExitCode::SUCCESS)
}
