//! Mass failover (issue 14): two `logstream host` processes, the real
//! SQLite store and a real broker (tansu, sqlite storage), `passthrough`
//! over an N-partition topic — N units — all led by host a. It measures
//! each host's steady-state cost (threads, RSS, sockets, CPU while no
//! record flows), then, while records flow to every partition, kills host a
//! with kill -9 and measures, per unit:
//! - the time from the kill to its first output from the new leader (the
//!   first output whose CreateTime is after the kill), and to the *last*
//!   unit's;
//! - how much later that output came than max(the kill, its input record's
//!   send): what the failover delayed it by, without the wait for a record
//!   on a partition the feeder had not reached yet; beside it, the same
//!   send-to-output latency over the seconds before the kill (a loaded
//!   broker takes a while to acknowledge even without a failover);
//! - when host b's takeover of it was done (fence, read-back, seek), from
//!   the `takeover phases` lines of b's log.
//!
//! Run: `scripts/build-plugins.sh && UNITS=100 cargo bench -p logstream-host --bench mass_failover`
//!
//! Env: `UNITS` (default 100), `RATE` (records/s over all partitions,
//! default 2,000), `IDLE_SECONDS` (CPU sampling window, default 5),
//! `LOGSTREAM_BIN` (the host binary to measure, default the one just built:
//! a saved binary of an earlier commit is the baseline of a comparison in
//! the same session), `BENCH_LOG_DIR` (keep the hosts' logs there: the
//! takeover phase lines say where each unit's failover time went),
//! `LOGSTREAM_LOG` (the hosts' log filter, default `info`; e.g.
//! `info,logstream_host::pipeline::tail=debug` adds each read-back's wait),
//! `TANSU_STORAGE` (the broker's storage, default SQLite), `STOP` (`kill`:
//! kill -9 of host a, the default; `term`: SIGTERM, a graceful handover of
//! every unit).

#[path = "../tests/common/broker.rs"]
mod broker;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logstream_host::pipeline::kafka::{
    self, is_fence_record, Outgoing, OutputProducer, PartitionReader,
};
use logstream_host::probe::{pid_of, unix_micros};
use logstream_host::store::election::read_leader;
use logstream_host::store::{transact, RetryPolicy, SqliteStore};

/// How long the final read retries one partition's watermark request: a
/// broker with thousands of partitions on 2 cores times requests out now
/// and then (at 1,000 units five tries in a row were not enough).
const WATERMARK_RETRY_BOUND: Duration = Duration::from_secs(120);
/// Pause between two tries of a watermark request.
const WATERMARK_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Liveness bound of each wait (not a performance figure).
const WAIT_BOUND: Duration = Duration::from_secs(600);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `logstream` binary measured (see `LOGSTREAM_BIN`).
fn logstream_bin() -> String {
    std::env::var("LOGSTREAM_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_logstream").to_string())
}

/// A host process, killed when dropped (also when the bench panics), so
/// none outlives the run.
struct HostProcess(Child);

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_host(
    id: &str,
    store: &str,
    brokers: &str,
    units: u32,
    dir: &std::path::Path,
    log_dir: &std::path::Path,
) -> HostProcess {
    HostProcess(
        Command::new(logstream_bin())
            .args([
                "host",
                "--host-id",
                id,
                "--brokers",
                brokers,
                "--store",
                store,
            ])
            .args(["--checkpoint-interval-ms", "1000"])
            .args(["--max-units", &units.to_string()])
            .args(["--admin-addr", "off"])
            .env(
                "LOGSTREAM_LOG",
                std::env::var("LOGSTREAM_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("LOGSTREAM_CACHE_DIR", dir.join("cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(log_dir.join(format!("host-{id}.log"))).unwrap(),
            ))
            .spawn()
            .unwrap(),
    )
}

/// The high watermark of output `partition`, retried for
/// [`WATERMARK_RETRY_BOUND`] (a busy broker times requests out).
fn output_high_watermark(brokers: &str, partition: i32) -> i64 {
    let started = Instant::now();
    loop {
        match kafka::watermarks(brokers, "out", partition) {
            Ok((_, high)) => return high,
            Err(error) if started.elapsed() < WATERMARK_RETRY_BOUND => {
                eprintln!("reading out/{partition}'s watermarks: {error:#}; retrying");
                std::thread::sleep(WATERMARK_RETRY_PAUSE);
            }
            Err(error) => panic!("reading out/{partition}'s watermarks: {error:#}"),
        }
    }
}

