//! The admin HTTP endpoints of a real `logstream host` process, over a real
//! broker (tansu) and the real SQLite store: after passthrough processed
//! 1,000 records, `/metrics` parses as Prometheus text and holds every
//! `logstream_*` family with the unit's figures, `/healthz` and `/readyz`
//! answer 200, `/status` shows the unit leading; two hosts on one machine
//! with the default admin address each serve their own; and a busy admin
//! address given explicitly stops the host at startup with a one-line
//! error.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::{logstream, plugin, run, stderr};
use logstream_host::pipeline::kafka;
use prometheus_parse::{Scrape, Value};

const RECORDS: u64 = 1_000;
/// Liveness bound on the host processing the records (not a performance
/// assertion).
const PROCESS_BOUND: Duration = Duration::from_secs(120);
/// Liveness bound on the host starting its admin server, and on exiting.
const START_BOUND: Duration = Duration::from_secs(60);
/// Bound on one HTTP exchange with the admin server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between polls of a condition.
const POLL_STEP: Duration = Duration::from_millis(100);

/// Kills the host if a test fails before it stopped it.
struct HostProcess(Child);

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_host(store_url: &str, brokers: &str, admin_addr: &str, log: &Path) -> HostProcess {
    let mut command = host_command("admin-test", store_url, brokers, log);
    command.args(["--admin-addr", admin_addr]);
    HostProcess(command.spawn().unwrap())
}

/// `logstream host` as host `id`, logging to `log`, with no admin setting
/// of its own: neither `--admin-addr` nor `LOGSTREAM_ADMIN_ADDR`.
fn host_command(id: &str, store_url: &str, brokers: &str, log: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_logstream"));
    command
        .args(["host", "--host-id", id, "--brokers", brokers])
        .args(["--store", store_url])
        .args(["--checkpoint-interval-ms", "200"])
        .env_remove("LOGSTREAM_ADMIN_ADDR")
        .env("LOGSTREAM_LOG", "info")
        .env(
            "LOGSTREAM_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("compile-cache"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    command
}

fn wait_exit(host: &mut HostProcess, bound: Duration) -> ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = host.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the host did not exit within {bound:?}"
        );
        std::thread::sleep(POLL_STEP);
    }
}

/// The address the host logged it listens on (`--admin-addr` with port 0).
fn logged_admin_address(log: &Path, host: &mut HostProcess) -> SocketAddr {
    const PREFIX: &str = "admin HTTP listening on http://";
    let deadline = Instant::now() + START_BOUND;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find(PREFIX) {
            let rest = &text[at + PREFIX.len()..];
            let address = rest.split_whitespace().next().unwrap();
            return address.parse().unwrap();
        }
        if let Some(status) = host.0.try_wait().unwrap() {
            panic!("the host exited ({status}) before serving admin HTTP:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "the host did not log its admin address within {START_BOUND:?}:\n{text}"
        );
        std::thread::sleep(POLL_STEP);
    }
}

/// One HTTP/1.0 request: (status code, body).
fn http(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&address, HTTP_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

fn get(address: SocketAddr, path: &str) -> (u16, String) {
    http(address, "GET", path)
}

/// The pt/0 series of each family (histograms by their bucket counts),
/// and every family name present.
struct Figures {
    values: HashMap<String, f64>,
    histograms: HashMap<String, u64>,
}

impl Figures {
    fn of(body: &str) -> Figures {
        let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
        let mut values = HashMap::new();
        let mut histograms = HashMap::new();
        for sample in scrape.samples {
            if sample.labels.get("processor") != Some("pt")
                || sample.labels.get("partition") != Some("0")
            {
                continue;
            }
            match sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                    values.insert(sample.metric, v);
                }
                Value::Histogram(buckets) => {
                    let total = buckets.iter().map(|b| b.count as u64).max().unwrap_or(0);
                    histograms.insert(sample.metric, total);
                }
                Value::Summary(_) => {}
            }
        }
        Figures { values, histograms }
    }

    fn value(&self, name: &str) -> f64 {
        *self
            .values
            .get(name)
            .unwrap_or_else(|| panic!("no {name} series for pt/0 in {:?}", self.values))
    }

    fn observations(&self, name: &str) -> u64 {
        *self
            .histograms
            .get(name)
            .unwrap_or_else(|| panic!("no {name} histogram for pt/0"))
    }
}

