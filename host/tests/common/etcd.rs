//! A real etcd cluster for tests: `members` etcd processes (Debian's
//! `etcd-server`, 3.4) forming one Raft cluster on free ports of one
//! address, data in `/dev/shm` when it exists (fsync is what a commit
//! waits for; tmpfs keeps tests fast and the semantics unchanged).
//!
//! Each test gets its own key prefix ([`EtcdCluster::url`]), so tests of
//! one binary may share a cluster ([`shared`]); tests that kill members
//! start their own ([`EtcdCluster::start`]).
//!
//! A *secure* cluster ([`EtcdCluster::start_secure_on`]) is set up the way
//! production clusters are: clients speak TLS to members that require a
//! client certificate signed by the cluster's CA (`--client-cert-auth`),
//! and password authentication is on, the hosts' user allowed read-write
//! on the tests' prefix only. Its URLs carry every option of the `etcd:`
//! store URL (`ca_file`, `cert_file`, `key_file`, `user`, `password_file`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use logstream_host::store::etcd::EtcdStore;
use logstream_host::store::KvStore;

use super::tls::TestCa;

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
    secure: Option<Secure>,
}

/// The key prefix every test URL lies under: what the secure cluster's
/// hosts' user may read and write.
const TEST_PREFIX_ROOT: &str = "test/";
/// The user the hosts of a secure cluster authenticate as.
pub const HOSTS_USER: &str = "logstream";
/// The administrator of a secure cluster (etcd's `root`).
const ROOT_USER: &str = "root";

/// What clients of a secure cluster need.
struct Secure {
    ca: TestCa,
    /// `ca_file=…&cert_file=…&key_file=…` of the hosts' client
    /// certificate.
    tls_options: String,
    /// `user=…&password_file=…` once authentication is on; empty before.
    auth_options: String,
}

static NEXT_PREFIX: AtomicU64 = AtomicU64::new(0);

/// The secure clusters' `root` password (a test secret).
const ROOT_PASSWORD: &str = "root-secret";

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
        EtcdCluster::start_with(ip, members, false)
    }

    /// Start a secure cluster (see the module doc) of `members` listening
    /// on `ip`, and turn authentication on.
    pub fn start_secure_on(ip: &str, members: usize) -> EtcdCluster {
        let mut cluster = EtcdCluster::start_with(ip, members, true);
        cluster.enable_auth();
        cluster
    }

    fn start_with(ip: &str, members: usize, secure: bool) -> EtcdCluster {
        let scratch = std::path::Path::new("/dev/shm");
        let dir = if scratch.is_dir() {
            tempfile::tempdir_in(scratch).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let client_scheme = if secure { "https" } else { "http" };
        let peers: Vec<(String, String, String)> = (0..members)
            .map(|i| {
                (
                    format!("m{i}"),
                    format!("http://{ip}:{}", free_port(ip)),
                    format!("{client_scheme}://{ip}:{}", free_port(ip)),
                )
            })
            .collect();
        let secure = secure.then(|| {
            let ca = TestCa::new(&dir.path().join("tls"));
            ca.issue("server", Some(ip));
            let client = ca.issue("hosts", None);
            Secure {
                tls_options: format!(
                    "ca_file={}&cert_file={}&key_file={}",
                    ca.ca_file().display(),
                    client.cert.display(),
                    client.key.display()
                ),
                ca,
                auth_options: String::new(),
            }
        });
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
            secure,
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
        if let Some(secure) = &self.secure {
            let tls = secure.ca.ca_file();
            let tls = tls.parent().unwrap();
            command
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(tls.join("ca.pem"))
                .arg("--cert-file")
                .arg(tls.join("server.pem"))
                .arg("--key-file")
                .arg(tls.join("server-key.pem"));
        }
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
            match EtcdStore::open_url(&format!("{}?{}", self.members_url(), self.options())) {
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

    /// The URL options a client of this cluster needs (none for a plain
    /// one), `&`-separated.
    fn options(&self) -> String {
        match &self.secure {
            None => String::new(),
            Some(secure) if secure.auth_options.is_empty() => secure.tls_options.clone(),
            Some(secure) => format!("{}&{}", secure.tls_options, secure.auth_options),
        }
    }

    /// A store URL on a key prefix no other caller got.
    pub fn url(&self) -> String {
        let n = NEXT_PREFIX.fetch_add(1, Ordering::Relaxed);
        let mut url = format!(
            "etcd:{}?prefix={TEST_PREFIX_ROOT}{}/{n}/",
            self.members_url(),
            std::process::id()
        );
        if self.secure.is_some() {
            url.push('&');
            url.push_str(&self.options());
        }
        url
    }

    /// On a secure cluster: add `user` with `password` (written to a file
    /// whose path is returned), allowed read-write on `prefix` when given,
    /// on nothing otherwise.
    pub fn add_user(&self, user: &str, password: &str, prefix: Option<&str>) -> PathBuf {
        let role = format!("{user}-role");
        let prefix = prefix.map(str::to_string);
        let (user_name, password_text) = (user.to_string(), password.to_string());
        self.as_root(move |mut client| async move {
            use etcd_client::Permission;
            client
                .user_add(user_name.as_str(), password_text, None)
                .await?;
            if let Some(prefix) = prefix {
                client.role_add(role.as_str()).await?;
                client
                    .role_grant_permission(
                        role.as_str(),
                        Permission::read_write(prefix).with_prefix(),
                    )
                    .await?;
                client.user_grant_role(user_name, role).await?;
            }
            Ok(())
        });
        let file = self.dir.path().join(format!("{user}.password"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        file
    }

    /// Run `admin` with a client of the secure cluster, authenticated as
    /// `root` once authentication is on.
    fn as_root<F: std::future::Future<Output = Result<(), etcd_client::Error>>>(
        &self,
        admin: impl FnOnce(etcd_client::Client) -> F,
    ) {
        use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
        let secure = self.secure.as_ref().expect("a secure cluster");
        let tls = secure.ca.ca_file();
        let tls = tls.parent().unwrap();
        let read = |name: &str| std::fs::read(tls.join(name)).unwrap();
        let mut options = ConnectOptions::new().with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read("ca.pem")))
                .identity(Identity::from_pem(read("hosts.pem"), read("hosts-key.pem"))),
        );
        if !secure.auth_options.is_empty() {
            options = options.with_user(ROOT_USER, ROOT_PASSWORD);
        }
        let endpoints: Vec<String> = self.members.iter().map(|m| m.client_url.clone()).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(async move {
                let client = etcd_client::Client::connect(endpoints, Some(options)).await?;
                admin(client).await
            })
            .expect("administer the secure etcd cluster");
    }

    /// Create `root` and the hosts' user, then turn authentication on.
    fn enable_auth(&mut self) {
        self.as_root(|mut client| async move {
            client.user_add(ROOT_USER, ROOT_PASSWORD, None).await?;
            client.user_grant_role(ROOT_USER, "root").await?;
            Ok(())
        });
        let password_file = self.add_user(HOSTS_USER, "hosts-secret", Some(TEST_PREFIX_ROOT));
        self.as_root(|mut client| async move {
            client.auth_enable().await?;
            Ok(())
        });
        self.secure.as_mut().unwrap().auth_options = format!(
            "user={HOSTS_USER}&password_file={}",
            password_file.display()
        );
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