/// The pid of each unit's unreleased leader.
fn leaders(store: &SqliteStore, units: u32) -> Vec<Option<u32>> {
    (0..units)
        .map(|p| {
            transact(store, &RetryPolicy::default(), |txn| {
                read_leader(txn, &format!("pt/{p}"))
            })
            .unwrap()
            .filter(|r| !r.released)
            .and_then(|r| pid_of(&r.holder))
        })
        .collect()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_BOUND;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What /proc says of a process.
#[derive(Debug, Clone, Copy)]
struct ProcessCost {
    threads: u64,
    rss_mib: f64,
    sockets: usize,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

fn cost(pid: u32) -> ProcessCost {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field overall, stime the 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let cpu_ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ProcessCost {
        threads: field("Threads:"),
        rss_mib: field("VmRSS:") as f64 / 1024.0,
        sockets,
        cpu_ticks,
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

fn main() {
    let units: u32 = env_or("UNITS", 100);
    let rate: u64 = env_or("RATE", 2_000);
    let idle = Duration::from_secs(env_or("IDLE_SECONDS", 5));
    let graceful = match std::env::var("STOP").as_deref() {
        Ok("term") => true,
        Ok("kill") | Err(_) => false,
        Ok(other) => {
            panic!("STOP is {other}; it must be kill (kill -9, the default) or term (SIGTERM)")
        }
    };
    let stop_name = if graceful { "SIGTERM" } else { "kill -9" };
    let partitions = i32::try_from(units).unwrap();
    let broker = broker::Broker::start();
    let dir = tempfile::tempdir().unwrap();
    // The hosts write their logs straight to `BENCH_LOG_DIR` when it is set,
    // so that they are kept even if the bench fails.
    let log_dir = match std::env::var("BENCH_LOG_DIR") {
        Ok(keep) => {
            std::fs::create_dir_all(&keep).unwrap();
            std::path::PathBuf::from(keep)
        }
        Err(_) => dir.path().to_path_buf(),
    };
    let store_url = format!("sqlite:{}", dir.path().join("store.db").display());
    kafka::ensure_topics(&broker.address, &[("in", partitions), ("out", partitions)]).unwrap();
    let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/plugin/passthrough.wasm");
    let deployed = Command::new(logstream_bin())
        .arg("deploy")
        .arg(&plugin)
        .args([
            "--name", "pt", "--input", "in", "--output", "out", "--store", &store_url,
        ])
        .env("LOGSTREAM_CACHE_DIR", dir.path().join("cache"))
        .status()
        .unwrap();
    assert!(deployed.success());
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let started = Instant::now();
    let mut a = spawn_host(
        "a",
        &store_url,
        &broker.address,
        units,
        dir.path(),
        &log_dir,
    );
    let a_pid = a.0.id();
    wait_until("host a to lead every unit", || {
        leaders(&store, units).iter().all(|l| *l == Some(a_pid))
    });
    let led_in = started.elapsed();
    let b = spawn_host(
        "b",
        &store_url,
        &broker.address,
        units,
        dir.path(),
        &log_dir,
    );
    // Passives are warm once their standbys restored the marks checkpoint
    // each unit wrote at its first takeover; give them the time it takes.
    std::thread::sleep(Duration::from_secs(5) + Duration::from_millis(20) * units);

    let (a_before, b_before) = (cost(a.0.id()), cost(b.0.id()));
    std::thread::sleep(idle);
    let (a_after, b_after) = (cost(a.0.id()), cost(b.0.id()));
    let cpu = |before: ProcessCost, after: ProcessCost| {
        (after.cpu_ticks - before.cpu_ticks) as f64 / TICKS_PER_SECOND / idle.as_secs_f64() * 100.0
    };

    println!(
        "mass failover: {units} units (passthrough), 2 hosts, lease 500 ms, heartbeat 100 ms, {rate} records/s over all partitions"
    );
    println!(
        "  host a led every unit {:.1} s after it started",
        led_in.as_secs_f64()
    );
    for (host, before, after) in [
        ("a (active)", a_before, a_after),
        ("b (passive)", b_before, b_after),
    ] {
        println!(
            "  host {host}: {} threads, {:.0} MiB RSS, {} sockets, {:.1} % of a core with no input",
            after.threads,
            after.rss_mib,
            after.sockets,
            cpu(before, after)
        );
    }
    // Records to every partition, round robin, at `rate` per second.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (stop, brokers) = (stop.clone(), broker.address.clone());
        std::thread::spawn(move || {
            let producer = OutputProducer::open_streaming(&brokers).unwrap();
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut next = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // When it was sent, so that the final read can tell the
                // wait for a record from the failover's delay.
                let sent_ms = unix_micros() / 1000;
                let value = format!("{{\"n\":{n},\"sent_ms\":{sent_ms}}}");
                let sent = producer.send(&Outgoing {
                    topic: "in",
                    partition: (n % u64::from(units)) as i32,
                    key: None,
                    value: value.as_bytes(),
                    headers: &[],
                    id: None,
                });
                if let Err(error) = sent {
                    // A broker slower than `rate` (many partitions on 2
                    // cores): wait for it rather than fail the run.
                    eprintln!("feeder: {error:#}; waiting for the broker");
                    let _ = producer.flush();
                    continue;
                }
                n += 1;
                next += interval;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if n.is_multiple_of(100) {
                    if let Err(error) = producer.flush() {
                        eprintln!("feeder: {error:#}");
                    }
                }
            }
            let _ = producer.flush();
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    let killed_at_ms = (unix_micros() / 1000) as i64;
    if graceful {
        // SIGTERM: a hands every unit over (final checkpoint, release) and
        // exits; b claims each released lease at once.
        // SAFETY: kill(2) with a child's pid and a signal number.
        let sent = unsafe { libc::kill(a.0.id() as i32, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to host a");
    } else {
        a.0.kill().unwrap();
    }
    a.0.wait().unwrap();
    let b_pid = b.0.id();
    wait_until("host b to lead every unit", || {
        leaders(&store, units).iter().all(|l| *l == Some(b_pid))
    });
    // Holding a lease is not acting yet: at a thousand units the takeovers'
    // fences and read-backs queue at the broker for seconds after the
    // claims. Wait until b logged every takeover done.
    let mut b_takeovers = TakeoverLog::new(log_dir.join("host-b.log"), killed_at_ms);
    wait_until("host b to finish every takeover", || {
        // Read once a second: b's log grows by megabytes at a thousand
        // units, and the bench shares the two cores with the hosts.
        std::thread::sleep(TAKEOVER_LOG_POLL);
        b_takeovers.read_on() >= units as usize
    });
    // Let every partition get a few records after the takeover.
    std::thread::sleep(
        Duration::from_secs(3) + Duration::from_secs_f64(units as f64 / rate as f64) * 5,
    );
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();

    // Host b's part is over once the feeder stopped: stop it before the
    // final read, so that its thousand units' polling does not slow the
    // broker down for the read.
    drop(b);
    let mut per_unit_ms = Vec::new();
    let mut delay_ms = Vec::new();
    let mut steady_latency_ms = Vec::new();
    for partition in 0..partitions {
        let high = output_high_watermark(&broker.address, partition);
        let reader = PartitionReader::open(&broker.address, "out", partition, Some(0)).unwrap();
        let mut next = 0;
        let mut first = None;
        while next < high && first.is_none() {
            let started = Instant::now();
            let batch = loop {
                match reader.poll_batch(10_000, 64 << 20, Duration::from_secs(1), Duration::ZERO) {
                    Ok(batch) => break batch,
                    // The broker, still loaded after the failover, may
                    // refuse a fetch now and then.
                    Err(error) if started.elapsed() < WATERMARK_RETRY_BOUND => {
                        eprintln!("reading out/{partition}: {error:#}; retrying");
                        std::thread::sleep(WATERMARK_RETRY_PAUSE);
                    }
                    Err(error) => panic!("reading out/{partition}: {error:#}"),
                }
            };
            next = batch.last().map_or(next, |r| r.offset + 1);
            for record in batch.iter().filter(|r| !is_fence_record(r)) {
                let sent_ms = sent_ms_of(&record.value);
                if record.timestamp_ms <= killed_at_ms {
                    if record.timestamp_ms > killed_at_ms - STEADY_SPAN_MS {
                        steady_latency_ms.push(record.timestamp_ms - sent_ms);
                    }
                    continue;
                }
                first = Some(record.timestamp_ms - killed_at_ms);
                delay_ms.push(record.timestamp_ms - sent_ms.max(killed_at_ms));
                break;
            }
        }
        per_unit_ms.extend(first);
    }
    b_takeovers.read_on();
    let mut ready_ms = b_takeovers.done_ms();
    println!(
        "  after {stop_name} of a: {} of {units} units produced again; per unit first output {} after the kill",
        per_unit_ms.len(),
        spread(&mut per_unit_ms),
    );
    println!(
        "    per unit, its first output after the kill later than max(kill, its record's send): {}",
        spread(&mut delay_ms),
    );
    println!(
        "    (end-to-end latency, send to output, over the {STEADY_SPAN_MS} ms before the kill: {})",
        spread(&mut steady_latency_ms),
    );
    println!(
        "  host b's takeovers done (fence, read-back, seek; from its log), {} of {units}: {} after the kill",
        ready_ms.len(),
        spread(&mut ready_ms),
    );
}

/// The span before the kill whose outputs give the steady-state latency.
const STEADY_SPAN_MS: i64 = 5_000;

/// `p50 … ms, p99 … ms, last … ms` of `values` (sorted in place).
fn spread(values: &mut [i64]) -> String {
    if values.is_empty() {
        return "none".into();
    }
    values.sort_unstable();
    let pct = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
    format!(
        "p50 {} ms, p99 {} ms, last {} ms",
        pct(0.5),
        pct(0.99),
        values[values.len() - 1]
    )
}

/// The feeder's send time carried in a record's value.
fn sent_ms_of(value: &[u8]) -> i64 {
    let value: serde_json::Value = serde_json::from_slice(value).expect("a feeder record");
    value["sent_ms"].as_i64().expect("the feeder's send time")
}

/// How often the bench reads on in host b's log while it waits.
const TAKEOVER_LOG_POLL: Duration = Duration::from_secs(1);

/// Per unit host b took over after the kill, when its first takeover since
/// was done: the `takeover phases` lines of b's log, logged in the unit's
/// span (`unit{unit=pt/7}: …`), read on as the log grows.
struct TakeoverLog {
    path: std::path::PathBuf,
    killed_at_ms: i64,
    /// Bytes of the log read so far (up to the last whole line).
    read: u64,
    first_done_ms: std::collections::HashMap<String, i64>,
}

impl TakeoverLog {
    fn new(path: std::path::PathBuf, killed_at_ms: i64) -> Self {
        TakeoverLog {
            path,
            killed_at_ms,
            read: 0,
            first_done_ms: std::collections::HashMap::new(),
        }
    }

    /// Read the lines added since the last call; how many units are done.
    fn read_on(&mut self) -> usize {
        use std::io::{Read, Seek};
        let mut added = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&self.path) {
            let _ = file.seek(std::io::SeekFrom::Start(self.read));
            let _ = file.read_to_end(&mut added);
        }
        // Only whole lines; a partly written one is read next time.
        let whole = added.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.read += whole as u64;
        for line in String::from_utf8_lossy(&added[..whole]).lines() {
            if !line.contains("takeover phases:") {
                continue;
            }
            let Some(at) = line.split_whitespace().next().and_then(unix_ms_of_log_time) else {
                continue;
            };
            let Some(unit) = line.split("unit=").nth(1).and_then(|s| s.split('}').next()) else {
                continue;
            };
            if at > self.killed_at_ms {
                self.first_done_ms
                    .entry(unit.to_string())
                    .or_insert(at - self.killed_at_ms);
            }
        }
        self.first_done_ms.len()
    }

    fn done_ms(&self) -> Vec<i64> {
        self.first_done_ms.values().copied().collect()
    }
}

/// Unix ms of a log line's UTC time stamp (`2026-12-08T00:34:15.876769Z`).
fn unix_ms_of_log_time(stamp: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(|at| at.timestamp_millis())
}
