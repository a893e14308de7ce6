//! `logstream processors [--json]`: the deployed processors, from the
//! registry's specs.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::StoreArgs;
use crate::store::registry::{self, ProcessorSpec};

/// Hex digits of a module's sha256 shown in text mode.
pub const SHORT_SHA_CHARS: usize = 12;

#[derive(Debug, Args)]
pub struct ProcessorsArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Print one JSON object (`{"version": 1, "processors": [...]}`).
    #[arg(long)]
    pub json: bool,
}

/// The `--json` output; documented in docs/operations.md.
#[derive(Serialize)]
struct ProcessorsReport<'a> {
    version: u32,
    processors: &'a [ProcessorSpec],
}

pub fn run(args: ProcessorsArgs) -> Result<ExitCode> {
    let store = args.store.open()?;
    let specs = registry::list_specs(store.as_ref())?;
    if args.json {
        let report = ProcessorsReport {
            version: 1,
            processors: &specs,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    if specs.is_empty() {
        println!("no processors are deployed");
    }
    for spec in &specs {
        println!(
            "{} v{}  module {}  {} -> {}  config {:?}",
            spec.name,
            spec.version,
            short_sha(&spec.module_sha256),
            spec.input_topic,
            spec.output_topic,
            spec.config
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The first [`SHORT_SHA_CHARS`] hex digits of a digest.
pub fn short_sha(sha256: &str) -> &str {
    sha256.get(..SHORT_SHA_CHARS).unwrap_or(sha256)
}
