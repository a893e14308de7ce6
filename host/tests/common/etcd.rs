//! A real etcd cluster for tests: `members` etcd processes (Debian's
//! `etcd-server`, 3.4) forming one Raft cluster on free ports of one
//! address, data in `/dev/shm` when it exists (fsync is what a commit
//! waits for; tmpfs keeps tests fast and the semantics unchanged).
//!
//! Each test gets its own key prefix ([`EtcdCluster::url`]), so tests of
//! one binary may share a cluster ([`shared`]); tests that kill members
//! start their own ([`EtcdCluster::start`]).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use logstream_host::store::etcd::EtcdStore;
use logstream_host::store::KvStore;

/// How long a new cluster may take to elect a leader and answer.
const STARTUP_BOUND: Duration = Duration::from_secs(30);
/// Raft heartbeat of the test clusters (etcd's default is 100 ms): a lost
/// leader is replaced in about one election timeout, so a killed member
/// costs the hosts' 500 ms leases as little as it would on a tuned cluster.
const RAFT_HEARTBEAT_MS: u32 = 50;
/// Raft election timeout (etcd's default is 1,000 ms; ten heartbeats).
const RAFT_ELECTION_TIMEOUT_MS: u32 = 500;

/// The etcd binary: `$ETCD`, else `etcd` on PATH.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

struct Member {
    name: String,
    client_url: String,
    child: Option<Child>,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    dir: tempfile::TempDir,
    ip: String,
}

static NEXT_PREFIX: AtomicU64 = AtomicU64::new(0);

/// One cluster per test binary, for the tests that do not kill members.
/// Its members are started by a thread that lives as long as the process,
/// because a member dies with the thread that started it (see
/// [`die_with_parent`]): the cluster lasts until the binary exits.
pub fn shared() -> &'static EtcdCluster {
    static CLUSTER: OnceLock<EtcdCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            sender.send(EtcdCluster::start(3)).unwrap();
            loop {
                std::thread::park();
            }
        });
        receiver.recv().expect("the shared etcd cluster started")
    })
}

/// Make a child get SIGKILL when the thread that spawned it ends (which
/// includes the test binary exiting or being killed): statics are never
/// dropped, so the shared cluster would otherwise outlive every test run.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdCluster {
    /// Start a cluster of `members` on loopback and wait until it answers.
    pub fn start(members: usize) -> EtcdCluster {
        EtcdCluster::start_on("127.0.0.1", members)
    }

    /// Start a cluster of `members` listening on `ip`.
    pub fn start_on(ip: &str, members: usize) -> EtcdCluster {
        let scratch = std::path::Path::new("/dev/shm");
        let dir = if scratch.is_dir() {
            tempfile::tempdir_in(scratch).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let peers: Vec<(String, String, String)> = (0..members)
            .map(|i| {
                (
                    format!("m{i}"),
                    format!("http://{ip}:{}", free_port(ip)),
                    format!("http://{ip}:{}", free_port(ip)),
                )
            })
            .collect();
        let initial_cluster = peers
            .iter()
            .map(|(name, peer, _)| format!("{name}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("logstream-test-{}-{}", std::process::id(), free_port(ip));
        let mut cluster = EtcdCluster {
            members: peers
                .iter()
                .map(|(name, _, client)| Member {
                    name: name.clone(),
                    client_url: client.clone(),
                    child: None,
                })
                .collect(),
            initial_cluster,
            token,
            dir,
            ip: ip.to_string(),
        };
        for (i, (_, peer, _)) in peers.iter().enumerate() {
            cluster.spawn(i, peer);
        }
        cluster.wait_until_up();
        cluster
    }

    fn peer_url(&self, member: usize) -> String {
        let name = &self.members[member].name;
        self.initial_cluster
            .split(',')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    }

    fn spawn(&mut self, member: usize, peer: &str) {
        let m = &self.members[member];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).unwrap();
        let mut command = Command::new(etcd_binary());
        die_with_parent(&mut command);
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", &RAFT_HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &RAFT_ELECTION_TIMEOUT_MS.to_string()])
            // Keep an hour of history at most: hosts renew leases ten
            // times a second per unit.
            .args(["--auto-compaction-mode", "periodic"])
            .args(["--auto-compaction-retention", "1h"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (install Debian's etcd-server, or set ETCD)",
                    etcd_binary().display()
                )
            });
        self.members[member].child = Some(child);
    }

    fn wait_until_up(&self) {
        let started = Instant::now();
        loop {
            match EtcdStore::open_url(&self.members_url()) {
                Ok(_) => return,
                Err(error) if started.elapsed() > STARTUP_BOUND => panic!(
                    "the etcd cluster did not answer within {STARTUP_BOUND:?}: {error}; logs in {}",
                    self.dir.path().display()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn members_url(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A store URL on a key prefix no other caller got.
    pub fn url(&self) -> String {
        let n = NEXT_PREFIX.fetch_add(1, Ordering::Relaxed);
        format!(
            "etcd:{}?prefix=test/{}/{n}/",
            self.members_url(),
            std::process::id()
        )
    }

    /// A new handle on the store named by `url`.
    pub fn open(url: &str) -> Box<dyn KvStore> {
        Box::new(
            EtcdStore::open_url(url.strip_prefix("etcd:").expect("an etcd: URL"))
                .expect("open the etcd store"),
        )
    }

    /// The address members listen on.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// Kill member `i` with SIGKILL.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send `signal` (`-STOP`, `-CONT`) to member `i`.
    pub fn signal(&self, member: usize, signal: &str) {
        let child = self.members[member]
            .child
            .as_ref()
            .expect("a running member");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} of etcd member {member}");
    }

    /// Start member `i` again on its data (after [`kill`](Self::kill)).
    pub fn restart(&mut self, member: usize) {
        assert!(
            self.members[member].child.is_none(),
            "member {member} is running"
        );
        let peer = self.peer_url(member);
        self.spawn(member, &peer);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in 0..self.members.len() {
            // A stopped member cannot die of SIGKILL until continued.
            if self.members[member].child.is_some() {
                self.signal(member, "-CONT");
            }
            self.kill(member);
        }
    }
}
