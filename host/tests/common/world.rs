//! One pipeline world for the process tests: a broker (tansu), SQLite
//! stores and hosts in a test directory, and the helpers to feed and read
//! them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use logstream_host::pipeline::kafka;
use logstream_host::record::LogRecord;
use logstream_host::store::checkpoint;
use logstream_host::store::SqliteStore;

use super::broker::Broker;
use super::hosts::Hosts;
use super::verify::{self, OutputRow};
use super::{logstream, plugin, run, stderr};

/// Bound on every wait (liveness, not performance).
pub const RUN_BOUND: Duration = Duration::from_secs(300);

/// The tests of one file run one at a time (each runs a broker and hosts:
/// several at once on 2 cores starve the broker).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + RUN_BOUND;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A broker, a store and a test directory.
pub struct World {
    pub broker: Broker,
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new(prefix: &str) -> Self {
        World {
            broker: Broker::start(),
            // LOGSTREAM_KEEP_TEST_DIR=1 keeps the stores and host logs.
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .disable_cleanup(std::env::var_os("LOGSTREAM_KEEP_TEST_DIR").is_some())
                .tempdir()
                .unwrap(),
        }
    }

    pub fn store_path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    pub fn store_url(&self, name: &str) -> String {
        format!("sqlite:{}", self.store_path(name).display())
    }

    pub fn hosts(&self, store: &str) -> Hosts {
        let mut hosts = Hosts::new(
            env!("CARGO_BIN_EXE_logstream").into(),
            self.store_url(store),
            self.broker.address.clone(),
            self.dir.path().join(store),
        );
        std::fs::create_dir_all(&hosts.dir).unwrap();
        hosts.extra_args = vec!["--checkpoint-interval-ms".into(), "200".into()];
        hosts
    }

    /// `count` sample records onto `topic` (spread over its partitions).
    pub fn produce(&self, topic: &str, count: u64, partitions: i32) {
        let output = Command::new(env!("CARGO_BIN_EXE_logstream"))
            .args(["gen-logs", "--count", &count.to_string()])
            .args(["--partitions", &partitions.to_string()])
            .args(["--topic", topic, "--brokers", &self.broker.address])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }

    /// Processor `pt` (passthrough) deployed into store `store`, from
    /// `logs` to `pt-out`, both created first with `input_partitions` and
    /// `output_partitions`; the store's URL.
    pub fn deploy_passthrough(
        &self,
        store: &str,
        input_partitions: i32,
        output_partitions: i32,
    ) -> String {
        kafka::ensure_topics(
            &self.broker.address,
            &[("logs", input_partitions), ("pt-out", output_partitions)],
        )
        .unwrap();
        let url = self.store_url(store);
        let out = deploy(
            "passthrough",
            &[
                "--name", "pt", "--input", "logs", "--output", "pt-out", "--store", &url,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        url
    }

    pub fn read(&self, topic: &str, partition: i32) -> Vec<LogRecord> {
        verify::read_partition(&self.broker.address, topic, partition, RUN_BOUND)
    }
}

/// `logstream deploy` with `args`; the output.
pub fn deploy(component: &str, args: &[&str]) -> std::process::Output {
    run(logstream().arg("deploy").arg(plugin(component)).args(args))
}

/// Wait until unit `unit` of the store checkpointed up to `offset`.
pub fn wait_for_checkpoint(store: &SqliteStore, unit: &str, partition: i32, offset: i64) {
    wait_until(&format!("{unit} to checkpoint offset {offset}"), || {
        checkpoint::read_current_meta(store, unit)
            .unwrap()
            .and_then(|m| m.offsets.get(&partition).copied())
            == Some(offset)
    });
}

pub fn run_local(
    dir: &Path,
    component: &str,
    config: &str,
    input: &[LogRecord],
) -> (Vec<OutputRow>, Vec<u8>) {
    verify::run_local(
        Path::new(env!("CARGO_BIN_EXE_logstream")),
        &plugin(component),
        config,
        input,
        dir,
        &format!("{component}-{}", input.len()),
    )
}
