//! `logstream host`: run a host node until SIGTERM/SIGINT, then hand over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgMatches, Args};

use super::{GlobalArgs, LimitArgs};
use crate::pipeline::node::{self, HostConfig};

/// Default checkpoint interval while records flow, in milliseconds.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1_000;
/// Default records between checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY_RECORDS: u64 = 100_000;

#[derive(Debug, Args)]
pub struct HostArgs {
    /// Read settings from this TOML file (docs/configuration.md). Command-line
    /// options and `LOGSTREAM_…` variables override it.
    #[arg(long, env = "LOGSTREAM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

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

    /// Serve the admin HTTP endpoints (/metrics, /healthz, /readyz,
    /// /status) on this address; `off` to not serve them. Port 0 picks a
    /// free port (the log says which).
    #[arg(
        long,
        env = "LOGSTREAM_ADMIN_ADDR",
        value_name = "ADDR",
        default_value = crate::admin::DEFAULT_ADMIN_ADDR,
        value_parser = parse_admin_addr,
    )]
    pub admin_addr: AdminAddr,
}

/// `--admin-addr`: an address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

pub(super) fn parse_admin_addr(text: &str) -> Result<AdminAddr, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(AdminAddr(None));
    }
    text.parse()
        .map(|address| AdminAddr(Some(address)))
        .map_err(|_| format!("{text:?} is neither IP:PORT nor `off`"))
}

/// Run a host; `matches` (the `host` subcommand's) tells which options the
/// command line or the environment set, which a `--config` file may not
/// override.
pub fn run(global: &GlobalArgs, mut args: HostArgs, matches: &ArgMatches) -> Result<ExitCode> {
    if let Some(path) = args.config.clone() {
        let file = super::host_config::load(&path)?;
        super::host_config::apply(file, &mut args, matches)
            .with_context(|| format!("the config file {} is invalid", path.display()))?;
    }
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
        admin_addr: args.admin_addr.0,
    };
    node::run(config, shutdown)?;
    Ok(ExitCode::SUCCESS)
}
