//! `logstream run-local FILE.wasm --input FILE.jsonl`: the plugin author's
//! harness. Feeds records from a JSON-lines file (format: [`crate::jsonl`])
//! through the processor in batches and prints outputs as JSON lines.
//!
//! With `--snapshot-every K` it snapshots after every K batches, drops the
//! instance and continues in a fresh one restored from the snapshot — what a
//! failover does — and the output must be byte-identical to a run without.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::{load_module, module_loader, GlobalArgs, LimitArgs};
use crate::jsonl::{output_line, refusal_line, RecordReader, Refusal};
use crate::record::LogRecord;
use crate::wasm::{ProcessedBatch, RecoveryPolicy, SupervisedProcessor};

/// Default records per batch.
pub const DEFAULT_BATCH_RECORDS: usize = 256;
/// Largest batch accepted, in records.
pub const MAX_BATCH_RECORDS: usize = 1_000_000;

#[derive(Debug, Args)]
pub struct RunLocalArgs {
    /// The processor component.
    pub file: PathBuf,

    /// JSON-lines input file (see `docs/run-local.md` for the record format); `-` is stdin.
    #[arg(long)]
    pub input: PathBuf,

    /// Configuration string passed to the processor's `configure`.
    #[arg(long, default_value = "")]
    pub config: String,

    /// A topic the processor may send outputs to, as `logstream deploy
    /// --output` declares them (repeat it; the first is the default topic).
    /// An output naming any other topic is its record's failure, as on a
    /// host.
    #[arg(long = "output", value_name = "TOPIC")]
    pub outputs: Vec<String>,

    /// Processor name (in logs and errors) [default: the file's stem].
    #[arg(long)]
    pub name: Option<String>,

    /// Records per batch.
    #[arg(long, default_value_t = DEFAULT_BATCH_RECORDS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_BATCH_RECORDS as u64))]
    pub batch: usize,

    /// Snapshot, drop the instance and restore into a fresh one after every K batches (0: never).
    #[arg(long, default_value_t = 0)]
    pub snapshot_every: u64,

    /// Write the final state snapshot to this file.
    #[arg(long)]
    pub state_out: Option<PathBuf>,

    /// Start from the state snapshot in this file.
    #[arg(long)]
    pub state_in: Option<PathBuf>,

    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Debug, Default)]
struct Totals {
    records: u64,
    batches: u64,
    outputs: u64,
    rejected: u64,
    failed: u64,
}

pub fn run(global: &GlobalArgs, args: RunLocalArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let loader = module_loader(global, args.limits.instance_limits())?;
    let module = load_module(&loader, &args.file)?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.file
            .file_stem()
            .map_or_else(|| "processor".into(), |s| s.to_string_lossy().into_owned())
    });
    let initial_state = args
        .state_in
        .as_ref()
        .map(|path| {
            std::fs::read(path)
                .with_context(|| format!("cannot read state file {}", path.display()))
        })
        .transpose()?;
    let mut processor = SupervisedProcessor::start_from(
        &name,
        module,
        &args.config,
        RecoveryPolicy::default(),
        initial_state,
    )?;
    processor.route_to(args.outputs.iter().cloned());

    let input: Box<dyn BufRead> = if args.input.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot open input {}", args.input.display()))?;
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut reader = RecordReader::default();
    let mut totals = Totals::default();
    let mut batch = Vec::with_capacity(args.batch);
    let input_name = args.input.display().to_string();

    for line in input.lines() {
        let line = line.with_context(|| format!("reading {input_name}"))?;
        let record = reader
            .parse_line(&line)
            .with_context(|| format!("{input_name} is not valid record input"))?;
        if let Some(record) = record {
            batch.push(record);
        }
        if batch.len() == args.batch {
            run_batch(
                &mut processor,
                std::mem::take(&mut batch),
                &mut out,
                &mut totals,
                &args,
            )?;
            batch.reserve(args.batch);
        }
    }
    if !batch.is_empty() {
        run_batch(&mut processor, batch, &mut out, &mut totals, &args)?;
    }
    out.flush().context("writing outputs")?;

    if let Some(path) = &args.state_out {
        let state = processor.snapshot()?;
        std::fs::write(path, &state)
            .with_context(|| format!("cannot write state file {}", path.display()))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "{name}: {} records in {} batches -> {} outputs, {} rejected, {} failed; {:.2} s ({:.0} records/s); {} instance rebuilds",
        totals.records,
        totals.batches,
        totals.outputs,
        totals.rejected,
        totals.failed,
        elapsed,
        totals.records as f64 / elapsed.max(1e-9),
        processor.rebuilds(),
    );
    Ok(ExitCode::SUCCESS)
}

fn run_batch(
    processor: &mut SupervisedProcessor,
    records: Vec<LogRecord>,
    out: &mut impl Write,
    totals: &mut Totals,
    args: &RunLocalArgs,
) -> Result<()> {
    // The records are moved into the supervisor's journal; keep what the
    // printed lines need.
    let sources: Vec<LogRecord> = records
        .iter()
        .map(|r| LogRecord {
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: 0,
            key: None,
            value: Vec::new(),
            headers: Vec::new(),
        })
        .collect();
    totals.records += records.len() as u64;
    totals.batches += 1;
    let result = processor.process_batch(records)?;
    write_batch(&sources, &result, out, totals)?;
    if args.snapshot_every > 0 && totals.batches.is_multiple_of(args.snapshot_every) {
        processor.restart_from_snapshot()?;
    }
    Ok(())
}

/// Print a batch's results in input order: for each record its outputs, or
/// its rejection or failure.
fn write_batch(
    sources: &[LogRecord],
    result: &ProcessedBatch,
    out: &mut impl Write,
    totals: &mut Totals,
) -> Result<()> {
    let mut outputs = result.outputs.iter().peekable();
    let mut rejections = result.rejections.iter().peekable();
    let mut failures = result.failures.iter().peekable();
    for (index, source) in sources.iter().enumerate() {
        let index = index as u32;
        let mut output_index = 0;
        while let Some(output) = outputs.next_if(|o| o.input_index == index) {
            writeln!(out, "{}", output_line(source, output_index, output))?;
            output_index += 1;
            totals.outputs += 1;
        }
        if let Some(rejection) = rejections.next_if(|r| r.input_index == index) {
            writeln!(
                out,
                "{}",
                refusal_line(source, Refusal::Rejected, &rejection.reason)
            )?;
            totals.rejected += 1;
        }
        if let Some(failure) = failures.next_if(|f| f.input_index == index) {
            writeln!(
                out,
                "{}",
                refusal_line(source, Refusal::Failed, &failure.error.to_string())
            )?;
            totals.failed += 1;
        }
    }
    if outputs.next().is_some() || rejections.next().is_some() {
        anyhow::bail!(
            "the processor returned results out of input order or for records that do not exist"
        );
    }
    Ok(())
}
