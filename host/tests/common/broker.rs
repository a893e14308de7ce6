//! A real Kafka-compatible broker for tests: tansu with `sqlite://`
//! storage in a temporary directory, on a free loopback port.
//!
//! `TANSU_STORAGE` names another storage engine (e.g. `memory://tansu/`,
//! which keeps nothing across a restart): the benches use it to measure
//! the host where tansu's SQLite storage is the bottleneck (its fetch runs
//! two queries per partition, one partition after another).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the broker may take to answer metadata after starting.
const STARTUP_BOUND: Duration = Duration::from_secs(30);

pub struct Broker {
    pub address: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The tansu binary: `$TANSU`, else `~/.cargo/bin/tansu`, else `tansu` on PATH.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU") {
        return PathBuf::from(path);
    }
    let cargo_bin = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cargo/bin/tansu"))
        .filter(|p| p.exists());
    cargo_bin.unwrap_or_else(|| PathBuf::from("tansu"))
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_on("127.0.0.1")
    }

    /// A broker listening on (and advertising) a free port of `ip`.
    pub fn start_on(ip: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind(format!("{ip}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("{ip}:{port}");
        let child = spawn_tansu(dir.path(), &address);
        let broker = Broker {
            address,
            child,
            _dir: dir,
        };
        broker.wait_until_up();
        if storage_engine() == SQLITE_STORAGE {
            add_header_index(&broker._dir.path().join("tansu.db"));
        }
        broker
    }

    /// Kill the broker (SIGKILL) and start it again on the same address
    /// and storage, waiting until it answers.
    // The benches and the demo include this file too and do not restart.
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_tansu(self._dir.path(), &self.address);
        self.wait_until_up();
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + STARTUP_BOUND;
        while logstream_host::pipeline::kafka::ensure_topics(
            &self.address,
            &[("logstream-probe", 1)],
        )
        .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "tansu did not come up within {STARTUP_BOUND:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// tansu's storage unless `TANSU_STORAGE` names another.
const SQLITE_STORAGE: &str = "sqlite://tansu.db";

fn storage_engine() -> String {
    std::env::var("TANSU_STORAGE").unwrap_or_else(|_| SQLITE_STORAGE.to_string())
}

fn spawn_tansu(dir: &std::path::Path, address: &str) -> Child {
    let url = format!("tcp://{address}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .unwrap();
    // tansu resolves the sqlite path relative to its working directory.
    Command::new(tansu_binary())
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", &storage_engine()])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start tansu ({}): {e}; install it with scripts/install-tansu.sh",
                tansu_binary().display()
            )
        })
}

/// tansu 0.6.0's sqlite schema has no index on `header (topition,
/// offset_id)`, and it looks up every fetched record's headers by those
/// columns: each fetch scans every header ever stored, so reads slow down
/// quadratically with the data (a 6,667-record read went from over 60 s to
/// 0.15 s with the index). The schema exists once the broker answered.
fn add_header_index(database: &std::path::Path) {
    let connection = rusqlite::Connection::open(database).expect("open tansu's database");
    connection
        .busy_timeout(Duration::from_secs(10))
        .and_then(|_| {
            connection.execute_batch(
                "CREATE INDEX IF NOT EXISTS logstream_header_topition_offset ON header (topition, offset_id);",
            )
        })
        .expect("index tansu's header table");
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self._dir.path().join("tansu.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let status = self.child.try_wait().ok().flatten();
            eprintln!(
                "tansu (exit status {status:?}) log tail, newest first:\n{}",
                tail.join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produce `values` to `topic`/`partition` in order (no key, no headers),
/// and wait until the broker acknowledged them.
// Not every bench that includes this file produces.
#[allow(dead_code)]
pub fn produce_values(brokers: &str, topic: &str, partition: i32, values: &[&str]) {
    use logstream_host::pipeline::kafka::{Outgoing, OutputProducer};
    let producer = OutputProducer::open_streaming(brokers).unwrap();
    for value in values {
        producer
            .send(&Outgoing {
                topic,
                partition,
                key: None,
                value: value.as_bytes(),
                headers: &[],
                id: None,
            })
            .unwrap();
    }
    producer.flush().unwrap();
}