#[test]
fn admin_endpoints_report_a_processing_host() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite:{}", dir.path().join("store.db").display());
    kafka::ensure_topics(&broker.address, &[("in", 1), ("out", 1)]).unwrap();
    let out = run(logstream().arg("deploy").arg(plugin("passthrough")).args([
        "--name", "pt", "--input", "in", "--output", "out", "--store", &store_url,
    ]));
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    let out = run(logstream().args([
        "gen-logs",
        "--count",
        &RECORDS.to_string(),
        "--partitions",
        "1",
        "--topic",
        "in",
        "--brokers",
        &broker.address,
    ]));
    assert!(out.status.success(), "gen-logs: {}", stderr(&out));

    let log = dir.path().join("host.log");
    let mut host = spawn_host(&store_url, &broker.address, "127.0.0.1:0", &log);
    let address = logged_admin_address(&log, &mut host);

    // Every record out, and a checkpoint written after them.
    let deadline = Instant::now() + PROCESS_BOUND;
    let figures = loop {
        let (status, body) = get(address, "/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        let figures = Figures::of(&body);
        let done = figures.values.get("logstream_records_out_total") == Some(&(RECORDS as f64))
            && figures
                .histograms
                .get("logstream_checkpoint_duration_seconds")
                .is_some_and(|n| *n > 0);
        if done {
            break figures;
        }
        assert!(
            Instant::now() < deadline,
            "pt did not output {RECORDS} records and checkpoint within {PROCESS_BOUND:?}; last /metrics:\n{body}\nhost log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(POLL_STEP);
    };
    assert_eq!(figures.value("logstream_records_in_total"), RECORDS as f64);
    assert_eq!(figures.value("logstream_dead_letters_total"), 0.0);
    assert_eq!(figures.value("logstream_guest_failures_total"), 0.0);
    assert!(figures.value("logstream_takeovers_total") >= 1.0);
    // One host, never paused: no batch of it was fenced off.
    assert_eq!(figures.value("logstream_fenced_batches_total"), 0.0);
    assert_eq!(figures.value("logstream_role"), 1.0);
    assert!(figures.value("logstream_epoch") >= 1.0);
    assert!(figures.value("logstream_checkpoint_size_bytes") >= 0.0);
    let lag = figures.value("logstream_input_lag_records");
    assert!((0.0..=RECORDS as f64).contains(&lag), "input lag {lag}");
    assert!(figures.observations("logstream_batch_duration_seconds") >= 1);

    let (status, body) = get(address, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = get(address, "/readyz");
    assert_eq!(status, 200, "/readyz: {body}");
    let (status, body) = get(address, "/status");
    assert_eq!(status, 200, "/status: {body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["host_id"], "admin-test");
    assert!(report["incarnation"].as_str().is_some(), "{report}");
    let units = report["units"].as_array().unwrap();
    assert_eq!(units.len(), 1, "{report}");
    assert_eq!(units[0]["name"], "pt/0");
    assert_eq!(units[0]["role"], "leader");
    assert!(
        units[0]["epoch"].as_u64().is_some_and(|e| e >= 1),
        "{report}"
    );
    assert_eq!(units[0]["next_offset"], RECORDS);
    assert!(
        units[0]["last_checkpoint"]["generation"].as_u64().is_some(),
        "{report}"
    );
    // Read-only: nothing but GET is routed.
    let (status, _) = http(address, "POST", "/metrics");
    assert_eq!(status, 405);

    // SIGTERM: hand over, stop serving, exit cleanly.
    let stopped = Command::new("kill")
        .args(["-TERM", &host.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let status = wait_exit(&mut host, START_BOUND);
    assert!(
        status.success(),
        "host exit {status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The quick start in docs/pipeline.md: two hosts on one machine with the
/// default admin settings both start and serve `/status`, each its own.
#[test]
fn two_hosts_on_one_machine_each_serve_their_admin_endpoint_by_default() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite:{}", dir.path().join("store.db").display());
    let mut hosts: Vec<(&str, std::path::PathBuf, HostProcess)> = ["a", "b"]
        .into_iter()
        .map(|id| {
            let log = dir.path().join(format!("host-{id}.log"));
            let mut command = host_command(id, &store_url, &broker.address, &log);
            (id, log, HostProcess(command.spawn().unwrap()))
        })
        .collect();
    let mut addresses = Vec::new();
    for (id, log, host) in &mut hosts {
        let address = logged_admin_address(log, host);
        let (status, body) = get(address, "/status");
        assert_eq!(status, 200, "host {id} /status: {body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["host_id"], *id, "{report}");
        addresses.push(address);
    }
    assert_ne!(addresses[0], addresses[1]);
    // Both still running: neither stopped over its admin port.
    for (id, log, host) in &mut hosts {
        assert!(
            host.0.try_wait().unwrap().is_none(),
            "host {id} exited:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

#[test]
fn a_busy_admin_address_stops_the_host_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite:{}", dir.path().join("store.db").display());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let log = dir.path().join("host.log");
    // No broker: the host binds before it connects to one.
    let mut host = spawn_host(&store_url, "127.0.0.1:1", &address, &log);
    let status = wait_exit(&mut host, START_BOUND);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "the host ran: {text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot listen for admin HTTP on ") && last.contains(&address),
        "{text}"
    );
}

#[test]
fn a_host_whose_broker_does_not_answer_stops_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite:{}", dir.path().join("store.db").display());
    let log = dir.path().join("host.log");
    // Nothing listens on port 1.
    let mut host = spawn_host(&store_url, "127.0.0.1:1", "off", &log);
    let status = wait_exit(&mut host, START_BOUND);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "the host ran: {text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the Kafka brokers 127.0.0.1:1 did not answer within"),
        "{text}"
    );
}
