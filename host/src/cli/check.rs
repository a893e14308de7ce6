//! `logstream check FILE.wasm`: validate a processor component and describe it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::{load_module, module_loader, GlobalArgs};
use crate::wasm::bindings::PROCESSOR_EXPORT;
use crate::wasm::InstanceLimits;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component to check (a `.wasm` file built for wasm32-wasip2).
    pub file: PathBuf,

    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct CheckReport {
    file: String,
    sha256: String,
    size_bytes: usize,
    world: &'static str,
    state_version: u32,
    imports: Vec<String>,
    exports: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: CheckArgs) -> Result<ExitCode> {
    let loader = module_loader(global, InstanceLimits::default())?;
    let module = load_module(&loader, &args.file)?;
    let mut instance = module.instantiate("check")?;
    let state_version = instance
        .state_version()
        .map_err(|e| anyhow::anyhow!("{}: state-version failed: {e}", args.file.display()))?;
    let report = CheckReport {
        file: args.file.display().to_string(),
        sha256: module.sha256().to_string(),
        size_bytes: module.size_bytes(),
        world: "logstream:processor/log-processor@0.1.0",
        state_version,
        imports: module.interface().imports.clone(),
        exports: module.interface().exports.clone(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}: valid LogStream processor", report.file);
        println!("  world:         {}", report.world);
        println!("  exports:       {PROCESSOR_EXPORT}");
        println!("  state version: {}", report.state_version);
        println!("  size:          {} bytes", report.size_bytes);
        println!("  sha256:        {}", report.sha256);
        println!("  imports:");
        for import in &report.imports {
            println!("    {import}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
