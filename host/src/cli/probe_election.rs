//! `logstream probe-election`: run a diagnostic election contender (see
//! [`crate::probe`]) until SIGTERM/SIGINT, or check a store's probe log.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::probe::{self, ProbeConfig};

#[derive(Debug, Args)]
pub struct ProbeElectionArgs {
    /// Coordination store URL (`sqlite:PATH` or `fdb:[CLUSTER_FILE]`).
    #[arg(long, env = "LOGSTREAM_STORE")]
    pub store: String,

    /// The processor whose election to join.
    #[arg(long, default_value = "probe")]
    pub processor: String,

    /// This contender's host id [default: the hostname].
    #[arg(long)]
    pub host_id: Option<String>,

    #[command(flatten)]
    pub election: super::ElectionArgs,

    /// Pause between fenced writes while leading, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub write_interval_ms: u64,

    /// Instead of contending, check the probe log and print a summary.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: ProbeElectionArgs) -> Result<ExitCode> {
    let store = crate::store::open(&args.store)
        .with_context(|| format!("opening the store {}", args.store))?;
    if args.check {
        let entries = probe::read_probe_log(store.as_ref(), &args.processor)?;
        return match probe::check_probe_log(&entries) {
            Ok(report) => {
                println!(
                    "probe log of '{}': {} fenced writes over {} epochs, no violation",
                    args.processor,
                    report.entries,
                    report.epochs.len()
                );
                let hosts =
                    crate::store::membership::list_hosts(store.as_ref(), &Default::default())?;
                for host in hosts {
                    println!(
                        "host {} ({}): heartbeat {}",
                        host.host_id, host.incarnation, host.heartbeat
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(violations) => {
                for violation in &violations {
                    eprintln!("violation: {violation}");
                }
                anyhow::bail!(
                    "the probe log of '{}' has {} violations",
                    args.processor,
                    violations.len()
                )
            }
        };
    }
    let timing = args.election.timing()?;
    let shutdown = super::shutdown_on_signals()?;
    let config = ProbeConfig {
        processor: args.processor,
        host_id: args.host_id.unwrap_or_else(default_host_id),
        timing,
        write_interval: Duration::from_millis(args.write_interval_ms),
    };
    probe::run(store, config, shutdown)?;
    Ok(ExitCode::SUCCESS)
}

/// The machine's hostname, or `host` when it cannot be read.
pub fn default_host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".into())
}
