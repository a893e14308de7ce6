//! `logstream host`: run a host node until SIGTERM/SIGINT, then hand over.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::{GlobalArgs, LimitArgs};
use crate::pipeline::node::{self, HostConfig};

/// Default checkpoint interval while records flow, in milliseconds.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1_000;
/// Default records between checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY_RECORDS: u64 = 100_000;

#[derive(Debug, Args)]
pub struct HostArgs {
    /// Coordination store URL: `sqlite:PATH` or `fdb:[CLUSTER_FILE]`.
    #[arg(
        long,
        env = "LOGSTREAM_STORE",
        default_value = "sqlite:logstream-data/store.db"
    )]
    pub store: String,

    /// Kafka bootstrap servers.
    #[arg(long, env = "LOGSTREAM_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// This host's id [default: the hostname].
    #[arg(long, env = "LOGSTREAM_HOST_ID")]
    pub host_id: Option<String>,

    #[command(flatten)]
    pub election: super::ElectionArgs,

    /// Checkpoint at least this often while records flow, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_CHECKPOINT_INTERVAL_MS)]
    pub checkpoint_interval_ms: u64,

    /// Checkpoint after this many records.
    #[arg(long, default_value_t = DEFAULT_CHECKPOINT_EVERY_RECORDS)]
    pub checkpoint_every_records: u64,

    #[command(flatten)]
    pub limits: LimitArgs,
}

pub fn run(global: &GlobalArgs, args: HostArgs) -> Result<ExitCode> {
    let timing = args.election.timing()?;
    let shutdown = super::shutdown_on_signals()?;
    let cache_dir: Option<PathBuf> = if global.no_cache {
        None
    } else {
        global
            .cache_dir
            .clone()
            .or_else(crate::wasm::CompileCache::default_dir)
    };
    let config = HostConfig {
        store_url: args.store,
        brokers: args.brokers,
        host_id: args
            .host_id
            .unwrap_or_else(super::probe_election::default_host_id),
        timing,
        checkpoint_interval: Duration::from_millis(args.checkpoint_interval_ms),
        checkpoint_every_records: args.checkpoint_every_records.max(1),
        limits: args.limits.instance_limits(),
        cache_dir,
    };
    node::run(config, shutdown)?;
    Ok(ExitCode::SUCCESS)
}
