#![allow(dead_code)]

//! Running `logstream probe-election` processes against one store: a
//! SQLite file ([`Cluster::new`]) or a three-member etcd cluster of the
//! test's own ([`Cluster::on_etcd`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::etcd::EtcdCluster;
use logstream_host::store::election::{read_leader, LeaderRecord};
use logstream_host::store::{transact, KvStore, RetryPolicy, SqliteStore};

/// Longest a test waits for the election to make progress. A liveness
/// bound, not a performance assertion: failover takes well under a second.
pub const PROGRESS_BOUND: Duration = Duration::from_secs(20);
/// How often tests poll the store.
pub const POLL: Duration = Duration::from_millis(5);

pub struct Probe {
    pub host_id: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Probe {
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub store_url: String,
    pub timing: [u64; 3],
    pub probes: Vec<Probe>,
    restarts: usize,
    /// The etcd cluster the store lives on, if not SQLite.
    pub etcd: Option<EtcdCluster>,
}

impl Cluster {
    /// `timing`: lease, heartbeat, margin in ms.
    pub fn new(timing: [u64; 3]) -> Self {
        let dir = test_dir();
        let store_url = format!("sqlite:{}", dir.path().join("store.db").display());
        Cluster::on(dir, store_url, timing, None)
    }

    /// Probes on a three-member etcd cluster started for them.
    pub fn on_etcd(timing: [u64; 3]) -> Self {
        let etcd = EtcdCluster::start(3);
        let store_url = etcd.url();
        Cluster::on(test_dir(), store_url, timing, Some(etcd))
    }

    fn on(
        dir: tempfile::TempDir,
        store_url: String,
        timing: [u64; 3],
        etcd: Option<EtcdCluster>,
    ) -> Self {
        Cluster {
            dir,
            store_url,
            timing,
            probes: Vec::new(),
            restarts: 0,
            etcd,
        }
    }

    /// A new handle on the probes' store.
    pub fn store(&self) -> Box<dyn KvStore> {
        match &self.etcd {
            Some(_) => EtcdCluster::open(&self.store_url),
            None => Box::new(SqliteStore::open(self.dir.path().join("store.db")).unwrap()),
        }
    }

    pub fn start(&mut self, host_id: &str) {
        self.restarts += 1;
        let log = self
            .dir
            .path()
            .join(format!("{host_id}-{}.log", self.restarts));
        let child = Command::new(env!("CARGO_BIN_EXE_logstream"))
            .args([
                "probe-election",
                "--store",
                &self.store_url,
                "--host-id",
                host_id,
            ])
            .args(["--lease-ms", &self.timing[0].to_string()])
            .args(["--heartbeat-ms", &self.timing[1].to_string()])
            .args(["--margin-ms", &self.timing[2].to_string()])
            .env("LOGSTREAM_LOG", "warn")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.probes.retain(|p| p.host_id != host_id);
        self.probes.push(Probe {
            host_id: host_id.to_string(),
            child,
            log,
        });
    }

    pub fn probe(&mut self, host_id: &str) -> &mut Probe {
        self.probes
            .iter_mut()
            .find(|p| p.host_id == host_id)
            .unwrap()
    }

    /// The probe process holding the leader record, once one holds it
    /// with an epoch above `above`.
    pub fn wait_for_leader_above(&self, above: u64) -> (LeaderRecord, String) {
        let store = self.store();
        let deadline = Instant::now() + PROGRESS_BOUND;
        loop {
            if let Some(record) = leader_record(&*store) {
                if record.epoch > above && !record.released {
                    let pid = logstream_host::probe::pid_of(&record.holder).unwrap();
                    if let Some(probe) = self.probes.iter().find(|p| p.child.id() == pid) {
                        return (record, probe.host_id.clone());
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader above epoch {above} within {PROGRESS_BOUND:?}"
            );
            std::thread::sleep(POLL);
        }
    }

    pub fn kill9(&mut self, host_id: &str) {
        let probe = self.probe(host_id);
        probe.child.kill().unwrap(); // SIGKILL
        probe.child.wait().unwrap();
    }

    pub fn signal(&self, host_id: &str, signal: &str) {
        let probe = self.probes.iter().find(|p| p.host_id == host_id).unwrap();
        let status = Command::new("kill")
            .args([signal, &probe.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM every probe and wait for them.
    pub fn stop(&mut self) {
        for probe in &mut self.probes {
            let _ = Command::new("kill")
                .args(["-TERM", &probe.child.id().to_string()])
                .status();
            let _ = probe.child.wait();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for probe in &mut self.probes {
            let _ = probe.child.kill();
            let _ = probe.child.wait();
        }
    }
}

/// The probes' directory; `LOGSTREAM_KEEP_TEST_DIR=1` keeps it (the probes'
/// logs) for a look after a failure.
fn test_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("election-")
        .disable_cleanup(std::env::var_os("LOGSTREAM_KEEP_TEST_DIR").is_some())
        .tempdir()
        .unwrap();
    eprintln!("probe directory: {}", dir.path().display());
    dir
}

pub fn leader_record(store: &dyn KvStore) -> Option<LeaderRecord> {
    transact(store, &RetryPolicy::default(), |txn| {
        read_leader(txn, "probe")
    })
    .unwrap()
}

/// Wait until `condition` holds (polling), or fail naming `what`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROGRESS_BOUND;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}
